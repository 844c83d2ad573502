"""The compare stage gathers every combination of a grid into one table and one figure."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import yaml

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.plan import make_plan
from cleftgan_hpc.stages import stage_function
from cleftgan_hpc.storage.local import LocalStore

SPEC = """
name: paper
stages:
  train:
    kind: finetune
    network: random
    dataset: data.zip
    grid:
      augment: [none, bgc]
      max_images: [250, null]
  score:
    kind: evaluate
    network: stage:train.network
    dataset: data.zip
    metrics: [fid, ppl]
    feature_extractor: demo
    lpips: demo
  table:
    kind: compare
    evaluations: score
"""


def test_compare_gathers_every_combination(tmp_path: Path) -> None:
    spec = parse_spec(textwrap.dedent(SPEC), base_dir=tmp_path, env={}).spec
    plan = make_plan(spec, "paper-1")
    table = plan.stage("table")
    assert table.needs == [f"score{s}" for s in ("[none,250]", "[none,null]", "[bgc,250]", "[bgc,null]")]
    store = LocalStore(tmp_path / "store")
    store.put_text("runs/paper-1/spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    for i, s in enumerate(table.needs):  # what each evaluate instance recorded
        key = f"runs/paper-1/stages/{s}/metrics.json"
        store.put_json(key, {"metrics": {"fid": 20.0 + i, "ppl": 15.0 + i}})
        store.put_json(f"runs/paper-1/stages/{s}/result.json", {"outputs": {"metrics": key}})
    ctx = StageContext(store, "paper-1", "table", tmp_path / "scratch", logging.getLogger("t"))
    out = stage_function("compare")(table.config, ctx)
    csv_text = store.get_text(out["table"]).splitlines()
    assert csv_text[0] == "combination,augment,max_images,fid,ppl"
    assert csv_text[1:] == ['"[none,250]",none,250,20,15', '"[none,null]",none,,21,16', '"[bgc,250]",bgc,250,22,17',
                            '"[bgc,null]",bgc,,23,18']
    md = store.get_text(out["markdown"])
    assert "| [bgc,null] | bgc |  | 23 | 18 |" in md and "FID 21.03, PPL 16.43" in md
    assert store.get_bytes(out["figure"]).startswith(b"\x89PNG")


LINKED = """
name: paper
stages:
  train:
    kind: finetune
    dataset: data.zip
    grid:
      architecture:
        stylegan3-t: {network: /models/stylegan3-t-ffhq-1024x1024.pkl, cfg: stylegan3-t}
        stylegan2: {network: /models/stylegan2-ffhq-1024x1024.pkl, cfg: stylegan2}
      augment: [none, bgc]
  score:
    kind: evaluate
    network: stage:train.network
    dataset: data.zip
    metrics: [fid]
    feature_extractor: demo
  table:
    kind: compare
    evaluations: score
"""


def test_compare_of_a_linked_grid_is_one_table_with_the_networks_by_file_name(tmp_path: Path) -> None:
    spec = parse_spec(textwrap.dedent(LINKED), base_dir=tmp_path, env={}).spec
    table = make_plan(spec, "paper-1").stage("table")
    assert len(table.needs) == 4
    store = LocalStore(tmp_path / "store")
    store.put_text("runs/paper-1/spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    for i, s in enumerate(table.needs):
        key = f"runs/paper-1/stages/{s}/metrics.json"
        store.put_json(key, {"metrics": {"fid": 30.0 - i}})
        store.put_json(f"runs/paper-1/stages/{s}/result.json", {"outputs": {"metrics": key}})
    ctx = StageContext(store, "paper-1", "table", tmp_path / "scratch", logging.getLogger("t"))
    out = stage_function("compare")(table.config, ctx)
    rows = store.get_text(out["table"]).splitlines()
    assert rows[0] == "combination,cfg,glr,augment,network,fid"  # glr: the stylegan2 recipe's own default
    assert rows[1] == '"[stylegan3-t,none]",stylegan3-t,0.0025,none,stylegan3-t-ffhq-1024x1024.pkl,30'
    assert rows[4] == '"[stylegan2,bgc]",stylegan2,0.002,bgc,stylegan2-ffhq-1024x1024.pkl,27'


def test_compare_gathers_a_list_of_evaluate_stages_into_one_table(tmp_path: Path) -> None:
    tuned = """\
  tuned:
    kind: evaluate
    network: /models/tuned.safetensors
    dataset: data.zip
    metrics: [fid]
    feature_extractor: demo
"""
    text = textwrap.dedent(LINKED).replace("evaluations: score", "evaluations: [score, tuned]") + tuned
    spec = parse_spec(text, base_dir=tmp_path, env={}).spec
    table = make_plan(spec, "paper-1").stage("table")
    assert table.needs == [*(f"score[{a},{g}]" for a in ("stylegan3-t", "stylegan2") for g in ("none", "bgc")), "tuned"]
    store = LocalStore(tmp_path / "store")
    store.put_text("runs/paper-1/spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    for i, s in enumerate(table.needs):
        key = f"runs/paper-1/stages/{s}/metrics.json"
        store.put_json(key, {"metrics": {"fid": 30.0 - i}})
        store.put_json(f"runs/paper-1/stages/{s}/result.json", {"outputs": {"metrics": key}})
    ctx = StageContext(store, "paper-1", "table", tmp_path / "scratch", logging.getLogger("t"))
    out = stage_function("compare")(table.config, ctx)
    rows = store.get_text(out["table"]).splitlines()
    assert len(rows) == 6 and rows[1].startswith('"score[stylegan3-t,none]",') and rows[5].startswith("tuned,")
    assert rows[5].endswith(",26")  # the evaluation of one network, beside the grid's
