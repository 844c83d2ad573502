"""The spec loader: every error class names FILE:LINE:COL, the field, and what is expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec.load import load_spec, parse_spec
from cleftgan_hpc.jobspec.stages import KINDS


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path, env=env or {})
    return [str(p) for p in info.value.problems]


GOOD = """
name: demo
stages:
  faces:
    kind: demo_data
    count: 8
  dataset:
    kind: preprocess
    images: stage:faces.images
    resolution: 64
"""


def test_valid_spec_loads_with_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, GOOD), env={}).spec
    assert spec.name == "demo"
    assert spec.store.url == f"file://{tmp_path / 'store'}"  # relative to the spec's directory
    assert spec.stages["dataset"].resolution == 64
    assert spec.stages["faces"].count == 8


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    out = problems(tmp_path, "name: demo\nstages:\n  a: [1, 2\n  b: 3\n")
    assert len(out) == 1
    assert out[0].startswith(str(tmp_path / "job.yaml") + ":4:")
    assert "YAML syntax error" in out[0]


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("    resolution: 64", "    resolutoin: 64"))
    assert out == [
        f"{tmp_path / 'job.yaml'}:9:5: stages.dataset.resolutoin: unknown field 'resolutoin'; did you mean 'resolution'?"
    ]


def test_unknown_top_level_key_lists_allowed(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD + "colour: red\n")
    assert out[0].endswith("colour: unknown field 'colour'; allowed: backend, name, resources, slurm, stages, store")
    assert ":10:1:" in out[0]


def test_wrong_type(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("count: 8", "count: many"))
    assert len(out) == 1
    assert ":5:12: stages.faces.count: Input should be a valid integer" in out[0]
    assert "(got 'many')" in out[0]


def test_out_of_range(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("resolution: 64", "resolution: 100"))
    assert out == [
        f"{tmp_path / 'job.yaml'}:9:17: stages.dataset.resolution: resolution 100 is not a power of two from 32 to 1024"
    ]
    out = problems(tmp_path, GOOD.replace("count: 8", "count: 0"))
    assert "stages.faces.count: Input should be greater than or equal to 1 (got 0)" in out[0]


def test_unknown_kind_lists_kinds(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("kind: demo_data", "kind: demo-data"))
    assert out == [
        f"{tmp_path / 'job.yaml'}:4:11: stages.faces.kind: unknown stage kind 'demo-data'; "
        f"expected one of: {', '.join(KINDS)}"
    ]


def test_missing_required_field(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("    images: stage:faces.images\n", ""))
    assert out[0].startswith(f"{tmp_path / 'job.yaml'}:6:3: stages.dataset.images: missing required field 'images'")


def test_unknown_stage_in_needs_and_inputs(tmp_path: Path) -> None:
    text = GOOD.replace("    resolution: 64", "    resolution: 64\n    needs: [face]").replace(
        "stage:faces.images", "stage:facez.images"
    )
    out = problems(tmp_path, text)
    assert (
        f"{tmp_path / 'job.yaml'}:8:13: stages.dataset.images: unknown stage 'facez'; did you mean 'faces'?" in out[0]
    )
    assert ":10:13: stages.dataset.needs.0: unknown stage 'face'; did you mean 'faces'?" in out[1]


def test_unknown_output(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("stage:faces.images", "stage:faces.pictures"))
    assert out == [
        f"{tmp_path / 'job.yaml'}:8:13: stages.dataset.images: stage 'faces' has no output 'pictures'; "
        "expected one of: images, landmarks, labels"
    ]


def test_needs_cycle(tmp_path: Path) -> None:
    text = GOOD.replace("    count: 8", "    count: 8\n    needs: [dataset]")
    out = problems(tmp_path, text)
    assert out == [f"{tmp_path / 'job.yaml'}:7:3: stages.dataset: dependency cycle: dataset -> faces -> dataset"]


def test_self_dependency(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("    count: 8", "    count: 8\n    needs: [faces]"))
    assert "stages.faces.needs.0: stage 'faces' cannot depend on itself" in out[0]


def test_duplicate_stage_names(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD + "  faces:\n    kind: demo_data\n")
    assert out == [f"{tmp_path / 'job.yaml'}:10:3: stages.faces: duplicate key 'faces' (first defined at line 3)"]


def test_bad_stage_name(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("  faces:", "  9faces:").replace("stage:faces", "stage:9faces"))
    assert any(":3:3: stages.9faces: bad stage name '9faces'" in p for p in out)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace("count: 8", "count: -3").replace("resolution: 64", "resolution: 7")
    out = problems(tmp_path, text + "extra: 1\n")
    assert len(out) == 3
    assert [p.split(":")[1] for p in out] == ["5", "9", "10"]  # sorted by line


def test_store_errors(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("name: demo", "name: demo\nstore: ftp://x"))
    assert "store.url: unsupported store URL 'ftp://x': expected file://DIR or s3://BUCKET/PREFIX" in out[0]
    out = problems(tmp_path, GOOD.replace("name: demo", "name: demo\nstore: {url: s3://ab, secret_key: x}"))
    assert any("store.url: bad bucket name 'ab'" in p for p in out)
    assert any("store.secret_key: unknown field 'secret_key'" in p for p in out)  # never inline credentials


def test_backends_not_yet_supported_are_refused(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("name: demo", "name: demo\nbackend: ray"))
    assert "backend: Input should be 'local' or 'slurm' (got 'ray')" in out[0]


def test_interpolation(tmp_path: Path) -> None:
    text = GOOD.replace("count: 8", "count: ${N:-5}").replace("resolution: 64", "resolution: ${RES}")
    text = text.replace("name: demo", "name: demo\nstore: file://${STORE:-./st}/$${literal}")
    spec = load_spec(write(tmp_path, text), env={"RES": "128"}).spec
    assert spec.stages["faces"].count == 5  # default, typed as an integer
    assert spec.stages["dataset"].resolution == 128
    assert spec.store.url == f"file://{tmp_path / 'st' / '${literal}'}"


def test_interpolation_of_unset_variable(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("resolution: 64", "resolution: ${RES}"))
    assert out == [
        f"{tmp_path / 'job.yaml'}:9:17: stages.dataset.resolution: environment variable RES is not set; "
        "set it or write ${RES:-default}"
    ]


def test_quoted_interpolation_stays_a_string(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("count: 8", 'count: "${N:-x5}"'))
    assert "stages.faces.count: Input should be a valid integer" in out[0]


def test_relative_paths_resolve_against_the_spec(tmp_path: Path) -> None:
    sub = tmp_path / "jobs"
    sub.mkdir()
    text = GOOD.replace("stage:faces.images", "../photos").replace("name: demo", "name: demo\nstore: file:///abs/st")
    spec = load_spec(write(sub, text), env={}).spec
    assert spec.stages["dataset"].images == str(tmp_path / "photos")
    assert spec.store.url == "file:///abs/st"


def test_stage_references_add_dependencies(tmp_path: Path) -> None:
    from cleftgan_hpc.plan import make_plan

    text = GOOD.replace("  faces:", "  zz:\n    kind: demo_data\n  faces:")
    plan = make_plan(load_spec(write(tmp_path, text), env={}).spec, "r1")
    dataset = plan.stage("dataset")
    assert dataset.needs == ["faces"]
    assert dataset.inputs["images"] == "store:runs/r1/stages/faces/images"
    assert [s.name for s in plan.stages].index("faces") < [s.name for s in plan.stages].index("dataset")


def test_empty_and_non_mapping_specs() -> None:
    with pytest.raises(SpecError, match="the spec is empty"):
        parse_spec("", file="x.yaml")
    with pytest.raises(SpecError, match="must be a mapping"):
        parse_spec("- 1\n- 2\n", file="x.yaml")
    with pytest.raises(SpecError, match="no such file"):
        load_spec("/nonexistent/spec.yaml")


def test_finetune_gpus_must_match_its_resources(tmp_path: Path) -> None:
    text = """
