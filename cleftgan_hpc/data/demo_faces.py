"""Synthetic toy faces with a cleft-like upper-lip notch of known severity (no patient data).

Each face is drawn in "face units" (head half-width = 1, origin at the head's centre, y down)
and placed in the photo by one similarity transform (random scale, rotation, offset), so its
landmarks are known exactly. The notch rises from the upper lip's lower edge beside the
philtrum towards the nostril; ``severity`` is the fraction of that height it covers:
0 none, (0, 1) incomplete, 1 complete (into the nostril, which is then flattened and widened).

Image i depends only on (seed, i): the same seed draws the same faces whatever the count.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cleftgan_hpc.data.landmarks import LANDMARK_COLUMNS

SUPERSAMPLE = 2  # draw at 2x and downsize: antialiased edges without per-shape work
JPEG_EVERY = 6  # every 6th image is a JPEG; every 12th of those also carries an EXIF rotation
EXIF_EVERY = 12

# Canonical geometry (face units).
EYE_X, EYE_Y = 0.36, -0.05
MOUTH_X, MOUTH_Y = 0.28, 0.62  # corners; the lips meet on y = MOUTH_Y
NOSTRIL_Y = 0.335
SKIN_TONES = [(255, 224, 196), (241, 194, 160), (224, 172, 135), (198, 134, 96), (161, 102, 67), (110, 72, 48)]
HAIR_COLOURS = [(30, 22, 18), (70, 45, 30), (120, 80, 45), (190, 150, 90), (150, 60, 30), (90, 90, 90)]
IRIS_COLOURS = [(70, 45, 25), (40, 30, 20), (70, 110, 160), (80, 120, 80), (110, 90, 60)]


@dataclass(frozen=True)
class DemoFace:
    image: Image.Image
    landmarks: np.ndarray  # [4, 2] pixels (pixel-centre convention): eyes, then mouth corners
    severity: float


def severity_group(severity: float) -> int:
    """0 none, 1 incomplete, 2 complete."""
    return 0 if severity <= 0 else (2 if severity >= 1 else 1)


def sample_severity(rng: np.random.Generator) -> float:
    """A third each of none, incomplete (uniform 0.15..0.85) and complete."""
    group = int(rng.integers(3))
    return [0.0, round(float(rng.uniform(0.15, 0.85)), 3), 1.0][group]


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, int, int]:
    c = np.clip(np.array(colour[:3]) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(c[0]), int(c[1]), int(c[2]))


def _scale(colour: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * f), 0, 255)) for c in colour)  # type: ignore[return-value]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    a = _jitter(rng, tuple(int(v) for v in rng.integers(40, 230, 3)), 0)
    b = _jitter(rng, a, 60)
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:
        t = np.zeros_like(yy)  # plain wall
    elif kind == 1:
        t = yy  # vertical gradient
    elif kind == 2:
        t = (yy > rng.uniform(0.55, 0.8)).astype(np.float32)  # wall and floor
    else:
        t = (np.sin((xx * math.cos(1.0) + yy) * rng.uniform(8, 20)) > 0).astype(np.float32) * 0.5  # stripes
    img = np.asarray(a, np.float32) + (np.asarray(b, np.float32) - np.asarray(a, np.float32)) * t[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def draw_face(rng: np.random.Generator, size: int, severity: float | None = None) -> DemoFace:
    """One toy face photo of ``size`` x ``size`` pixels."""
    if severity is None:
        severity = sample_severity(rng)
    ss = SUPERSAMPLE
    canvas = _background(rng, size * ss)
    draw = ImageDraw.Draw(canvas)

    # Pose: head half-width in pixels, rotation, centre.
    scale = rng.uniform(0.2, 0.26) * size * ss
    theta = math.radians(rng.uniform(-12, 12))
    centre = np.array([rng.uniform(0.43, 0.57), rng.uniform(0.42, 0.54)]) * size * ss
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])

    def tf(points: np.ndarray) -> list[tuple[float, float]]:
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2) @ rot.T * scale + centre
        return [(float(x), float(y)) for x, y in p]

    def poly(points: np.ndarray, colour: tuple[int, int, int]) -> None:
        draw.polygon(tf(points), fill=colour)

    def line(points: np.ndarray, colour: tuple[int, int, int], width: float) -> None:
        draw.line(tf(points), fill=colour, width=max(1, round(width * scale)), joint="curve")

    skin = _jitter(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 10)
    shade = _scale(skin, 0.85)
    hair = _jitter(rng, HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 12)
    cloth = _jitter(rng, tuple(int(v) for v in rng.integers(20, 235, 3)), 0)
    hw, hh = rng.uniform(0.92, 1.05), rng.uniform(1.2, 1.38)  # head half-width, half-height

    # Body, hair behind the head, neck, ears, head (narrower towards the chin).
    poly(_ellipse(0, 2.45, 1.9, 0.85), cloth)
    if rng.random() < 0.8:
        poly(_ellipse(0, -0.2, hw * 1.12, hh * 0.95 + rng.uniform(0, 0.35)), hair)
    poly(np.array([[-0.4, 0.8], [0.4, 0.8], [0.45, 1.9], [-0.45, 1.9]]), shade)
    for s in (-1, 1):
        poly(_ellipse(s * hw * 0.98, 0.05, 0.14, 0.24), shade)
    head = _ellipse(0, 0, hw, hh, 64)
    head[:, 0] *= 1 - 0.18 * np.clip(head[:, 1] / hh, 0, 1) ** 2
    poly(head, skin)
    # Hairline: the part of the head above a wavy line.
    if rng.random() < 0.85:
        top = head[head[:, 1] < -0.55 * hh]
        top = top[np.argsort(top[:, 0])]
        wave_x = np.linspace(top[-1, 0], top[0, 0], 9)
        wave_y = -0.55 * hh + rng.uniform(-0.12, 0.12, 9)
        fringe = np.concatenate([top, np.stack([wave_x, wave_y], axis=1)])
        poly(fringe, hair)

    # Brows, eyes.
    brow_w = rng.uniform(0.035, 0.07)
    iris = IRIS_COLOURS[int(rng.integers(len(IRIS_COLOURS)))]
    for s in (-1, 1):
        line(np.array([[s * 0.18, -0.24], [s * 0.36, -0.31], [s * 0.53, -0.25]]), _scale(hair, 0.9), brow_w)
        poly(_ellipse(s * EYE_X, EYE_Y, 0.16, 0.075), (245, 245, 240))
        poly(_ellipse(s * EYE_X, EYE_Y, 0.065, 0.065, 32), iris)
        poly(_ellipse(s * EYE_X, EYE_Y, 0.03, 0.03, 24), (10, 10, 10))
        line(np.array([[s * 0.2, EYE_Y - 0.03], [s * EYE_X, EYE_Y - 0.085], [s * 0.52, EYE_Y - 0.03]]),
             _scale(skin, 0.6), 0.02)

    # Nose: ridge, tip, nostrils (the one on the cleft side flattens with severity).
    cleft_side = 1 if rng.random() < 0.7 else -1
    line(np.array([[0.0, 0.0], [0.03, 0.22]]), _scale(skin, 0.8), 0.025)
    poly(_ellipse(0, 0.29, 0.13, 0.06), _scale(skin, 0.92))
    for s in (-1, 1):
        widen = 1 + 0.8 * severity if s == cleft_side else 1.0
        poly(_ellipse(s * 0.065 * (1 + 0.3 * (widen - 1)), NOSTRIL_Y, 0.033 * widen, 0.017, 24), (60, 35, 30))

    # Lips.
    lip = _jitter(rng, _scale((200, 95, 95), 0.75 + 0.25 * (skin[0] / 255)), 12)
    upper = np.array([[-MOUTH_X, MOUTH_Y], [-0.15, 0.56], [-0.05, 0.545], [0, 0.56], [0.05, 0.545],
                      [0.15, 0.56], [MOUTH_X, MOUTH_Y], [0.15, MOUTH_Y + 0.005], [0, MOUTH_Y + 0.008],
                      [-0.15, MOUTH_Y + 0.005]])
    lower = np.array([[-MOUTH_X, MOUTH_Y], [-0.15, MOUTH_Y + 0.005], [0, MOUTH_Y + 0.008],
                      [0.15, MOUTH_Y + 0.005], [MOUTH_X, MOUTH_Y], [0.14, 0.69], [0, 0.71], [-0.14, 0.69]])
    poly(upper, lip)
    poly(lower, _scale(lip, 1.08))
    line(np.array([[-MOUTH_X, MOUTH_Y], [0, MOUTH_Y + 0.01], [MOUTH_X, MOUTH_Y]]), _scale(lip, 0.5), 0.012)

    # The cleft: a dark wedge from the lip's lower edge up towards the nostril.
    if severity > 0:
        x0 = cleft_side * 0.075
        bottom = MOUTH_Y + 0.01
        top_y = bottom - severity * (bottom - NOSTRIL_Y)
        half = 0.02 + 0.035 * severity
        wedge = np.array([[x0 - half, bottom], [x0 + half, bottom], [x0 + 0.3 * half, top_y], [x0 - 0.3 * half, top_y]])
        poly(wedge, (90, 30, 35))
        line(wedge[[0, 3]], _scale(skin, 0.7), 0.012)
        line(wedge[[1, 2]], _scale(skin, 0.7), 0.012)

    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    noise = rng.normal(0, 2.0, (size, size, 3))
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
    canon = np.array([[-EYE_X, EYE_Y], [EYE_X, EYE_Y], [-MOUTH_X, MOUTH_Y], [MOUTH_X, MOUTH_Y]])
    lm = (np.array(tf(canon)) + 0.5) / ss - 0.5  # supersampled pixel centres -> output pixel centres
    return DemoFace(image, lm, float(severity))


def face_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def demo_file_name(index: int) -> str:
    return f"face_{index:05d}.{'jpg' if index % JPEG_EVERY == JPEG_EVERY - 1 else 'png'}"


def encode_demo(index: int, image: Image.Image) -> bytes:
    """PNG, or for some indices JPEG (some stored sideways with an EXIF orientation tag)."""
    buf = io.BytesIO()
    name = demo_file_name(index)
    if name.endswith(".png"):
        image.save(buf, format="PNG", compress_level=6)
    elif index % EXIF_EVERY == EXIF_EVERY - 1:
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 CW to display": store the pixels turned 90 CCW
        image.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    else:
        image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@dataclass(frozen=True)
class DemoSummary:
    images: Path
    landmarks: Path
    labels: Path
    count: int
    groups: tuple[int, int, int]  # how many none, incomplete, complete


def make_demo_data(out_dir: str | Path, count: int, seed: int = 0, size: int = 256, clefts: bool = True) -> DemoSummary:
    """Draw ``count`` faces into ``out_dir``/images/, with landmarks.csv and labels.csv beside it.
    ``clefts=False`` draws every face without a notch (normal faces, for a normal-face network).

    CSVs are written last (temp + rename), so a half-finished run is never mistaken for data.
    """
    if count < 1 or size < 32:
        raise ValueError(f"count must be >= 1 and size >= 32 (got count={count}, size={size})")
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    lm_rows: list[list[str]] = []
    label_rows: list[list[str]] = []
    groups = [0, 0, 0]
    for i in range(count):
        face = draw_face(face_rng(seed, i), size, None if clefts else 0.0)
        name = demo_file_name(i)
        tmp = images / f".{name}.tmp"
        tmp.write_bytes(encode_demo(i, face.image))
        tmp.replace(images / name)
        lm_rows.append([name, *(f"{v:.2f}" for v in face.landmarks.flatten())])
        group = severity_group(face.severity)
        groups[group] += 1
        label_rows.append([name, f"{face.severity:g}", str(group)])
    _write_csv(out / "landmarks.csv", ["file", *LANDMARK_COLUMNS], lm_rows)
    _write_csv(out / "labels.csv", ["file", "severity", "group"], label_rows)
    return DemoSummary(images, out / "landmarks.csv", out / "labels.csv", count, (groups[0], groups[1], groups[2]))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    tmp.replace(path)
