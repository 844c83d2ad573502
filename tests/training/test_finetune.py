"""The finetune stage for real on tiny networks: exact resume, stop signals, NaN handling."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.stages import finetune
from cleftgan_hpc.training.state import CheckpointStore

TINY = {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16}
# the reference implementation's own 64x64 StyleGAN3-t pickle, shipped with the tests (tests/fixtures/PROVENANCE.md)
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/stylegan3/sg3t_64/network.pkl"


def config(dataset: Path, **overrides: object) -> FinetuneStage:
    fields = dict(kind="finetune", network="random", dataset=str(dataset), random_network=TINY, batch=4,
                  kimg=0.028, snapshot_kimg=0.012, augment="bgc", augment_p=0.3, grid_seeds=4, seed=3)
    fields.update(overrides)
    return FinetuneStage.model_validate(fields)


def weights(store_root: Path, key: str) -> dict[str, torch.Tensor]:
    return load_file(str(store_root / "store" / key))


def test_stopped_and_resumed_run_equals_uninterrupted(tiny_dataset: Path, tmp_path: Path, make_ctx,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # 7 steps of 4: snapshots at steps 3 and 6, R1 at step 0; ADA moves p by 0.4 a batch, so
    # the augmentation pipeline and the controller's state both matter for the outcome.
    # A stats line every 3 steps, so the stop at step 5 falls inside a tick.
    schedule = finetune.schedule
    monkeypatch.setattr(finetune, "schedule", lambda kimg, batch: (*schedule(kimg, batch)[:2], 3 * batch))
    cfg = config(tiny_dataset, augment_p=None, ada_interval=1, ada_kimg=0.01, ada_target=0.01)
    whole = finetune.run(cfg, make_ctx(tmp_path / "a"))
    expected = weights(tmp_path / "a", whole["network"])

    ctx = make_ctx(tmp_path / "b", stop_after=4)  # stop in the middle, between snapshots
    with pytest.raises(StopRequested, match="at step 5"):
        finetune.run(cfg, ctx)
    ckpts = CheckpointStore(ctx.store, ctx.key("checkpoints"), 3, ctx.scratch)
    assert ckpts.checkpoints()[-1].endswith("ckpt-000000005.pt")
    resumed = finetune.run(cfg, make_ctx(tmp_path / "b"))
    got = weights(tmp_path / "b", resumed["network"])

    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, f"resumed weights differ: {different[:5]}"
    # and the training log: the tick in progress at the stop was checkpointed with the weights
    stats = [(root / "store" / run["network"]).with_name("stats.jsonl").read_text()
             for root, run in ((tmp_path / "a", whole), (tmp_path / "b", resumed))]
    assert stats[0] == stats[1] and stats[0].count("\n") >= 2
    # G_ema moved away from G, and training changed the weights at all
    assert not torch.equal(got["G.mapping.fc0.weight"], got["G_ema.mapping.fc0.weight"])
    state = ckpts.load_latest()
    assert state is not None and state["progress"]["ada_p"] > 0, "ADA raised p during the run"


def test_snapshot_outputs(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    cfg = config(tiny_dataset, kimg=0.012, augment="none", augment_p=None, conditional=True)
    ctx = make_ctx(tmp_path)
    out = finetune.run(cfg, ctx)
    store = ctx.store
    keys = {i.key for i in store.list(ctx.prefix)}
    assert out["network"] in keys and out["curves"] in keys and out["stats"] in keys
    grids = [k for k in keys if "/samples/grid-" in k]
    assert grids and store.get_bytes(grids[0])[:8] == b"\x89PNG\r\n\x1a\n"
    stats = store.get_text(out["stats"]).splitlines()
    assert stats and '"loss_G"' in stats[0] and '"kimg"' in stats[0]
    from cleftgan_hpc.model import load_network

    net = load_network(tmp_path / "store" / out["network"])
    assert net.G_ema.c_dim == 3  # conditional on the dataset's 3 classes
    assert net.training_set_kwargs["resolution"] == 32


def test_infinite_loss_stops_with_a_clear_message(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    from cleftgan_hpc.model import Discriminator, Generator, Network, save_checkpoint

    G = Generator(16, 0, 16, 32, 3, channel_base=256, channel_max=16, num_fp16_res=0)
    D = Discriminator(0, 32, 3, channel_base=256, channel_max=16, num_fp16_res=0)
    with torch.no_grad():
        D.b4.out.bias.fill_(float("inf"))  # D's logits are +inf: the D loss is infinite at once
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(Network(G, D, G), bad)
    with pytest.raises(CleftGanError, match=r"the D loss became inf at step 0 .*last good checkpoint is intact"):
        finetune.run(config(tiny_dataset, network=str(bad), augment="none", augment_p=None), make_ctx(tmp_path))


def test_resolution_mismatch_is_a_clear_error(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    with pytest.raises(CleftGanError, match="makes 64x64x3 images but the dataset holds 32x32x3"):
        finetune.run(config(tiny_dataset, network=str(FIXTURE)), make_ctx(tmp_path))


@pytest.mark.parametrize("sig", ["USR2", "KILL"])
def test_signal_then_resume_finishes(tiny_dataset: Path, tmp_path: Path, sig: str) -> None:
    """A real process gets SIGUSR2 (checkpoint, exit 75) or SIGKILL mid-run; running again finishes."""
    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: sig
stages:
  train:
    kind: finetune
    network: random
    dataset: {tiny_dataset}
    random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
    batch: 4
    kimg: 0.06
    snapshot_kimg: 0.008
    augment: none
""")
    cmd = [sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), "--run", "s-1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the first checkpoint, then signal the stage process
        if "checkpoint step" in line:
            break
    status = (tmp_path / "store/runs/s-1/stages/train/status.json").read_text()
    import json

    pid = json.loads(status)["pid"]
    os.kill(pid, getattr(__import__("signal"), f"SIG{sig}"))
    rest = proc.stdout.read()
    proc.wait(timeout=300)
    assert proc.returncode == 1, rest
    if sig == "USR2":
        assert "stopped on request" in rest
    else:
        assert "killed by signal 9" in rest
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from step" in again.stdout
    assert json.loads((tmp_path / "store/runs/s-1/stages/train/status.json").read_text())["attempt"] == 2


