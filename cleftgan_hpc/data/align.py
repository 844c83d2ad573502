"""FFHQ-style face alignment from five points, and background standardisation.

The recipe is the one published with the FFHQ dataset (Karras et al., 2019), which CleftGAN
follows so that its photos sit where the FFHQ-pretrained StyleGAN3 expects a face:

1. An oriented square ("quad") from the eye centres and the mouth corners: its x axis is the
   eye-to-eye direction blended with the perpendicular of the eye-to-mouth direction; its half
   side is max(2.0 * eye distance, 1.8 * eye-to-mouth distance); its centre lies 10% of the way
   from the eye midpoint towards the mouth midpoint.
2. Very large faces are first shrunk by an integer factor (cheaper, and antialiased).
3. The photo is cropped to the quad plus a border of 10% of the quad size.
4. Where the quad leaves the photo, the photo is reflect-padded (at least 30% of the quad size)
   and the padding is blurred and faded towards the median colour, so no hard mirror seams.
5. The quad is resampled (bilinear) to a square of 4x the target size, then LANCZOS-downsized:
   supersampling avoids aliasing of the bilinear quad transform.

Landmarks are an array ``[4, 2]`` (x, y pixels): left eye centre, right eye centre, left mouth
corner, right mouth corner, "left" meaning the image's left (the subject's right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

LEFT_EYE, RIGHT_EYE, MOUTH_LEFT, MOUTH_RIGHT = range(4)

# FFHQ constants (see the module docstring).
X_SCALE_EYES = 2.0
X_SCALE_MOUTH = 1.8
CENTRE_TOWARDS_MOUTH = 0.1
BORDER_FRACTION = 0.1
PAD_FRACTION = 0.3
PAD_BLUR_FRACTION = 0.02
SUPERSAMPLE = 4
MAX_TRANSFORM = 4096

# The face ellipse for background standardisation, in units of the aligned eye distance (e)
# and eye-to-mouth distance (m): centred 0.35 m below the eye midpoint, semi-axes 1.45 e
# across and 2.2 m down (forehead/hairline to just below the chin on adult and infant faces);
# the edge fades over +-FEATHER of the radius so the face blends into the new background.
ELLIPSE_CENTRE_M = 0.35
ELLIPSE_HALF_WIDTH_E = 1.45
ELLIPSE_HALF_HEIGHT_M = 2.2
FEATHER = 0.12


@dataclass(frozen=True)
class Quad:
    """The oriented square in source pixels: centre c, half-axes x (rightwards), y (downwards)."""

    c: np.ndarray  # [2]
    x: np.ndarray  # [2]
    y: np.ndarray  # [2]

    @property
    def corners(self) -> np.ndarray:
        """[4, 2] top-left, bottom-left, bottom-right, top-right (Pillow's QUAD order)."""
        c, x, y = self.c, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    @property
    def size(self) -> float:
        """Side length in source pixels."""
        return float(np.hypot(*self.x) * 2)

    def to_output(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """Where source points land in the aligned ``resolution`` x ``resolution`` image.

        Points use the pixel-centre convention (pixel i covers i-0.5..i+0.5) in and out."""
        d = np.asarray(points, dtype=np.float64) - self.c
        u = d @ self.x / float(self.x @ self.x)
        v = d @ self.y / float(self.y @ self.y)
        return np.stack([(u + 1) * 0.5 * resolution - 0.5, (v + 1) * 0.5 * resolution - 0.5], axis=-1)


def check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Validate a [4, 2] landmark array; raise ValueError with the reason."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (4, 2):
        raise ValueError(f"landmarks must be 4 (x, y) points, got shape {lm.shape}")
    if not np.all(np.isfinite(lm)):
        raise ValueError("landmarks contain NaN or infinite values")
    eye_dist = np.hypot(*(lm[RIGHT_EYE] - lm[LEFT_EYE]))
    mouth = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2 - (lm[LEFT_EYE] + lm[RIGHT_EYE]) / 2
    if eye_dist < 2 or np.hypot(*mouth) < 2:
        raise ValueError("landmarks are degenerate (eyes or eyes and mouth less than 2 pixels apart)")
    return lm


def ffhq_quad(landmarks: np.ndarray) -> Quad:
    """The FFHQ crop square for five-point landmarks."""
    lm = check_landmarks(landmarks)
    eye_avg = (lm[LEFT_EYE] + lm[RIGHT_EYE]) * 0.5
    eye_to_eye = lm[RIGHT_EYE] - lm[LEFT_EYE]
    mouth_avg = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    # Blend the eye line with the eye-to-mouth direction rotated by -90 degrees, so that a tilted
    # mouth (or eyes) alone does not rotate the face.
    x = np.array([eye_to_eye[0] + eye_to_mouth[1], eye_to_eye[1] - eye_to_mouth[0]])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * X_SCALE_EYES, np.hypot(*eye_to_mouth) * X_SCALE_MOUTH)
    y = np.array([-x[1], x[0]])
    c = eye_avg + eye_to_mouth * CENTRE_TOWARDS_MOUTH
    return Quad(c=c, x=x, y=y)


def face_size(landmarks: np.ndarray) -> float:
    """The side, in source pixels, of the square that alignment resamples to the output: what
    decides how much real detail the aligned face has (raise ValueError for bad landmarks)."""
    return ffhq_quad(landmarks).size


def align_face(image: Image.Image, landmarks: np.ndarray, resolution: int) -> tuple[Image.Image, np.ndarray]:
    """Align an RGB photo to a ``resolution`` square the FFHQ way.

    Returns the aligned image and the landmarks in its coordinates (for the face mask).
    """
    quad = ffhq_quad(landmarks)
    out_landmarks = quad.to_output(landmarks, resolution)
    corners = quad.corners.copy()
    qsize = quad.size
    img = image if image.mode == "RGB" else image.convert("RGB")

    # Shrink: never resample from far more pixels than the output needs.
    shrink = int(math.floor(qsize / resolution * 0.5))
    if shrink > 1:
        w, h = img.size
        img = img.resize((max(1, round(w / shrink)), max(1, round(h / shrink))), Image.Resampling.LANCZOS)
        corners /= shrink
        qsize /= shrink

    # Crop to the quad plus a border.
    border = max(int(round(qsize * BORDER_FRACTION)), 3)
    lo = np.floor(corners.min(axis=0)).astype(int)
    hi = np.ceil(corners.max(axis=0)).astype(int)
    w, h = img.size
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0), min(hi[0] + border, w), min(hi[1] + border, h))
    if crop[2] - crop[0] < w or crop[3] - crop[1] < h:
        if crop[2] <= crop[0] or crop[3] <= crop[1]:
            raise ValueError("the face lies entirely outside the photo")
        img = img.crop(crop)
        corners -= crop[:2]

    # Pad where the quad leaves the photo.
    lo = np.floor(corners.min(axis=0)).astype(int)
    hi = np.ceil(corners.max(axis=0)).astype(int)
    w, h = img.size
    pad = [max(-lo[0] + border, 0), max(-lo[1] + border, 0), max(hi[0] - w + border, 0), max(hi[1] - h + border, 0)]
    if max(pad) > border - 4:
        pad = [max(p, int(round(qsize * PAD_FRACTION))) for p in pad]
        img = _reflect_pad_faded(img, pad, qsize)
        corners += np.array(pad[:2], dtype=np.float64)

    # Quad transform with supersampling, then one LANCZOS step down to the target size.
    transform_size = min(resolution * SUPERSAMPLE, max(MAX_TRANSFORM, resolution))
    data = tuple(float(v) for v in (corners + 0.5).flatten())
    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, data, Image.Resampling.BILINEAR)
    if transform_size != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return img, out_landmarks


