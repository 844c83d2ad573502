"""The demo_data stage: faces, landmarks and labels in the store; re-running is harmless."""

from __future__ import annotations

import csv
import io
import logging

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.jobspec.stages import DemoDataStage
from cleftgan_hpc.stages.demo_data import run
from cleftgan_hpc.storage.local import LocalStore


def test_demo_data_stage(tmp_path):
    store = LocalStore(tmp_path / "store")
    ctx = StageContext(store=store, run_id="r", stage="demo", scratch=tmp_path / "scratch",
                       log=logging.getLogger("test.demo"), cpus=1)
    cfg = DemoDataStage(kind="demo_data", count=7, seed=3, size=64)
    out = run(cfg, ctx)
    assert out == {"images": ctx.key("images"), "landmarks": ctx.key("landmarks.csv"), "labels": ctx.key("labels.csv")}
    keys = [i.key for i in store.list(out["images"] + "/")]
    labels = list(csv.DictReader(io.StringIO(store.get_text(out["labels"]))))
    assert [k.rsplit("/", 1)[1] for k in keys] == [r["file"] for r in labels]
    assert len(list(csv.DictReader(io.StringIO(store.get_text(out["landmarks"]))))) == 7
    before = {i.key: i.sha256 for i in store.list(ctx.prefix)}
    assert run(cfg, ctx) == out  # a re-run (e.g. after preemption) redraws the same bytes
    assert {i.key: i.sha256 for i in store.list(ctx.prefix)} == before
    # the stage's images/ output is what preprocess fetches as stage:demo.images
    assert ctx.fetch("store:" + out["images"]).joinpath(labels[0]["file"]).is_file()
