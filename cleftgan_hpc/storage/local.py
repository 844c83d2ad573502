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

Links: the store never follows a symbolic link below its root. A link in a file store can
lead anywhere (``datasets/x -> /home/someone``), so reading, writing or deleting through one
would touch files outside the store. Every operation walks the key one directory at a time
from the root with ``O_NOFOLLOW`` and ``*at`` calls on directory fds (no path is resolved twice,
so a link swapped in between a check and its use is refused too), and a link at any level of a
key (or as ``.cleftgan`` or its subdirectories) is a StorageError naming the key. Links inside
the store are refused as well: a check that their target lies inside could not be race-free.
Listings skip links and never descend into them. The root itself may be a link: it is resolved
once, when the store is opened.

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
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from cleftgan_hpc.errors import ObjectExists, ObjectNotFound, StorageError
from cleftgan_hpc.storage.base import (
    CHUNK,
    FILE_MODE,
    ObjectInfo,
    ObjectStore,
    check_key,
    check_metadata,
    check_prefix,
    copy_stream,
    write_file_atomically,
)

HIDDEN = ".cleftgan"
_TMP = (HIDDEN, "tmp")
_META = (HIDDEN, "meta")
_MKDIR_RETRIES = 5
_IN_FLIGHT_S = 60.0  # a mismatched sidecar younger than this may belong to a put in progress
# every directory below the base is opened with O_NOFOLLOW: a link (even one swapped in a moment
# ago) fails the open with ELOOP instead of being followed
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted at a key must not hang the reader
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

Chain = tuple[list[int], str]  # fds of the base and each directory down to a key's parent; the key's last part


def _fsync_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _close(fds: Sequence[int] | None) -> None:
    for fd in reversed(fds or ()):
        with contextlib.suppress(OSError):
            os.close(fd)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _mktemp(dir_fd: int, prefix: str) -> tuple[int, str]:
    """An exclusive new file in ``dir_fd`` (mkstemp takes no dir_fd): (fd, name)."""
    while True:
        name = prefix + secrets.token_hex(8)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
        except FileExistsError:
            continue
        with contextlib.suppress(OSError):
            os.fchmod(fd, FILE_MODE)  # objects get 0666 & ~umask, as make_temp_file gives them
        return fd, name


