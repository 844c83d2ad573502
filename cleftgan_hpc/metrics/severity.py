"""Cleft-severity models for DISH, loaded from a TorchScript file the user stages.

Calling convention: ``model(images)`` with uint8 images [N, 3, H, W] returns float scores
[N] or [N, 1], higher meaning more severe. Nothing here downloads: a missing file is a clear
error that says the user stages it.

For the demo the project writes its own scorer (``save_demo_severity_model``): a hand-written
measurement of the lip notch that ``cleftgan_hpc.data.demo_faces`` draws on its toy faces.
It is NOT a clinical model and knows nothing about real clefts; it exists so the demo and
the tests exercise the same loading and scoring code a real severity model goes through.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.features import ScriptedModel, load_scripted, save_scripted

STAGING_HELP = (
    "Severity models are never downloaded: stage the TorchScript file yourself (copy it to storage "
    "the job can read, or the job's store as store:KEY, and name it in the evaluate stage's "
    "`severity_model:`). It is called as "
    "model(images) with uint8 images [N, 3, H, W] and returns float scores [N] or [N, 1], higher "
    "meaning more severe. For tests and demos, "
    "`cleftgan_hpc.metrics.severity.save_demo_severity_model(path)` writes a toy scorer for the "
    "demo's synthetic faces (not a clinical model)."
)

# The demo scorer works on a fixed grid: the demo aligns faces FFHQ-style to 32x32, so at this
# size its regions are whole pixels. Other sizes are resampled to it first.
DEMO_WORK_SIZE = 32
DEMO_MIN_SIZE = 16
# Where the notch lands on the 32x32 grid. demo_faces draws in face units (eyes at
# (+-0.36, -0.05), mouth corners at (+-0.28, 0.62)); the FFHQ quad then has half side
# 2 * eye distance = 1.44 units, centred at y = 0.017, so row = ((y - 0.017) / 1.44 + 1) * 16 - 0.5
# and likewise for columns with x. The notch is centred at x = +-0.075 (columns 16 and 15 for
# the image's right and left side, mirror images of each other; at its bottom it reaches
# columns 17 and 14) and rises from the lip line (y = 0.63, row 22) by 0.295 * severity units:
# through the upper lip (row 21) into the philtrum skin under the nose (row 20).
DEMO_ROWS = (20, 23)  # rows 20..22: philtrum skin, upper lip, lip line
DEMO_INNER = (15, 16)  # mirror column pair at the notch's centre line
DEMO_OUTER = (14, 17)  # mirror column pair the notch reaches at its widest (its bottom)
DEMO_OUTER_WEIGHT = 0.5  # the outer pair sees only the widest part of the notch
DEMO_REF_ROW = 20  # skin beside the philtrum on both sides, away from the notch: the reference
DEMO_REF_COLS = (12, 13, 18, 19)  # four columns, as DemoSeverity's forward adds them
# Calibration: complete clefts on demo faces give a contrast of about 0.42 (0.40 to 0.45);
# dividing by 0.4 and clamping puts them at 1 and faces without a notch near 0.01.
DEMO_FULL_CONTRAST = 0.4


class SeverityModel(ScriptedModel):
    """A loaded severity model: ``model.scores(images_uint8) -> float64 [N]``."""

    what = "severity model"

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [N, C, H, W] with C in (1, 3) -> float64 scores [N] (higher = more severe)."""
        images = self.rgb(images, uint8=True)
        n = images.shape[0]
        try:
            out = self.module(images.to(self.device))
        except (RuntimeError, torch.jit.Error) as e:  # torch.jit.Error: raised inside a scripted model
            first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise CleftGanError(f"severity model {self.path} failed on images {tuple(images.shape)}: {first}") from e
        if not isinstance(out, torch.Tensor) or not (
            (out.ndim == 1 and out.shape[0] == n) or (out.ndim == 2 and out.shape == (n, 1))
        ):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CleftGanError(
                f"severity model {self.path} returned {shape} for {n} images, expected scores [{n}] or [{n}, 1]"
            )
        if not (out.is_floating_point() or out.dtype in (torch.int32, torch.int64)):
            raise CleftGanError(f"severity model {self.path} returned {out.dtype} scores, expected floats")
        scores = out.detach().reshape(n).to("cpu", torch.float64).numpy()
        bad = ~np.isfinite(scores)
        if bad.any():
            raise CleftGanError(
                f"severity model {self.path} returned {int(bad.sum())} non-finite score(s) (NaN or inf) "
                f"for {n} images; the model or its inputs are broken"
            )
        return scores

    def scores_of(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Scores of every image in ``batches`` (uint8 [n, C, H, W] each) as float64 [N]."""
        parts = [self.scores(b) for b in batches]
        if not parts:
            raise CleftGanError("no images to score")
        return np.concatenate(parts)


def load_severity_model(path: str | Path, device: str | torch.device = "cpu") -> SeverityModel:
    """Load a TorchScript severity model from ``path`` (never downloads)."""
    module, digest, p, dev = load_scripted(
        path, device, what="severity model", staging_help=STAGING_HELP,
        expected="Save the model with torch.jit.save(torch.jit.script(model), path) (pickles and state dicts "
        "are not supported).",
    )
    return SeverityModel(module, digest=digest, path=str(p), device=dev)


class DemoSeverity(torch.nn.Module):
    """A hand-written notch meter for the demo's toy faces, aligned FFHQ-style (NOT clinical).

    uint8 [N, 3, H, W] (H, W >= 16) -> grey -> resampled to 32x32 -> how much darker one side
    of the philtrum and upper lip is than its mirror image (the notch is drawn on one side only,
    so a face without one is nearly symmetric there and lighting and skin tone cancel), divided
    by the brightness of the skin beside it -> scaled so a complete cleft scores 1 -> [N] in [0, 1].
    The notch's height, and so the number of rows it darkens, grows with its severity.

    Calibrated on 32x32 faces (the demo's resolution). Larger faces are resampled to 32x32 and
    score a little lower (complete clefts about 0.85 from 64 or 256 pixels); at 16x16 the notch
    is under a pixel wide and the scores follow severity only weakly (Spearman about 0.3 to 0.5).
    """

    # Plain attributes, set in a fixed order: TorchScript saves them in that order (``__constants__``
    # would be written in hash-seed order, so the file would differ from process to process).
    def __init__(self) -> None:
        super().__init__()
        self.work_size = DEMO_WORK_SIZE
        self.min_size = DEMO_MIN_SIZE
        self.rows = DEMO_ROWS
        self.inner = DEMO_INNER
        self.outer = DEMO_OUTER
        self.outer_weight = DEMO_OUTER_WEIGHT
        self.ref_row = DEMO_REF_ROW
        self.ref_cols = DEMO_REF_COLS
        self.full_contrast = DEMO_FULL_CONTRAST

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[2] < self.min_size or images.shape[3] < self.min_size:
            raise ValueError("demo severity model expects images [N, C, H, W] with H and W >= 16")
        x = images.to(torch.float32).mean(dim=1, keepdim=True)  # grey: the notch is darker in every channel
        size = [self.work_size, self.work_size]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[:, 0]  # identity at 32
        band = x[:, self.rows[0] : self.rows[1], :]  # [N, 3, 32]
        inner = (band[:, :, self.inner[0]] - band[:, :, self.inner[1]]).mean(dim=1)
        outer = (band[:, :, self.outer[0]] - band[:, :, self.outer[1]]).mean(dim=1)
        # signed: positive for a notch on the image's right, negative on its left; either counts
        asymmetry = (inner + self.outer_weight * outer).abs()
        c = self.ref_cols
        skin = x[:, self.ref_row, :]
        ref = (skin[:, c[0]] + skin[:, c[1]] + skin[:, c[2]] + skin[:, c[3]]) / 4
        ref = ref.clamp_min(8.0)  # a black image must not divide by zero
        return (asymmetry / ref / self.full_contrast).clamp(0.0, 1.0)


def save_demo_severity_model(path: str | Path) -> str:
    """Write the demo scorer as TorchScript to ``path``; return its digest."""
    return save_scripted(DemoSeverity(), path)
