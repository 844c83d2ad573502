"""What is particular to one backend: the file store's layout, S3's error messages, open_store."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleftgan_hpc.errors import ObjectNotFound, StorageError
from cleftgan_hpc.jobspec.models import StoreConfig
from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.storage.open import open_store


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- file:// --------------------------------------------------------------------------------
def test_local_hides_its_bookkeeping(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a", b"1")
    assert (tmp_path / "s" / ".cleftgan").is_dir()
    assert [i.key for i in store.list()] == ["a"]
    assert [i.key for i in store.list(".cle")] == []
    with pytest.raises(StorageError, match="reserved"):
        store.put_bytes(".cleftgan/meta/a", b"x")


def test_local_head_detects_stale_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("k", b"old", metadata={"v": "1"})
    (tmp_path / "s" / "k").write_bytes(b"changed behind the store's back")
    head = store.head("k")
    assert head is not None and head.sha256 == sha(b"changed behind the store's back")
    assert head.metadata == {}  # recorded for other bytes: not carried over
    (tmp_path / "s" / ".cleftgan" / "meta" / "k").unlink()
    head = store.head("k")
    assert head is not None and head.sha256 == sha(b"changed behind the store's back")


def test_local_key_clash_is_a_clear_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    with pytest.raises(StorageError, match="clash|exists"):
        store.put_bytes("a", b"2")
    with pytest.raises(StorageError, match="clash|exists"):
        store.put_bytes("a/b/c", b"3")
    assert store.head("a") is None
    with pytest.raises(ObjectNotFound):
        store.open_read("a")


def test_local_file_modes_follow_umask(tmp_path: Path) -> None:
    from cleftgan_hpc.storage.base import FILE_MODE

    store = LocalStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")
    store.get_file("a/b", tmp_path / "copy")
    assert (tmp_path / "s" / "a" / "b").stat().st_mode & 0o777 == FILE_MODE
    assert (tmp_path / "copy").stat().st_mode & 0o777 == FILE_MODE


def test_local_cleanup_incomplete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    store.put_bytes("keep", b"1")
    stale = tmp_path / "s" / ".cleftgan" / "tmp" / "put-dead"
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    fresh = tmp_path / "s" / ".cleftgan" / "tmp" / "put-running"
    fresh.write_bytes(b"in progress")
    assert store.cleanup_incomplete(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists() and store.get_bytes("keep") == b"1"


_part = st.text(alphabet="ab-.0_~", min_size=1, max_size=3).filter(lambda p: p not in (".", ".."))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_part, min_size=1, max_size=3).map("/".join), min_size=1, max_size=12, unique=True))
def test_local_list_matches_s3_order(tmp_path_factory: pytest.TempPathFactory, names: list[str]) -> None:
    # a file tree cannot hold both 'a' and 'a/b': keep the keys that are nobody's "directory"
    names = [n for n in names if not any(o.startswith(n + "/") for o in names)]
    store = LocalStore(tmp_path_factory.mktemp("prop"))
    for name in names:
        store.put_bytes(name, b"")
    expected = sorted(names, key=lambda k: k.encode())
    assert [i.key for i in store.list()] == expected
    for prefix in {n[:i] for n in names for i in range(len(n) + 1)}:
        assert [i.key for i in store.list(prefix)] == [k for k in expected if k.startswith(prefix)]


def test_local_root_unusable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="cannot use"):
        LocalStore(tmp_path / "file")


# -- s3:// ----------------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_s3_unreachable_endpoint_is_one_clear_error(s3_server: Any) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    store = S3Store("some-bucket", "p", endpoint_url=endpoint, max_attempts=1, connect_timeout=2)
    for call in (
        lambda: store.put_bytes("k", b"x"),
        lambda: store.head("k"),
        lambda: store.get_bytes("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
        store.ensure_bucket,
    ):
        with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {endpoint}"):
            call()


def test_s3_missing_bucket(s3_endpoint: str) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    store = S3Store("no-such-bucket-here", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="does not exist"):
        store.head("k")
    with pytest.raises(StorageError, match="does not exist"):
        list(store.list())
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.get_bytes("k")


def test_s3_large_upload_to_missing_bucket(s3_endpoint: str, tmp_path: Path) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    store = S3Store("no-such-bucket-here", endpoint_url=s3_endpoint, multipart_threshold=1 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * (2 << 20))
    for if_absent in (False, True):
        with pytest.raises(StorageError, match="no-such-bucket-here") as info:
            store.put_file("k", big, if_absent=if_absent)
        assert "Traceback" not in str(info.value)


def test_s3_ensure_bucket_is_idempotent(s3_endpoint: str) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    store = S3Store("cleftgan-ensure", endpoint_url=s3_endpoint)
    store.ensure_bucket()
    store.ensure_bucket()
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_s3_endpoint_from_environment(s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    store = S3Store(s3_bucket, "env-endpoint")
    assert store.endpoint_url == s3_endpoint
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_s3_no_credentials(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    store = S3Store("cleftgan-test", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="no S3 credentials"):
        store.put_bytes("k", b"x")
    with pytest.raises(StorageError, match="profile 'nope'"):
        S3Store("cleftgan-test", endpoint_url=s3_endpoint, profile="nope")


@pytest.fixture(scope="module")
def s3_with_identities(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second real SeaweedFS that checks credentials: an admin and a read-only user."""
    import json

    from services.s3_server import ACCESS_KEY, SECRET_KEY, start_seaweedfs

    root = tmp_path_factory.mktemp("weed-auth")
    config = root / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "reader", "credentials": [{"accessKey": "reader", "secretKey": "reader-secret"}],
         "actions": ["Read", "List"]},
    ]}))
    server = start_seaweedfs(root, extra_args=(f"-s3.config={config}",))
    yield server.endpoint_url
    server.stop()