class LocalStore(ObjectStore):
    """An object store in a local (or shared POSIX) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = "file://" + str(self.root)
        # resolved once: the root may be a link; everything below it is reached without links
        self._base = os.path.realpath(self.root)
        try:
            os.makedirs(self._base, exist_ok=True)
            for tree in (_TMP, _META):
                _close(self._open_dirs(tree, f"cannot use {self.root} as a file store", create=True))
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

    def _refuse_link(self, dir_fd: int, name: str, rel: str, what: str) -> None:
        """Raise a StorageError naming ``what`` if ``name`` in ``dir_fd`` is a symbolic link."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return
        if stat.S_ISLNK(st.st_mode):
            target = "?"
            with contextlib.suppress(OSError):
                target = os.readlink(name, dir_fd=dir_fd)
            raise StorageError(
                f"{what}: {rel} is a symbolic link (to {target}); the file store does not follow links, "
                "which could lead outside it"
            )

    def _open_dirs(self, parts: Sequence[str], what: str, *, create: bool) -> list[int] | None:
        """fds of the base directory and of each of ``parts`` below it, opened without following
        links (a link is a StorageError naming ``what``); None if one is missing and not
        ``create``. NotADirectoryError when a part is a file. The caller closes the fds."""
        fds = [os.open(self._base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        try:
            for i, name in enumerate(parts):
                fd = self._open_dir(fds[-1], name, "/".join(parts[: i + 1]), what, create=create)
                if fd is None:
                    _close(fds)
                    return None
                fds.append(fd)
        except BaseException:
            _close(fds)
            raise
        return fds

    def _open_dir(self, parent: int, name: str, rel: str, what: str, *, create: bool) -> int | None:
        for _ in range(_MKDIR_RETRIES):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    return None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_fd=parent)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                self._refuse_link(parent, name, rel, what)
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", rel) from None
        # created and removed again each time (a concurrent delete pruning it)
        raise FileNotFoundError(errno.ENOENT, "the directory keeps vanishing", rel)

    @contextlib.contextmanager
    def _parent(self, key: str, *, create: bool = False, tree: Sequence[str] = ()) -> Iterator[Chain | None]:
        """The directory chain down to ``key``'s parent (in ``tree``: the store, or the sidecars)
        and the key's last part; None when a directory on the way is missing (not ``create``)."""
        *parents, name = key.split("/")
        fds: list[int] | None = None
        try:
            fds = self._open_dirs([*tree, *parents], self.uri(key), create=create)
        except NotADirectoryError as e:
            if create:
                raise self._clash(key) from e
        except FileNotFoundError as e:
            if create:
                raise StorageError(f"cannot put {self.uri(key)}: its directory keeps vanishing") from e
        except OSError as e:
            raise StorageError(f"cannot access {self.uri(key)}: {e.strerror or e}") from e
        try:
            yield None if fds is None else (fds, name)
        finally:
            _close(fds)

    @contextlib.contextmanager
    def _tmp_dir(self) -> Iterator[int]:
        """The fd of ``.cleftgan/tmp``, where puts write before they place the file."""
        try:
            fds = self._open_dirs(_TMP, f"cannot write to {self.root}", create=True)
        except OSError as e:
            raise StorageError(f"cannot write to {self.root}: {e.strerror or e}") from e
        assert fds is not None  # create=True never gives None
        try:
            yield fds[-1]
        finally:
            _close(fds)

    def _clash(self, key: str) -> StorageError:
        return StorageError(
            f"cannot put {self.uri(key)}: it clashes with an existing key (a file store cannot hold both 'a' and 'a/b')"
        )

    def _lstat(self, key: str) -> os.stat_result | None:
        """The key's own stat (never a link's target), None if absent; a link is refused."""
        with self._parent(key) as found:
            if found is None:
                return None
            fds, name = found
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as e:
                raise StorageError(f"cannot stat {self.uri(key)}: {e.strerror or e}") from e
            if stat.S_ISLNK(st.st_mode):
                self._refuse_link(fds[-1], name, key, self.uri(key))
            return st

    def _open_regular(self, dir_fd: int, name: str, key: str) -> BinaryIO | None:
        """``name`` in ``dir_fd`` opened for reading if it is a regular file (None if absent or
        not a file); a link is refused."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._refuse_link(dir_fd, name, key, self.uri(key))
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

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
        self._key(key)
        meta = check_metadata(metadata)
        old = self._lstat(key)  # refuses a link at the key (or on the way) before any upload
        if if_absent and old is not None and stat.S_ISREG(old.st_mode):  # cheap early exit; the link is the check
            raise ObjectExists(f"{self.uri(key)} already exists")
        with self._tmp_dir() as tmp:
            try:
                fd, name = _mktemp(tmp, "put-")
            except OSError as e:
                raise StorageError(f"cannot write to {self.root}: {e.strerror or e}") from e
            try:
                sha, _ = copy_stream(stream, fd, what=str(self.root))
                st = os.stat(name, dir_fd=tmp)
                record = {"sha256": sha, "size": st.st_size, "metadata": meta, "stamp": _stamp(st)}
                if if_absent:
                    self._place(key, tmp, name, create_only=True)
                    # the object is ours now; should the sidecar fail, head() rebuilds it from the bytes
                    with contextlib.suppress(StorageError):
                        self._write_meta(key, record, tmp)
                else:
                    # sidecar first, so a reader usually finds it when the object appears; the
                    # stamp check in head() covers the window and any concurrent overwrite
                    self._write_meta(key, record, tmp)
                    self._place(key, tmp, name, create_only=False)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=tmp)
        return ObjectInfo(key=key, size=st.st_size, sha256=sha, last_modified=st.st_mtime, metadata=meta)

    def _place(self, key: str, tmp: int, tmp_name: str, *, create_only: bool) -> None:
        """Put the temp file at the key atomically (creating parents, racing with deletes)."""
        for attempt in range(_MKDIR_RETRIES):
            with self._parent(key, create=True) as found:
                assert found is not None  # create=True never gives None
                fds, name = found
                parent = fds[-1]
                try:
                    # rename/link never follow a link at the destination, but the key naming one
                    # is refused all the same
                    self._refuse_link(parent, name, key, self.uri(key))
                    if create_only:
                        os.link(tmp_name, name, src_dir_fd=tmp, dst_dir_fd=parent, follow_symlinks=False)
                    else:
                        os.replace(tmp_name, name, src_dir_fd=tmp, dst_dir_fd=parent)
                    _fsync_fd(parent)
                    return
                except FileExistsError as e:
                    try:
                        have = os.stat(name, dir_fd=parent, follow_symlinks=False)
                        mine = os.stat(tmp_name, dir_fd=tmp)
                    except OSError:
                        have = mine = None
                    if create_only and have is not None and mine is not None and (
                        (have.st_dev, have.st_ino) == (mine.st_dev, mine.st_ino)
                    ):
                        _fsync_fd(parent)
                        return  # NFS: a retransmitted link that had succeeded reports EEXIST
                    if create_only and not (have is not None and stat.S_ISDIR(have.st_mode)):
                        raise ObjectExists(f"{self.uri(key)} already exists") from e
                    raise StorageError(f"cannot put {self.uri(key)}: a key under {key}/ exists") from e
                except FileNotFoundError:
                    # a concurrent delete pruned the (empty) parent between mkdir and link
                    if attempt == _MKDIR_RETRIES - 1:
                        raise StorageError(f"cannot put {self.uri(key)}: its directory keeps vanishing") from None
                except (NotADirectoryError, IsADirectoryError) as e:
                    raise self._clash(key) from e
                except OSError as e:
                    if create_only and e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                        raise StorageError(
                            f"cannot put {self.uri(key)}: the filesystem does not support hard links, "
                            "which create-only puts need"
                        ) from e
                    raise StorageError(f"cannot put {self.uri(key)}: {e.strerror or e}") from e

    def _write_meta(self, key: str, record: dict[str, object], tmp: int) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        for attempt in range(_MKDIR_RETRIES):
            with self._parent(key, create=True, tree=_META) as found:
                assert found is not None
                fds, name = found
                try:
                    fd, tmp_name = _mktemp(tmp, "meta-")
                    try:
                        with os.fdopen(fd, "wb") as out:
                            out.write(data)
                            out.flush()
                            os.fsync(out.fileno())
                        os.replace(tmp_name, name, src_dir_fd=tmp, dst_dir_fd=fds[-1])
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp_name, dir_fd=tmp)
                    return
                except FileNotFoundError:
                    if attempt == _MKDIR_RETRIES - 1:
                        raise StorageError(f"cannot write metadata of {self.uri(key)}") from None
                except (NotADirectoryError, IsADirectoryError) as e:
                    raise self._clash(key) from e
                except OSError as e:
                    raise StorageError(f"cannot write metadata of {self.uri(key)}: {e.strerror or e}") from e

    def _read_meta(self, key: str) -> tuple[dict[str, object] | None, float]:
        """(the sidecar's record or None, the sidecar file's mtime or 0)."""
        try:
            with self._parent(key, tree=_META) as found:
                f = None if found is None else self._open_regular(found[0][-1], found[1], key)
                if f is None:
                    return None, 0.0
                with f:
                    written = os.fstat(f.fileno()).st_mtime
                    rec = json.load(f)
        except (OSError, ValueError, StorageError):
            return None, 0.0
        return (rec, written) if isinstance(rec, dict) else (None, 0.0)

    # -- reading -------------------------------------------------------------------------
    def head(self, key: str) -> ObjectInfo | None:
        self._key(key)
        st = self._lstat(key)
        if st is None or not stat.S_ISREG(st.st_mode):
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
        return self._repair(key, rec, rewrite=not in_flight)

    def _repair(self, key: str, rec: dict[str, object] | None, *, rewrite: bool) -> ObjectInfo | None:
        """The sidecar is missing or describes another version (a crash between the two steps
        of a put, a file changed behind the store's back): hash the bytes, rewrite the sidecar."""
        with self._parent(key) as found:
            if found is None:
                return None
            fds, name = found
            try:
                f = self._open_regular(fds[-1], name, key)
            except OSError as e:
                raise StorageError(f"cannot read {self.uri(key)}: {e.strerror or e}") from e
            if f is None:
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
                # still the version we hashed
                if rewrite and os.stat(name, dir_fd=fds[-1], follow_symlinks=False).st_ino == st.st_ino:
                    with self._tmp_dir() as tmp:
                        self._write_meta(key, record, tmp)
        return ObjectInfo(key=key, size=st.st_size, sha256=h.hexdigest(), last_modified=st.st_mtime, metadata=meta)

    def open_read(self, key: str) -> BinaryIO:
        self._key(key)
        with self._parent(key) as found:
            try:
                f = None if found is None else self._open_regular(found[0][-1], found[1], key)
            except OSError as e:
                raise StorageError(f"cannot read {self.uri(key)}: {e.strerror or e}") from e
        if f is None:
            raise ObjectNotFound(f"{self.uri(key)} does not exist")
        return f

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
        what = f"cannot list {self.url.rstrip('/')}/{prefix}"
        try:
            fds = self._open_dirs(head.split("/") if head else [], what, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise StorageError(f"{what}: {e.strerror or e}") from e
        if fds is None:
            return
        try:
            yield from self._walk(fds[-1], head + "/" if head else "", tail)
        finally:
            _close(fds)

    def _walk(self, dir_fd: int, key_prefix: str, name_prefix: str) -> Iterator[ObjectInfo]:
        try:
            with os.scandir(dir_fd) as it:
                entries = [e for e in it if e.name.startswith(name_prefix)]
        except OSError as e:
            raise StorageError(f"cannot list {self.url.rstrip('/')}/{key_prefix}: {e.strerror or e}") from e
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
                try:
                    sub = os.open(e.name, _DIR_FLAGS, dir_fd=dir_fd)
                except OSError:
                    continue  # deleted, or swapped for a link, while we listed: not descended
                try:
                    yield from self._walk(sub, key_prefix + e.name + "/", "")
                finally:
                    os.close(sub)
                continue
            try:
                if not e.is_file(follow_symlinks=False):
                    continue  # links (and anything but plain files) are never objects
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we listed
            yield ObjectInfo(key=key_prefix + e.name, size=st.st_size, last_modified=st.st_mtime)

    # -- deleting ------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        *parents, _ = self._key(key).split("/")
        with self._parent(key) as found:
            if found is not None:
                fds, name = found
                try:
                    st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        self._refuse_link(fds[-1], name, key, self.uri(key))
                    if stat.S_ISDIR(st.st_mode):
                        return  # a "directory" of other keys is not an object
                    os.unlink(name, dir_fd=fds[-1])
                except (FileNotFoundError, NotADirectoryError):
                    pass
                except OSError as e:
                    raise StorageError(f"cannot delete {self.uri(key)}: {e.strerror or e}") from e
                self._prune(fds, parents, keep=0)
        with contextlib.suppress(StorageError, OSError), self._parent(key, tree=_META) as meta:
            if meta is not None:
                with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
                    os.unlink(meta[1], dir_fd=meta[0][-1])  # unlink never follows a link
                self._prune(meta[0], [*_META, *parents], keep=len(_META))

    def cleanup_incomplete(self, older_than_s: float = 24 * 3600) -> int:
        """Delete temp files of puts that died (a crash, a killed job) ``older_than_s`` ago."""
        cutoff = time.time() - older_than_s
        n = 0
        with self._tmp_dir() as tmp:
            try:
                with os.scandir(tmp) as it:
                    entries = list(it)
            except OSError as e:
                raise StorageError(f"cannot list {self.root / HIDDEN / 'tmp'}: {e.strerror or e}") from e
            for e in entries:
                with contextlib.suppress(OSError):
                    if e.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(e.name, dir_fd=tmp)
                        n += 1
        return n

    @staticmethod
    def _prune(fds: list[int], parts: Sequence[str], keep: int) -> None:
        """Remove now-empty directories ``parts[keep:]``, deepest first (``fds[i]`` holds ``parts[i]``)."""
        for i in range(len(parts) - 1, keep - 1, -1):
            try:
                os.rmdir(parts[i], dir_fd=fds[i])
            except OSError:
                return
