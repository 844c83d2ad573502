"""Triton kernels for the filtered leaky ReLU (imported only by ``compiled.py``, and only lazily).

Two kernels, each launched over the flattened output in blocks of BLOCK values (a multiple
of 8, so every byte of a packed code is written by one program):

- ``_fir``: one upfirdn2d pass, polyphase: each output sums only the filter taps that meet an
  input sample (ceil(K / up) per axis), never the zeros of an upsampled signal. The filter is
  [KH, KW]: a 2-D filter in one pass, a separable one as a [1, K] then a [K, 1] pass. Optional
  prologue: a per-channel bias added to the input samples (padding stays zero, as bias-then-pad).
  Optional epilogues: the activation (leaky ReLU, clamp, gain) writing the packed sign and clamp
  codes (the forward's up pass), or the activation's derivative read from those codes (the
  backward's transposed down pass).
- ``_act``: the activation alone, elementwise (bias, leaky ReLU, clamp, gain, codes), for an
  op with no upsampling, and its derivative, for one with no downsampling.

The codes are those of ``lean.pack_bits``: bit i of byte k is value 8k + i of the flattened
upsampled tensor; the sign code marks u <= 0, the clamp code |lrelu(u)| > bound. So a backward
that needs a graph (double backward) can run ``lean.py``'s PyTorch backward on them.

Arithmetic is float32 in registers whatever the storage dtype (float32, float16, bfloat16).
With TRITON_INTERPRET=1 set before triton itself is imported (Triton decorates its own library
functions then), the kernels run in Triton's interpreter on CPU tensors: the tests do that.
"""

from __future__ import annotations

import triton
import triton.language as tl

try:
    INTERPRETED = bool(triton.knobs.runtime.interpret)  # decided when the kernels below are decorated
except AttributeError:  # an older triton
    import os

    INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Shapes, paddings and scalars are not specialised on: one compiled kernel per constexpr set and
# dtype, whatever the image size, so the kernels warmed at image build time are the ones jobs use.
_RUNTIME = ["n", "C", "H", "W", "OH", "OW", "px0", "py0", "px0m", "py0m", "HW", "slope", "bound", "gain"]


