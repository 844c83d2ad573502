"""Grids of whole stages: expansion, names, fan-out, positions of errors, limits."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from cleftgan_hpc.errors import CleftGanError, SpecError
from cleftgan_hpc.jobspec.grid import MAX_GRID_INSTANCES, base_name
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.jobspec.models import stage_ref
from cleftgan_hpc.plan import make_plan

SPEC = """
name: g
stages:
  faces:
    kind: demo_data
    count: 8
  dataset:
    kind: preprocess
    images: stage:faces.images
    resolution: 32
  train:
    kind: finetune
    network: random
    dataset: stage:dataset
    grid:
      augment: [none, bgc]
      max_images: [4, null]
      ada_target: [0.6]
  score:
    kind: evaluate
    network: stage:train.network
    dataset: stage:dataset
    metrics: [kid]
    feature_extractor: demo
  later:
    kind: demo_data
    needs: [score]
"""


def load(text: str):  # noqa: ANN201
    return parse_spec(textwrap.dedent(text), file="job.yaml", env={})


def test_a_grid_expands_to_named_instances_and_readers_fan_out() -> None:
    spec = load(SPEC).spec
    trains = [n for n in spec.stages if base_name(n) == "train"]
    assert trains == ["train[none,4,0.6]", "train[none,null,0.6]", "train[bgc,4,0.6]", "train[bgc,null,0.6]"]
    one = spec.stages["train[bgc,null,0.6]"]
    assert (one.augment, one.max_images, one.ada_target) == ("bgc", None, 0.6)
    # evaluate reads train: one per instance, reading its own instance; `later` needs score: fans out too
    assert spec.stages["score[bgc,4,0.6]"].network == "stage:train[bgc,4,0.6].network"
    assert spec.stages["later[none,4,0.6]"].needs == ["score[none,4,0.6]"]
    plan = make_plan(spec, "g-1")
    assert [s.name for s in plan.stages][:2] == ["faces", "dataset"] and len(plan.stages) == 2 + 3 * 4
    score = plan.stage("score[none,null,0.6]")
    assert score.needs == ["train[none,null,0.6]", "dataset"]
    assert score.inputs["network"] == "store:runs/g-1/stages/train[none,null,0.6]/network.safetensors"
    assert len({s.fingerprint for s in plan.stages}) == len(plan.stages)  # every instance is its own stage


def test_instance_references_with_dots_parse() -> None:
    assert stage_ref("stage:train[bgc,0.6].network") == ("train[bgc,0.6]", "network")
    assert stage_ref("stage:train[0.6]") == ("train[0.6]", None)
    assert stage_ref("stage:train.network") == ("train", "network")


def test_a_bad_value_is_reported_once_at_its_line() -> None:
    text = SPEC.replace("augment: [none, bgc]", "augment: [none, bgcx]")
    with pytest.raises(SpecError) as info:
        load(text)
    (problem,) = [p for p in info.value.problems if "bgcx" in p.message]
    assert (problem.line, problem.field) == (16, "stages.train[*].augment")
    assert "in 2 combinations" in problem.message


@pytest.mark.parametrize("grid,message", [
    ("{kind: [finetune]}", "'kind' cannot vary in a grid"),
    ("{augment: []}", "non-empty list"),
    ("{augment: bgc}", "non-empty list"),
    ("{augment: [[bgc]]}", "single values"),
    ("[augment]", "grid must map settings"),
    ("{gamma: [" + ", ".join(str(i) for i in range(MAX_GRID_INSTANCES + 1)) + "]}", "at most 256"),
])
def test_bad_grids_are_clear_errors_at_the_grid(grid: str, message: str) -> None:
    text = SPEC.replace("""    grid:
      augment: [none, bgc]
      max_images: [4, null]
      ada_target: [0.6]""", f"    grid: {grid}")
    with pytest.raises(SpecError) as info:
        load(text)
    hits = [p for p in info.value.problems if message in p.message]
    assert hits and hits[0].line == 15 and hits[0].field.startswith("stages.train.grid"), info.value.problems


def test_a_stage_reading_two_different_grids_is_refused() -> None:
    text = SPEC + textwrap.indent(textwrap.dedent("""
        other:
          kind: finetune
          network: random
          dataset: stage:dataset
          grid: {gamma: [1, 2, 3]}
        both:
          kind: evaluate
          network: stage:train.network
          dataset: stage:dataset
          needs: [other]
        """), "  ")
    with pytest.raises(SpecError, match="combinations differ"):
        load(text)


def test_the_stored_spec_of_a_grid_run_reads_back() -> None:
    import yaml

    spec = load(SPEC).spec
    again = parse_spec(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), interpolate=False).spec
    assert list(again.stages) == list(spec.stages)


def test_max_images_picks_a_seeded_subset() -> None:
    from cleftgan_hpc.stages.finetune import subset

    a = subset(514, 250, 0, "d")
    assert len(a) == 250 and np.all(np.diff(a) > 0) and a.max() < 514
    assert np.array_equal(a, subset(514, 250, 0, "d"))  # the same on every rank, resume and machine
    assert not np.array_equal(a, subset(514, 250, 1, "d"))
    assert np.array_equal(subset(10, None, 0, "d"), np.arange(10))
    with pytest.raises(CleftGanError, match="max_images 600 is more than the 514 images of d"):
        subset(514, 600, 0, "d")


def test_force_names_a_whole_grid_by_its_stage_name() -> None:
    from cleftgan_hpc.launch.start import forced_stages

    spec = load(SPEC).spec
    assert forced_stages(spec, ["train"]) == [n for n in spec.stages if n.startswith("train[")]
    assert forced_stages(spec, ["train[bgc,4,0.6]", "faces"]) == ["train[bgc,4,0.6]", "faces"]
    with pytest.raises(CleftGanError, match="unknown stage"):
        forced_stages(spec, ["trian"])
