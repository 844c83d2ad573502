"""A file:// store never reads, writes or deletes through a symbolic link: a link under the root
(to a file or a directory, at any level of a key, or as the store's own bookkeeping folders)
is a StorageError naming the key, and what the link points at is left exactly as it was."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cleftgan_hpc.errors import ObjectNotFound, StorageError
from cleftgan_hpc.storage.local import LocalStore


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (not following links) with its bytes (None: a directory)."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.readlink(p).encode() if os.path.islink(p) else Path(p).read_bytes()
    return out


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files outside the store that links point at."""
    root = tmp_path / "outside"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "secret.txt").write_bytes(b"not the store's")
    (root / "dir" / "a.txt").write_bytes(b"a")
    (root / "dir" / "sub" / "b.txt").write_bytes(b"b")
    return root


@pytest.fixture
def store(tmp_path: Path, outside: Path) -> LocalStore:
    st = LocalStore(tmp_path / "store")
    st.put_bytes("datasets/real/x", b"real")
    os.symlink(outside / "secret.txt", tmp_path / "store" / "datasets" / "file_link")
    os.symlink(outside / "dir", tmp_path / "store" / "datasets" / "dir_link")
    os.symlink(outside / "dir", tmp_path / "store" / "datasets" / "real" / "deep_link")
    os.symlink(outside / "dir", tmp_path / "store" / "runs")  # one of the root's own subdirectories
    return st


def refused(call: Callable[[], Any], key: str) -> None:
    with pytest.raises(StorageError, match="symbolic link") as info:
        call()
    assert key in str(info.value) and not isinstance(info.value, ObjectNotFound)
    assert "\n" not in str(info.value)


KEYS = ["datasets/file_link", "datasets/dir_link/a.txt", "datasets/dir_link/sub/b.txt",
        "datasets/real/deep_link/a.txt", "runs/a.txt"]


@pytest.mark.parametrize("key", KEYS)
def test_read_through_a_link_is_refused(store: LocalStore, outside: Path, tmp_path: Path, key: str) -> None:
    before = snapshot(outside)
    refused(lambda: store.get_bytes(key), key)
    refused(lambda: store.get_file(key, tmp_path / "copy"), key)
    refused(lambda: store.head(key), key)
    refused(lambda: store.exists(key), key)
    assert not (tmp_path / "copy").exists() and snapshot(outside) == before


@pytest.mark.parametrize("key", [*KEYS, "datasets/dir_link/new.txt", "runs/new/deeper.txt"])
@pytest.mark.parametrize("if_absent", [False, True])
def test_write_through_a_link_is_refused(store: LocalStore, outside: Path, tmp_path: Path, key: str,
                                         if_absent: bool) -> None:
    before = snapshot(outside)
    src = tmp_path / "src.bin"
    src.write_bytes(b"overwritten")
    refused(lambda: store.put_bytes(key, b"overwritten", if_absent=if_absent), key)
    refused(lambda: store.put_file(key, src, if_absent=if_absent), key)
    assert snapshot(outside) == before
    assert os.path.islink(tmp_path / "store" / "datasets" / "file_link")  # the link itself stays too
    assert list((tmp_path / "store" / ".cleftgan" / "tmp").iterdir()) == []


@pytest.mark.parametrize("key", KEYS)
def test_delete_through_a_link_is_refused(store: LocalStore, outside: Path, key: str) -> None:
    before = snapshot(outside)
    refused(lambda: store.delete(key), key)
    assert snapshot(outside) == before


def test_listing_does_not_descend_into_links(store: LocalStore, outside: Path) -> None:
    before = snapshot(outside)
    assert [i.key for i in store.list()] == ["datasets/real/x"]
    assert [i.key for i in store.list("datasets/")] == ["datasets/real/x"]
    assert [i.key for i in store.list("datasets/dir")] == []
    for prefix in ("datasets/dir_link/", "datasets/dir_link/sub/", "runs/", "datasets/real/deep_link/a"):
        refused(lambda p=prefix: list(store.list(p)), prefix)
    assert snapshot(outside) == before


def test_delete_prefix_never_deletes_outside(store: LocalStore, outside: Path, tmp_path: Path) -> None:
    before = snapshot(outside)
    for prefix in ("datasets/dir_link/", "runs/", "datasets/real/deep_link/"):
        refused(lambda p=prefix: store.delete_prefix(p), prefix)
    assert store.delete_prefix("datasets/") == 1  # the one real object; the links are not objects
    assert snapshot(outside) == before
    assert os.path.islink(tmp_path / "store" / "datasets" / "dir_link")


def test_links_in_the_bookkeeping_are_refused(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    store.put_bytes("datasets/k", b"1")
    (root / ".cleftgan" / "meta" / "datasets" / "k").unlink()
    (root / ".cleftgan" / "meta" / "datasets").rmdir()
    os.symlink(outside / "dir", root / ".cleftgan" / "meta" / "datasets")  # sidecars would land outside
    before = snapshot(outside)
    refused(lambda: store.put_bytes("datasets/k", b"2"), "datasets/k")
    assert store.head("datasets/k") is not None  # rehashed; the sidecar is not written through
    store.delete("datasets/k")
    assert snapshot(outside) == before

    old = outside / "dir" / "put-dead"
    old.write_bytes(b"x")
    os.utime(old, (1, 1))
    before = snapshot(outside)
    (root / ".cleftgan" / "tmp").rmdir()
    os.symlink(outside / "dir", root / ".cleftgan" / "tmp")  # temp files would land outside
    refused(lambda: store.put_bytes("other", b"x"), str(root))
    refused(lambda: store.cleanup_incomplete(0), str(root))
    with pytest.raises(StorageError, match="cannot use .*symbolic link"):
        LocalStore(root)
    assert snapshot(outside) == before


def test_a_link_inside_the_store_is_refused_too(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/x", b"1")
    os.symlink("a", tmp_path / "store" / "b")  # relative, inside: still not followed (it may be retargeted)
    refused(lambda: store.get_bytes("b/x"), "b/x")
    assert [i.key for i in store.list()] == ["a/x"]


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root_link")
    store = LocalStore(tmp_path / "root_link")
    store.put_bytes("k/v", b"1")
    assert store.get_bytes("k/v") == b"1" and [i.key for i in store.list()] == ["k/v"]
    assert (tmp_path / "real" / "k" / "v").read_bytes() == b"1"
    store.delete_prefix("k/")
    assert not (tmp_path / "real" / "k").exists()
