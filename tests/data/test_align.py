"""FFHQ alignment geometry: landmarks land where the recipe says, whatever the pose."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cleftgan_hpc.data.align import (
    align_face,
    center_crop,
    face_mask,
    ffhq_quad,
    standardise_background,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def dotted(size: tuple[int, int], landmarks: np.ndarray, radius: float, seed: int = 0) -> Image.Image:
    """Mid-grey noise with one pure-coloured disc per landmark."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(100, 140, (size[1], size[0], 3)).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for (x, y), c in zip(landmarks, COLOURS, strict=True):
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=c)
    return im


def centroids(im: Image.Image) -> np.ndarray:
    a = np.asarray(im, dtype=np.float64)
    out = []
    for c in COLOURS:
        d = np.sqrt(((a - np.array(c, dtype=np.float64)) ** 2).sum(axis=-1))
        w = np.clip(1.0 - d / 120.0, 0, None)  # weight pixels by closeness to the pure colour
        ys, xs = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]
        assert w.sum() > 0, f"colour {c} not found"
        out.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    return np.array(out)


def face(centre: tuple[float, float], eye_dist: float, mouth_dist: float, angle_deg: float) -> np.ndarray:
    """Landmarks of a face at ``centre`` (eye midpoint) rotated by ``angle_deg``."""
    canon = np.array([[-eye_dist / 2, 0], [eye_dist / 2, 0], [-eye_dist * 0.4, mouth_dist], [eye_dist * 0.4, mouth_dist]])
    t = math.radians(angle_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return canon @ rot.T + np.array(centre)


def test_quad_of_a_frontal_face_follows_the_ffhq_constants():
    lm = face((200, 150), eye_dist=100, mouth_dist=100, angle_deg=0)
    q = ffhq_quad(lm)
    # half side = max(2.0 * 100, 1.8 * 100); centre 10% of the way from the eyes to the mouth
    np.testing.assert_allclose(q.x, [200, 0], atol=1e-9)
    np.testing.assert_allclose(q.y, [0, 200], atol=1e-9)
    np.testing.assert_allclose(q.c, [200, 160], atol=1e-9)
    out = q.to_output(lm, 256)
    # eyes: 50 px either side of the centre out of a 400 px side; 10 px above the centre
    np.testing.assert_allclose(out[0], [256 * 0.375 - 0.5, 256 * 0.475 - 0.5])
    np.testing.assert_allclose(out[1], [256 * 0.625 - 0.5, 256 * 0.475 - 0.5])


def test_long_face_uses_the_mouth_term():
    q = ffhq_quad(face((0, 0), eye_dist=50, mouth_dist=100, angle_deg=0))
    assert q.size == pytest.approx(2 * 1.8 * 100)


@pytest.mark.parametrize(("angle", "size", "res"), [(0, (400, 300), 128), (25, (400, 300), 128), (-40, (360, 480), 64)])
def test_landmarks_land_where_predicted(angle, size, res):
    lm = face((size[0] / 2, size[1] / 2 - 20), eye_dist=70, mouth_dist=70, angle_deg=angle)
    im = dotted(size, lm, radius=6)
    out, out_lm = align_face(im, lm, res)
    assert out.size == (res, res) and out.mode == "RGB"
    np.testing.assert_allclose(out_lm, ffhq_quad(lm).to_output(lm, res))
    found = centroids(out)
    np.testing.assert_allclose(found, out_lm, atol=0.6 + 64 / res * 0.5)
    # upright: the eyes are level, and left of each other as in the photo
    assert abs(out_lm[0, 1] - out_lm[1, 1]) < 1e-6 and out_lm[0, 0] < out_lm[1, 0]


def test_large_photo_takes_the_shrink_path():
    lm = face((1000, 900), eye_dist=500, mouth_dist=480, angle_deg=10)
    im = dotted((2000, 2000), lm, radius=40)
    out, out_lm = align_face(im, lm, 64)
    np.testing.assert_allclose(centroids(out), out_lm, atol=1.0)


def test_face_at_the_corner_is_reflect_padded_not_black():
    lm = face((40, 40), eye_dist=60, mouth_dist=60, angle_deg=0)
    im = dotted((200, 200), lm, radius=4)
    out, out_lm = align_face(im, lm, 64)
    a = np.asarray(out, dtype=np.float64)
    corner = a[:12, :12]  # lies outside the photo: filled by the reflected, faded padding
    assert corner.min() > 60 and abs(corner.mean() - 120) < 25, "padding must come from the photo, not black"
    assert out_lm.min() > 0 and out_lm.max() < 64


def test_degenerate_landmarks_raise_value_error():
    im = Image.new("RGB", (100, 100))
    with pytest.raises(ValueError, match="degenerate"):
        align_face(im, np.array([[50, 50], [50.5, 50], [45, 70], [55, 70]]), 64)
    with pytest.raises(ValueError, match="NaN"):
        align_face(im, np.array([[np.nan, 50], [60, 50], [45, 70], [55, 70]]), 64)
    with pytest.raises(ValueError, match="shape"):
        align_face(im, np.zeros((5, 2)), 64)


def test_face_mask_and_background_modes():
    res = 64
    lm = ffhq_quad(face((100, 100), 40, 40, 0)).to_output(face((100, 100), 40, 40, 0), res)
    mask = face_mask(res, lm)
    assert mask.shape == (res, res) and mask.min() >= 0 and mask.max() <= 1
    eye_mid = lm[:2].mean(axis=0).round().astype(int)
    assert mask[eye_mid[1], eye_mid[0]] == 1.0
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[0, -1] == 0
    assert 0 < ((mask > 0) & (mask < 1)).sum() < res * res / 4  # a feathered rim, not a hard edge

    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (res, res, 3)).astype(np.uint8), "RGB")
    assert standardise_background(im, lm, "none") is im
    solid = np.asarray(standardise_background(im, lm, "solid", color=(10, 20, 30)))
    assert tuple(solid[0, 0]) == (10, 20, 30)
    np.testing.assert_array_equal(solid[eye_mid[1], eye_mid[0]], np.asarray(im)[eye_mid[1], eye_mid[0]])
    blurred = np.asarray(standardise_background(im, lm, "blur", blur_radius=4)).astype(float)
    assert blurred[:4, :4].std() < np.asarray(im)[:4, :4].astype(float).std() / 2
    with pytest.raises(ValueError):
        standardise_background(im, lm, "sepia")


def test_center_crop():
    im = Image.new("RGB", (300, 200), (0, 0, 0))
    im.paste((255, 255, 255), (50, 0, 250, 200))  # the centred 200x200 square is white
    out = center_crop(im, 32)
    assert out.size == (32, 32) and np.asarray(out).min() > 240
