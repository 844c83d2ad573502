"""The compare stage's config: the metrics of every combination of a grid in one table and figure."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from cleftgan_hpc.jobspec.models import NAME_RE, StageBase


class CompareStage(StageBase):
    """Gather the metrics.json of every instance of an evaluate stage (a grid, or fanned out
    from one) into comparison.csv, comparison.md and comparison.png, one row per combination with
    the settings that vary, and the paper's own figures marked where the paper gives them."""

    kind: Literal["compare"]
    evaluations: str = Field(
        description="The evaluate stage to gather, by name (e.g. score): every instance of it when it fans "
        "out with a grid. Its instances become this stage's dependencies."
    )
    paper_figures: bool = Field(
        True, description="Mark the paper's reported figures (StyleGAN3-t, bgc, 514 images: FID 21.03, PPL 16.43)."
    )

    outputs: ClassVar[dict[str, str]] = {
        "table": "comparison.csv", "markdown": "comparison.md", "figure": "comparison.png",
    }
    default_output: ClassVar[str] = "table"
    gathers: ClassVar[str | None] = "evaluations"  # depends on every instance instead of fanning out
    gathers_kinds: ClassVar[tuple[str, ...]] = ("evaluate",)  # what the stage it names must be

    @field_validator("evaluations")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"bad stage name {v!r}: the evaluate stage's name, e.g. score (no stage: prefix)")
        return v
