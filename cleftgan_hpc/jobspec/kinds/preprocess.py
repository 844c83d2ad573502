"""The preprocess stage's config: photos in, an aligned training dataset out."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from cleftgan_hpc.jobspec.models import Input, StageBase


class PreprocessStage(StageBase):
    """Align, crop and standardise a folder of face photos into a training dataset
    (a zip of PNGs in the StyleGAN dataset format, with dataset.json labels)."""

    kind: Literal["preprocess"]
    images: Input = Field(
        description="Directory of photos (JPEG, PNG, WebP, TIFF, BMP), searched recursively: "
        "a path, store:PREFIX or stage:NAME.OUTPUT."
    )
    landmarks: Input | None = Field(
        None,
        description="CSV with columns file,left_eye_x,left_eye_y,right_eye_x,right_eye_y,"
        "mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y (pixels). Without it a face "
        "landmark detector finds them.",
    )
    labels: Input | None = Field(
        None, description="CSV with a 'file' column and label columns to carry into dataset.json."
    )
    label_column: str | None = Field(
        None, description="Which labels column becomes the dataset label (integer classes or floats); none: unlabelled."
    )
    resolution: int = Field(256, description="Output size in pixels: a power of two from 32 to 1024.")
    fallback: Literal["reject", "center_crop"] = Field(
        "reject",
        description="What to do with an image without exactly one face: reject it, or take a centred square crop.",
    )
    background: Literal["none", "blur", "solid"] = Field(
        "none", description="Standardise the background outside the face: keep, blur, or fill with background_color."
    )
    background_color: tuple[int, int, int] = Field((128, 128, 128), description="RGB fill for background: solid.")
    blur_radius: float = Field(8.0, gt=0, le=200, description="Gaussian radius (output pixels) for background: blur.")
    dedupe: bool = Field(
        True, description="Drop near-duplicate photos (perceptual hash), keeping the first by file name."
    )
    dedupe_distance: int = Field(
        6, ge=0, le=32, description="Max Hamming distance of 64-bit pHashes counted as duplicates."
    )
    min_face_size: int | None = Field(
        None,
        ge=1,
        description="Smallest face accepted, in source pixels: the side of the square that becomes the "
        "output (the FFHQ crop around the landmarks, about 4x the eye distance, or the centre crop). Smaller "
        "faces are rejected, not upscaled: an upscaled tiny face is blur and compression noise, which the "
        "network would learn as a face. Default (null): half the resolution, i.e. at most 2x upscaling; "
        "1 accepts any size.",
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Images with more pixels are rejected as decompression bombs."
    )
    workers: int = Field(
        0, ge=0, le=256, description="Processes decoding and aligning images; 0 uses the stage's CPUs."
    )

    outputs: ClassVar[dict[str, str]] = {
        "dataset": "dataset.zip",
        "report": "report.json",
        "contact_sheet": "contact_sheet.png",
    }
    default_output: ClassVar[str] = "dataset"

    @field_validator("resolution")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v < 32 or v > 1024 or v & (v - 1):
            raise ValueError(f"resolution {v} is not a power of two from 32 to 1024")
        return v

    @field_validator("background_color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(c < 0 or c > 255 for c in v):
            raise ValueError(f"colour {v} has a channel outside 0..255")
        return v

    @model_validator(mode="after")
    def _label_needs_labels(self) -> PreprocessStage:
        if self.label_column and self.labels is None:
            raise ValueError("label_column is set but labels (the CSV) is not")
        return self
