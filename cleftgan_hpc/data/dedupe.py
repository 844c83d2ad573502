"""Near-duplicate photos by 64-bit perceptual hash (DCT pHash), numpy only.

pHash: greyscale, resize to 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies, and set one
bit per coefficient that lies above their median (the DC term excluded from the median, as it
only measures brightness). Re-encoding, resizing and mild colour changes move few bits;
a different face moves about half of them. Two photos are duplicates when their hashes differ
in at most ``max_distance`` bits and (the confirmation step) their 16x16 colour thumbnails
differ by at most ``max_rms`` grey levels RMS. The confirmation matters for photos taken with
the same framing: 64 greyscale bits of coarse layout can coincide for two different people
(a dark head on a light backdrop), while a re-encoded or resized copy also matches in colour.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMG_SIZE = 32
THUMB_SIZE = 16
MAX_RMS = 10.0  # JPEG re-encoding and resizing stay below ~4; different photos rarely do


@functools.lru_cache(maxsize=1)
def _dct_matrix(n: int = IMG_SIZE) -> np.ndarray:
    """Orthonormal DCT-II matrix D, so that D @ X @ D.T is the 2-D DCT of X."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d


def phash(image: Image.Image) -> int:
    """The 64-bit perceptual hash of ``image`` as an unsigned int (first bit = DC term)."""
    grey = image.convert("L").resize((IMG_SIZE, IMG_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
    x = np.asarray(grey, dtype=np.float64)
    d = _dct_matrix()
    low = (d @ x @ d.T)[:HASH_SIZE, :HASH_SIZE].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits.astype(np.uint8)).view(">u8")[0])


def thumbnail(image: Image.Image) -> np.ndarray:
    """A 16x16 RGB thumbnail [16, 16, 3] uint8: the confirmation signature."""
    small = image.convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@dataclass(frozen=True)
class Duplicate:
    """``name`` repeats ``duplicate_of`` (the one kept): ``distance`` bits apart, ``rms`` grey
    levels between the thumbnails."""

    name: str
    duplicate_of: str
    distance: int
    rms: float


def find_duplicates(
    items: Sequence[tuple[str, int, np.ndarray]], max_distance: int, max_rms: float = MAX_RMS
) -> list[Duplicate]:
    """Near-duplicates among (name, phash, thumbnail) triples. Names are visited in sorted
    order; each is compared with the photos kept so far and dropped if one matches (the nearest
    by hash distance, ties to the earlier name). So the first by name is kept, and the result
    does not depend on the order of ``items``."""
    ordered = sorted(items, key=lambda t: t[0])
    kept_names: list[str] = []
    kept = np.zeros(len(ordered), dtype=np.uint64)
    thumbs = np.zeros((len(ordered), THUMB_SIZE * THUMB_SIZE * 3), dtype=np.float32)
    out: list[Duplicate] = []
    for name, h, thumb in ordered:
        n = len(kept_names)
        t = np.asarray(thumb, dtype=np.float32).reshape(-1)
        match = _match(kept[:n], thumbs[:n], h, t, max_distance, max_rms) if n else None
        if match is not None:
            j, dist, rms = match
            out.append(Duplicate(name, kept_names[j], dist, rms))
            continue
        kept[n] = np.uint64(h)
        thumbs[n] = t
        kept_names.append(name)
    return out


def _match(
    hashes: np.ndarray, thumbs: np.ndarray, h: int, t: np.ndarray, max_distance: int, max_rms: float
) -> tuple[int, int, float] | None:
    """(index, distance, rms) of the nearest kept photo that confirms as a duplicate, or None."""
    x = np.bitwise_xor(hashes, np.uint64(h))
    dist = np.unpackbits(x.view(np.uint8).reshape(len(hashes), 8), axis=1).sum(axis=1)
    candidates = np.flatnonzero(dist <= max_distance)
    for j in candidates[np.argsort(dist[candidates], kind="stable")]:
        rms = float(np.sqrt(np.mean((thumbs[j] - t) ** 2)))
        if rms <= max_rms:
            return int(j), int(dist[j]), round(rms, 2)
    return None
