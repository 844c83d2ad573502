"""Per-sample results computed in order and saved to a store now and then, so that a preempted
evaluation resumes where its last save left it instead of starting again.

Each named series is an array whose row i belongs to sample i (features, scores, path
lengths); samples are pure functions of their index, so rows computed after a resume equal
the ones a single run would have computed. A save writes only the rows added since the last
one, as a segment ``<prefix>/<series>-<first row, 12 digits>.npz`` (read with
``allow_pickle=False``) that names the identity of its series (a digest of everything its
rows depend on): 50,000 Inception features are 400 MB, which should go up once, not at every
save. On loading, segments made for another identity are deleted, never mixed in, and a
series is read up to its first gap or unreadable segment. Each series has its own identity,
so changing what one series depends on (say, the LPIPS file) keeps the others' work.
"""

from __future__ import annotations

import io
import re
import time
import zipfile

import numpy as np

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.storage.base import ObjectStore, join_key

_IDENTITY = "__identity__"
_ROWS = "rows"
_SEGMENT = re.compile(r"^([a-z_]+)-(\d{12})\.npz$")


class PartialResults:
    """Series of per-sample rows, appended in order, saved as segments under ``prefix``.
    ``identities`` names every series and what its rows depend on."""

    def __init__(self, store: ObjectStore, prefix: str, identities: dict[str, str], every_s: float = 300.0) -> None:
        self.store, self.prefix, self.identities, self.every_s = store, prefix.rstrip("/"), identities, every_s
        self._chunks: dict[str, list[np.ndarray]] = {}
        self._saved: dict[str, int] = {}  # rows of each series already in the store
        self._last_save = time.monotonic()
        self.resumed = self._load()

    def _segments(self) -> dict[str, list[tuple[int, str]]]:
        found: dict[str, list[tuple[int, str]]] = {}
        for info in self.store.list(self.prefix + "/"):
            m = _SEGMENT.match(info.key[len(self.prefix) + 1 :])
            if m:
                found.setdefault(m[1], []).append((int(m[2]), info.key))
        return {name: sorted(segs) for name, segs in found.items()}

    def _read(self, key: str, name: str) -> np.ndarray | None:
        """A segment's rows, or None when it is unreadable or made for something else."""
        if name not in self.identities:
            return None
        try:
            with np.load(io.BytesIO(self.store.get_bytes(key)), allow_pickle=False) as npz:
                if str(npz[_IDENTITY]) != self.identities[name]:
                    return None
                return npz[_ROWS]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, StorageError):
            return None

    def _load(self) -> bool:
        stale = False
        for name, segments in self._segments().items():
            rows = 0
            for first, key in segments:
                part = self._read(key, name) if first == rows else None
                if part is None:  # a gap, a damaged segment or another identity: this and what follows go
                    stale = True
                    break
                self._chunks.setdefault(name, []).append(part)
                rows += len(part)
            self._saved[name] = rows
        if stale:
            self._delete_unused()
        return any(self._saved.values())

    def _delete_unused(self) -> None:
        for name, segments in self._segments().items():
            for first, key in segments:
                if first >= self._saved.get(name, 0):
                    self.store.delete(key)

    def done(self, name: str) -> int:
        """Rows of ``name`` computed so far (saved or not)."""
        return sum(len(c) for c in self._chunks.get(name, []))

    def extend(self, name: str, rows: np.ndarray) -> None:
        if name not in self.identities:
            raise KeyError(f"unknown series {name!r}: expected one of {sorted(self.identities)}")
        self._chunks.setdefault(name, []).append(np.asarray(rows))

    def truncate(self, name: str, rows: int) -> None:
        """Keep the first ``rows`` rows of ``name``, so that series computed together resume from
        the same sample; saved segments reaching beyond are deleted (rows before them but past
        the last kept segment are saved again by the next ``save``)."""
        if self.done(name) <= rows:
            return
        self._chunks[name] = [self.array(name)[:rows]]
        if self._saved.get(name, 0) <= rows:
            return
        segments = self._segments().get(name, [])
        ends = [first for first, _ in segments[1:]] + [self._saved[name]]
        kept_end = 0
        for (_, key), end in zip(segments, ends, strict=True):
            if end > rows:
                self.store.delete(key)
            else:
                kept_end = end
        self._saved[name] = kept_end

    def array(self, name: str) -> np.ndarray:
        chunks = self._chunks.get(name, [])
        if not chunks:
            raise KeyError(name)
        merged = np.concatenate(chunks)
        self._chunks[name] = [merged]  # concatenate once, not at every save
        return merged

    def maybe_save(self) -> bool:
        """Save when ``every_s`` has passed since the last save; return whether it saved."""
        if time.monotonic() - self._last_save < self.every_s:
            return False
        self.save()
        return True

    def save(self) -> None:
        """Write the rows added since the last save, one segment per series. Each segment is one
        whole-object put, so a crash leaves whole segments or none."""
        for name in list(self._chunks):
            saved, total = self._saved.get(name, 0), self.done(name)
            if total == saved:
                continue
            new = self.array(name)[saved:]
            buf = io.BytesIO()
            np.savez(buf, **{_IDENTITY: np.array(self.identities[name]), _ROWS: new})
            self.store.put_bytes(join_key(self.prefix, f"{name}-{saved:012d}.npz"), buf.getvalue())
            self._saved[name] = total
        self._last_save = time.monotonic()

    def discard(self) -> None:
        """Delete the saved progress (the results are complete and recorded elsewhere)."""
        self.store.delete_prefix(self.prefix + "/")