@pytest.mark.parametrize(
    ("key_id", "secret", "action", "message"),
    [
        ("cleftgan-test", "not-the-secret", "get", "credentials rejected"),
        ("nobody", "whatever", "put", "credentials rejected"),
        ("reader", "reader-secret", "put", "access denied"),
    ],
)
def test_s3_server_refusals_are_one_clear_error(
    s3_with_identities: str, monkeypatch: pytest.MonkeyPatch, key_id: str, secret: str, action: str, message: str
) -> None:
    from services.s3_server import ACCESS_KEY, SECRET_KEY

    from cleftgan_hpc.storage.s3 import S3Store

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    admin = S3Store("cleftgan-auth", "p", endpoint_url=s3_with_identities, max_attempts=1)
    admin.ensure_bucket()
    admin.put_bytes("k", b"x")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3Store("cleftgan-auth", "p", endpoint_url=s3_with_identities, max_attempts=1)
    with pytest.raises(StorageError, match=message) as info:
        store.get_bytes("k") if action == "get" else store.put_bytes("k2", b"y")
    assert not isinstance(info.value, ObjectNotFound)
    assert "Traceback" not in str(info.value)


def test_s3_corrupt_download_is_refused(s3_store_factory: Callable[..., Any], tmp_path: Path) -> None:
    store = s3_store_factory()
    store.put_bytes("k", b"real bytes")
    full = f"{store.prefix}/k"
    store._client.copy_object(
        Bucket=store.bucket,
        Key=full,
        CopySource={"Bucket": store.bucket, "Key": full},
        Metadata={"sha256": sha(b"other bytes")},
        MetadataDirective="REPLACE",
    )
    dest = tmp_path / "out"
    dest.write_bytes(b"previous")
    with pytest.raises(StorageError, match="corrupt download"):
        store.get_file("k", dest)
    assert dest.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_s3_cleanup_incomplete(s3_store_factory: Callable[..., Any]) -> None:
    store = s3_store_factory()
    other = s3_store_factory()
    for s in (store, other):
        s._client.create_multipart_upload(Bucket=s.bucket, Key=f"{s.prefix}/dead")
    store.put_bytes("keep", b"1")
    assert store.cleanup_incomplete(older_than_s=3600) == 0
    assert store.cleanup_incomplete(older_than_s=0) == 1
    assert store.get_bytes("keep") == b"1"
    assert other.cleanup_incomplete(older_than_s=0) == 1  # only its own prefix was touched


def test_s3_foreign_keys_are_skipped(s3_store_factory: Callable[..., Any]) -> None:
    store = s3_store_factory()
    # a console's "folder" marker (a key with a backslash would do too, but SeaweedFS turns
    # backslashes into slashes)
    store._client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/dir/", Body=b"")
    store.put_bytes("dir/ok", b"1")
    assert [i.key for i in store.list()] == ["dir/ok"]


# -- open_store -----------------------------------------------------------------------------
def test_open_store_file(tmp_path: Path) -> None:
    store = open_store(StoreConfig(url=f"file://{tmp_path}/st"))
    assert isinstance(store, LocalStore) and store.root == tmp_path / "st"
    store.put_bytes("x", b"1")
    assert store.uri("x") == f"file://{tmp_path}/st/x"


def test_open_store_s3(s3_endpoint: str, s3_bucket: str) -> None:
    from cleftgan_hpc.storage.s3 import S3Store

    store = open_store(StoreConfig(url=f"s3://{s3_bucket}/runs/x/", endpoint_url=s3_endpoint, region="us-east-1"))
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.url) == (s3_bucket, "runs/x", f"s3://{s3_bucket}/runs/x")
    store.put_bytes("k", b"v")
    assert store.uri("k") == f"s3://{s3_bucket}/runs/x/k"
    assert open_store(StoreConfig(url=f"s3://{s3_bucket}", endpoint_url=s3_endpoint)).get_bytes("runs/x/k") == b"v"
