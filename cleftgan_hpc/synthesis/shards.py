"""WebDataset tar shards, written deterministically and read back as samples.

A sample is ``<key>.<ext>`` (the image) followed by ``<key>.json`` (its provenance). Every
header field that could vary is fixed (mtime, uid/gid, names, mode, ustar format) and the
members are in seed order, so the tar bytes depend only on the images.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from cleftgan_hpc.errors import DataError

TAR_MTIME = 0  # fixed, so a re-made shard has the same bytes
TAR_MODE = 0o644


def sample_json(record: dict[str, Any]) -> bytes:
    """A sample's provenance as canonical JSON bytes (sorted keys, no spaces)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


class ShardWriter:
    """Append samples to a tar file; ``close()`` writes the end-of-archive blocks."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self.samples = 0

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = TAR_MTIME
        info.mode = TAR_MODE
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, ext: str, image: bytes, meta: dict[str, Any]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        self._add(f"{key}.{ext}", image)
        self._add(f"{key}.json", sample_json(meta))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        self._file.close()

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            self.path.unlink(missing_ok=True)


def iter_samples(stream: BinaryIO) -> Iterator[dict[str, Any]]:
    """Samples of a tar stream, in order: {"__key__": key, "<ext>": bytes, ...} (WebDataset's grouping:
    consecutive members sharing the part of the name before the first dot)."""
    current: dict[str, Any] | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, ext = base.partition(".")
                f = tar.extractfile(member)
                data = f.read() if f is not None else b""
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = data
    except tarfile.TarError as e:
        raise DataError(f"corrupt shard: {e}") from e
    if current is not None:
        yield current
