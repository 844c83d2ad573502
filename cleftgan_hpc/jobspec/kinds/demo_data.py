"""The demo_data stage's config: synthetic toy faces with a known cleft severity."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cleftgan_hpc.jobspec.models import StageBase


class DemoDataStage(StageBase):
    """Draw synthetic toy faces with a cleft-like lip notch of known severity (no patient data)."""

    kind: Literal["demo_data"]
    count: int = Field(64, ge=1, le=1_000_000, description="How many images to draw.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed; the same seed draws the same faces.")
    size: int = Field(256, ge=64, le=2048, description="Width and height of each photo in pixels.")
    clefts: bool = Field(
        True, description="Draw a third each of faces without a notch, with an incomplete and with a complete "
        "cleft; false: every face without one (the normal faces a normal-face network learns from)."
    )

    outputs: ClassVar[dict[str, str]] = {"images": "images", "landmarks": "landmarks.csv", "labels": "labels.csv"}
    default_output: ClassVar[str] = "images"
