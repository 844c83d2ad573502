"""Plan fingerprints and `decide` (skip / resume / fresh) directly, without running any stage.

The end-to-end versions (subprocess runs) are in test_local_run.py; these check every branch of
`cleftgan_hpc.runs.decide` and what does and does not move a stage's fingerprints.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.load import parse_spec
from cleftgan_hpc.plan import Plan, make_plan
from cleftgan_hpc.runs import RunState, StageStatus, decide
from cleftgan_hpc.storage.local import LocalStore

# faces -> dataset -> train -> {samples, judge}; "other" depends on nothing and nothing on it
BASE: dict[str, Any] = {
    "name": "fp",
    "resources": {"cpus_per_task": 2, "mem_gb": 8, "time": "01:00:00"},
    "stages": {
        "faces": {"kind": "demo_data", "count": 12, "size": 64, "seed": 0},
        "other": {"kind": "demo_data", "count": 4, "size": 64, "seed": 9},
        "dataset": {"kind": "preprocess", "images": "stage:faces.images", "landmarks": "stage:faces.landmarks",
                    "resolution": 32},
        "train": {"kind": "finetune", "network": "random", "dataset": "stage:dataset", "batch": 4, "kimg": 0.05,
                  "random_network": {"channel_base": 256, "channel_max": 16, "z_dim": 16, "w_dim": 16}},
        "samples": {"kind": "synthesize", "network": "stage:train", "count": 100, "dataset": "fp-synthetic",
                    "workers": 1},
        "judge": {"kind": "evaluate", "network": "stage:train", "dataset": "stage:dataset", "metrics": ["kid"],
                  "feature_extractor": "demo", "num_images": 64},
    },
}
ALL = ["faces", "other", "dataset", "train", "samples", "judge"]
AFTER_FACES = ["dataset", "train", "samples", "judge"]


def spec_of(data: dict[str, Any]) -> JobSpec:
    return parse_spec(yaml.safe_dump(data, sort_keys=False), env={}).spec


def changed(**stage_updates: dict[str, Any]) -> dict[str, Any]:
    """BASE with some stages' fields replaced, e.g. changed(train={"kimg": 1})."""
    data = copy.deepcopy(BASE)
    for name, fields in stage_updates.items():
        data["stages"][name].update(fields)
    return data


def plan_of(data: dict[str, Any], run_id: str = "fp-1") -> Plan:
    return make_plan(spec_of(data), run_id)


def fingerprints(plan: Plan) -> dict[str, tuple[str, str]]:
    return {s.name: (s.fingerprint, s.work_fingerprint) for s in plan.stages}


def moved(before: Plan, after: Plan, which: str = "fingerprint") -> set[str]:
    """Stages whose fingerprint (or work_fingerprint) differs between two plans."""
    return {s.name for s in after.stages if getattr(s, which) != getattr(before.stage(s.name), which)}


@pytest.fixture
def run(tmp_path: Path) -> RunState:
    return RunState(LocalStore(tmp_path / "store"), "fp-1")


def record(run: RunState, plan: Plan, state: str = "done", stages: list[str] | None = None, attempt: int = 1) -> None:
    """Status records as the runner writes them: each stage ran with ``plan``'s fingerprints."""
    for name in stages or [s.name for s in plan.stages]:
        s = plan.stage(name)
        run.set_status(name, StageStatus(state, attempt, fingerprint=s.fingerprint,  # type: ignore[arg-type]
                                         work_fingerprint=s.work_fingerprint))


def decisions(plan: Plan, run: RunState, force: set[str] | None = None) -> dict[str, str]:
    return {name: d for name, (d, _) in decide(plan, run, force or set()).items()}


# -- fingerprints -----------------------------------------------------------------------------


def test_fingerprints_are_stable_across_plans_and_run_ids() -> None:
    a, b = plan_of(BASE, "fp-1"), plan_of(BASE, "fp-2")  # two parses, two plans, two runs
    assert fingerprints(a) == fingerprints(b)
    assert [s.name for s in a.stages] == ["faces", "other", "dataset", "train", "samples", "judge"]
    assert len({s.fingerprint for s in a.stages}) == len(ALL)  # every stage its own
    assert all(len(s.fingerprint) == 16 and len(s.work_fingerprint) == 16 for s in a.stages)


def test_fingerprints_do_not_depend_on_yaml_key_order() -> None:
    def reversed_keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reversed_keys(v) for k, v in reversed(list(value.items()))}
        return value

    shuffled = reversed_keys(BASE)
    assert list(shuffled) == ["stages", "resources", "name"] and list(shuffled["stages"])[0] == "judge"
    assert fingerprints(plan_of(shuffled)) == fingerprints(plan_of(BASE))


def test_resources_do_not_change_fingerprints() -> None:
    data = copy.deepcopy(BASE)
    data["resources"] = {"cpus_per_task": 16, "mem_gb": 64, "time": "2-00:00:00", "partition": "big"}
    data["stages"]["dataset"]["resources"] = {"cpus_per_task": 32}
    data["stages"]["samples"]["resources"] = {"gpus": 1, "mem_gb": 12.5}
    assert fingerprints(plan_of(data)) == fingerprints(plan_of(BASE))


def test_a_config_change_moves_the_stage_and_everything_downstream_only() -> None:
    base = plan_of(BASE)
    after = plan_of(changed(faces={"seed": 1}))
    assert moved(base, after) == moved(base, after, "work_fingerprint") == {"faces", *AFTER_FACES}
    assert after.stage("other").fingerprint == base.stage("other").fingerprint  # unrelated


