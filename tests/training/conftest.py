"""Tiny datasets and stage contexts for training tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.storage.local import LocalStore


class StopAfter(StageContext):
    """A context whose stop flag rises after the given number of checks (a deterministic SIGUSR2)."""

    stop_after: int | None = None
    checks: int = 0

    def should_stop(self) -> bool:
        self.checks += 1
        return self.stop_after is not None and self.checks > self.stop_after


@pytest.fixture
def make_ctx():  # noqa: ANN201 - a factory fixture
    """make_ctx(root, stage="train", stop_after=None) -> a StageContext on a LocalStore under root."""
    return _make_ctx


def _make_ctx(root: Path, stage: str = "train", stop_after: int | None = None) -> StopAfter:
    ctx = StopAfter(store=LocalStore(root / "store"), run_id="r1", stage=stage, scratch=root / "scratch" / stage,
                    log=logging.getLogger(f"test.{stage}"))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    ctx.stop_after = stop_after
    return ctx
