"""Training checkpoints in the store: everything needed to continue bit for bit.

A checkpoint is one ``torch.save`` file of tensors and plain values (read back with
``weights_only=True``: nothing in it can execute code), uploaded create-only under
``<stage>/checkpoints/``. ``latest.json`` is written after the file it names, so a crash
between the two leaves the previous pointer valid. Randomness is derived from
(seed, step), so counters stand in for RNG states.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cleftgan_hpc.errors import CleftGanError, ObjectExists
from cleftgan_hpc.storage.base import ObjectStore, join_key, sha256_file


@dataclass
class TrainProgress:
    """Counters and history that travel with the networks."""

    step: int = 0  # batches done
    cur_nimg: int = 0  # real images shown
    ada_p: float = 0.0  # the augmentation probability in use
    ada_state: dict[str, Any] = field(default_factory=dict)  # the ADA controller's pending sums and phase
    pl_mean: float = 0.0  # the path-length regulariser's running mean length (StyleGAN2), a float32 value
    train_seconds: float = 0.0  # wall time spent training, over all attempts
    best_metric: float | None = None
    best_key: str | None = None
    stats: list[dict[str, float]] = field(default_factory=list)  # one record per logged tick


class CheckpointStore:
    """Saves, finds and prunes the checkpoints of one training stage."""

    def __init__(self, store: ObjectStore, prefix: str, keep: int, scratch: Path) -> None:
        self.store, self.prefix, self.keep, self.scratch = store, prefix, keep, scratch

    @property
    def latest_key(self) -> str:
        return join_key(self.prefix, "latest.json")

    def key_for(self, step: int) -> str:
        return join_key(self.prefix, f"ckpt-{step:09d}.pt")

    def save(self, payload: dict[str, Any], step: int, best_key: str | None = None, log: Any = None) -> str:
        """Upload ``payload`` as the checkpoint of ``step`` and point latest.json at it."""
        key = self.key_for(step)
        tmp = self.scratch / f".ckpt-{step:09d}.pt"  # big at 1024px: stream from disk, multipart on S3
        self.scratch.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        try:
            info = self.store.put_file(key, tmp, if_absent=True)
        except ObjectExists:  # a previous attempt got this far; on CPU the bytes are the same
            info = self.store.head(key)
            if info is None or info.sha256 != sha256_file(tmp):  # not the same state (e.g. CUDA): ours wins
                self.store.delete(key)
                info = self.store.put_file(key, tmp, if_absent=True)
        finally:
            tmp.unlink(missing_ok=True)
        pointer = {"key": key, "step": step, "sha256": info.sha256, "time": time.time(), "best_key": best_key}
        self.store.put_json(self.latest_key, pointer)
        self.prune(best=best_key)
        if log is not None:
            log.info(f"checkpoint step {step} -> {self.store.uri(key)} ({info.size / 1e6:.1f} MB)")
        return key

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint's payload, or None when training has not checkpointed yet."""
        if not self.store.exists(self.latest_key):
            return None
        pointer = self.store.get_json(self.latest_key)
        return self.load(pointer["key"], pointer.get("sha256"))

    def load(self, key: str, sha256: str | None = None) -> dict[str, Any]:
        """A checkpoint's payload (any stage's: a sweep clone starts from another trial's)."""
        data = self.store.get_bytes(key)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise CleftGanError(f"checkpoint {key} does not match its recorded sha256; refusing to resume")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)

    def checkpoints(self) -> list[str]:
        return sorted(i.key for i in self.store.list(join_key(self.prefix, "ckpt-")))

    def drop_after(self, step: int, keep: str | None = None) -> None:
        """Delete checkpoints newer than ``step`` (a restart from an older state makes them stale)."""
        for key in self.checkpoints():
            if key != keep and int(key.rsplit("-", 1)[1].split(".")[0]) > step:
                self.store.delete(key)

    def prune(self, best: str | None) -> None:
        """Keep the newest ``keep`` checkpoints, and the best one."""
        keys = self.checkpoints()
        for key in keys[: max(0, len(keys) - self.keep)]:
            if key != best:
                self.store.delete(key)


def progress_to_dict(p: TrainProgress) -> dict[str, Any]:
    return {k: getattr(p, k) for k in TrainProgress.__dataclass_fields__}


def progress_from_dict(d: dict[str, Any]) -> TrainProgress:
    return TrainProgress(**{k: v for k, v in d.items() if k in TrainProgress.__dataclass_fields__})


def stats_jsonl(stats: list[dict[str, float]]) -> str:
    return "".join(json.dumps(s, sort_keys=True) + "\n" for s in stats)
