"""Ray Tune's storage on our object store: a pyarrow filesystem over ``ObjectStore``.

Tune writes its experiment state and trial checkpoints through a pyarrow filesystem. Giving
it one backed by our store (rather than pyarrow's own S3 client) means one S3 client for the
whole project: the same endpoint, credentials, retries and checksum settings, and S3-compatible
servers that reject pyarrow's streaming-signed multipart uploads work too. Paths are store
keys. Picklable: Ray ships it to every trial; the store is reopened lazily in each process.
"""

from __future__ import annotations

import io
import tempfile
from typing import Any

import pyarrow as pa
from pyarrow import fs

from cleftgan_hpc.jobspec.models import StoreConfig
from cleftgan_hpc.storage.base import ObjectStore


def _key(path: str) -> str:
    return path.strip("/")


class _UploadOnClose(io.RawIOBase):
    """A write-only file that becomes an object, complete, when closed."""

    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.key = store, key
        self.buf = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # noqa: SIM115 - closed in close()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.buf.write(bytes(data))

    def close(self) -> None:
        if not self.closed:
            try:
                self.buf.seek(0)
                self.store.put_stream(self.key, self.buf)
            finally:
                self.buf.close()
        super().close()


class StoreFileSystemHandler(fs.FileSystemHandler):
    """pyarrow's FileSystemHandler on an ObjectStore; directories are key prefixes."""

    def __init__(self, store_config: StoreConfig) -> None:
        self.store_config = store_config
        self._store: ObjectStore | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"store_config": self.store_config.model_dump(mode="json")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.store_config = StoreConfig.model_validate(state["store_config"])
        self._store = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StoreFileSystemHandler) and other.store_config == self.store_config

    def __ne__(self, other: object) -> bool:
        return not self == other

    @property
    def store(self) -> ObjectStore:
        if self._store is None:
            from cleftgan_hpc.storage import open_store

            self._store = open_store(self.store_config)
        return self._store

    # -- metadata -----------------------------------------------------------------------------
    def get_type_name(self) -> str:
        return "cleftgan-store"

    def normalize_path(self, path: str) -> str:
        return _key(path)

    def _info(self, path: str) -> fs.FileInfo:
        key = _key(path)
        if not key:
            return fs.FileInfo("", fs.FileType.Directory)
        head = self.store.head(key)
        if head is not None:
            return fs.FileInfo(key, fs.FileType.File, size=head.size, mtime=head.last_modified)
        for _ in self.store.list(key + "/"):
            return fs.FileInfo(key, fs.FileType.Directory)
        return fs.FileInfo(key, fs.FileType.NotFound)

    def get_file_info(self, paths: list[str]) -> list[fs.FileInfo]:
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector: fs.FileSelector) -> list[fs.FileInfo]:
        base = _key(selector.base_dir)
        prefix = base + "/" if base else ""
        infos: dict[str, fs.FileInfo] = {}
        found = False
        for obj in self.store.list(prefix):
            found = True
            rest = obj.key[len(prefix):].split("/")
            depth = len(rest) if selector.recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):  # implied directories on the way
                d = prefix + "/".join(rest[:i])
                infos.setdefault(d, fs.FileInfo(d, fs.FileType.Directory))
            if selector.recursive or len(rest) == 1:
                infos[obj.key] = fs.FileInfo(obj.key, fs.FileType.File, size=obj.size, mtime=obj.last_modified)
        if not found and not selector.allow_not_found and base and self._info(base).type == fs.FileType.NotFound:
            raise FileNotFoundError(f"{base}: no such directory in {self.store.url}")
        return sorted(infos.values(), key=lambda i: i.path)

    # -- changes ------------------------------------------------------------------------------
    def create_dir(self, path: str, recursive: bool) -> None:
        """Directories exist by having objects under them: nothing to make."""

    def delete_dir(self, path: str) -> None:
        if not _key(path):
            raise ValueError("refusing to delete the whole store")
        self.store.delete_prefix(_key(path) + "/")

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        key = _key(path)
        if not key:
            raise ValueError("refusing to delete the whole store")
        self.store.delete_prefix(key + "/")

    def delete_root_dir_contents(self) -> None:
        raise ValueError("refusing to delete the whole store")

    def delete_file(self, path: str) -> None:
        self.store.delete(_key(path))

    def copy_file(self, src: str, dest: str) -> None:
        with self.store.open_read(_key(src)) as f:
            self.store.put_stream(_key(dest), f)

    def move(self, src: str, dest: str) -> None:
        info = self._info(src)
        if info.type == fs.FileType.File:
            self.copy_file(src, dest)
            self.delete_file(src)
            return
        src_key, dest_key = _key(src), _key(dest)
        for obj in list(self.store.list(src_key + "/")):
            self.copy_file(obj.key, dest_key + obj.key[len(src_key):])
            self.store.delete(obj.key)

    # -- data -----------------------------------------------------------------------------------
    def open_input_stream(self, path: str) -> pa.NativeFile:
        return pa.PythonFile(self.store.open_read(_key(path)), mode="r")

    def open_input_file(self, path: str) -> pa.NativeFile:
        return pa.BufferReader(self.store.get_bytes(_key(path)))  # random access: Tune's files are small

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        return pa.PythonFile(_UploadOnClose(self.store, _key(path)), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        raise NotImplementedError("objects cannot be appended to")


def store_filesystem(store_config: StoreConfig) -> fs.PyFileSystem:
    return fs.PyFileSystem(StoreFileSystemHandler(store_config))
