"""Every stage kind's config model, joined into one discriminated union on ``kind``.

Each kind's model lives in ``jobspec/kinds/<kind>.py``; this is the one registry of kinds (the
stage function is ``stages/<kind>.py``'s ``run``, found by the name).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from cleftgan_hpc.jobspec.kinds.compare import CompareStage
from cleftgan_hpc.jobspec.kinds.demo_data import DemoDataStage
from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage
from cleftgan_hpc.jobspec.kinds.finetune import AugmentOp, FinetuneStage, RandomNetwork
from cleftgan_hpc.jobspec.kinds.preprocess import PreprocessStage
from cleftgan_hpc.jobspec.kinds.severity import SeverityStage
from cleftgan_hpc.jobspec.kinds.sweep import SweepStage
from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
from cleftgan_hpc.jobspec.models import StageBase

AnyStage = Annotated[
    PreprocessStage | DemoDataStage | FinetuneStage | SweepStage | SynthesizeStage | EvaluateStage | SeverityStage
    | CompareStage,
    Field(discriminator="kind"),
]

KINDS: dict[str, type[StageBase]] = {
    "preprocess": PreprocessStage,
    "demo_data": DemoDataStage,
    "finetune": FinetuneStage,
    "sweep": SweepStage,
    "synthesize": SynthesizeStage,
    "evaluate": EvaluateStage,
    "severity": SeverityStage,
    "compare": CompareStage,
}

__all__ = [
    "AnyStage", "AugmentOp", "CompareStage", "DemoDataStage", "EvaluateStage", "FinetuneStage", "KINDS",
    "PreprocessStage", "RandomNetwork", "SeverityStage", "SweepStage", "SynthesizeStage",
]
