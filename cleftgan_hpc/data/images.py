"""Safe decoding of untrusted photos into 8-bit RGB.

Every failure becomes a ``Rejected(reason)`` value: a clinical folder may hold anything
(empty files, half-copied JPEGs, PDFs renamed .jpg, 16-bit scans, CMYK exports) and one bad
file must never stop a preprocessing run.

Decompression bombs: Pillow's own guard reads the global ``Image.MAX_IMAGE_PIXELS``; we do not
touch that global (other code in the process may rely on it) but check the header size against
our own limit right after ``Image.open`` (which reads only the header) and before ``load()``
(which would allocate). Pillow's guard still fires for images above twice its global limit
(about 179 MP by default); that is caught and reported the same way.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Formats Pillow may try: limiting the plugins both narrows the attack surface and gives a
# clear "not an image" for everything else. MPO is what many phones write as .jpg.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "TIFF", "BMP")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".tif", ".tiff", ".bmp"})


@dataclass(frozen=True)
class Rejected:
    """Why an input could not be used (one line, shown in the report)."""

    reason: str


@dataclass
class Decoded:
    """A decoded photo: 8-bit RGB, upright (EXIF orientation applied)."""

    image: Image.Image
    format: str
    original_mode: str
    original_size: tuple[int, int]
    notes: list[str] = field(default_factory=list)  # normalisations applied, for the report


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = 100_000_000,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Decoded | Rejected:
    """Decode ``source`` (a path or the file's bytes) to upright 8-bit RGB, or say why not.

    Transparent images are composited on ``background``. Never raises for bad input.
    """
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        return Rejected(f"cannot read file: {exc.strerror or exc}")
    if not data:
        return Rejected("empty file (0 bytes)")
    try:
        return _decode(data, max_pixels, background)
    except Image.DecompressionBombError as exc:
        return Rejected(f"decompression bomb: {exc}")
    except UnidentifiedImageError:
        return Rejected(f"not an image (or not one of {', '.join(ALLOWED_FORMATS)})")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg or isinstance(exc, EOFError):
            return Rejected(f"truncated or corrupt image data: {msg}")
        return Rejected(f"cannot decode image: {msg}")
    except MemoryError:
        return Rejected("cannot decode image: out of memory")
    except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile input must not stop the stage
        return Rejected(f"cannot decode image: {type(exc).__name__}: {exc}")


def _decode(data: bytes, max_pixels: int, background: tuple[int, int, int]) -> Decoded | Rejected:
    with warnings.catch_warnings():
        # Between Pillow's limit and twice it Pillow only warns; our own check below decides.
        # Its other warnings (corrupt EXIF, odd chunks) are noise for damaged files we handle.
        warnings.simplefilter("ignore")
        im = Image.open(io.BytesIO(data), formats=_formats())
    w, h = im.size
    if w <= 0 or h <= 0:
        return Rejected(f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        return Rejected(f"decompression bomb: {w}x{h} = {w * h} pixels exceeds max_image_pixels={max_pixels}")
    fmt, mode = im.format or "?", im.mode
    notes: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append("multi-frame file: first frame used")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.load()  # raises on truncated data (ImageFile.LOAD_TRUNCATED_IMAGES stays False)
        orientation = _orientation(im)
        try:
            upright = ImageOps.exif_transpose(im)
            if orientation not in (None, 1):
                notes.append(f"EXIF orientation {orientation} applied")
        except Exception:  # noqa: BLE001 - broken EXIF: keep the pixels as stored
            upright, notes = im, [*notes, "unreadable EXIF orientation ignored"]
    im = upright if upright is not None else im
    rgb, conv = to_rgb8(im, background)
    notes.extend(conv)
    return Decoded(rgb, fmt, mode, (w, h), notes)


@functools.lru_cache(maxsize=1)
def _formats() -> list[str]:
    # Image.open(formats=...) looks the names up in the plugin registry, which Pillow fills
    # lazily: register every plugin once, then keep the allowed ones this build has.
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def _orientation(im: Image.Image) -> int | None:
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001
        return None
    return int(value) if isinstance(value, int) else None


def to_rgb8(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[Image.Image, list[str]]:
    """Convert any Pillow mode to 8-bit RGB; returns the image and notes on what was done."""
    mode = im.mode
    if mode == "RGB":
        return im, []
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    if mode == "P":
        has_alpha = "transparency" in im.info
        im = im.convert("RGBA" if has_alpha else "RGB")
        if not has_alpha:
            return im, ["palette converted to RGB"]
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min() == 255:
            return rgba.convert("RGB"), [f"{mode}: opaque alpha dropped"]
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB"), [f"{mode}: alpha composited on {background}"]
    if mode == "CMYK":
        # Pillow's conversion ignores any ICC profile; good enough for photos exported as CMYK.
        return im.convert("RGB"), ["CMYK converted to RGB"]
    if mode in ("L", "1"):
        return im.convert("L").convert("RGB"), ["greyscale expanded to RGB"]
    return im.convert("RGB"), [f"{mode} converted to RGB"]


def _high_depth_to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """16-bit / 32-bit integer / float greyscale -> 8-bit, keeping the full-scale meaning when
    the values fit a known range (16-bit: /257; float in [0, 1]: *255), else stretching min..max."""
    a = np.asarray(im).astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535 and hi > 255):
        out, note = a / 257.0, f"{im.mode}: 16-bit scaled to 8-bit"
    elif im.mode == "F" and lo >= 0 and hi <= 1.0:
        out, note = a * 255.0, "F: [0, 1] floats scaled to 8-bit"
    elif lo >= 0 and hi <= 255:
        out, note = a, f"{im.mode}: values already 8-bit"
    else:
        span = hi - lo if hi > lo else 1.0
        out, note = (a - lo) * (255.0 / span), f"{im.mode}: range {lo:g}..{hi:g} stretched to 8-bit"
    grey = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB"), [note, "greyscale expanded to RGB"]


def list_images(root: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths under ``root`` (recursive, sorted): (candidate images, ignored files).

    Candidates are chosen by suffix; whether they really are images is decided by decoding.
    Hidden files and folders (``.DS_Store``, ``.git``) are skipped silently.
    """
    images, ignored = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        (images if path.suffix.lower() in IMAGE_SUFFIXES else ignored).append(rel.as_posix())
    return images, ignored
