"""The ObjectStore contract, run against both backends (file:// and a real S3 server)."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cleftgan_hpc.errors import ObjectExists, ObjectNotFound, StorageError
from cleftgan_hpc.storage.base import ObjectStore
from cleftgan_hpc.storage.local import LocalStore

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def keys(store: ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then raises: an upload that dies midway."""

    def __init__(self, good: int) -> None:
        self.left = good

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.left <= 0:
            raise ConnectionResetError("source went away")
        n = min(len(buf), self.left, 256 * 1024)
        buf[:n] = b"x" * n
        self.left -= n
        return n


def multipart_store(store: ObjectStore, request: pytest.FixtureRequest) -> ObjectStore:
    """The same backend, with S3 multipart kicking in at 5 MiB (parts of 5 MiB)."""
    if isinstance(store, LocalStore):
        return store
    make: Callable[..., ObjectStore] = request.getfixturevalue("s3_store_factory")
    return make(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)


# -- put / get ------------------------------------------------------------------------------
def test_put_get_bytes(store: ObjectStore) -> None:
    data = b"hello object store"
    info = store.put_bytes("runs/r1/hello.txt", data)
    assert info.key == "runs/r1/hello.txt" and info.size == len(data) and info.sha256 == sha(data)
    head = store.head("runs/r1/hello.txt")
    assert head is not None
    assert head.size == len(data) and head.sha256 == sha(data) and head.last_modified
    assert store.get_bytes("runs/r1/hello.txt") == data
    assert store.exists("runs/r1/hello.txt")
    assert store.uri("runs/r1/hello.txt").endswith("/runs/r1/hello.txt")


def test_empty_object(store: ObjectStore) -> None:
    store.put_bytes("empty", b"")
    head = store.head("empty")
    assert head is not None and head.size == 0 and head.sha256 == sha(b"")
    assert store.get_bytes("empty") == b""


