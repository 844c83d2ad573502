"""Linked grid axes (labels setting several fields together), cfg against the network it trains,
and compare's evaluations reported where the user wrote them."""

from __future__ import annotations

import textwrap

import pytest

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec.grid import base_name
from cleftgan_hpc.jobspec.kinds.finetune import named_architecture
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.plan import make_plan

SPEC = """\
name: paper
stages:
  train:
    kind: finetune
    dataset: data.zip
    grid:
      architecture:
        stylegan3-t: {network: /m/stylegan3-t-ffhq-1024x1024.pkl, cfg: stylegan3-t}
        stylegan2:
          network: /m/stylegan2-ffhq-1024x1024.pkl
          cfg: stylegan2
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


def load(text: str):  # noqa: ANN201
    return parse_spec(textwrap.dedent(text), file="job.yaml", env={})


def problems(text: str) -> list:
    with pytest.raises(SpecError) as info:
        load(text)
    return info.value.problems


def test_a_linked_axis_sets_its_fields_together_under_readable_names() -> None:
    spec = load(SPEC).spec
    trains = [n for n in spec.stages if base_name(n) == "train"]
    assert trains == ["train[stylegan3-t,none]", "train[stylegan3-t,bgc]", "train[stylegan2,none]",
                      "train[stylegan2,bgc]"]
    sg2 = spec.stages["train[stylegan2,bgc]"]
    assert (sg2.cfg, sg2.network.rsplit("/", 1)[-1], sg2.augment) == ("stylegan2", "stylegan2-ffhq-1024x1024.pkl", "bgc")
    assert sg2.glr == 0.002  # the stylegan2 recipe's default came with the cfg
    sg3 = spec.stages["train[stylegan3-t,none]"]
    assert (sg3.cfg, sg3.network.rsplit("/", 1)[-1], sg3.glr) == ("stylegan3-t", "stylegan3-t-ffhq-1024x1024.pkl", 0.0025)
    plan = make_plan(spec, "paper-1")
    assert plan.stage("table").needs == [f"score[{a},{g}]" for a in ("stylegan3-t", "stylegan2") for g in ("none", "bgc")]
    assert plan.stage("score[stylegan2,none]").needs == ["train[stylegan2,none]"]


def test_an_error_in_a_linked_value_points_at_its_own_line() -> None:
    text = SPEC.replace("          cfg: stylegan2\n", "          cfg: stylegan9\n")
    (p,) = [p for p in problems(text) if p.field.endswith(".cfg")]
    assert (p.file, p.line, p.col) == ("job.yaml", 11, 16)
    assert p.field == "stages.train[*].cfg" and "stylegan9" in p.message
    assert "in 2 combinations of the grid: [stylegan2,none], [stylegan2,bgc]" in p.message


def test_a_linked_value_may_be_structured_and_its_errors_point_inside_it() -> None:
    text = SPEC.replace("          cfg: stylegan2\n", "          cfg: stylegan2\n          random_network:\n"
                        "            channel_max: 9999\n").replace(
        "cfg: stylegan3-t}", "cfg: stylegan3-t, random_network: {channel_max: 32}}")
    (p,) = [p for p in problems(text) if "channel_max" in p.field]
    assert p.line == 13 and p.field == "stages.train[*].random_network.channel_max"
    ok = load(text.replace("9999", "64")).spec
    assert ok.stages["train[stylegan2,none]"].random_network.channel_max == 64
    assert ok.stages["train[stylegan3-t,none]"].random_network.channel_max == 32


@pytest.mark.parametrize("edit,line,message", [
    # a label that cannot name an instance
    (("stylegan2:\n", "style gan2:\n"), 9, "bad label 'style gan2'"),
    # a label that is not a mapping of fields
    (("stylegan3-t: {network: /m/stylegan3-t-ffhq-1024x1024.pkl, cfg: stylegan3-t}", "stylegan3-t: fast"), 8,
     "label 'stylegan3-t' must map the fields it sets"),
    # labels of one axis setting different fields
    (("          cfg: stylegan2\n", ""), 9, "every label of an axis sets the same fields"),
    # a protected field in a label
    (("          cfg: stylegan2\n", "          cfg: stylegan2\n          needs: [x]\n"), 12, "'needs' cannot vary"),
    # one field set by two axes
    (("      augment: [none, bgc]", "      cfg: [stylegan2]"), 12, "'cfg' is set by two axes of the grid"),
    # a field both written on the stage and set by the grid
    (("    dataset: data.zip\n    grid:", "    dataset: data.zip\n    network: random\n    grid:"), 8,
     "'network' is both written on the stage and set by the grid's axis 'architecture'"),
])
def test_bad_linked_axes_are_clear_errors_at_their_lines(edit: tuple[str, str], line: int, message: str) -> None:
    text = SPEC.replace(*edit)
    assert text != SPEC
    found = [p for p in problems(text) if message in p.message]
    assert found and found[0].line == line and found[0].file == "job.yaml", [str(p) for p in problems(text)]


def test_a_list_axis_still_refuses_structured_values_and_names_the_linked_form() -> None:
    text = SPEC.replace("      augment: [none, bgc]", "      augment: [[{op: xflip}]]")
    (p,) = [p for p in problems(text) if "single values" in p.message]
    assert p.line == 12 and "{AXIS: {LABEL: {field: value}}}" in p.message


def test_a_plain_axis_set_on_the_stage_too_is_refused() -> None:
    text = SPEC.replace("    dataset: data.zip\n    grid:", "    dataset: data.zip\n    augment: c\n    grid:")
    (p,) = [p for p in problems(text) if "both written" in p.message]
    assert p.line == 13 and "'augment'" in p.message


# -- cfg against the network ------------------------------------------------------------------


@pytest.mark.parametrize("network,arch", [
    ("/m/stylegan3-t-ffhq-1024x1024.pkl", "stylegan3-t"),
    ("/m/stylegan3-r-afhqv2-512x512.pkl", "stylegan3-r"),
    ("stylegan2-ffhq-1024x1024.pkl", "stylegan2"),
    ("/m/StyleGAN2-ADA_ffhq.pkl", "stylegan2"),
    ("/m/ffhq.pkl", None),
    ("/m/stylegan3-t/network.safetensors", None),  # the folder's name says nothing about the file
    ("/m/stylegan21.pkl", None),
    ("random", None),
    ("stage:train[stylegan2,bgc].network", None),
])
def test_the_architecture_a_file_name_states(network: str, arch: str | None) -> None:
    assert named_architecture(network) == arch


def test_a_cfg_that_does_not_fit_the_network_names_the_combination_at_the_cfg_line() -> None:
    text = SPEC.replace("network: /m/stylegan2-ffhq-1024x1024.pkl", "network: /m/stylegan3-t-ffhq-1024x1024.pkl")
    (p,) = problems(text)
    assert (p.line, p.field) == (11, "stages.train[*].cfg")
    assert p.message.startswith("cfg stylegan2 does not fit network stylegan3-t-ffhq-1024x1024.pkl, a StyleGAN3-T")
    assert "set cfg: stylegan3-t" in p.message and "[stylegan2,none], [stylegan2,bgc]" in p.message


def test_a_cfg_left_to_its_default_is_reported_at_the_network() -> None:
    finetune = """
    name: x
    stages:
      train:
        kind: finetune
        dataset: data.zip
        network: /m/stylegan2-ffhq-1024x1024.pkl
      tune:
        kind: sweep
        dataset: data.zip
        network: /m/stylegan3-r-ffhq-1024x1024.pkl
        feature_extractor: demo
        base: {cfg: stylegan3-t}
        space: {glr: {choice: [0.002]}}
    """
    found = {p.field: p for p in problems(finetune)}
    assert set(found) == {"stages.train.network", "stages.tune.base.cfg"}
    assert found["stages.train.network"].line == 7 and "set cfg: stylegan2" in found["stages.train.network"].message
    assert found["stages.tune.base.cfg"].line == 13 and "set cfg: stylegan3-r" in found["stages.tune.base.cfg"].message


# -- compare's evaluations ----------------------------------------------------------------------


def test_compare_naming_a_missing_stage_points_at_its_evaluations_line() -> None:
    (p,) = problems(SPEC.replace("evaluations: score", "evaluations: scor"))
    assert (p.file, p.line, p.col, p.field) == ("job.yaml", 21, 18, "stages.table.evaluations")
    assert "unknown stage 'scor'; did you mean 'score'?" in p.message and "evaluate stages are: score" in p.message


def test_compare_naming_a_stage_of_another_kind_points_at_its_evaluations_line() -> None:
    (p,) = problems(SPEC.replace("evaluations: score", "evaluations: train"))
    assert (p.line, p.field) == (21, "stages.table.evaluations")
    assert "stage 'train' is a finetune stage; compare gathers evaluate stages" in p.message


def test_compare_in_a_job_without_evaluations_says_so() -> None:
    text = SPEC[: SPEC.index("  score:")] + "  table:\n    kind: compare\n    evaluations: score\n"
    (p,) = problems(text)
    assert p.line == 15 and "the job has no evaluate stage" in p.message


def test_a_missing_stage_in_compare_needs_is_still_reported_at_needs() -> None:
    text = SPEC.replace("    evaluations: score", "    evaluations: score\n    needs: [nope]")
    (p,) = problems(text)
    assert (p.line, p.field) == (22, "stages.table.needs.0") and "unknown stage 'nope'" in p.message


def test_a_fine_tune_of_a_trained_network_keeps_its_cfg() -> None:
    text = """
    name: x
    stages:
      train:
        kind: finetune
        network: random
        dataset: data.zip
        grid:
          cfg: [stylegan3-t, stylegan2]
      again:
        kind: finetune
        network: stage:train.network
        dataset: data.zip
      tune:
        kind: sweep
        network: stage:again[stylegan3-t]
        dataset: data.zip
        feature_extractor: demo
        base: {cfg: stylegan3-r}
        space: {glr: {choice: [0.002]}}
    """
    found = {p.field: p for p in problems(text)}
    assert set(found) == {"stages.again[stylegan2].network", "stages.tune.base.cfg"}
    p = found["stages.again[stylegan2].network"]
    assert p.line == 12 and p.message.startswith("cfg stylegan3-t does not fit network stage:train[stylegan2].network: "
                                                 "stage 'train[stylegan2]' trains it with cfg stylegan2")
    assert found["stages.tune.base.cfg"].line == 19 and "set cfg: stylegan3-t" in found["stages.tune.base.cfg"].message
    load(text.replace("cfg: [stylegan3-t, stylegan2]", "cfg: [stylegan3-t]").replace("stylegan3-r", "stylegan3-t"))


def test_each_name_in_a_list_of_evaluations_is_checked_at_its_own_line() -> None:
    text = SPEC.replace("    evaluations: score", "    evaluations:\n      - score\n      - scroe\n      - train")
    found = sorted(problems(text), key=lambda p: p.line)
    assert [(p.line, p.field) for p in found] == [(23, "stages.table.evaluations.1"), (24, "stages.table.evaluations.2")]
    assert "unknown stage 'scroe'; did you mean 'score'?" in found[0].message
    assert "'train' is a finetune stage" in found[1].message
    spec = load(SPEC.replace("evaluations: score", "evaluations: [score]")).spec
    assert spec.stages["table"].evaluation_stages == ["score"]


@pytest.mark.parametrize("value,line,message", [
    ("[]", 21, "name at least one evaluate stage"),
    ("[score, score]", 21, "'score' is named twice"),
    ("[score, stage:score]", 21, "bad stage name 'stage:score'"),
])
def test_a_bad_list_of_evaluations_is_refused(value: str, line: int, message: str) -> None:
    found = [p for p in problems(SPEC.replace("evaluations: score", f"evaluations: {value}")) if message in p.message]
    assert found and found[0].line == line and found[0].field.startswith("stages.table.evaluations")


def test_a_grid_stage_reading_another_grid_stage_is_one_clear_error() -> None:
    text = SPEC.replace("    feature_extractor: demo\n", "    feature_extractor: demo\n    grid:\n"
                        "      num_images: [100, 200]\n")
    found = [p for p in problems(text) if "grids do not cross" in p.message]
    assert len(found) == 1 and (found[0].line, found[0].field) == (19, "stages.score.grid")
    assert len(problems(text)) == 1  # nothing else: no bad names, no missing stages


def test_a_sweep_cannot_search_the_architecture() -> None:
    text = """
    name: x
    stages:
      tune:
        kind: sweep
        network: random
        dataset: data.zip
        feature_extractor: demo
        space: {cfg: {choice: [stylegan2, stylegan3-t]}}
    """
    (p,) = problems(text)
    assert p.line == 9 and "'cfg' cannot be searched (it is the network's architecture" in p.message


def test_a_grid_value_from_the_environment_is_not_echoed() -> None:
    text = SPEC.replace("cfg: stylegan2\n", "cfg: ${ARCH}\n")
    with pytest.raises(SpecError) as info:
        parse_spec(text, file="job.yaml", env={"ARCH": "hunter2-token"})
    (p,) = info.value.problems
    assert p.line == 11 and "hunter2" not in str(info.value) and "not shown" in p.message
