"""The compare stage's config: the metrics of every combination of a grid in one table and figure."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from cleftgan_hpc.errors import FieldError
from cleftgan_hpc.jobspec.models import NAME_RE, StageBase


class CompareStage(StageBase):
    """Gather the metrics.json of every instance of an evaluate stage (a grid, or fanned out
    from one) into comparison.csv, comparison.md and comparison.png, one row per combination with
    the settings that vary, and the paper's own figures marked where the paper gives them."""

    kind: Literal["compare"]
    evaluations: str | list[str] = Field(
        description="The evaluate stage to gather, by name (e.g. score): every instance of it when it fans "
        "out with a grid; or a list of them, gathered into the one table. Their instances become this stage's "
        "dependencies."
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
    def _name(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("name at least one evaluate stage, e.g. score")
        for i, name in enumerate(names):
            if not NAME_RE.match(name):
                where = () if isinstance(v, str) else (i,)
                raise FieldError(f"bad stage name {name!r}: the evaluate stage's name, e.g. score (no stage: prefix)",
                                 *where)
            if name in names[:i]:
                raise FieldError(f"{name!r} is named twice", i)
        return v

    @property
    def evaluation_stages(self) -> list[str]:
        """The evaluate stages gathered, as a list."""
        return [self.evaluations] if isinstance(self.evaluations, str) else list(self.evaluations)
