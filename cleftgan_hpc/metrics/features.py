"""Feature extractors for FID/KID, loaded from a TorchScript file the user names.

The standard is the TorchScript translation of the TF Inception-v3 graph the StyleGAN papers
use (``inception-2015-12-05.pt``): called as ``model(images, return_features=True)`` with
uint8 images [N, 3, H, W] (any size: it resizes internally), it returns 2048-d pool features.
Nothing here downloads: a missing file is a clear error that says how to stage it.

For tests and the demo the project makes its own small extractor (``save_tiny_extractor``):
a fixed random-weight conv net with a documented seed, saved as TorchScript with the same
calling convention, so the same loading and calling code is exercised.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cleftgan_hpc.errors import CleftGanError

INCEPTION_FILENAME = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
TINY_SEED = 20251126  # the project's tiny extractor: weights drawn from torch.Generator(seed)
TINY_FEATURE_DIM = 64

STAGING_HELP = (
    f"Feature extractors are never downloaded at run time. Stage the standard one once, on a machine "
    f"with internet access:\n    curl -fLo {INCEPTION_FILENAME} {INCEPTION_URL}\n"
    f"then copy it to storage the job can read (a shared filesystem path, or the job's store as "
    f"store:KEY) and name it in `feature_extractor:` (finetune or evaluate). 'demo' there uses our small "
    f"stand-in (tests and demos; `cleftgan_hpc.metrics.features.save_tiny_extractor(path)` writes it)."
)


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript is deprecated in recent torch but is the format the standard file uses."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit.*")
        yield


def extractor_digest(path: str | Path) -> str:
    """A content hash of a TorchScript file (hex sha256), stable across re-saves.

    TorchScript archives name their top folder after the file and carry debug tables with
    source paths and a random serialization id; none changes what the network computes, so
    they are left out (otherwise
    the same extractor saved on two machines would miss each other's feature caches).
    Files that are not zip archives are hashed whole.
    """
    h = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as z:
            entries = []
            for info in z.infolist():
                name = info.filename.split("/", 1)[-1]
                if name.endswith(".debug_pkl") or name == ".data/serialization_id" or info.is_dir():
                    continue
                entries.append((name, info))
            for name, info in sorted(entries, key=lambda t: t[0]):
                data = z.read(info)
                h.update(f"{name}\0{len(data)}\0".encode())
                h.update(data)
        return "ts-" + h.hexdigest()
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return "file-" + h.hexdigest()


class ScriptedModel:
    """A loaded user-staged TorchScript network (Inception, LPIPS, a severity scorer)."""

    what = "model"  # how errors name it

    def __init__(self, module: torch.nn.Module, *, digest: str, path: str, device: torch.device) -> None:
        self.module = module
        self.digest = digest  # identifies the network: feature-cache keys, evaluation records
        self.path = path
        self.device = device

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, digest={self.digest[:15]}...)"

    def rgb(self, images: torch.Tensor, *, uint8: bool) -> torch.Tensor:
        """``images`` [N, 1 or 3, H, W] checked (uint8, or float in [0, 255]) and made RGB."""
        dtype_ok = images.dtype == torch.uint8 if uint8 else images.is_floating_point()
        if not dtype_ok or images.ndim != 4 or images.shape[1] not in (1, 3):
            kind = "uint8 images" if uint8 else "float images (0..255)"
            raise CleftGanError(
                f"{self.what} expects {kind} [N, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}"
                + (" (convert with images_to_uint8)" if uint8 else "")
            )
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # grey to RGB, as the reference

    def check_features(self, out: object, n: int) -> torch.Tensor:
        """The module's output, which must be [n, D] features, as float32."""
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CleftGanError(f"{self.what} {self.path} returned {shape}, expected [N, D] features")
        return out.float()


class FeatureExtractor(ScriptedModel):
    """A loaded extractor: ``extractor(images_uint8) -> features`` [N, D] float32."""

    what = "feature extractor"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] with C in (1, 3) -> float32 [N, D] on the extractor's device."""
        images = self.rgb(images, uint8=True)
        return self.check_features(self.module(images.to(self.device), return_features=True), images.shape[0])

    def features(self, batches: Iterable[torch.Tensor]) -> np.ndarray:
        """Features of every image in ``batches`` (uint8 [n, C, H, W] each) as float32 [N, D]."""
        feats = [self(b).cpu().numpy() for b in batches]
        if not feats:
            raise CleftGanError("no images to compute features of")
        return np.concatenate(feats).astype(np.float32, copy=False)


