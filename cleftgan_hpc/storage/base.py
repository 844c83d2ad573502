"""The ObjectStore interface every backend implements, and the helpers built on it.

Contract (shared by file:// and s3://):
- keys are relative, '/'-separated, with no empty, '.' or '..' parts and no leading '/';
- an object becomes visible only when complete (temp + rename locally, single PUT or
  completed multipart on S3), so a reader never sees half an object;
- every object carries the sha256 of its bytes (``ObjectInfo.sha256``);
- ``if_absent=True`` makes a put create-only: it raises ObjectExists when the key is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.layout import check_key, join_key  # noqa: F401 - part of the store API

CHUNK = 1 << 20  # 1 MiB: read size for hashing and copying


def _current_umask() -> int:
    try:  # Linux: readable without changing it (os.umask would race with other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; objects and downloads get the usual 0666 & ~umask instead, so a
# store on a shared filesystem stays readable by the group (read once, at import)
FILE_MODE = 0o666 & ~_current_umask()


def make_temp_file(directory: str | Path, prefix: str, suffix: str = "") -> tuple[int, str]:
    """mkstemp in ``directory`` with FILE_MODE permissions: (fd, path)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    with contextlib.suppress(OSError):
        os.fchmod(fd, FILE_MODE)
    return fd, name


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str
    size: int
    # hex digest of the bytes: always set by head(); None in list() results (S3 listings do
    # not carry metadata, so neither backend reads it there) and for foreign objects.
    sha256: str | None = None
    last_modified: float | None = None  # seconds since the epoch
    metadata: dict[str, str] = field(default_factory=dict)


_META_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
RESERVED_METADATA = frozenset({"sha256"})


def check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    """Validate user metadata so both backends store it the same way, and return a copy.

    S3 lower-cases names and only carries ASCII in headers, so names must be lower-case
    ``[a-z0-9_-]`` and values printable ASCII; ``sha256`` is reserved for the store.
    """
    out: dict[str, str] = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not _META_KEY.fullmatch(k):
            raise StorageError(f"invalid metadata name {k!r}: expected lower-case letters, digits, '-' or '_'")
        if k in RESERVED_METADATA:
            raise StorageError(f"metadata name {k!r} is reserved by the store")
        if not isinstance(v, str) or not all(32 <= ord(c) < 127 for c in v):
            raise StorageError(f"invalid value for metadata {k!r}: expected a printable ASCII string")
        out[k] = v
    return out


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can start keys ('' lists everything), else raise StorageError."""
    if not isinstance(prefix, str) or prefix.startswith("/") or "\\" in prefix:
        raise StorageError(f"invalid prefix {prefix!r}: expected a relative key prefix like 'runs/x/'")
    return prefix


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def copy_stream(src: BinaryIO, fd: int, *, what: str, fsync: bool = True) -> tuple[str, int]:
    """Copy ``src`` into the open file descriptor ``fd`` (closing it), fsync; return (sha256, size).

    Errors raised by ``src`` propagate unchanged; errors writing become StorageError naming ``what``.
    """
    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
            try:
                out.write(chunk)
            except OSError as e:
                raise StorageError(f"cannot write {what}: {e.strerror or e}") from e
        try:
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        except OSError as e:
            raise StorageError(f"cannot write {what}: {e.strerror or e}") from e
    return h.hexdigest(), size


def write_file_atomically(src: BinaryIO, path: str | Path, *, expected_sha256: str | None = None) -> tuple[str, int]:
    """Copy ``src`` to a temp file beside ``path``, fsync, rename onto ``path``: (sha256, size).

    ``path`` either keeps its old content or gets the complete new one, never a part. With
    ``expected_sha256``, bytes that do not match raise StorageError and ``path`` is left alone.
    """
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = make_temp_file(dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise StorageError(f"cannot write {dest}: {e.strerror or e}") from e
    try:
        sha, size = copy_stream(src, fd, what=str(dest))
        if expected_sha256 is not None and sha != expected_sha256:
            raise StorageError(f"corrupt download to {dest}: sha256 {sha} does not match the stored {expected_sha256}")
        os.replace(name, dest)
    except OSError as e:
        raise StorageError(f"cannot write {dest}: {e.strerror or e}") from e
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)
    return sha, size


class ObjectStore(ABC):
    """An object store rooted at ``url`` (``file:///dir`` or ``s3://bucket/prefix``)."""

    url: str

    # -- writing -------------------------------------------------------------------------
    @abstractmethod
    def put_file(
        self, key: str, path: str | Path, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        """Upload a local file; visible only when complete."""

    @abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        """Upload from a readable binary stream of unknown length; visible only when complete."""

    def put_bytes(
        self, key: str, data: bytes, *, if_absent: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        import io

        return self.put_stream(key, io.BytesIO(data), if_absent=if_absent, metadata=metadata)

    # -- reading -------------------------------------------------------------------------
    @abstractmethod
    def head(self, key: str) -> ObjectInfo | None:
        """Metadata of ``key``, or None when it does not exist."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader of the object's bytes (raise ObjectNotFound when absent)."""

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as f:
            return f.read()

    @abstractmethod
    def get_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Download to ``path`` atomically (temp file then rename)."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with ``prefix``, in key order, paginated lazily.

        Key order is UTF-8 byte order (AWS S3, MinIO, the file store). SeaweedFS lists a
        "directory" where its bare name sorts, so 'a/x' comes before 'a-c' there: sort the
        keys yourself if that exact order matters. Items carry key, size and last_modified;
        ``sha256`` and ``metadata`` need ``head()``.
        """

    # -- deleting ------------------------------------------------------------------------
    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete ``key``; deleting a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for info in list(self.list(prefix)):
            self.delete(info.key)
            n += 1
        return n

    def cleanup_incomplete(self, older_than_s: float = 24 * 3600) -> int:
        """Remove leftovers of puts that died more than ``older_than_s`` ago (temp files, or
        unfinished multipart uploads); return how many. Never touches complete objects."""
        return 0

    # -- conveniences ----------------------------------------------------------------------
    def put_json(self, key: str, value: Any, *, if_absent: bool = False) -> ObjectInfo:
        data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
        return self.put_bytes(key, data, if_absent=if_absent)

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_text(self, key: str, text: str, *, if_absent: bool = False) -> ObjectInfo:
        return self.put_bytes(key, text.encode(), if_absent=if_absent)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()

    def uri(self, key: str) -> str:
        """Full URI of ``key`` (for messages and results)."""
        return self.url.rstrip("/") + "/" + check_key(key)
