"""Helpers for the data tests: synthetic photos and byte-level file makers (a plain module,
not conftest.py, so that its name cannot collide with the other test folders' conftest)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but holds almost no data: a
    decompression bomb as far as the header is concerned, cheap to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_photo(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    """A textured RGB image with a red top-left quadrant (to see rotations)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(60, 200, (h, w, 3)).astype(np.uint8)
    a[: h // 2, : w // 2] = (220, 20, 20)
    return Image.fromarray(a, "RGB")