def load_scripted(
    path: str | Path, device: str | torch.device, *, what: str, staging_help: str, expected: str
) -> tuple[torch.nn.Module, str, Path, torch.device]:
    """Load a user-staged TorchScript file (never downloads; nothing in it is unpickled as Python):
    (module in eval mode on ``device``, its digest, its path, the device). A missing or wrong file
    is a CleftGanError that names it as ``what`` and says how to stage it (``staging_help``) or
    what was expected."""
    p = Path(path).expanduser()
    if not p.is_file():
        state = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise CleftGanError(f"{what} {p} {state}.\n{staging_help}")
    dev = torch.device(device)
    try:
        with _quiet_jit():
            module = torch.jit.load(str(p), map_location=dev)
    except (RuntimeError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CleftGanError(f"{what} {p} is not a TorchScript file ({first}). {expected}") from e
    module.eval()
    return module, extractor_digest(p), p, dev


def load_feature_extractor(path: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """Load a TorchScript feature extractor from ``path`` (never downloads)."""
    module, digest, p, dev = load_scripted(
        path, device, what="feature extractor", staging_help=STAGING_HELP,
        expected=f"Expected a file such as {INCEPTION_FILENAME} from {INCEPTION_URL} (the .pkl variant is not "
        "supported).",
    )
    return FeatureExtractor(module, digest=digest, path=str(p), device=dev)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] (float [N, C, H, W]) -> uint8 as the reference quantises."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def random_conv(g: torch.Generator, cin: int, cout: int) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """He-initialised 3x3 conv weight [cout, cin, 3, 3] and bias [cout] from ``g``, for the stand-ins.

    Plain parameters used through ``F.conv2d``, not ``nn.Conv2d`` modules: TorchScript writes a
    module's constants in hash-seed order, so a saved Conv2d differs from process to process."""
    w = torch.randn([cout, cin, 3, 3], generator=g) * (2 / (cin * 9)) ** 0.5
    b = torch.randn([cout], generator=g) * 0.1
    return torch.nn.Parameter(w, requires_grad=False), torch.nn.Parameter(b, requires_grad=False)


class TinyExtractor(torch.nn.Module):
    """A small fixed random-weight conv net standing in for Inception in tests and demos.

    uint8 [N, 3, H, W] -> resized to 64x64 -> 3 stride-2 convs with leaky ReLU -> channel means
    and standard deviations -> [N, feature_dim]. Random conv features are enough to tell image
    distributions apart for a smoke test; they are not a substitute for the real FID.
    """

    def __init__(self, seed: int = TINY_SEED, feature_dim: int = TINY_FEATURE_DIM) -> None:
        super().__init__()
        if feature_dim < 2 or feature_dim % 2:
            raise CleftGanError(f"tiny extractor feature_dim must be even and >= 2, got {feature_dim}")
        g = torch.Generator().manual_seed(seed)
        self.w0, self.b0 = random_conv(g, 3, 16)
        self.w1, self.b1 = random_conv(g, 16, 32)
        self.w2, self.b2 = random_conv(g, 32, feature_dim // 2)

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        # return_features is accepted for the Inception calling convention; there are no logits
        x = images.to(torch.float32) / 127.5 - 1  # [N, 3, H, W]
        x = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        x = F.leaky_relu(F.conv2d(x, self.w0, self.b0, stride=2, padding=1), 0.2)  # 64 -> 32
        x = F.leaky_relu(F.conv2d(x, self.w1, self.b1, stride=2, padding=1), 0.2)  # 32 -> 16
        x = F.leaky_relu(F.conv2d(x, self.w2, self.b2, stride=2, padding=1), 0.2)  # 16 -> 8
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # [N, feature_dim]


def save_scripted(module: torch.nn.Module, path: str | Path) -> str:
    """Script ``module``, write it to ``path`` atomically (a reader never sees half a file) and
    return its digest, which is the same in every process for the same module."""
    buf = io.BytesIO()
    with _quiet_jit():
        torch.jit.save(torch.jit.script(module.eval()), buf)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.part")  # ranks sharing a scratch directory write at once
    tmp.write_bytes(buf.getvalue())
    tmp.replace(p)
    return extractor_digest(p)


def save_tiny_extractor(path: str | Path, seed: int = TINY_SEED, feature_dim: int = TINY_FEATURE_DIM) -> str:
    """Write the tiny extractor as TorchScript to ``path``; return its digest (one per seed)."""
    return save_scripted(TinyExtractor(seed, feature_dim), path)
