"""Fixtures of the synthesis tests: tiny random networks saved as our network files, config helpers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from tiny_nets import save_tiny_generator


@pytest.fixture(scope="session")
def tiny_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("nets") / "tiny.safetensors")  # 16x16 RGB, ~40 img/s


@pytest.fixture(scope="session")
def tiny_cond_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("nets") / "cond.safetensors", c_dim=3, seed=1)


@pytest.fixture
def make_cfg(tiny_net: Path) -> Any:
    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage

    def make(**kw: Any) -> SynthesizeStage:
        base: dict[str, Any] = {"kind": "synthesize", "network": str(tiny_net), "count": 20, "shard_size": 5,
                                "batch": 4, "dataset": "toy", "workers": 0}
        return SynthesizeStage.model_validate({**base, **kw})

    return make


@pytest.fixture
def run_synthesis(tmp_path: Path) -> Any:
    """run(cfg, store, task=None, **kw) -> manifest or None, with the config's own network file."""
    from cleftgan_hpc.synthesis.build import synthesize

    def run(cfg: Any, store: Any, task: int | None = None, **kw: Any) -> Any:
        return synthesize(cfg, store, Path(cfg.network), scratch=tmp_path / "scratch" / str(task), task=task,
                          log=logging.getLogger("test.synthesis"), **kw)

    return run


@pytest.fixture
def dataset_bytes() -> Any:
    """f(store, prefix) -> {name: bytes} of a dataset's objects but the manifest (it has a creation time), the
    wids index and the card (they have the dataset's name); the manifests' shard lists are compared instead."""

    def read(store: Any, prefix: str) -> dict[str, bytes]:
        return {i.key[len(prefix) + 1:]: store.get_bytes(i.key) for i in store.list(prefix + "/")
                if not i.key.endswith(("manifest.json", "wids-index.json", "README.md"))}

    return read
