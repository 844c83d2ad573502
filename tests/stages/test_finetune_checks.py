"""What the finetune and sweep stages refuse at their start, before anything trains: max_images
the dataset cannot fill (where the spec could not tell its size), and a cfg that is not the
loaded network's architecture."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.jobspec.stages import FinetuneStage, SweepStage
from cleftgan_hpc.stages import finetune
from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.training.trainer import TrainData

TINY = {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16}
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/stylegan3/sg3t_64/network.pkl"  # a StyleGAN3-T network


def context(root: Path, stage: str) -> StageContext:
    ctx = StageContext(LocalStore(root / "store"), "r1", stage, root / "scratch", logging.getLogger("t"))
    ctx.scratch.mkdir(parents=True, exist_ok=True)
    return ctx


def test_max_images_beyond_a_stored_dataset_stops_the_stage_before_it_trains(tiny_dataset: Path,
                                                                             tmp_path: Path) -> None:
    ctx = context(tmp_path, "train[bgc,13]")
    ctx.store.put_file("datasets/tiny.zip", tiny_dataset)
    spec = f"""
name: x
stages:
  train:
    kind: finetune
    network: random
    random_network: {TINY}
    dataset: store:datasets/tiny.zip
    batch: 4
    kimg: 0.008
    grid:
      augment: [bgc]
      max_images: [13]
"""
    cfg = parse_spec(spec, env={}).spec.stages["train[bgc,13]"]  # validate cannot see a dataset in the store
    with pytest.raises(CleftGanError) as info:
        finetune.run(cfg, ctx)
    assert str(info.value) == ("stage train[bgc,13]: max_images 13 is more than the 12 images of its dataset "
                               "store:datasets/tiny.zip; use at most 12, or null for all of them")
    written = {i.key for i in ctx.store.list("runs/")}
    assert not written, f"nothing trains, nothing is written: {sorted(written)[:5]}"
    ok = cfg.model_copy(update={"max_images": 12})
    data, kwargs, _ = finetune.load_data(ok, ctx)
    assert data.images.shape[0] == 12 and kwargs["subset_of"] == 12


def test_a_sweep_checks_max_images_before_any_trial(tiny_dataset: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.stages import sweep, sweep_tune

    started = []
    monkeypatch.setattr(sweep_tune, "run_sweep", lambda *a: started.append(a))
    monkeypatch.setitem(sys.modules, "ray", None)  # no trial, no Ray: the check comes first
    ctx = context(tmp_path, "tune")
    ctx.store.put_file("datasets/tiny.zip", tiny_dataset)
    cfg = SweepStage.model_validate({
        "kind": "sweep", "network": "random", "dataset": "store:datasets/tiny.zip", "feature_extractor": "demo",
        "base": {"max_images": 20}, "space": {"glr": {"choice": [0.002]}},
    })
    with pytest.raises(CleftGanError, match=r"^stage tune: max_images 20 is more than the 12 images of its dataset "):
        sweep.run(cfg, ctx)
    assert not started


def test_check_max_images_lets_null_and_a_full_subset_through() -> None:
    finetune.check_max_images("s", None, 3, "d")
    finetune.check_max_images("s", 3, 3, "d")
    with pytest.raises(CleftGanError, match="stage s: max_images 4 is more than the 3 images of its dataset d"):
        finetune.check_max_images("s", 4, 3, "d")


@pytest.mark.parametrize("cfg", ["stylegan3-t", "stylegan3-r", "stylegan2"])
def test_a_random_network_is_of_its_cfgs_architecture(cfg: str, tmp_path: Path) -> None:
    stage = FinetuneStage.model_validate({"kind": "finetune", "network": "random", "dataset": "d.zip",
                                          "random_network": TINY, "cfg": cfg})
    data = TrainData(torch.zeros([2, 3, 16, 16], dtype=torch.uint8), None, False)
    nets = finetune.build_networks(stage, finetune.make_recipe(stage), context(tmp_path, "t"), data,
                                   torch.device("cpu"))
    assert finetune.loaded_architecture(nets.G) == cfg


def test_a_cfg_that_is_not_the_loaded_networks_architecture_is_refused(tmp_path: Path) -> None:
    stage = FinetuneStage.model_validate({"kind": "finetune", "network": str(FIXTURE), "dataset": "d.zip",
                                          "cfg": "stylegan2"})  # the file's name says nothing: validate passes
    data = TrainData(torch.zeros([2, 3, 64, 64], dtype=torch.uint8), None, False)
    with pytest.raises(CleftGanError) as info:
        finetune.build_networks(stage, finetune.make_recipe(stage), context(tmp_path, "train"), data,
                                torch.device("cpu"))
    assert str(info.value).startswith(f"stage train: cfg stylegan2 does not fit the network {FIXTURE}, a stylegan3-t "
                                      "network")
    same = stage.model_copy(update={"cfg": "stylegan3-t"})
    nets = finetune.build_networks(same, finetune.make_recipe(same), context(tmp_path, "train"), data,
                                   torch.device("cpu"))
    assert finetune.loaded_architecture(nets.G) == "stylegan3-t"
