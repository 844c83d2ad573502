"""Stage implementations, one module per kind, each a plain ``run(cfg, ctx) -> outputs``.

The registry maps a kind to a loader that imports its module on demand, so reading a spec
never imports torch. Explicit functions, not module paths in strings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cleftgan_hpc.context import StageContext

StageFn = Callable[[Any, StageContext], dict[str, str]]


def _preprocess() -> StageFn:
    from cleftgan_hpc.stages.preprocess import run

    return run


def _demo_data() -> StageFn:
    from cleftgan_hpc.stages.demo_data import run

    return run


def _finetune() -> StageFn:
    from cleftgan_hpc.stages.finetune import run

    return run


def _synthesize() -> StageFn:
    from cleftgan_hpc.stages.synthesize import run

    return run


def _evaluate() -> StageFn:
    from cleftgan_hpc.stages.evaluate import run

    return run


def _sweep() -> StageFn:
    from cleftgan_hpc.stages.sweep import run

    return run


RUNNERS: dict[str, Callable[[], StageFn]] = {
    "preprocess": _preprocess,
    "demo_data": _demo_data,
    "finetune": _finetune,
    "sweep": _sweep,
    "synthesize": _synthesize,
    "evaluate": _evaluate,
}


def stage_function(kind: str) -> StageFn:
    """The run function of a stage kind."""
    return RUNNERS[kind]()