@triton.jit
def _pack_store(ptr, bits, pid, n, BLOCK: tl.constexpr):
    """Store BLOCK 0/1 values as BLOCK // 8 bytes, bit i of byte k = value 8k + i."""
    b = tl.reshape(bits.to(tl.int32), (BLOCK // 8, 8))
    byte = tl.sum(b << tl.arange(0, 8)[None, :], axis=1)
    idx = pid.to(tl.int64) * (BLOCK // 8) + tl.arange(0, BLOCK // 8)
    tl.store(ptr + idx, byte.to(tl.uint8), mask=idx < (n + 7) // 8)


@triton.jit
def _code_bit(ptr, offs, m):
    byte = tl.load(ptr + offs // 8, mask=m, other=0).to(tl.int32)
    return ((byte >> (offs % 8).to(tl.int32)) & 1) != 0


@triton.jit(do_not_specialize=[a for a in _RUNTIME if a != "HW"])
def _fir(
    x_ptr, f_ptr, b_ptr, out_ptr, sign_ptr, clamp_ptr,
    n, C, H, W, OH, OW, px0, py0, px0m, py0m,
    slope, bound, gain,
    UPX: tl.constexpr, UPY: tl.constexpr, DOWNX: tl.constexpr, DOWNY: tl.constexpr,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr, CLAMP: tl.constexpr, SIGN_CODE: tl.constexpr,
    CLAMP_CODE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[o] = sum_k f[k] * xpad[o * down + k] per axis (f in correlation order, gains folded in),
    xpad[q] = x[(q - p0) / up] where that is a whole index inside x, else 0.
    EPILOGUE 0: none; 1: the activation (CLAMP: with the clamp), writing the codes asked for
    (SIGN_CODE, CLAMP_CODE); 2: times the activation's derivative read from those codes, * gain."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    ox = offs % OW
    t = offs // OW
    oy = t % OH
    plane = t // OH
    base = plane * H * W
    if HAS_BIAS:
        bias = tl.load(b_ptr + plane % C, mask=m, other=0).to(tl.float32)
    # the first tap that meets an input sample: k = p0 - o * down (mod up)
    ky0 = (py0m + UPY - (oy * DOWNY) % UPY) % UPY
    kx0 = (px0m + UPX - (ox * DOWNX) % UPX) % UPX
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ty in tl.static_range((KH + UPY - 1) // UPY):
        ky = ky0 + ty * UPY
        iy = (oy * DOWNY + ky - py0) // UPY  # a whole multiple of UPY by the choice of ky0
        vy = m & (ky < KH) & (iy >= 0) & (iy < H)
        for tx in tl.static_range((KW + UPX - 1) // UPX):
            kx = kx0 + tx * UPX
            ix = (ox * DOWNX + kx - px0) // UPX
            v = vy & (kx < KW) & (ix >= 0) & (ix < W)
            w = tl.load(f_ptr + ky * KW + kx, mask=v, other=0.0)
            xv = tl.load(x_ptr + base + iy * W + ix, mask=v, other=0).to(tl.float32)
            if HAS_BIAS:
                xv = tl.where(v, xv + bias, 0.0)
            acc += w * xv
    if EPILOGUE == 1:
        neg = acc <= 0
        acc = tl.where(neg, acc * slope, acc)
        if SIGN_CODE:
            _pack_store(sign_ptr, neg & m, pid, n, BLOCK)
        if CLAMP:
            if CLAMP_CODE:
                _pack_store(clamp_ptr, (tl.abs(acc) > bound) & m, pid, n, BLOCK)
            acc = tl.minimum(tl.maximum(acc, -bound), bound)
        acc = acc * gain
    if EPILOGUE == 2:
        if SIGN_CODE:
            acc = tl.where(_code_bit(sign_ptr, offs, m), acc * slope, acc)
        if CLAMP_CODE:
            acc = tl.where(_code_bit(clamp_ptr, offs, m), 0.0, acc)
        acc = acc * gain
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["n", "C", "HW", "slope", "bound", "gain"])
def _act(
    x_ptr, b_ptr, out_ptr, sign_ptr, clamp_ptr,
    n, C, HW, slope, bound, gain,
    BACKWARD: tl.constexpr, HAS_BIAS: tl.constexpr, CLAMP: tl.constexpr, SIGN_CODE: tl.constexpr,
    CLAMP_CODE: tl.constexpr, BLOCK: tl.constexpr,
):
    """Forward: out = clamp(lrelu(x + b)) * gain, writing the codes. BACKWARD: out = x * the
    activation's derivative (from the codes) * gain (x is then the gradient)."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    v = tl.load(x_ptr + offs, mask=m, other=0).to(tl.float32)
    if BACKWARD:
        if SIGN_CODE:
            v = tl.where(_code_bit(sign_ptr, offs, m), v * slope, v)
        if CLAMP_CODE:
            v = tl.where(_code_bit(clamp_ptr, offs, m), 0.0, v)
    else:
        if HAS_BIAS:
            v += tl.load(b_ptr + (offs // HW) % C, mask=m, other=0).to(tl.float32)
        neg = v <= 0
        v = tl.where(neg, v * slope, v)
        if SIGN_CODE:
            _pack_store(sign_ptr, neg & m, pid, n, BLOCK)
        if CLAMP:
            if CLAMP_CODE:
                _pack_store(clamp_ptr, (tl.abs(v) > bound) & m, pid, n, BLOCK)
            v = tl.minimum(tl.maximum(v, -bound), bound)
    v = v * gain
    tl.store(out_ptr + offs, v.to(out_ptr.dtype.element_ty), mask=m)
