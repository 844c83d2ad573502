"""TensorBoard events of a real fine-tune, read back with TensorBoard's own reader: every tick and
snapshot once, across a stop and resume too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cleftgan_hpc.context import StopRequested
from cleftgan_hpc.jobspec.stages import FinetuneStage
from cleftgan_hpc.stages import finetune
from cleftgan_hpc.training.tensorboard import crc32c, record

pytest.importorskip("tensorboard", reason="the dev extra installs tensorboard (its reader checks our files)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16}


def config(dataset: Path, **overrides: object) -> FinetuneStage:
    fields = dict(kind="finetune", network="random", dataset=str(dataset), random_network=TINY, batch=4,
                  kimg=0.028, snapshot_kimg=0.012, augment="bgc", augment_p=None, ada_interval=1, ada_kimg=0.01,
                  ada_target=0.01, grid_seeds=4, seed=3, metrics=["kid"], feature_extractor="demo",
                  metric_samples=16)
    fields.update(overrides)
    return FinetuneStage.model_validate(fields)


def read_events(directory: Path) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def test_the_wire_format() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    framed = record(b"abc")
    assert len(framed) == 8 + 4 + 3 + 4 and framed[12:15] == b"abc"


def test_events_of_a_run_and_of_a_stopped_and_resumed_one(tiny_dataset: Path, tmp_path: Path, make_ctx,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = finetune.schedule  # a tick every 2 steps: 7 steps of 4 images, snapshots at steps 3 and 6 and 7
    monkeypatch.setattr(finetune, "schedule", lambda kimg, batch: (*schedule(kimg, batch)[:2], 2 * batch))
    cfg = config(tiny_dataset)
    whole = make_ctx(tmp_path / "a")
    finetune.run(cfg, whole)
    tb_dir = tmp_path / "a" / "store" / whole.key("tensorboard")
    assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 1
    acc = read_events(tb_dir)
    tags = acc.Tags()
    assert {"Loss/G/loss", "Loss/D/loss", "Loss/scores/real", "Loss/scores/fake", "Loss/r1_penalty",
            "Progress/augment", "Progress/kimg", "Timing/sec_per_kimg", "Metrics/kid"} <= set(tags["scalars"])
    assert tags["images"] == ["Samples/grid"]
    # one point per line of stats.jsonl, at images shown; the same values
    stats = [json.loads(line) for line in whole.store.get_text(whole.key("stats.jsonl")).splitlines()]
    assert steps(acc, "Loss/G/loss") == [round(s["kimg"] * 1000) for s in stats] == [8, 16, 24, 28]
    assert [e.value for e in acc.Scalars("Progress/augment")] == pytest.approx([s["augment_p"] for s in stats])
    assert max(e.value for e in acc.Scalars("Progress/augment")) > 0, "ADA moved p"
    assert all(e.value > 0 for e in acc.Scalars("Timing/sec_per_kimg"))
    metrics = [json.loads(line) for line in whole.store.get_text(whole.key("metrics.jsonl")).splitlines()]
    assert steps(acc, "Metrics/kid") == [round(m["kimg"] * 1000) for m in metrics] == [12, 24, 28]
    grids = acc.Images("Samples/grid")
    assert [g.step for g in grids] == [12, 24, 28] and {(g.width, g.height) for g in grids} == {(64, 64)}
    assert grids[-1].encoded_image_string == whole.store.get_bytes(whole.key("samples", "grid-000000028.png"))

    # stopped after step 5 (checkpointed there, mid-tick), then resumed: two files, every step once
    stopped = make_ctx(tmp_path / "b", stop_after=4)
    with pytest.raises(StopRequested, match="at step 5"):
        finetune.run(cfg, stopped)
    finetune.run(cfg, make_ctx(tmp_path / "b"))
    tb_dir = tmp_path / "b" / "store" / stopped.key("tensorboard")
    files = sorted(p.name.split(".")[3] for p in tb_dir.glob("events.out.tfevents.*"))
    assert files == ["000000000", "000000020"]  # named by the images shown when each attempt started
    resumed = read_events(tb_dir)
    for tag in ("Loss/G/loss", "Loss/D/loss", "Progress/augment", "Metrics/kid"):
        assert steps(resumed, tag) == steps(acc, tag), tag
    assert [e.value for e in resumed.Scalars("Loss/G/loss")] == pytest.approx([e.value for e in acc.Scalars("Loss/G/loss")])
    assert [g.step for g in resumed.Images("Samples/grid")] == [12, 24, 28]


def test_a_restart_from_an_earlier_step_drops_the_discarded_events(tiny_dataset: Path, tmp_path: Path,
                                                                   make_ctx) -> None:
    """A sweep trial restarted from an earlier checkpoint (PBT, a restored trial) writes those steps again."""
    cfg = config(tiny_dataset, metrics=[], feature_extractor=None)
    ctx = make_ctx(tmp_path)
    finetune.run(cfg, ctx)
    first = ctx.store.get_json(ctx.key("checkpoints", "latest.json"))
    early = sorted(i.key for i in ctx.store.list(ctx.key("checkpoints", "ckpt-")))[0]
    assert early != first["key"]
    finetune.run(cfg, make_ctx(tmp_path), start_from=early)
    acc = read_events(tmp_path / "store" / ctx.key("tensorboard"))
    g = steps(acc, "Loss/G/loss")
    assert g == sorted(set(g)) and g[-1] == 28, "no step twice, to the end"
    files = sorted(p.name.split(".")[3] for p in (tmp_path / "store" / ctx.key("tensorboard")).glob("events.out.*"))
    assert files == ["000000000", "000000012"]  # the first cut back to the restart's step, then the new attempt
