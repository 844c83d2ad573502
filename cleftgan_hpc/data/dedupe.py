"""Near-duplicate photos by 64-bit perceptual hash (DCT pHash), numpy only.

pHash: greyscale, resize to 32x32, 2-D DCT-II, keep the 8x8 lowest frequencies, and set one
bit per coefficient that lies above their median (the DC term excluded from the median, as it
only measures brightness). Re-encoding, resizing and mild colour changes move few bits;
a different face moves about half of them. Two photos are duplicates when their hashes differ
in at most ``max_distance`` bits.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 8
IMG_SIZE = 32


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


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


@dataclass(frozen=True)
class Duplicate:
    """``name`` repeats ``duplicate_of`` (the one kept), ``distance`` bits apart."""

    name: str
    duplicate_of: str
    distance: int


def find_duplicates(hashes: Sequence[tuple[str, int]], max_distance: int) -> list[Duplicate]:
    """Near-duplicates among (name, hash) pairs. Names are visited in sorted order; each is
    compared with the photos kept so far and dropped if one lies within ``max_distance`` (the
    nearest such, ties to the earlier name). So the first by name is kept, and the result does
    not depend on the order of ``hashes``."""
    items = sorted(hashes)
    kept_names: list[str] = []
    kept = np.zeros(len(items), dtype=np.uint64)
    out: list[Duplicate] = []
    for name, h in items:
        n = len(kept_names)
        if n:
            x = np.bitwise_xor(kept[:n], np.uint64(h))
            dist = np.unpackbits(x.view(np.uint8).reshape(n, 8), axis=1).sum(axis=1)
            best = int(np.argmin(dist))
            if int(dist[best]) <= max_distance:
                out.append(Duplicate(name, kept_names[best], int(dist[best])))
                continue
        kept[n] = np.uint64(h)
        kept_names.append(name)
    return out