def test_a_change_in_the_middle_does_not_move_upstream_stages() -> None:
    base = plan_of(BASE)
    after = plan_of(changed(dataset={"resolution": 64}))
    assert moved(base, after) == {"dataset", "train", "samples", "judge"}


@pytest.mark.parametrize(("stage", "fields"), [
    ("train", {"kimg": 0.1}),
    ("train", {"kimg": 0.1, "snapshot_kimg": 0.01, "glr": 0.001}),
    ("samples", {"workers": 3}),
    ("judge", {"num_images": 128}),
])
def test_a_reusable_change_keeps_the_work_fingerprint(stage: str, fields: dict[str, Any]) -> None:
    assert set(fields) <= type(spec_of(BASE).stages[stage]).reusable_changes
    base, after = plan_of(BASE), plan_of(changed(**{stage: fields}))
    assert after.stage(stage).fingerprint != base.stage(stage).fingerprint
    assert after.stage(stage).work_fingerprint == base.stage(stage).work_fingerprint
    # downstream stages see the upstream's full fingerprint: their saved work is not reusable
    below = set(base.downstream(stage))
    assert moved(base, after) == {stage, *below} and moved(base, after, "work_fingerprint") == below


def test_a_non_reusable_change_moves_the_work_fingerprint() -> None:
    assert "batch" not in type(spec_of(BASE).stages["train"]).reusable_changes
    base, after = plan_of(BASE), plan_of(changed(train={"batch": 8}))
    assert moved(base, after, "work_fingerprint") == {"train", "samples", "judge"}


# -- decide ---------------------------------------------------------------------------------


def test_a_new_run_resumes_every_stage_silently(run: RunState) -> None:
    assert decide(plan_of(BASE), run, set()) == {name: ("resume", "") for name in ALL}


def test_done_stages_with_the_same_fingerprint_are_skipped(run: RunState) -> None:
    plan = plan_of(BASE)
    record(run, plan, attempt=2)
    assert decide(plan, run, set()) == {name: ("skip", "done earlier (attempt 2)") for name in ALL}
    # a later plan of the same spec, resources changed, still skips everything
    data = copy.deepcopy(BASE)
    data["resources"]["cpus_per_task"] = 12
    assert set(decisions(plan_of(data), run).values()) == {"skip"}


def test_a_forced_stage_and_its_downstream_start_fresh(run: RunState) -> None:
    plan = plan_of(BASE)
    record(run, plan)
    got = decide(plan, run, {"dataset"})
    assert {n for n, (d, why) in got.items() if (d, why) == ("fresh", "forced")} == {"dataset", "train", "samples",
                                                                                       "judge"}
    assert got["faces"][0] == got["other"][0] == "skip"
    assert decisions(plan, run, {"judge"}) == {**{n: "skip" for n in ALL}, "judge": "fresh"}  # a leaf: just it
    assert decisions(plan, run, {"faces", "other"}) == {n: "fresh" for n in ALL}


def test_force_wins_over_a_changed_or_unfinished_record(run: RunState) -> None:
    record(run, plan_of(BASE), state="failed")
    after = plan_of(changed(train={"kimg": 0.1}))  # would be a resume
    assert decide(after, run, {"train"})["train"] == ("fresh", "forced")


def test_a_changed_config_starts_fresh_downstream_too(run: RunState) -> None:
    record(run, plan_of(BASE))
    got = decide(plan_of(changed(faces={"count": 20})), run, set())
    why = "its config or an upstream stage changed since it ran"
    assert {n: got[n] for n in ["faces", *AFTER_FACES]} == {n: ("fresh", why) for n in ["faces", *AFTER_FACES]}
    assert got["other"][0] == "skip"


def test_a_change_in_reusable_fields_only_resumes(run: RunState) -> None:
    record(run, plan_of(BASE))
    got = decide(plan_of(changed(train={"kimg": 0.1})), run, set())
    assert got["train"] == ("resume", "its config changed only in settings it can continue with; continuing")
    assert got["samples"][0] == got["judge"][0] == "fresh"  # their network changes: start over
    assert got["faces"][0] == got["dataset"][0] == got["other"][0] == "skip"


def test_a_record_without_a_work_fingerprint_starts_fresh_when_its_config_changed(run: RunState) -> None:
    plan = plan_of(BASE)
    run.set_status("train", StageStatus("done", 1, fingerprint=plan.stage("train").fingerprint))
    got = decide(plan_of(changed(train={"kimg": 0.1})), run, set())
    assert got["train"] == ("fresh", "its config or an upstream stage changed since it ran")


@pytest.mark.parametrize("state", ["failed", "pending", "running", "cancelled"])
def test_an_unfinished_stage_with_the_same_fingerprint_resumes(run: RunState, state: str) -> None:
    plan = plan_of(BASE)
    record(run, plan)
    record(run, plan, state=state, stages=["train"])
    got = decide(plan, run, set())
    assert got["train"] == ("resume", "")
    assert {got[n][0] for n in ALL if n != "train"} == {"skip"}


def test_an_unfinished_stage_with_a_reusable_change_resumes(run: RunState) -> None:
    record(run, plan_of(BASE), state="failed", stages=["train"])
    got = decide(plan_of(changed(train={"kimg": 0.1})), run, set())
    assert got["train"][0] == "resume" and "continuing" in got["train"][1]
