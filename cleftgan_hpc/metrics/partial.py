"""Per-sample results computed in order and saved to a store now and then, so that a preempted
evaluation resumes where its last save left it instead of starting again.

Each named series is a float array whose row i belongs to sample i (features, scores, path
lengths); samples are pure functions of their index, so rows computed after a resume equal
the ones a single run would have computed. The saved file is an ``.npz`` (read with
``allow_pickle=False``) plus an ``identity`` string: a save made for another network, dataset
or configuration is ignored, never mixed in.
"""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np

from cleftgan_hpc.errors import StorageError
from cleftgan_hpc.storage.base import ObjectStore

_IDENTITY = "__identity__"


class PartialResults:
    """Series of per-sample rows, appended in order, saved to ``store`` under ``key``."""

    def __init__(self, store: ObjectStore, key: str, identity: str, every_s: float = 300.0) -> None:
        self.store, self.key, self.identity, self.every_s = store, key, identity, every_s
        self._chunks: dict[str, list[np.ndarray]] = {}
        self._last_save = time.monotonic()
        self.resumed = self._load()

    def _load(self) -> bool:
        if not self.store.exists(self.key):
            return False
        try:
            with np.load(io.BytesIO(self.store.get_bytes(self.key)), allow_pickle=False) as npz:
                if str(npz[_IDENTITY]) != self.identity:
                    return False  # another network, dataset or config: start afresh
                self._chunks = {k: [npz[k]] for k in npz.files if k != _IDENTITY}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, StorageError):
            return False  # unreadable: recompute rather than trust it
        return True

    def done(self, name: str) -> int:
        """Rows of ``name`` computed so far."""
        return sum(len(c) for c in self._chunks.get(name, []))

    def extend(self, name: str, rows: np.ndarray) -> None:
        self._chunks.setdefault(name, []).append(np.asarray(rows))

    def array(self, name: str) -> np.ndarray:
        chunks = self._chunks.get(name, [])
        if not chunks:
            raise KeyError(name)
        merged = np.concatenate(chunks)
        self._chunks[name] = [merged]
        return merged

    def maybe_save(self) -> bool:
        """Save when ``every_s`` has passed since the last save; return whether it saved."""
        if time.monotonic() - self._last_save < self.every_s:
            return False
        self.save()
        return True

    def save(self) -> None:
        buf = io.BytesIO()
        arrays = {name: self.array(name) for name in list(self._chunks)}
        np.savez(buf, **{_IDENTITY: np.array(self.identity)}, **arrays)
        self.store.put_bytes(self.key, buf.getvalue())  # whole-object put: never seen half-written
        self._last_save = time.monotonic()

    def discard(self) -> None:
        """Forget the saved progress (the results are complete and recorded elsewhere)."""
        if self.store.exists(self.key):
            self.store.delete(self.key)