def test_put_file_get_file(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    assert store.put_file("ckpt/net.pkl", src).sha256 == sha(data)
    dest = tmp_path / "out" / "deep" / "net.pkl"
    info = store.get_file("ckpt/net.pkl", dest)
    assert dest.read_bytes() == data and info.sha256 == sha(data) and info.size == len(data)
    assert [p.name for p in dest.parent.iterdir()] == ["net.pkl"]  # no temp file left
    with pytest.raises(StorageError):
        store.put_file("ckpt/none", tmp_path / "does-not-exist")


def test_stream_round_trip(store: ObjectStore) -> None:
    data = os.urandom(3 * MiB + 17)
    assert store.put_stream("s/blob", io.BytesIO(data)).sha256 == sha(data)
    got = bytearray()
    with store.open_read("s/blob") as f:
        while chunk := f.read(64 * 1024):
            got += chunk
    assert bytes(got) == data


def test_json_and_text(store: ObjectStore) -> None:
    store.put_json("meta/a.json", {"b": [1, 2], "a": None})
    assert store.get_json("meta/a.json") == {"a": None, "b": [1, 2]}
    store.put_text("meta/t.txt", "héllo\n")
    assert store.get_text("meta/t.txt") == "héllo\n"


def test_user_metadata(store: ObjectStore) -> None:
    store.put_bytes("m/x", b"1", metadata={"run-id": "abc_1", "stage": "train"})
    head = store.head("m/x")
    assert head is not None and head.metadata == {"run-id": "abc_1", "stage": "train"}
    for bad in ({"Upper": "x"}, {"sha256": "x"}, {"ok": "caf\u00e9"}, {"has space": "x"}):
        with pytest.raises(StorageError):
            store.put_bytes("m/y", b"1", metadata=bad)
    assert store.head("m/y") is None


def test_overwrite(store: ObjectStore) -> None:
    store.put_bytes("k", b"one")
    store.put_bytes("k", b"two!")
    head = store.head("k")
    assert head is not None and head.sha256 == sha(b"two!") and head.size == 4
    assert store.get_bytes("k") == b"two!"


# -- create-only ----------------------------------------------------------------------------
def test_create_only(store: ObjectStore) -> None:
    store.put_bytes("once", b"first", if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_bytes("once", b"second", if_absent=True)
    assert store.get_bytes("once") == b"first"
    store.put_json("lock.json", {"owner": 1}, if_absent=True)
    with pytest.raises(ObjectExists):
        store.put_json("lock.json", {"owner": 2}, if_absent=True)
    assert store.get_json("lock.json") == {"owner": 1}


def test_create_only_concurrent_exactly_one_wins(store: ObjectStore) -> None:
    n = 8
    barrier = threading.Barrier(n)
    won: list[int] = []
    lost: list[int] = []
    other: list[BaseException] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("race/claim", f"writer {i}".encode(), if_absent=True)
            won.append(i)
        except ObjectExists:
            lost.append(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            other.append(e)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other, other
    assert len(won) == 1 and len(lost) == n - 1
    assert store.get_bytes("race/claim") == f"writer {won[0]}".encode()
    head = store.head("race/claim")
    assert head is not None and head.sha256 == sha(f"writer {won[0]}".encode())


# -- visibility -----------------------------------------------------------------------------
@pytest.mark.parametrize("if_absent", [False, True])
def test_failed_stream_leaves_nothing(store: ObjectStore, if_absent: bool) -> None:
    with pytest.raises(ConnectionResetError):
        store.put_stream("half/obj", io.BufferedReader(FailingStream(2 * MiB)), if_absent=if_absent)
    assert store.head("half/obj") is None
    assert keys(store) == []
    if isinstance(store, LocalStore):
        assert list((store.root / ".cleftgan" / "tmp").iterdir()) == []
    store.put_bytes("half/obj", b"retry works", if_absent=if_absent)  # nothing blocks a retry
    assert store.get_bytes("half/obj") == b"retry works"


def test_failed_large_stream_leaves_nothing(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    st = multipart_store(store, request)
    with pytest.raises(ConnectionResetError):
        st.put_stream("half/big", io.BufferedReader(FailingStream(12 * MiB)), if_absent=True)
    assert st.head("half/big") is None and keys(st) == []
    if not isinstance(st, LocalStore):
        uploads = st._client.list_multipart_uploads(Bucket=st.bucket, Prefix=st.prefix + "/")  # type: ignore[attr-defined]
        assert not uploads.get("Uploads")


def test_reader_sees_old_or_new_never_partial(store: ObjectStore) -> None:
    old, new = b"a" * (2 * MiB), b"b" * (2 * MiB)
    store.put_bytes("flip", old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(store.get_bytes("flip"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(6):
            store.put_bytes("flip", new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()
    assert seen <= {old, new}


# -- multipart ------------------------------------------------------------------------------
def test_large_multipart_round_trip(store: ObjectStore, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    st = multipart_store(store, request)
    data = os.urandom(20 * MiB + 123)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    # put_file (overwrite): boto3's TransferConfig path; put_stream create-only: our own
    # multipart completed with If-None-Match
    assert st.put_file("big/a", src).sha256 == sha(data)
    assert st.put_stream("big/b", io.BytesIO(data), if_absent=True).sha256 == sha(data)
    with pytest.raises(ObjectExists):
        st.put_file("big/b", src, if_absent=True)
    for key in ("big/a", "big/b"):
        head = st.head(key)
        assert head is not None and head.size == len(data) and head.sha256 == sha(data)
        out = tmp_path / f"{key.replace('/', '_')}.out"
        assert st.get_file(key, out).sha256 == sha(data)
        assert out.read_bytes() == data
    if not isinstance(st, LocalStore):
        client, bucket = st._client, st.bucket  # type: ignore[attr-defined]
        for key in ("big/a", "big/b"):
            etag = client.head_object(Bucket=bucket, Key=f"{st.prefix}/{key}")["ETag"]  # type: ignore[attr-defined]
            assert etag.strip('"').endswith("-5"), etag  # really uploaded in 5 parts
        assert not client.list_multipart_uploads(Bucket=bucket, Prefix=st.prefix + "/").get("Uploads")  # type: ignore[attr-defined]


# -- listing --------------------------------------------------------------------------------
def test_list_order_and_prefixes(store: ObjectStore) -> None:
    names = ["runs/a/x", "runs/a/y", "runs/ab/z", "runs/b", "runs/a0", "other", "z\u00e9/1", "A", "runs/c.txt"]
    for name in names:
        store.put_bytes(name, name.encode())
    expected = sorted(names, key=lambda k: k.encode())  # S3 order: UTF-8 bytes
    listed = list(store.list())
    assert [i.key for i in listed] == expected
    assert all(i.size == len(i.key.encode()) and i.last_modified for i in listed)
    assert keys(store, "runs/a/") == ["runs/a/x", "runs/a/y"]
    assert keys(store, "runs/a") == ["runs/a/x", "runs/a/y", "runs/a0", "runs/ab/z"]
    assert keys(store, "runs/") == [k for k in expected if k.startswith("runs/")]
    assert keys(store, "runs/a/x") == ["runs/a/x"]
    assert keys(store, "nope/") == [] and keys(store, "runs/zz") == []
    with pytest.raises(StorageError):
        store.list("/abs")


def test_list_order_with_names_below_slash(store: ObjectStore) -> None:
    # '-' and '.' sort before '/': AWS S3 (and the file store) list 'a-c' before 'a/x';
    # SeaweedFS lists a "directory" where its bare name sorts, so 'a/x' comes first there
    names = ["a/x", "a-c", "a.d", "a0"]
    for name in names:
        store.put_bytes(name, b"")
    if isinstance(store, LocalStore):
        assert keys(store) == ["a-c", "a.d", "a/x", "a0"]
        assert keys(store, "a") == ["a-c", "a.d", "a/x", "a0"]
    else:
        assert sorted(keys(store)) == sorted(names) and sorted(keys(store, "a")) == sorted(names)


def test_list_pagination_is_lazy(store: ObjectStore, request: pytest.FixtureRequest) -> None:
    if isinstance(store, LocalStore):
        st: ObjectStore = store
    else:
        st = request.getfixturevalue("s3_store_factory")(page_size=10)
    names = [f"p/{i:03d}" for i in range(35)]
    for name in names:
        st.put_bytes(name, b"")
    calls = 0
    if not isinstance(st, LocalStore):

        def count(**_: Any) -> None:
            nonlocal calls
            calls += 1

        st._client.meta.events.register("before-call.s3.ListObjectsV2", count)  # type: ignore[attr-defined]
    it = st.list("p/")
    assert next(it).key == "p/000"
    if not isinstance(st, LocalStore):
        assert calls == 1  # one page fetched for the first item
    assert [i.key for i in it] == names[1:]
    if not isinstance(st, LocalStore):
        assert calls == 4  # 35 keys in pages of 10


def test_delete(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("d/a/b", b"1", metadata={"x": "y"})
    store.put_bytes("d/c", b"2")
    store.delete("d/a/b")
    assert store.head("d/a/b") is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes("d/a/b")
    store.delete("d/a/b")  # missing: not an error
    store.delete("never/was")
    assert keys(store) == ["d/c"]
    # with d/a/b gone, d/a may become an object (a file store prunes the empty directory)
    store.put_bytes("d/a", b"3")
    head = store.head("d/a")
    assert head is not None and head.metadata == {}
    assert store.delete_prefix("d/") == 2
    assert keys(store) == []


# -- errors ---------------------------------------------------------------------------------
def test_missing_keys(store: ObjectStore, tmp_path: Path) -> None:
    assert store.head("no/such") is None
    assert not store.exists("no/such")
    with pytest.raises(ObjectNotFound):
        store.open_read("no/such")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("no/such")
    dest = tmp_path / "dest"
    with pytest.raises(ObjectNotFound):
        store.get_file("no/such", dest)
    assert not dest.exists()


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/./b", "../x", "a/..", "a\\b", "trailing/", "nul\x00", "new\nline"]
)
def test_invalid_keys_rejected(store: ObjectStore, key: str) -> None:
    for call in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.head(key),
        lambda: store.open_read(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(StorageError, match="invalid object key"):
            call()
    assert keys(store) == []
