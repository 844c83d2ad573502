"""Images -> encoded bytes. Runs in worker processes, so it imports neither torch nor the store.

Encoders are called with fixed settings (no 'optimize' passes that search, no timestamps in
the files), so the same pixels always give the same bytes with the same Pillow build.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sys

import numpy as np
from PIL import Image

PNG_COMPRESS_LEVEL = 6  # zlib's default: ~2x faster than 9 for a few % larger files
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Encoding worker initializer: the kernel SIGKILLs this process when its parent dies, however it
    dies (Linux; elsewhere a no-op). Otherwise a SIGKILLed synthesize leaves its encoders running, and
    they hold multiprocessing's resource tracker open too (it exits once the last of them is gone).

    The signal fires when the *thread* that started the worker ends: the pool's user (its submit
    starts spawn workers) outlives the pool, so that thread is the main one or one that shuts it down.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # best effort: e.g. a seccomp filter; the worker still works
    if os.getppid() != parent_pid:  # the parent died before prctl took effect: no signal will come
        os._exit(1)


def encode_image(pixels: np.ndarray, fmt: str, quality: int | None, resize: int | None) -> bytes:
    """[H, W, C] uint8 -> the file's bytes in ``fmt`` (png, jpeg or webp)."""
    im = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, "L" if pixels.shape[2] == 1 else "RGB")
    if resize is not None and im.size != (resize, resize):
        im = im.resize((resize, resize), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if fmt == "png":
        im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif fmt == "jpeg":
        im.save(buf, "JPEG", quality=quality, subsampling=0 if (quality or 0) >= 90 else 2)
    elif fmt == "webp":
        im.save(buf, "WEBP", quality=quality, method=4)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def encode_batch(
    images: np.ndarray, fmt: str, quality: int | None, resize: int | None
) -> list[tuple[bytes, str]]:
    """[N, H, W, C] uint8 -> [(bytes, sha256 hex)] in order (the unit of work sent to a worker)."""
    out = []
    for pixels in images:
        data = encode_image(pixels, fmt, quality, resize)
        out.append((data, hashlib.sha256(data).hexdigest()))
    return out