name: g
stages:
  train:
    kind: finetune
    network: random
    dataset: /data/x.zip
    gpus: 2
"""
    out = problems(tmp_path, text)
    assert ":7:11: stages.train.gpus: trains on gpus: 2 but its resources give 0 GPU(s) x 1 node(s)" in out[0]
    ok = text + "    resources: {gpus: 2}\n"
    assert load_spec(write(tmp_path, ok), env={}).spec.stages["train"].gpus == 2


def test_union_errors_name_the_field_not_pydantic_tags(tmp_path: Path) -> None:
    out = problems(tmp_path, GOOD.replace("name: demo", "name: demo\nresources: {time: '99:99:99'}"))
    assert "resources.time: bad time '99:99:99'" in out[0]
    text = "name: a\nstages:\n  t:\n    kind: finetune\n    network: random\n    dataset: /x.zip\n    augment: bgcx\n"
    out = problems(tmp_path, text)
    assert out == [f"{tmp_path / 'job.yaml'}:7:14: stages.t.augment: Input should be 'bgc', 'bg', 'c' or 'none', "
                   "or a valid list (got 'bgcx')"]  # one line for one mistake, no pydantic tags


def test_cross_field_problems_point_at_the_field(tmp_path: Path) -> None:
    """A model validator's FieldError lands on the field's line, not the model's."""
    job = tmp_path / "g.yaml"
    job.write_text("name: g\nstages:\n  t:\n    kind: finetune\n    network: random\n    dataset: d.zip\n"
                   "    gpus: 4\n    resources: {gpus: 2}\n")
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert str(err.value).startswith(f"{job}:7:11: stages.t.gpus: trains on gpus: 4")
