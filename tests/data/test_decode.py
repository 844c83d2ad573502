"""Safe decoding: every bad-input case is normalised or rejected with a reason, never raised."""

from __future__ import annotations

import numpy as np
import pytest
from datagen import encode, make_photo, png_header_only
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cleftgan_hpc.data.images import Decoded, Rejected, decode_image, list_images, to_rgb8


def decoded(result: Decoded | Rejected) -> Decoded:
    assert isinstance(result, Decoded), result
    assert result.image.mode == "RGB"
    return result


def rejected(result: Decoded | Rejected) -> str:
    assert isinstance(result, Rejected), result
    return result.reason


def test_rgb_png_jpeg_webp_tiff_bmp_decode():
    im = make_photo()
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP"):
        d = decoded(decode_image(encode(im, fmt)))
        assert d.image.size == im.size and d.format in (fmt, "MPO")


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert "empty" in rejected(decode_image(p))


def test_missing_file(tmp_path):
    assert "cannot read" in rejected(decode_image(tmp_path / "nope.png"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    data = encode(make_photo(200, 150), fmt)
    reason = rejected(decode_image(data[: len(data) // 2]))
    assert "truncated" in reason or "corrupt" in reason or "cannot decode" in reason


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("patient 17: follow-up in March\n")
    assert "not an image" in rejected(decode_image(p))
    p.write_bytes(b"%PDF-1.4\n" + bytes(range(256)))
    assert "not an image" in rejected(decode_image(p))


def test_decompression_bomb_by_our_limit():
    # 30000 x 3000 = 90 MP: under Pillow's own (global) guard, over ours.
    assert "decompression bomb" in rejected(decode_image(png_header_only(30000, 3000), max_pixels=50_000_000))


def test_decompression_bomb_beyond_pillows_guard():
    # 20000 x 20000 = 400 MP: Pillow itself raises; still a Rejected, not an exception.
    assert "decompression bomb" in rejected(decode_image(png_header_only(20000, 20000), max_pixels=10**12))


def test_small_image_over_a_small_limit():
    assert "decompression bomb" in rejected(decode_image(encode(make_photo(100, 100), "PNG"), max_pixels=5000))


def test_pillow_global_limit_untouched():
    before = Image.MAX_IMAGE_PIXELS
    decode_image(png_header_only(20000, 20000))
    decode_image(encode(make_photo(), "PNG"), max_pixels=10)
    assert before == Image.MAX_IMAGE_PIXELS


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    d = decoded(decode_image(encode(cmyk, "JPEG", quality=95)))
    r, g, b = np.asarray(d.image)[16, 16]
    assert r > 200 and g < 60 and b < 60
    assert any("CMYK" in n for n in d.notes)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale(fmt):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    d = decoded(decode_image(encode(Image.fromarray(ramp), fmt)))
    a = np.asarray(d.image)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    np.testing.assert_allclose(a[..., 0], np.rint(ramp / 257.0), atol=1)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert any("16-bit" in n for n in d.notes)


def test_32_bit_float_tiff():
    f = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    d = decoded(decode_image(encode(Image.fromarray(f, "F"), "TIFF")))
    a = np.asarray(d.image)[..., 0]
    assert a[0, 0] == 0 and a[-1, -1] == 255


def test_int32_out_of_range_is_stretched():
    im, notes = to_rgb8(Image.fromarray(np.array([[-1000, 0], [1000, 200000]], dtype=np.int32), "I"))
    a = np.asarray(im)[..., 0]
    assert a.min() == 0 and a.max() == 255 and any("stretched" in n for n in notes)


def test_greyscale_and_bilevel():
    grey = make_photo().convert("L")
    d = decoded(decode_image(encode(grey, "PNG")))
    a = np.asarray(d.image)
    np.testing.assert_array_equal(a[..., 0], np.asarray(grey))
    assert (a[..., 0] == a[..., 2]).all()
    decoded(decode_image(encode(make_photo().convert("1"), "PNG")))


def test_alpha_composited_on_background():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))  # opaque blue left half
    d = decoded(decode_image(encode(rgba, "PNG"), background=(0, 255, 0)))
    a = np.asarray(d.image)
    assert tuple(a[5, 2]) == (0, 0, 255) and tuple(a[5, 15]) == (0, 255, 0)
    assert any("alpha" in n for n in d.notes)


def test_la_and_palette_transparency():
    la = Image.new("LA", (8, 8), (200, 0))
    assert tuple(np.asarray(decoded(decode_image(encode(la, "PNG"))).image)[0, 0]) == (255, 255, 255)
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    d = decoded(decode_image(encode(p, "PNG", transparency=1), background=(1, 2, 3)))
    assert tuple(np.asarray(d.image)[0, 0]) == (1, 2, 3)
    assert tuple(np.asarray(decoded(decode_image(encode(p, "PNG"))).image)[0, 0]) == (255, 0, 0)


# EXIF orientation -> the transpose that stores an upright image so that it displays upright.
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORE))
def test_exif_orientation(orientation):
    upright = make_photo(96, 64)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(upright.transpose(STORE[orientation]), "JPEG", quality=95, exif=exif.tobytes())
    d = decoded(decode_image(data))
    assert d.image.size == (96, 64)
    r, g, b = np.asarray(d.image)[8, 8].astype(int)  # the red quadrant is top-left again
    assert r > 180 and g < 80 and b < 80
    assert any(f"orientation {orientation}" in n for n in d.notes)


@settings(max_examples=60, deadline=None)
@given(prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"RIFF\0\0\0\0WEBP", b"II*\0"]),
       body=st.binary(max_size=300))
def test_garbage_never_raises(prefix, body):
    assert isinstance(decode_image(prefix + body), (Decoded, Rejected))


def test_list_images(tmp_path):
    for rel in ("b.JPG", "a.png", "sub/c.tiff", "notes.txt", ".DS_Store", ".hidden/d.png", "sub/e.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    images, ignored = list_images(tmp_path)
    assert images == ["a.png", "b.JPG", "sub/c.tiff", "sub/e.webp"]
    assert ignored == ["notes.txt"]
