"""The file:// object store: a directory tree whose files are the objects.

Layout under ``root``::

    root/<key>                     the object's bytes (only ever complete files)
    root/.cleftgan/tmp/            temp files of puts in progress (never listed)
    root/.cleftgan/meta/<key>      JSON sidecar: sha256, size, user metadata, and the
                                   (inode, size, mtime_ns) of the object it describes

Atomicity: a put writes a temp file in ``.cleftgan/tmp`` (same filesystem), fsyncs it, then
``os.replace``s it onto the key (overwrite) or ``os.link``s it there (create-only: the link
fails if the key exists, so exactly one concurrent creator wins). Readers therefore only ever
see complete objects. The sidecar is written next to that step; because it records which
inode it describes, a sidecar that does not match the object on disk (a crash between the two
steps, concurrent overwrites, a copied store, a file edited by hand) is detected: the sha256
is recomputed from the bytes and the sidecar rewritten (unless it is younger than a minute and
may belong to a put in flight). ``head`` is therefore always right, never stale; user metadata
of a version whose sidecar was lost is empty.

Create-only puts need hard links (POSIX filesystems, NFS, Lustre, GPFS have them).

Differences from S3 that come from being a file tree: a key cannot also be a "directory" of
other keys (``a`` and ``a/b`` cannot coexist), and keys whose first part is ``.cleftgan``
are reserved.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cleftgan_hpc.errors import ObjectExists, ObjectNotFound, StorageError
from cleftgan_hpc.storage.base import (
    CHUNK,
    ObjectInfo,
    ObjectStore,
    check_key,
    check_metadata,
    check_prefix,
    copy_stream,
    make_temp_file,
    write_file_atomically,
)

HIDDEN = ".cleftgan"
_MKDIR_RETRIES = 5
_IN_FLIGHT_S = 60.0  # a mismatched sidecar younger than this may belong to a put in progress


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


class LocalStore(ObjectStore):
    """An object store in a local (or shared POSIX) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = "file://" + str(self.root)
        self._tmp = self.root / HIDDEN / "tmp"
        self._meta = self.root / HIDDEN / "meta"
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            self._meta.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot use {self.root} as a file store: {e.strerror or e}") from e

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        check_key(key)
        if key.split("/", 1)[0] == HIDDEN:
            raise StorageError(f"invalid object key {key!r}: {HIDDEN}/ is reserved by the file store")
        return key

    def _path(self, key: str) -> Path:
        return self.root / self._key(key)

    def _meta_path(self, key: str) -> Path:
        return self._meta / key

    # -- writing -------------------------------------------------------------------------
    def put_file(
        self, key: str, path: str | Path, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as e:
            raise StorageError(f"cannot read {path}: {e.strerror or e}") from e
        with f:
            return self.put_stream(key, f, if_absent=if_absent, metadata=metadata)

    def put_stream(
        self, key: str, stream: BinaryIO, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        dest = self._path(key)
        meta = check_metadata(metadata)
        if if_absent and dest.is_file():  # cheap early exit; the link below is the real check
            raise ObjectExists(f"{self.uri(key)} already exists")
        try:
            fd, name = make_temp_file(self._tmp, prefix="put-")
        except OSError as e:
            raise StorageError(f"cannot write to {self.root}: {e.strerror or e}") from e
        tmp = Path(name)
        try:
            sha, _ = copy_stream(stream, fd, what=str(self.root))
            st = os.stat(tmp)
            record = {"sha256": sha, "size": st.st_size, "metadata": meta, "stamp": _stamp(st)}
            if if_absent:
                self._place(key, tmp, dest, create_only=True)
                # the object is ours now; should the sidecar fail, head() rebuilds it from the bytes
                with contextlib.suppress(StorageError):
                    self._write_meta(key, record)
            else:
                # sidecar first, so a reader usually finds it when the object appears; the
                # stamp check in head() covers the window and any concurrent overwrite
                self._write_meta(key, record)
                self._place(key, tmp, dest, create_only=False)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return ObjectInfo(key=key, size=st.st_size, sha256=sha, last_modified=st.st_mtime, metadata=meta)

    def _place(self, key: str, tmp: Path, dest: Path, *, create_only: bool) -> None:
        """Put the temp file at ``dest`` atomically (creating parents, racing with deletes)."""
        for attempt in range(_MKDIR_RETRIES):
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if create_only:
                    os.link(tmp, dest)
                else:
                    os.replace(tmp, dest)
                _fsync_dir(dest.parent)
                return
            except FileExistsError as e:
                if create_only and _same_file(tmp, dest):
                    _fsync_dir(dest.parent)
                    return  # NFS: a retransmitted link that had succeeded reports EEXIST
                if create_only and not dest.is_dir():
                    raise ObjectExists(f"{self.uri(key)} already exists") from e
                raise StorageError(f"cannot put {self.uri(key)}: a key under {key}/ exists") from e
            except FileNotFoundError:
                # a concurrent delete pruned the (empty) parent between mkdir and link
                if attempt == _MKDIR_RETRIES - 1:
                    raise StorageError(f"cannot put {self.uri(key)}: its directory keeps vanishing") from None
            except (NotADirectoryError, IsADirectoryError) as e:
                raise StorageError(
                    f"cannot put {self.uri(key)}: it clashes with an existing key "
                    "(a file store cannot hold both 'a' and 'a/b')"
                ) from e
            except OSError as e:
                if create_only and e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                    raise StorageError(
                        f"cannot put {self.uri(key)}: the filesystem does not support hard links, "
                        "which create-only puts need"
                    ) from e
                raise StorageError(f"cannot put {self.uri(key)}: {e.strerror or e}") from e

    def _write_meta(self, key: str, record: dict[str, object]) -> None:
        mpath = self._meta_path(key)
        data = json.dumps(record, sort_keys=True).encode()
        for attempt in range(_MKDIR_RETRIES):
            try:
                mpath.parent.mkdir(parents=True, exist_ok=True)
                fd, name = make_temp_file(self._tmp, prefix="meta-")
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(name, mpath)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
                return
            except FileNotFoundError:
                if attempt == _MKDIR_RETRIES - 1:
                    raise StorageError(f"cannot write metadata of {self.uri(key)}") from None
            except (NotADirectoryError, IsADirectoryError) as e:
                raise StorageError(
                    f"cannot put {self.uri(key)}: it clashes with an existing key "
                    "(a file store cannot hold both 'a' and 'a/b')"
                ) from e
            except OSError as e:
                raise StorageError(f"cannot write metadata of {self.uri(key)}: {e.strerror or e}") from e

    def _read_meta(self, key: str) -> tuple[dict[str, object] | None, float]:
        """(the sidecar's record or None, the sidecar file's mtime or 0)."""
        try:
            with open(self._meta_path(key), "rb") as f:
                written = os.fstat(f.fileno()).st_mtime
                rec = json.load(f)
        except (OSError, ValueError):
            return None, 0.0
        return (rec, written) if isinstance(rec, dict) else (None, 0.0)

    # -- reading -------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StorageError(f"cannot stat {self.uri(key)}: {e.strerror or e}") from e
        if not stat.S_ISREG(st.st_mode):
            return None
        rec, written = self._read_meta(key)
        if rec is not None and rec.get("stamp") == _stamp(st) and isinstance(rec.get("sha256"), str):
            meta = rec.get("metadata")
            return ObjectInfo(
                key=key,
                size=st.st_size,
                sha256=str(rec["sha256"]),
                last_modified=st.st_mtime,
                metadata=dict(meta) if isinstance(meta, dict) else {},
            )
        # a sidecar written moments ago for another version belongs to a put in flight (it
        # writes the sidecar, then moves the object in): hash, but leave the sidecar alone
        in_flight = rec is not None and time.time() - written < _IN_FLIGHT_S
        return self._repair(key, path, rec, rewrite=not in_flight)

    def _repair(self, key: str, path: Path, rec: dict[str, object] | None, *, rewrite: bool) -> ObjectInfo | None:
        """The sidecar is missing or describes another version (a crash between the two steps
        of a put, a file changed behind the store's back): hash the bytes, rewrite the sidecar."""
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        with f:
            st = os.fstat(f.fileno())
            h = hashlib.sha256()
            while chunk := f.read(CHUNK):
                h.update(chunk)
        # user metadata of a foreign or half-recorded version is unknown; keep the old only if
        # it was recorded for this exact content
        meta: dict[str, str] = {}
        if rec is not None and rec.get("sha256") == h.hexdigest() and isinstance(rec.get("metadata"), dict):
            meta = dict(rec["metadata"])  # type: ignore[arg-type]
        record = {"sha256": h.hexdigest(), "size": st.st_size, "metadata": meta, "stamp": _stamp(st)}
        with contextlib.suppress(StorageError, OSError):
            if rewrite and os.stat(path).st_ino == st.st_ino:  # still the version we hashed
                self._write_meta(key, record)
        return ObjectInfo(key=key, size=st.st_size, sha256=h.hexdigest(), last_modified=st.st_mtime, metadata=meta)

    def open_read(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectNotFound(f"{self.uri(key)} does not exist") from e
        except OSError as e:
            raise StorageError(f"cannot read {self.uri(key)}: {e.strerror or e}") from e

    def get_file(self, key: str, path: str | Path) -> ObjectInfo:
        with self.open_read(key) as src:
            st = os.fstat(src.fileno())
            sha, size = write_file_atomically(src, path)
        info = self.head(key)
        # user metadata only if the key still holds the bytes we copied
        meta = info.metadata if info is not None and info.sha256 == sha else {}
        return ObjectInfo(key=key, size=size, sha256=sha, last_modified=st.st_mtime, metadata=meta)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self._list(check_prefix(prefix))  # validate now, walk lazily

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        # start in the deepest directory the prefix names completely
        head, _, tail = prefix.rpartition("/")
        if head:
            try:
                check_key(head)
            except StorageError:
                return
            if head.split("/", 1)[0] == HIDDEN:
                return
        start = self.root / head if head else self.root
        yield from self._walk(start, head + "/" if head else "", tail)

    def _walk(self, directory: Path, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(directory) as it:
                entries = [e for e in it if e.name.startswith(name_prefix)]
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise StorageError(f"cannot list {directory}: {e.strerror or e}") from e
        items: list[tuple[bytes, os.DirEntry[str], bool]] = []
        for e in entries:
            if not key_prefix and e.name == HIDDEN:
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            # sort as S3 does, by the UTF-8 bytes of the full key: a directory sorts as name + '/'
            items.append(((e.name + ("/" if is_dir else "")).encode("utf-8", "surrogateescape"), e, is_dir))
        items.sort(key=lambda t: t[0])
        for _, e, is_dir in items:
            if is_dir:
                yield from self._walk(Path(e.path), key_prefix + e.name + "/", "")
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed
            yield ObjectInfo(key=key_prefix + e.name, size=st.st_size, last_modified=st.st_mtime)

    # -- deleting ------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if path.is_dir():
                return  # a "directory" of other keys is not an object
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            raise StorageError(f"cannot delete {self.uri(key)}: {e.strerror or e}") from e
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            os.unlink(self._meta_path(key))
        self._prune(path.parent, self.root)
        self._prune(self._meta_path(key).parent, self._meta)

    def cleanup_incomplete(self, older_than_s: float = 24 * 3600) -> int:
        """Delete temp files of puts that died (a crash, a killed job) ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        n = 0
        try:
            entries = list(os.scandir(self._tmp))
        except OSError as e:
            raise StorageError(f"cannot list {self._tmp}: {e.strerror or e}") from e
        for e in entries:
            with contextlib.suppress(OSError):
                if e.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(e.path)
                    n += 1
        return n

    @staticmethod
    def _prune(directory: Path, stop: Path) -> None:
        """Remove now-empty parent directories up to (not including) ``stop``."""
        while directory != stop and stop in directory.parents:
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = directory.parent