def _reflect_pad_faded(img: Image.Image, pad: list[int], qsize: float) -> Image.Image:
    """Reflect-pad (left, top, right, bottom) and blend the padding towards a blurred copy and
    then towards the median colour, increasingly with the distance from the photo's edge."""
    left, top, right, bottom = pad
    src = np.asarray(img, dtype=np.float32)
    a = np.pad(src, ((top, bottom), (left, right), (0, 0)), mode="reflect")  # any width: numpy repeats
    h, w = a.shape[:2]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    fx = 1.0 - np.minimum(xx / max(left, 1), (w - 1 - xx) / max(right, 1))
    fy = 1.0 - np.minimum(yy / max(top, 1), (h - 1 - yy) / max(bottom, 1))
    mask = np.maximum(fx, fy)[..., None]  # 0 inside the photo, rising to 1 at the outer edge
    blur_radius = max(qsize * PAD_BLUR_FRACTION, 0.5)
    blurred = np.asarray(
        Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur_radius)),
        dtype=np.float32,
    )
    a = a + (blurred - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a = a + (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")


def face_mask(resolution: int, aligned_landmarks: np.ndarray) -> np.ndarray:
    """A float mask [H, W] in [0, 1]: 1 on the face ellipse, 0 outside, feathered edge."""
    lm = np.asarray(aligned_landmarks, dtype=np.float64)
    eye_avg = (lm[LEFT_EYE] + lm[RIGHT_EYE]) / 2
    e = float(np.hypot(*(lm[RIGHT_EYE] - lm[LEFT_EYE])))
    mouth_vec = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2 - eye_avg
    m = float(np.hypot(*mouth_vec))
    centre = eye_avg + mouth_vec * ELLIPSE_CENTRE_M
    ax, ay = ELLIPSE_HALF_WIDTH_E * e, ELLIPSE_HALF_HEIGHT_M * m
    coords = np.arange(resolution, dtype=np.float64)  # pixel centres, as the landmarks
    dx = (coords[None, :] - centre[0]) / ax
    dy = (coords[:, None] - centre[1]) / ay
    r = np.sqrt(dx * dx + dy * dy)
    t = np.clip((1.0 + FEATHER - r) / (2 * FEATHER), 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible ring at either end


def standardise_background(
    image: Image.Image,
    aligned_landmarks: np.ndarray,
    mode: str,
    *,
    color: tuple[int, int, int] = (128, 128, 128),
    blur_radius: float = 8.0,
) -> Image.Image:
    """Replace what lies outside the face ellipse: ``none`` keeps it, ``blur`` blurs it,
    ``solid`` fills it with ``color``."""
    if mode == "none":
        return image
    if mode == "blur":
        back = image.filter(ImageFilter.GaussianBlur(blur_radius))
    elif mode == "solid":
        back = Image.new("RGB", image.size, tuple(int(c) for c in color))
    else:
        raise ValueError(f"unknown background mode {mode!r}: expected none, blur or solid")
    mask = face_mask(image.size[0], aligned_landmarks)
    fg = np.asarray(image, dtype=np.float32)
    bg = np.asarray(back, dtype=np.float32)
    out = bg + (fg - bg) * mask[..., None]
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """The fallback: the centred square of the photo, resized to ``resolution``."""
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=3.0)
