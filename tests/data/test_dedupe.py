"""pHash near-duplicates: a re-encoded or resized copy is caught, a different face is not."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from cleftgan_hpc.data.dedupe import _dct_matrix, find_duplicates, hamming, phash, thumbnail
from cleftgan_hpc.data.demo_faces import draw_face, face_rng


def jpeg_copy(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def sig(name: str, im: Image.Image) -> tuple[str, int, np.ndarray]:
    return name, phash(im), thumbnail(im)


def test_dct_is_orthonormal():
    d = _dct_matrix()
    np.testing.assert_allclose(d @ d.T, np.eye(d.shape[0]), atol=1e-12)


def test_copies_are_caught_and_other_faces_are_not():
    faces = [draw_face(face_rng(7, i), 256).image for i in range(12)]
    original = faces[0]
    copies = [jpeg_copy(original, 60), original.resize((131, 131), Image.Resampling.BILINEAR),
              jpeg_copy(original.resize((512, 512), Image.Resampling.BICUBIC), 85)]
    for c in copies:
        assert hamming(phash(original), phash(c)) <= 4
    items = [sig(f"face{i:02d}.png", im) for i, im in enumerate(faces)]
    items += [sig(f"face00_copy{k}.jpg", c) for k, c in enumerate(copies)]
    dups = find_duplicates(items, max_distance=6)
    assert sorted((d.name, d.duplicate_of) for d in dups) == [(f"face00_copy{k}.jpg", "face00.png") for k in range(3)]


def test_find_duplicates_keeps_the_first_by_name_whatever_the_order():
    a = draw_face(face_rng(3, 0), 192).image
    b = draw_face(face_rng(3, 1), 192).image
    items = [sig("z_copy.jpg", jpeg_copy(a, 70)), sig("b.png", b), sig("a.png", a),
             sig("m_resized.png", a.resize((100, 100), Image.Resampling.LANCZOS))]
    dups = find_duplicates(items, max_distance=6)
    assert [(d.name, d.duplicate_of) for d in dups] == [("m_resized.png", "a.png"), ("z_copy.jpg", "a.png")]
    assert all(d.distance <= 6 and d.rms <= 10 for d in dups)
    assert find_duplicates(list(reversed(items)), 6) == dups


def test_same_layout_different_colours_is_not_a_duplicate():
    # Identical coarse greyscale structure, different colours: the thumbnail check says no.
    a = Image.new("RGB", (64, 64), (200, 60, 60))
    a.paste((40, 40, 40), (16, 16, 48, 48))
    b = Image.new("RGB", (64, 64), (60, 200, 60))
    b.paste((40, 40, 40), (16, 16, 48, 48))
    assert find_duplicates([sig("a", a), sig("b", b)], max_distance=64) == []
    assert [d.name for d in find_duplicates([sig("a", a), sig("a2", a.copy())], 0)] == ["a2"]
