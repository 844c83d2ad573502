"""Stage implementations, one module per kind, each a plain ``run(cfg, ctx) -> outputs``.

The one registry of kinds is ``jobspec.stages.KINDS`` (kind -> config model, with the contract
each declares); a kind's function is ``run`` in the module of the same name here, imported on
demand so that reading a spec never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.jobspec.stages import KINDS

StageFn = Callable[[Any, StageContext], dict[str, str]]


def stage_function(kind: str) -> StageFn:
    """The run function of a stage kind: ``cleftgan_hpc.stages.<kind>.run``."""
    if kind not in KINDS:
        raise KeyError(f"unknown stage kind {kind!r}; kinds are: {', '.join(KINDS)}")
    return importlib.import_module(f"{__name__}.{kind}").run
