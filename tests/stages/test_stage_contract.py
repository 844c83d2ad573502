"""Every stage kind keeps the contract the planner and the backends rely on."""

from __future__ import annotations

import typing

import pytest

from cleftgan_hpc.jobspec.models import StageBase
from cleftgan_hpc.jobspec.stages import KINDS
from cleftgan_hpc.stages import stage_function


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_declares_a_consistent_contract(kind: str) -> None:
    model = KINDS[kind]
    assert issubclass(model, StageBase)
    assert typing.get_args(model.model_fields["kind"].annotation) == (kind,)  # the registry key is the kind
    assert model.outputs, "a kind produces at least one output"
    assert model.default_output in model.outputs
    assert model.reusable_changes <= set(model.model_fields), "reusable_changes names fields of the kind"
    assert callable(stage_function(kind))


def test_unknown_kind_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown stage kind 'nope'; kinds are: preprocess"):
        stage_function("nope")


def test_a_kind_answers_for_itself_where_the_base_has_defaults() -> None:
    from cleftgan_hpc.jobspec.stages import FinetuneStage, SynthesizeStage

    tune = FinetuneStage.model_validate(dict(kind="finetune", network="random", dataset="x.zip", processes=2, batch=8))
    assert (tune.world_size, tune.data_parallel_gpus, tune.wants_gpu) == (2, 0, False)
    on_gpus = tune.model_copy(update={"gpus": 4, "processes": None})
    assert (on_gpus.world_size, on_gpus.data_parallel_gpus, on_gpus.wants_gpu) == (4, 4, True)
    synth = SynthesizeStage.model_validate(dict(kind="synthesize", network="n.pkl", dataset="d", count=3000, tasks=3))
    assert (synth.array_tasks(), synth.world_size) == (3, 1)
