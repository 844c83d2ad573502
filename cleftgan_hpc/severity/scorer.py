"""The severity index: score faces by normalising them with a generator of normal faces.

After Hayajneh, Shaqfeh, Serpedin and Stotland, "Unsupervised anomaly appraisal of cleft faces
using a StyleGAN2-based model adaptation technique" (PLOS ONE 18(8), 2023, e0288228), which
publishes no code: each face is projected into the generator's W+ (``project.py``), the
generator is adapted to it for a few steps (``adapt.py``) so it draws the person but not the
anomaly, and the face is compared with that normalised version pixel by pixel after a colour
transform, eroded into a heat map and reduced to a score (``heatmap.py``). Higher is further
from the normal faces the generator learned. A research measure, not a clinical one.

    index = SeverityIndex.from_file("stylegan3-t-ffhq-1024x1024.pkl", SeverityIndexOptions(), "cuda", lpips=lp)
    index.check_images(1024, 3)                  # refuses a set the network cannot draw, before any work
    result = index.score(images_uint8_nchw)      # .scores [N], .projection_loss, .peaks, ...

Works with any generator offering ``z_dim``, ``w_dim``, ``num_ws``, ``c_dim``,
``img_resolution``, ``img_channels``, ``mapping(z, c)`` and ``synthesis(ws, noise_mode=...)``:
our StyleGAN3 and StyleGAN2 networks, as ``cleftgan_hpc.model.load_network`` reads them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.severity import SeverityIndexOptions
from cleftgan_hpc.metrics.lpips import LPIPSNet
from cleftgan_hpc.seeds import derive_seed
from cleftgan_hpc.severity.adapt import Adapter, keep_mask
from cleftgan_hpc.severity.heatmap import default_erosion_radius, difference_map, heat_maps
from cleftgan_hpc.severity.losses import ImageLoss
from cleftgan_hpc.severity.project import WStats, pixel_weight, project, w_stats

VERSION = 1  # of the scoring arithmetic: saved and cached scores of another version are not reused
COLUMNS = ("score", "projection_loss", "adaptation_loss", "peak_row", "peak_col")


@dataclass
class IndexResult:
    """Per-image results of one call; ``heat`` and ``normalised`` only when asked for."""

    scores: np.ndarray  # float64 [N], higher = further from normal
    projection_loss: np.ndarray  # float64 [N]: image distance after projection (did it converge?)
    adaptation_loss: np.ndarray  # float64 [N]: after adaptation (the projection's when it is off)
    peaks: np.ndarray  # float64 [N, 2]: (row, column) of the heat map's maximum, fractions of the image
    heat: np.ndarray | None = None  # float32 [N, H, W]
    normalised: np.ndarray | None = None  # uint8 [N, H, W, C]: the faces as the adapted generator draws them

    def table(self) -> np.ndarray:
        """The saved columns (``COLUMNS``) as float64 [N, 5]."""
        return np.column_stack([self.scores, self.projection_loss, self.adaptation_loss, self.peaks])


def image_seed(image: torch.Tensor, seed: int) -> int:
    """The projection-noise seed of one image: a function of its pixels and ``seed`` only, so an
    image gets the same noise in any batch, task, source or run."""
    digest = hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return derive_seed("severity-index", seed, digest)


class SeverityIndex:
    """The scorer: a normal-face generator, the options, and (optionally) an LPIPS network."""

    def __init__(
        self,
        G: Any,
        options: SeverityIndexOptions,
        device: str | torch.device = "cpu",
        *,
        lpips: LPIPSNet | None = None,
        network_sha256: str = "",
    ) -> None:
        if int(getattr(G, "c_dim", 0)) != 0:
            raise CleftGanError(
                f"the normal-face network is conditional ({G.c_dim} classes); the severity index needs an "
                "unconditional generator of normal faces (e.g. the FFHQ network the fine-tune starts from)"
            )
        self.G = G.to(device).eval().requires_grad_(False)
        self.options, self.device, self.lpips = options, torch.device(device), lpips
        self.network_sha256 = network_sha256
        p, a = options.projection, options.adaptation
        self.project_loss = ImageLoss(lpips, p.lpips_weight, pixel_weight(p, lpips is not None and p.lpips_weight > 0),
                                      p.perceptual_size)
        self.adapt_loss = ImageLoss(lpips, a.lpips_weight, a.pixel_weight, p.perceptual_size)
        if not (self.project_loss.uses_lpips or self.project_loss.pixel_weight > 0):
            raise CleftGanError("severity index: the projection has no loss (pixel_weight 0 and no LPIPS network)")
        if a.steps > 0 and not (self.adapt_loss.uses_lpips or a.pixel_weight > 0):
            raise CleftGanError("severity index: adaptation has no loss (pixel_weight 0 and no LPIPS network)")
        self._stats: WStats | None = None
        self._adapter: Adapter | None = None

    @classmethod
    def from_file(
        cls, path: str | Path, options: SeverityIndexOptions, device: str | torch.device = "cpu",
        *, lpips: LPIPSNet | None = None,
    ) -> SeverityIndex:
        """Load the normal-face generator (G_ema when the file has one) from any network file the loader reads."""
        from cleftgan_hpc.model import load_network
        from cleftgan_hpc.storage.base import sha256_file

        return cls(load_network(path).generator(), options, device, lpips=lpips, network_sha256=sha256_file(path))

    # -- identity -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What the scores depend on, for records (metrics.json, severity.json)."""
        return {
            "scorer": "severity-index",
            "version": VERSION,
            "normal_network_sha256": self.network_sha256,
            "normal_network": {"img_resolution": int(self.G.img_resolution), "img_channels": int(self.G.img_channels),
                               "num_ws": int(self.G.num_ws), "w_dim": int(self.G.w_dim)},
            "lpips": self.lpips.digest if self.lpips is not None and self.uses_lpips else None,
            "options": self.options.model_dump(mode="json"),
            "erosion_radius": self.erosion_radius,
        }

    @property
    def uses_lpips(self) -> bool:
        """Whether a loss weighs the LPIPS network in (with zero weights it changes nothing: the scores
        are the same as without one, and so are the digest and the cache entry)."""
        return self.project_loss.uses_lpips or (self.options.adaptation.steps > 0 and self.adapt_loss.uses_lpips)

    @property
    def digest(self) -> str:
        """sha256 of ``describe()``: keys saved progress and the real-set score cache."""
        return hashlib.sha256(json.dumps(self.describe(), sort_keys=True).encode()).hexdigest()

    @property
    def erosion_radius(self) -> int:
        r = self.options.erosion_radius
        return default_erosion_radius(int(self.G.img_resolution)) if r is None else r

    # -- checks before any work ---------------------------------------------------------------
    def check_images(self, resolution: int, channels: int, what: str = "the images") -> None:
        """Refuse images the generator cannot draw: another size or number of channels."""
        res, ch = int(self.G.img_resolution), int(self.G.img_channels)
        if channels != ch:
            raise CleftGanError(
                f"{what} have {channels} channel(s), the normal-face network draws {ch}: score images of its kind"
            )
        if resolution != res:
            raise CleftGanError(
                f"{what} are {resolution}x{resolution}, the normal-face network draws {res}x{res}: the index "
                f"compares pixels, so align and crop the faces to {res}x{res} as the network's training faces were "
                "(the preprocess stage at that resolution), or use a network of their size"
            )

    # -- scoring ------------------------------------------------------------------------------
    @property
    def stats(self) -> WStats:
        if self._stats is None:
            self._stats = w_stats(self.G, self.options.projection.w_avg_samples, self.options.seed, self.device)
        return self._stats

    @torch.no_grad()
    def mean_face(self) -> torch.Tensor:
        """The generator's image at the mean w, uint8 [1, C, H, W] (for the alignment check)."""
        from cleftgan_hpc.metrics.features import images_to_uint8
        from cleftgan_hpc.severity.project import synthesize

        ws = self.stats.mean.to(self.device)[None, None].repeat(1, self.G.num_ws, 1)
        return images_to_uint8(synthesize(self.G, ws)).cpu()

    def score(
        self,
        images: torch.Tensor | np.ndarray,  # uint8 [N, C, H, W]
        *,
        keep_maps: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> IndexResult:
        """Score ``images`` in batches of ``options.batch``; raises StopRequested when asked to stop."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise CleftGanError(f"severity index: expected uint8 images [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise CleftGanError("severity index: no images to score")
        if x.shape[2] != x.shape[3]:
            raise CleftGanError(f"severity index: images must be square, got {x.shape[3]}x{x.shape[2]}")
        self.check_images(int(x.shape[2]), int(x.shape[1]))
        parts = [self._batch(chunk, keep_maps, should_stop) for chunk in x.split(self.options.batch)]
        cat = (lambda name: np.concatenate([getattr(p, name) for p in parts]))  # noqa: E731
        return IndexResult(
            scores=cat("scores"), projection_loss=cat("projection_loss"), adaptation_loss=cat("adaptation_loss"),
            peaks=cat("peaks"), heat=cat("heat") if keep_maps else None,
            normalised=cat("normalised") if keep_maps else None,
        )

    def _batch(self, u8: torch.Tensor, keep_maps: bool, should_stop: Callable[[], bool] | None) -> IndexResult:
        o = self.options
        seeds = [image_seed(img, o.seed) for img in u8]
        targets = u8.to(self.device, torch.float32) / 127.5 - 1  # [-1, 1], as the generator draws
        proj = project(self.G, targets, seeds, self.stats, self.project_loss, o.projection, should_stop)
        faces = (targets + 1) / 2  # [0, 1] for the colour transform
        if self._adapter is None:
            self._adapter = Adapter(self.G, o.adaptation, self.adapt_loss)
        error = difference_map(faces, _unit(proj.images), o.colour, o.channel_weights)
        keep = keep_mask(error, o.adaptation.ignore_fraction)
        adapted = self._adapter.adapt(proj.ws, targets, keep, proj.images, proj.loss, should_stop)
        normalised = _unit(adapted.images)
        maps = heat_maps(faces, normalised, o.colour, o.channel_weights, self.erosion_radius, o.reduce,
                         o.top_fraction, o.region)
        as_np = (lambda t: t.detach().to("cpu", torch.float64).numpy())  # noqa: E731
        result = IndexResult(
            scores=as_np(maps.scores), projection_loss=as_np(proj.loss), adaptation_loss=as_np(adapted.loss),
            peaks=as_np(maps.peaks),
        )
        if keep_maps:
            result.heat = maps.heat.detach().to("cpu", torch.float32).numpy()
            result.normalised = (normalised * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return result


def _unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output in about [-1, 1] -> [0, 1], clipped as an image would be."""
    return ((images + 1) / 2).clamp(0, 1)


ALIGNMENT_SIZE = 32  # both images are compared as blurred grey thumbnails of this size
ALIGNMENT_WARN = 0.3  # below this correlation the images are probably not aligned as the network's faces


def alignment(images: torch.Tensor, mean_face: torch.Tensor) -> float:
    """Pearson correlation of the mean of ``images`` (uint8 [N, C, H, W]) with the generator's mean
    face (uint8 [1, C, H, W]) as grey 32x32 thumbnails. Faces aligned as the network's training faces
    put eyes, nose and mouth where its mean face has them (high correlation); unaligned photos, other
    crops or other subjects do not. A cheap check before any optimisation, not a proof."""
    import torch.nn.functional as F

    def thumb(x: torch.Tensor) -> torch.Tensor:
        grey = x.to(torch.float64).mean(dim=(0, 1), keepdim=True)  # [1, 1, H, W]
        return F.adaptive_avg_pool2d(grey, ALIGNMENT_SIZE).flatten()

    a, b = thumb(images.cpu()), thumb(mean_face.cpu())
    a, b = a - a.mean(), b - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a @ b) / denom) if denom > 0 else 0.0
