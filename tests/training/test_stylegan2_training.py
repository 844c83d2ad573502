"""Fine-tuning with cfg stylegan2 (the paper's baseline) on tiny networks: style mixing, lazy
path-length regularisation, seeded noise, exact resume and data parallelism."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.model.stylegan2 import StyleGAN2Generator
from cleftgan_hpc.stages import finetune
from cleftgan_hpc.storage.local import LocalStore
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.recipe import AdamSettings
from cleftgan_hpc.training.state import CheckpointStore
from cleftgan_hpc.training.trainer import Trainer

TINY = {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16}


def config(dataset: Path, **overrides: object) -> FinetuneStage:
    fields = dict(kind="finetune", network="random", dataset=str(dataset), cfg="stylegan2", random_network=TINY,
                  batch=4, kimg=0.028, snapshot_kimg=0.012, augment="bgc", augment_p=0.3, grid_seeds=4, seed=3)
    fields.update(overrides)
    return FinetuneStage.model_validate(fields)


def trainer_for(cfg: FinetuneStage, root: Path) -> Trainer:
    ctx = StageContext(LocalStore(root / "store"), "sg2", "train", root, logging.getLogger("sg2"))
    device = torch.device("cpu")
    data, _, _ = finetune.load_data(cfg, ctx)
    recipe = finetune.make_recipe(cfg)
    nets = finetune.build_networks(cfg, recipe, ctx, data, device)
    return Trainer(recipe, nets, data, finetune.make_augment(recipe, device), device, distributed.DistEnv(),
                   lambda _m: None)


def test_the_recipe_is_the_references_stylegan2(tiny_dataset: Path) -> None:
    r = finetune.make_recipe(config(tiny_dataset, glr=0.0025))
    assert (r.style_mixing_prob, r.pl_interval, r.pl_weight, r.pl_batch_shrink, r.pl_decay) == (0.9, 4, 2.0, 2, 0.01)
    assert r.pl_no_weight_grad and r.pl_batch_per_round == 2
    assert r.g_adam == AdamSettings.for_interval(0.0025, 4)  # G's Adam scaled for its lazy regulariser
    assert r.g_adam.lr == pytest.approx(0.0025 * 4 / 5) and r.g_adam.beta2 == pytest.approx(0.99 ** 0.8)
    sg3 = finetune.make_recipe(config(tiny_dataset, cfg="stylegan3-t"))
    assert sg3.style_mixing_prob == 0 and sg3.pl_interval is None and sg3.g_adam.lr == 0.0025
    # the mapping depth: 8 for a random StyleGAN2 network unless given, and the digests name it
    assert config(tiny_dataset).random_network.mapping_layers == 8
    assert config(tiny_dataset).glr == 0.002 and config(tiny_dataset, cfg="stylegan3-r").glr == 0.0025
    assert config(tiny_dataset, cfg="stylegan3-t").random_network.mapping_layers == 2
    given = config(tiny_dataset, random_network={**TINY, "mapping_layers": 2})
    assert given.random_network.mapping_layers == 2
    assert finetune.make_recipe(given).resume_digest != r.resume_digest


def test_path_length_runs_every_4th_step_and_pl_mean_moves(tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = trainer_for(config(tiny_dataset), tmp_path)
    G = trainer.nets.G
    assert isinstance(G, StyleGAN2Generator) and G.mapping.num_layers == 8
    before = {k: v.clone() for k, v in G.state_dict().items()}
    means, pl_steps = [], []
    for step in range(6):
        stats = trainer.step()
        means.append(trainer.progress.pl_mean)
        if "pl_penalty" in stats:
            pl_steps.append(step)
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert pl_steps == [0, 4]
    assert means[0] > 0 and means[0] == means[3] and means[4] != means[3]  # moves on path-length steps only
    changed = [k for k, v in G.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("mapping.") for k in changed) and any(k.startswith("synthesis.") for k in changed)
    assert any(k.endswith("noise_strength") for k in changed)  # the noise inputs train: they were drawn


def test_style_mixing_and_noise_are_drawn_from_the_given_generator(tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = trainer_for(config(tiny_dataset), tmp_path)
    loss, G = trainer.loss, trainer.nets.G
    z = torch.randn([3, 16], generator=torch.Generator().manual_seed(0))

    def run(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return loss.run_G(z, None, update_emas=False, gen=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        plain = G.synthesis(G.mapping(z, None), noise_mode="none")
    # no noise yet (its strengths start at 0): the draws only mix styles, 9 times in 10
    mixed = sum(not torch.allclose(run(s), plain, atol=1e-6) for s in range(40))
    assert 30 <= mixed < 40
    loss.style_mixing_prob = 0.0
    assert torch.allclose(run(0), plain, atol=1e-6)
    # with noise: the generator draws it, the same for the same seed
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


def test_stylegan2_stopped_and_resumed_run_equals_uninterrupted(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    # 7 steps of 4: path length at steps 0 and 4, R1 at step 0, snapshots at steps 3 and 6;
    # the stop after step 5 resumes past a path-length step, so pl_mean must travel in the checkpoint.
    cfg = config(tiny_dataset)
    whole = finetune.run(cfg, make_ctx(tmp_path / "a"))
    expected = load_file(str(tmp_path / "a" / "store" / whole["network"]))

    ctx = make_ctx(tmp_path / "b", stop_after=4)
    with pytest.raises(StopRequested, match="at step 5"):
        finetune.run(cfg, ctx)
    ckpts = CheckpointStore(ctx.store, ctx.key("checkpoints"), 3, ctx.scratch)
    state = ckpts.load_latest()
    assert state is not None and state["progress"]["pl_mean"] > 0
    resumed = finetune.run(cfg, make_ctx(tmp_path / "b"))
    got = load_file(str(tmp_path / "b" / "store" / resumed["network"]))

    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed weights differ: {different[:5]}"
    assert not torch.equal(got["G.mapping.fc7.weight"], got["G_ema.mapping.fc7.weight"])  # 8 layers, trained


def test_two_processes_average_what_one_process_accumulates(tiny_dataset: Path, tmp_path: Path) -> None:
    """dp_gradients.py with cfg stylegan2 (weights frozen): the mixing, noise and path-length draws
    are keyed by the slice, and pl_mean is averaged over rounds and processes."""
    one = _dp_records(tiny_dataset, tmp_path / "one.pt", 1)
    two = _dp_records(tiny_dataset, tmp_path / "two.pt", 2)
    assert len(one["grads"]) == len(two["grads"]) == 6  # G, path length, D, R1 at step 0; G, D at step 1
    for i, (a, b) in enumerate(zip(one["grads"], two["grads"], strict=True)):
        assert _worst(a, b) < 1e-4, f"optimiser step {i}: gradients differ by {_worst(a, b):.2e} of their scale"
    assert one["pl_mean"] > 0 and one["pl_mean"] == pytest.approx(two["pl_mean"], rel=1e-5)
    assert one["buffers"].keys() == two["buffers"].keys() and one["buffers"]
    assert _worst(list(one["buffers"].values()), list(two["buffers"].values())) < 1e-4
    assert _worst(one["grads"][0], one["grads"][1]) > 1e-2  # the path-length step is its own


def _dp_records(dataset: Path, out: Path, world: int) -> dict:
    script = Path(__file__).with_name("dp_gradients.py")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = [
        subprocess.Popen([sys.executable, str(script), str(dataset), str(out), "stylegan2"], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **({"RANK": str(r), "LOCAL_RANK": str(r),
                              "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
                              if world > 1 else {})})
        for r in range(world)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output
    return torch.load(out)


def _worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b, strict=True))