def test_metrics_at_snapshots_and_hook(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    cfg = config(tiny_dataset, kimg=0.016, snapshot_kimg=0.008, augment="none", augment_p=None,
                 metrics=["kid", "fid"], feature_extractor="demo", metric_samples=16)
    seen: list[dict] = []
    ctx = make_ctx(tmp_path)
    finetune.run(cfg, ctx, on_snapshot=seen.append)
    assert [round(s["kimg"], 3) for s in seen] == [0.008, 0.016]
    for s in seen:
        assert math.isfinite(s["kid"]) and math.isfinite(s["fid"]) and s["fid"] > 0
        assert ctx.store.exists(s["checkpoint"])
    lines = ctx.store.get_text(ctx.key("metrics.jsonl")).splitlines()
    assert len(lines) == 2 and '"kid"' in lines[0]
    cache = [i.key for i in ctx.store.list("") if "feature" in i.key or "stats" in i.key.split("/")[0]]
    assert cache, "real-set features are cached in the store"
    # the real-set cache is used again by a second run on the same data
    ctx2 = make_ctx(tmp_path, stage="again")
    logs: list[str] = []
    ctx2.log.info = logs.append  # type: ignore[method-assign]
    finetune.run(cfg.model_copy(update={"kimg": 0.008}), ctx2)
    assert any("from the cache" in line for line in logs)


def test_fixture_network_on_demo_data_survives_sigkill(tmp_path: Path) -> None:
    """The official-format network, fine-tuned on demo faces with ADA, killed hard mid-run, resumed."""
    import json
    import signal

    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: fx
stages:
  faces: {{kind: demo_data, count: 12, size: 128}}
  dataset: {{kind: preprocess, images: stage:faces.images, landmarks: stage:faces.landmarks, resolution: 64}}
  train:
    kind: finetune
    network: {FIXTURE}
    dataset: stage:dataset
    batch: 4
    kimg: 0.032
    snapshot_kimg: 0.008
    ada_interval: 1
    ada_kimg: 0.05
""")
    cmd = [sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), "--run", "fx-1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "checkpoint step 4 " in line:  # the second snapshot: kill between it and the next
            break
    pid = json.loads((tmp_path / "store/runs/fx-1/stages/train/status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from step" in again.stdout
    from cleftgan_hpc.model import load_network

    tuned = load_network(tmp_path / "store/runs/fx-1/stages/train/network.safetensors")
    original = load_network(FIXTURE)
    assert tuned.G_ema.img_resolution == 64 and tuned.augment_p is not None
    moved = (tuned.G.mapping.fc0.weight - original.G.mapping.fc0.weight).abs().max().item()
    assert moved > 0, "fine-tuning changed the pretrained weights"
    grids = list((tmp_path / "store/runs/fx-1/stages/train/samples").glob("grid-*.png"))
    assert len(grids) == 4


def test_sigkilled_launcher_leaves_no_stage_behind_and_a_rerun_resumes(tiny_dataset: Path, tmp_path: Path) -> None:
    """SIGKILL to the process group of `cleftgan-hpc run` mid-fine-tune: the stage (in its own
    session) checkpoints, records itself pending and exits; an immediate re-run resumes."""
    import json
    import signal
    import time

    spec = tmp_path / "job.yaml"
    spec.write_text(f"""
name: orphan
stages:
  train:
    kind: finetune
    network: random
    dataset: {tiny_dataset}
    random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
    batch: 4
    kimg: 0.048
    snapshot_kimg: 0.008
    augment: none
""")
    cmd = [sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), "--run", "o-1"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the stage is training and has checkpointed once
        if "checkpoint step" in line:
            break
    status_file = tmp_path / "store/runs/o-1/stages/train/status.json"
    stage_pid = json.loads(status_file.read_text())["pid"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    def running(pid: int) -> bool:  # a zombie has exited: it waits for a parent that no longer exists
        try:
            with open(f"/proc/{pid}/stat") as f:
                return not f.read().rsplit(") ", 1)[-1].startswith("Z")
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and running(stage_pid):
        time.sleep(0.2)
    alive = running(stage_pid)
    if alive:
        os.kill(stage_pid, signal.SIGKILL)
    assert not alive, "the stage outlived its launcher"
    status = json.loads(status_file.read_text())
    assert status["state"] == "pending", status
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resumed from step" in again.stdout


def test_max_images_trains_on_a_recorded_subset(tiny_dataset: Path, tmp_path: Path, make_ctx) -> None:
    import json

    from cleftgan_hpc.model import load_network

    ctx = make_ctx(tmp_path)
    out = finetune.run(config(tiny_dataset, max_images=5, subset_seed=2, kimg=0.008, augment="none",
                              augment_p=None), ctx)
    record = json.loads((tmp_path / "store" / ctx.key("subset.json")).read_text())
    assert record["of"] == 12 and record["seed"] == 2 and len(record["images"]) == 5
    assert record["images"] == sorted(record["images"])
    kwargs = load_network(tmp_path / "store" / out["network"]).training_set_kwargs
    assert (kwargs["max_size"], kwargs["subset_of"], kwargs["subset_seed"]) == (5, 12, 2)
