"""The synthesize stage's config: conflicting options refused, derived values, the task split."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
from cleftgan_hpc.jobspec.stages import KINDS
from cleftgan_hpc.synthesis.layout import all_shards, batches, sample_key, task_shards

BASE: dict[str, Any] = {"kind": "synthesize", "network": "/nets/g.pkl", "dataset": "faces"}


def make(**kw: Any) -> SynthesizeStage:
    return SynthesizeStage.model_validate({**BASE, **kw})


def test_registered_and_derived_values() -> None:
    assert KINDS["synthesize"] is SynthesizeStage
    cfg = make(count=2500, shard_size=1000, tasks=3, format="jpeg")
    assert (cfg.image_count, cfg.shard_count, cfg.array_tasks(), cfg.effective_quality) == (2500, 3, 3, 95)
    assert cfg.prefix == "datasets/faces"
    assert make(count=10).array_tasks() == 0  # one job does everything
    seeded = make(seeds="100-199", shard_size=30)
    assert (seeded.seed_start, seeded.image_count, seeded.shard_count) == (100, 100, 4)
    assert make(count=1, dataset="team/x/synthetic").prefix == "team/x/synthetic"
    assert make(count=1, network="stage:tune").network == "stage:tune"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"count": 10, "seeds": "0-9"}, "exactly one of count"),
        ({}, "exactly one of count"),
        ({"seeds": "0-9", "first_seed": 5}, "first_seed goes with count"),
        ({"seeds": "9-0"}, "end is before the start"),
        ({"seeds": "a-b"}, "bad seed range"),
        ({"count": 10, "quality": 80}, "quality is for jpeg and webp"),
        ({"count": 10, "truncation_cutoff": 4}, "does nothing with truncation_psi 1"),
        ({"count": 10, "shard_size": 5, "tasks": 3}, "more than the 2 shards"),
        ({"count": 10, "labels": [0, 0]}, "not all zero"),
        ({"count": 10, "labels": -1}, "negative"),
        ({"count": 10, "dataset": "bad name"}, "bad dataset name"),
        ({"count": 10, "first_seed": 2**32 - 5}, "beyond 2**32"),
        ({"count": 10, "unknown": 1}, "Extra inputs"),
    ],
)
def test_conflicting_options_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("*", r"\*")):
        make(**fields)


def test_shards_and_tasks_are_disjoint_and_complete() -> None:
    shards = all_shards(7, 23, 5)  # 5 shards, the last one of 3
    assert [(s.first_seed, s.count) for s in shards] == [(7, 5), (12, 5), (17, 5), (22, 5), (27, 3)]
    for tasks in (1, 2, 3, 5):
        parts = [task_shards(shards, i, tasks) for i in range(tasks)]
        assert all(parts)  # every task has work
        assert [s.index for p in parts for s in p] == list(range(5))  # disjoint, complete, in order
    assert task_shards(shards, None, 3) == shards
    with pytest.raises(ValueError):
        task_shards(shards, 3, 3)
    assert batches(shards[4], 2) == [[27, 28], [29]]  # aligned to the shard's start
    assert "." not in sample_key(12345) and sample_key(1) < sample_key(10)


def test_spec_loads_from_yaml(tmp_path: Any) -> None:
    from cleftgan_hpc.jobspec.load import load_spec

    spec = tmp_path / "job.yaml"
    spec.write_text(
        "name: s\nstore: file://./store\nstages:\n  synth:\n    kind: synthesize\n    network: net.pkl\n"
        "    count: 100\n    shard_size: 10\n    tasks: 4\n    dataset: faces\n    labels: uniform\n"
    )
    cfg = load_spec(spec).spec.stages["synth"]
    assert isinstance(cfg, SynthesizeStage) and cfg.array_tasks() == 4 and cfg.labels == "uniform"
    assert cfg.network == str(tmp_path / "net.pkl")


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("runs/", "overlap the store's own runs/ area"),
        ("runs", "overlap the store's own runs/ area"),
        ("Runs/x", "overlap the store's own runs/ area"),
        ("cache", "overlap the store's own cache/ area"),
        ("cache/feature-stats", "overlap the store's own cache/ area"),
        (".cleftgan/x", "overlap the store's own .cleftgan/ area"),
        ("", "bad dataset name ''"),
        ("../x", r"bad dataset name '../x' \(part '..'\)"),
        ("team/../runs", r"part '..'"),
        ("/abs/x", "part ''"),
        ("datasets/", "part ''"),
        ("a//b", "part ''"),
        ("a\\b", "bad dataset name"),
        ("faces\n", "bad dataset name"),
        ("datasets/a/b", "would be inside dataset 'datasets/a'"),
    ],
)
def test_dataset_names_stay_out_of_the_stores_own_areas(dataset: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make(count=10, dataset=dataset)


def test_dataset_name_errors_point_at_the_spec_line(tmp_path: Any) -> None:
    from cleftgan_hpc.errors import SpecError
    from cleftgan_hpc.jobspec.load import load_spec

    spec = tmp_path / "job.yaml"
    spec.write_text("name: s\nstore: file://./store\nstages:\n  synth:\n    kind: synthesize\n    network: net.pkl\n"
                    "    count: 10\n    overwrite: true\n    dataset: runs/\n")
    with pytest.raises(SpecError, match=r"job.yaml:9:\d+: .*dataset.*overlap the store's own runs/ area"):
        load_spec(spec)
