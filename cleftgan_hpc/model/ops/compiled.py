"""The compiled (Triton) path of the filtered leaky ReLU on CUDA devices: when it runs, and why not.

The fused op: bias -> polyphase upsampling FIR (one 2-D pass, or two separable passes) with the
activation (leaky ReLU, clamp, gain) and the packed sign/clamp codes written by the last pass ->
downsampling FIR. Backward: the transposed downsampling passes with the activation's derivative
read from the codes, then the transposed upsampling passes; the same codes as ``lean.py``'s, so
a backward that must itself be differentiated (double backward) runs lean.py's PyTorch one.

It runs only on CUDA tensors, where ``triton`` imports, and for a configuration (dtype, factors,
filter shapes, padding, clamp) whose kernels passed a self-check on that device: at first use
each configuration runs once on a small input through the kernels and through the PyTorch ops
(forward, codes, backward) and must agree. A kernel that fails to load, to compile or to agree
switches the compiled path off for that device and dtype: one warning, then the PyTorch ops.
``CLEFTGAN_TRITON=0`` (or ``compiled_kernels(False)``) switches it off everywhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import os
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from .lean import LeanFilteredLReLU, unpack_bits
from .upfirdn2d import Padding, upfirdn2d

KERNEL_MODULE = "cleftgan_hpc.model.ops.triton_kernels"
BLOCK = 256  # values per program (a multiple of 8: each byte of a code is written by one program)
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}  # max error / max value

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("cleftgan_compiled_kernels", default=True)
_lock = threading.Lock()
_module: types.ModuleType | None = None
_load_error: str | None = None
_checked: dict[tuple, bool] = {}  # (device, dtype, configuration) -> passed
_failed: dict[tuple[str, torch.dtype], str] = {}  # (device, dtype) -> why the compiled path is off there
_warned: set[tuple[str, Any]] = set()
_interpret_cpu = False  # tests: CPU tensors count as a kernel device (with TRITON_INTERPRET=1 kernels)
_compile_only = False  # prebuild(): kernels are compiled for a given GPU architecture, not launched


@contextlib.contextmanager
def compiled_kernels(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread / context), use the compiled kernels where they pass (True)
    or the PyTorch ops everywhere (False): for benchmarks that time both."""
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


def switched_off() -> str | None:
    """Why the compiled path is switched off by the user, or None."""
    if os.environ.get("CLEFTGAN_TRITON", "1").strip().lower() in ("0", "false", "no", "off"):
        return "switched off by CLEFTGAN_TRITON=0"
    if not _enabled.get():
        return "switched off by compiled_kernels(False)"
    return None


def kernels() -> types.ModuleType | None:
    """The kernel module (imported once), or None when triton or the module does not import."""
    global _module, _load_error
    if _module is not None:
        return _module
    with _lock:
        if _module is None and _load_error is None:
            try:
                _module = importlib.import_module(KERNEL_MODULE)
            except ModuleNotFoundError as exc:
                _load_error = "triton: not installed" if exc.name == "triton" else f"import failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - a broken triton install is reported, not raised
                _load_error = f"triton: import failed: {type(exc).__name__}: {exc}"
    return _module


def load_error() -> str | None:
    kernels()
    return _load_error


def interpreted() -> bool:
    """Whether the loaded kernels run in Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    mod = kernels()
    return bool(mod is not None and getattr(mod, "INTERPRETED", False))


def reset() -> None:
    """Forget the loaded module, the self-checks and the warnings given (tests; the next use
    imports the kernels again, under the current TRITON_INTERPRET)."""
    global _module, _load_error
    with _lock:
        _module, _load_error = None, None
        sys.modules.pop(KERNEL_MODULE, None)
        _checked.clear()
        _failed.clear()
        _warned.clear()


@contextlib.contextmanager
def interpret_on_cpu() -> Iterator[None]:
    """Tests: CPU tensors take the compiled path (kernels imported with TRITON_INTERPRET=1)."""
    global _interpret_cpu
    old, _interpret_cpu = _interpret_cpu, True
    try:
        yield
    finally:
        _interpret_cpu = old


def _device_key(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return str(device)


def device_reason(device: torch.device) -> str | None:
    """None when the kernels may run on this device type, else why not."""
    if device.type == "cuda":
        return None
    if device.type == "cpu" and _interpret_cpu and interpreted():
        return None
    return f"{device.type} device: pytorch ops, the Triton kernels are for CUDA"


def may_run_on(device: torch.device) -> bool:
    """A cheap first test (no import, no check): whether the compiled path is worth asking about here."""
    return device.type == "cuda" or (device.type == "cpu" and _interpret_cpu)


def _warn_once(key: tuple[str, Any], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


# -- the op, through the kernels -----------------------------------------------------------------


def _as_filter(f: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    return torch.ones([1], dtype=torch.float32, device=device) if f is None else f


def _launch(kernel: Any, grid: tuple[int], *args: Any, **kwargs: Any) -> None:
    if _compile_only:
        kernel.warmup(*args, grid=grid, **kwargs)
    else:
        kernel[grid](*args, **kwargs)


def _fir(
    x: torch.Tensor,
    fc: torch.Tensor,  # [KH, KW] float32, correlation order, gains folded in
    out_hw: tuple[int, int],
    up: tuple[int, int] = (1, 1),  # (x, y)
    down: tuple[int, int] = (1, 1),
    pad0: tuple[int, int] = (0, 0),  # (x, y), in the upsampled domain
    bias: torch.Tensor | None = None,
    epilogue: int = 0,
    codes: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    clamp: bool = False,
    slope: float = 0.2,
    bound: float = 0.0,
    gain: float = 1.0,
) -> torch.Tensor:
    mod = kernels()
    assert mod is not None
    n, c, h, w = x.shape
    out = torch.empty([n, c, *out_hw], dtype=x.dtype, device=x.device)
    total = out.numel()
    if total == 0:
        return out
    sign, clamped = codes
    dummy = out
    _launch(
        mod._fir, (math.ceil(total / BLOCK),),
        x, fc, bias if bias is not None else dummy, out,
        sign if sign is not None else dummy, clamped if clamped is not None else dummy,
        total, c, h, w, out_hw[0], out_hw[1], pad0[0], pad0[1], pad0[0] % up[0], pad0[1] % up[1],
        float(slope), float(bound), float(gain),
        UPX=up[0], UPY=up[1], DOWNX=down[0], DOWNY=down[1], KH=fc.shape[0], KW=fc.shape[1],
        HAS_BIAS=bias is not None, EPILOGUE=epilogue, CLAMP=clamp, SIGN_CODE=sign is not None,
        CLAMP_CODE=clamped is not None, BLOCK=BLOCK,
    )
    return out


def _act(
    x: torch.Tensor, b: torch.Tensor | None, codes: tuple[torch.Tensor | None, torch.Tensor | None],
    backward: bool, clamp: bool, slope: float, bound: float, gain: float,
) -> torch.Tensor:
    mod = kernels()
    assert mod is not None
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    total = out.numel()
    if total == 0:
        return out
    sign, clamped = codes
    _launch(
        mod._act, (math.ceil(total / BLOCK),),
        x, b if b is not None else out, out, sign if sign is not None else out,
        clamped if clamped is not None else out, total, x.shape[1], x.shape[2] * x.shape[3],
        float(slope), float(bound), float(gain),
        BACKWARD=backward, HAS_BIAS=b is not None, CLAMP=clamp, SIGN_CODE=sign is not None,
        CLAMP_CODE=clamped is not None, BLOCK=BLOCK,
    )
    return out


def _has_up(fu: torch.Tensor | None, up: int, padding: Padding) -> bool:
    return fu is not None or up != 1 or any(padding)


def _has_down(fd: torch.Tensor | None, down: int) -> bool:
    return fd is not None or down != 1


def _on(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def forward(
    x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int, down: int,
    padding: Padding, gain: float, slope: float, clamp: float | None, keep_codes: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Size]:
    """The op through the kernels: (output, the codes lean.py keeps (when asked), upsampled shape)."""
    with _on(x.device):
        return _forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes)


def _forward(
    x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int, down: int,
    padding: Padding, gain: float, slope: float, clamp: float | None, keep_codes: bool,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Size]:
    x = x.contiguous()
    n, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    do_clamp = clamp is not None and clamp >= 0
    bound = clamp / gain if do_clamp else 0.0
    has_down = _has_down(fd, down)
    act_gain = 1.0 if has_down else gain  # with a downsampling filter, the gain is folded into it
    b = b.contiguous() if b is not None else None
    if _has_up(fu, up, padding):
        f = _as_filter(fu, x.device)
        if f.ndim == 1:
            k = f.numel()
            hu, wu = h * up + py0 + py1 - k + 1, w * up + px0 + px1 - k + 1
        else:
            kh, kw = f.shape
            hu, wu = h * up + py0 + py1 - kh + 1, w * up + px0 + px1 - kw + 1
    else:
        f, hu, wu = None, h, w
    u_shape = torch.Size([n, c, hu, wu])
    nbytes = (n * c * hu * wu + 7) // 8
    sign = torch.empty(nbytes, dtype=torch.uint8, device=x.device) if keep_codes and slope != 1 else None
    clamped = torch.empty(nbytes, dtype=torch.uint8, device=x.device) if keep_codes and do_clamp else None
    act = dict(clamp=do_clamp, slope=slope, bound=bound, gain=act_gain, codes=(sign, clamped))
    if f is None:
        u = _act(x, b, backward=False, **act)
    elif f.ndim == 1:
        fc = (f.flip(0) * up).float().contiguous()  # sqrt(up**2) per axis
        t = _fir(x, fc.reshape(1, -1), (h, wu), up=(up, 1), pad0=(px0, 0), bias=b)
        u = _fir(t, fc.reshape(-1, 1), (hu, wu), up=(1, up), pad0=(0, py0), epilogue=1, **act)
    else:
        fc = (f.flip([0, 1]) * up**2).float().contiguous()
        u = _fir(x, fc, (hu, wu), up=(up, up), pad0=(px0, py0), bias=b, epilogue=1, **act)
    if has_down:
        g = _as_filter(fd, x.device)
        if g.ndim == 1:
            k = g.numel()
            hd, wd = (hu - k) // down + 1, (wu - k) // down + 1
            gc = (g.flip(0) * gain**0.5).float().contiguous()
            t = _fir(u, gc.reshape(1, -1), (hu, wd), down=(down, 1))
            out = _fir(t, gc.reshape(-1, 1), (hd, wd), down=(1, down))
        else:
            kh, kw = g.shape
            hd, wd = (hu - kh) // down + 1, (wu - kw) // down + 1
            out = _fir(u, (g.flip([0, 1]) * gain).float().contiguous(), (hd, wd), down=(down, down))
    else:
        out = u
    codes = [t for t in (sign, clamped) if t is not None]
    return out, codes, u_shape


def backward(ctx: Any, grad_out: torch.Tensor, codes: list[torch.Tensor], fu: torch.Tensor | None,
             fd: torch.Tensor | None) -> torch.Tensor:
    """The input gradient through the kernels, from the codes (``ctx``: as LeanFilteredLReLU's)."""
    with _on(grad_out.device):
        return _backward(ctx, grad_out, codes, fu, fd)


def _backward(ctx: Any, grad_out: torch.Tensor, codes: list[torch.Tensor], fu: torch.Tensor | None,
              fd: torch.Tensor | None) -> torch.Tensor:
    g = grad_out.contiguous()
    codes = list(codes)
    sign = codes.pop(0) if ctx.has_slope else None
    clamped = codes.pop(0) if ctx.has_clamp else None
    n, c, hu, wu = ctx.u_shape
    h, w = ctx.in_size
    act = dict(codes=(sign, clamped), clamp=False, slope=ctx.slope, bound=0.0)
    if _has_down(fd, ctx.down):  # the transposed down passes, the last with the activation's derivative
        f = _as_filter(fd, g.device)
        down = ctx.down
        if f.ndim == 1:
            k = f.numel()
            fn = (f * ctx.gain**0.5).float().contiguous()  # the transpose correlates with the unflipped filter
            t = _fir(g, fn.reshape(-1, 1), (hu, g.shape[3]), up=(1, down), pad0=(0, k - 1))
            g = _fir(t, fn.reshape(1, -1), (hu, wu), up=(down, 1), pad0=(k - 1, 0), epilogue=2, gain=1.0, **act)
        else:
            kh, kw = f.shape
            fn = (f * ctx.gain).float().contiguous()
            g = _fir(g, fn, (hu, wu), up=(down, down), pad0=(kw - 1, kh - 1), epilogue=2, gain=1.0, **act)
    else:
        g = _act(g, None, backward=True, gain=ctx.gain, **act)
    if _has_up(fu, ctx.up, ctx.padding):
        f = _as_filter(fu, g.device)
        px0, _, py0, _ = ctx.padding
        up = ctx.up
        if f.ndim == 1:
            k = f.numel()
            fn = (f * up).float().contiguous()
            t = _fir(g, fn.reshape(-1, 1), (h, wu), down=(1, up), pad0=(0, k - 1 - py0))
            g = _fir(t, fn.reshape(1, -1), (h, w), down=(up, 1), pad0=(k - 1 - px0, 0))
        else:
            kh, kw = f.shape
            fn = (f * up**2).float().contiguous()
            g = _fir(g, fn, (h, w), down=(up, up), pad0=(kw - 1 - px0, kh - 1 - py0))
    return g


class CompiledFilteredLReLU(LeanFilteredLReLU):
    """LeanFilteredLReLU through the Triton kernels (same codes kept, same ctx fields); a backward
    under create_graph runs the PyTorch one on those codes, so double backward still works."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        b: torch.Tensor | None,
        fu: torch.Tensor | None,
        fd: torch.Tensor | None,
        up: int,
        down: int,
        padding: Padding,
        gain: float,
        slope: float,
        clamp: float | None,
    ) -> torch.Tensor:
        out, codes, u_shape = forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=True)
        ctx.save_for_backward(*codes, fu, fd)
        _fill_ctx(ctx, x, b, up, down, padding, gain, slope, clamp, u_shape)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor):  # noqa: ANN205
        if torch.is_grad_enabled():  # a double backward records this: the differentiable PyTorch backward
            return LeanFilteredLReLU.backward(ctx, grad_out)
        *codes, fu, fd = ctx.saved_tensors
        g = backward(ctx, grad_out, codes, fu, fd)
        grad_b = g.sum([0, 2, 3]) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return g, grad_b, None, None, None, None, None, None, None, None


def _fill_ctx(ctx: Any, x: torch.Tensor, b: torch.Tensor | None, up: int, down: int, padding: Padding, gain: float,
              slope: float, clamp: float | None, u_shape: torch.Size) -> None:
    ctx.has_slope, ctx.has_clamp = slope != 1, clamp is not None and clamp >= 0
    ctx.u_shape, ctx.in_size, ctx.has_bias = u_shape, (x.shape[2], x.shape[3]), b is not None
    ctx.up, ctx.down, ctx.padding, ctx.gain, ctx.slope = up, down, padding, gain, slope


# -- when the compiled path runs: availability and the self-check ---------------------------------


def _config(x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int,
            down: int, padding: Padding, gain: float, slope: float, clamp: float | None) -> tuple:
    shape = lambda f: None if f is None else tuple(f.shape)  # noqa: E731
    return (x.dtype, b is not None, shape(fu), shape(fd), up, down, tuple(padding), slope != 1,
            clamp is not None and clamp >= 0)


def usable(x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int,
           down: int, padding: Padding, gain: float, slope: float, clamp: float | None) -> bool:
    """Whether this call takes the compiled path (self-checking its configuration at first use)."""
    if switched_off() or device_reason(x.device) is not None:
        return False
    if x.dtype not in TOLERANCE or x.ndim != 4:
        return False
    dev = _device_key(x.device)
    if kernels() is None:
        if x.device.type == "cuda":
            _warn_once(("load", None), f"cleftgan-hpc: the Triton kernels are not used ({_load_error}); "
                                       "filtered_lrelu runs on PyTorch ops (correct, slower on GPUs)")
        return False
    if (dev, x.dtype) in _failed:
        return False
    key = (dev, *_config(x, b, fu, fd, up, down, padding, gain, slope, clamp))
    passed = _checked.get(key)
    if passed is None:
        why = self_check(x.device, x.dtype, fu, fd, up, down, padding, gain, slope, clamp, b is not None)
        passed = why is None
        _checked[key] = passed
        if not passed:
            _failed[(dev, x.dtype)] = why
            _warn_once(("check", dev, x.dtype), f"cleftgan-hpc: the Triton filtered_lrelu kernels failed their "
                                                f"self-check on {dev} in {str(x.dtype)[6:]} ({why}); that device "
                                                "and dtype use the PyTorch ops from now on")
    return passed


def _max_error(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.float(), ref.float()
    if not bool(torch.isfinite(a).all()):
        return math.inf
    return (a - ref).abs().max().item() / max(ref.abs().max().item(), 1e-3) if ref.numel() else 0.0


def self_check(device: torch.device, dtype: torch.dtype, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int,
               down: int, padding: Padding, gain: float, slope: float, clamp: float | None,
               has_bias: bool = True) -> str | None:
    """Run one configuration on a small input through the kernels and through the PyTorch ops
    (lean.py: forward, codes, backward from the same codes); None if they agree, else why not."""
    try:
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False), _on(device):
            return _self_check(device, dtype, fu, fd, up, down, padding, gain, slope, clamp, has_bias)
    except Exception as exc:  # noqa: BLE001 - a kernel that does not compile or launch fails its check
        msg = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {msg[0][:200] if msg else ''}"


def _self_check(device: torch.device, dtype: torch.dtype, fu: torch.Tensor | None, fd: torch.Tensor | None, up: int,
                down: int, padding: Padding, gain: float, slope: float, clamp: float | None,
                has_bias: bool) -> str | None:
    fu = fu.detach().clone() if fu is not None else None
    fd = fd.detach().clone() if fd is not None else None
    size = _small_size(fu, fd, up, down, padding)
    gen = torch.Generator(device="cpu").manual_seed(1)
    x = (torch.randn(2, 3, size, size + 1, generator=gen) * 2).to(device=device, dtype=dtype)
    b = torch.randn(3, generator=gen).to(device) if has_bias else None
    if clamp is not None and clamp >= 0:  # a bound the values cross, so the clamp is exercised
        clamp = 0.5 * gain
    tol = TOLERANCE[dtype]
    # the reference: lean.py's autograd function on the PyTorch ops, called directly
    ref_ctx = types.SimpleNamespace(needs_input_grad=(True, has_bias) + (False,) * 8)
    ref_ctx.save_for_backward = lambda *t: setattr(ref_ctx, "kept", t)
    ref = LeanFilteredLReLU.forward(ref_ctx, x, b, fu, fd, up, down, padding, gain, slope, clamp)
    ref_codes = list(ref_ctx.kept)
    out, codes, u_shape = forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=True)
    plain, _, _ = forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=False)
    if out.shape != ref.shape or u_shape != ref_ctx.u_shape:
        return f"output shape {tuple(out.shape)} instead of {tuple(ref.shape)}"
    for name, got in (("forward", out), ("forward without codes", plain)):
        err = _max_error(got, ref)
        if err > tol:
            return f"{name}: max error {err:.2g} of the largest value (tolerance {tol:g})"
    if ref_ctx.has_clamp != (clamp is not None) or len(codes) != len(ref_codes) - 2:
        return "the codes kept differ in number from the PyTorch path's"
    why = _codes_wrong(codes, x, b, fu, up, padding, slope, clamp / gain if clamp is not None else None, u_shape)
    if why:
        return why
    # backward: the same codes through the kernels and through lean.py's PyTorch backward
    ctx = types.SimpleNamespace(needs_input_grad=ref_ctx.needs_input_grad, saved_tensors=(*codes, fu, fd))
    _fill_ctx(ctx, x, b, up, down, padding, gain, slope, clamp, u_shape)
    g = torch.randn(out.shape, generator=gen).to(device=device, dtype=dtype)
    want = LeanFilteredLReLU.backward(ctx, g)[0]
    got = backward(ctx, g, codes, fu, fd)
    err = _max_error(got, want)
    if got.shape != want.shape or err > tol:
        return f"backward: max error {err:.2g} of the largest value (tolerance {tol:g})"
    return None


def _codes_wrong(codes: list[torch.Tensor], x: torch.Tensor, b: torch.Tensor | None, fu: torch.Tensor | None,
                 up: int, padding: Padding, slope: float, bound: float | None, u_shape: torch.Size) -> str | None:
    """Whether the codes disagree with the upsampled values computed in float32 from the same
    inputs, anywhere but within rounding of a threshold (0 for the sign, the bound for the
    clamp): there, a low-precision kernel and the PyTorch ops may round either way."""
    y = x.float() + b.float().reshape(1, -1, 1, 1) if b is not None else x.float()
    u = y if fu is None and up == 1 and not any(padding) else upfirdn2d(y, fu, up=up, padding=padding, gain=up**2)
    margin = 8 * torch.finfo(x.dtype).eps * max(u.abs().max().item(), 1e-6)
    checks = []
    if slope != 1:
        checks.append(("sign", u <= 0, u.abs() <= margin))
    if bound is not None:
        a = torch.nn.functional.leaky_relu(u, slope).abs()
        checks.append(("clamp", a > bound, (a - bound).abs() <= margin))
    for (name, want, near), got in zip(checks, codes, strict=True):
        wrong = (unpack_bits(got, u_shape) != want) & ~near
        if bool(wrong.any()):
            return f"{int(wrong.sum())} of {u_shape.numel()} {name} code bits are wrong"
    return None


def _small_size(fu: torch.Tensor | None, fd: torch.Tensor | None, up: int, down: int, padding: Padding) -> int:
    """A small input size whose upsampled and downsampled sizes are at least a few values."""
    px0, px1, py0, py1 = padding
    ku = 1 if fu is None else fu.shape[0]
    kd = 1 if fd is None else fd.shape[0]
    return max(3, math.ceil((kd + 3 * down + ku - 1 - min(px0 + px1, py0 + py1)) / up))


def status(device: torch.device | str | None = None) -> str:
    """The path filtered_lrelu takes on this device, and why (for `cleftgan-hpc doctor`)."""
    if device is None:
        device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    off = switched_off()
    if off:
        return f"pytorch ops: {off}"
    err = load_error()
    if err:
        return f"pytorch ops: {err}"
    why = device_reason(device)
    if why:
        return why
    dev = _device_key(device)
    failed = [f"{str(d)[6:]}: self-check failed ({w}), pytorch ops" for (k, d), w in _failed.items() if k == dev]
    done = sorted({str(k[1])[6:] for k, ok in _checked.items() if k[0] == dev and ok and (dev, k[1]) not in _failed})
    if failed and not done:
        return "; ".join(failed)
    checked = f"self-checked: {', '.join(done)}" if done else "each configuration self-checks at first use"
    how = "interpreted" if interpreted() else "compiled"
    return f"triton kernels on {dev} ({how}; {checked})" + "".join(f"; {f}" for f in failed)


def check_device(device: torch.device | str, configs: list[dict[str, Any]] | None = None) -> str:
    """Self-check the StyleGAN3-T/R configurations (or ``configs``) in every dtype on ``device``
    now, then report as ``status`` does (doctor on a GPU node; the image build warms the cache)."""
    device = torch.device(device)
    if switched_off() or load_error() or device_reason(device):
        return status(device)
    for dtype in TOLERANCE:
        for cfg in configs or stylegan3_configs(device):
            x = torch.empty(1, 1, 1, 1, device=device, dtype=dtype)
            b = torch.empty(1, device=device) if cfg.get("bias", True) else None
            kw = {k: v for k, v in cfg.items() if k != "bias"}
            usable(x, b, **kw)
    return status(device)


def stylegan3_configs(device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """The filtered leaky ReLU configurations of StyleGAN3-T and -R at 1024 (up 1/2/4 filter
    lengths, down 1/2, separable and radial 2-D down filters, clamp 256), for warming and checks.
    The padding only enters the kernels as its value mod the factor, so one padding per case is enough."""
    dev = torch.device(device)
    sep = lambda k: torch.full([k], 1.0 / k, device=dev)  # noqa: E731 - only shapes and values ~1 matter
    rad = lambda k: torch.full([k, k], 1.0 / k**2, device=dev)  # noqa: E731
    base = dict(gain=math.sqrt(2), slope=0.2, clamp=256.0, bias=False)
    return [
        dict(base, fu=sep(12), fd=sep(12), up=2, down=2, padding=(9, 8, 9, 8)),  # T
        dict(base, fu=sep(24), fd=sep(12), up=4, down=2, padding=(5, 4, 5, 4)),  # T, where sampling rates change
        dict(base, fu=sep(12), fd=sep(12), up=2, down=1, padding=(9, 8, 9, 8)),  # T, last layers (no downsampling)
        dict(base, fu=sep(24), fd=sep(24), up=4, down=1, padding=(5, 4, 5, 4)),
        dict(base, fu=sep(12), fd=rad(12), up=2, down=2, padding=(9, 8, 9, 8)),  # R: radial down filters
        dict(base, fu=sep(24), fd=rad(12), up=4, down=2, padding=(5, 4, 5, 4)),
        dict(base, fu=sep(12), fd=rad(12), up=2, down=1, padding=(9, 8, 9, 8)),
    ]


# -- compiling ahead of time, without a GPU --------------------------------------------------------


class _TargetOnly:
    """A stand-in for Triton's CUDA driver that only names a GPU architecture (no device)."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def prebuild(archs: list[int], configs: list[dict[str, Any]] | None = None,
             dtypes: tuple[torch.dtype, ...] = tuple(TOLERANCE)) -> dict[int, list[str]]:
    """Compile every kernel variant the StyleGAN3-T/R configurations (or ``configs``) use, in
    every dtype, forward (with and without codes) and backward, for each GPU architecture in
    ``archs`` (e.g. 80, 90), into Triton's cache, without a GPU: Triton's own compiler (its
    bundled ptxas) under a stand-in driver that names the architecture; nothing is launched.
    The cache keys are those a launch on such a GPU computes (same source, specialisation,
    target and options), so a node finds them there instead of compiling. Returns, per
    architecture, the failures ("dtype config: error"); none is a complete prebuild."""
    global _compile_only
    mod = kernels()
    if mod is None:
        raise RuntimeError(f"the Triton kernels do not load: {_load_error}")
    if interpreted():
        raise RuntimeError("TRITON_INTERPRET=1: the kernels are interpreted, nothing to compile")
    from triton.runtime.driver import driver

    saved = driver._active
    failures: dict[int, list[str]] = {}
    try:
        for arch in archs:
            driver.set_active(_TargetOnly(arch))
            for kernel in (mod._fir, mod._act):
                kernel.device_caches.clear()  # binders hold the target they were made for
            _compile_only = True
            failures[arch] = []
            for dtype in dtypes:
                for cfg in configs or stylegan3_configs("cpu"):
                    try:
                        _compile_config(dtype, cfg)
                    except Exception as exc:  # noqa: BLE001 - one variant that does not compile is reported
                        fd = cfg["fd"]
                        what = f"up {cfg['up']} down {cfg['down']} fd {None if fd is None else tuple(fd.shape)}"
                        failures[arch].append(f"{str(dtype)[6:]} {what}: {type(exc).__name__}: {exc}"[:300])
    finally:
        _compile_only = False
        driver._active = saved
        for kernel in (mod._fir, mod._act):
            kernel.device_caches.clear()
    return failures


def _compile_config(dtype: torch.dtype, cfg: dict[str, Any]) -> None:
    """Run the op's host code on small CPU tensors with compile-only launches (see prebuild)."""
    fu, fd, up, down = cfg["fu"], cfg["fd"], cfg["up"], cfg["down"]
    fu, fd = (None if f is None else f.cpu() for f in (fu, fd))
    padding, gain, slope, clamp = cfg["padding"], cfg["gain"], cfg["slope"], cfg["clamp"]
    size = _small_size(fu, fd, up, down, padding)
    x = torch.zeros(1, 2, size, size, dtype=dtype)
    b = torch.zeros(2) if cfg.get("bias", True) else None
    out, codes, u_shape = forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=True)
    forward(x, b, fu, fd, up, down, padding, gain, slope, clamp, keep_codes=False)
    ctx = types.SimpleNamespace(needs_input_grad=(True, b is not None) + (False,) * 8)
    _fill_ctx(ctx, x, b, up, down, padding, gain, slope, clamp, u_shape)
    backward(ctx, torch.zeros(out.shape, dtype=dtype), codes, fu, fd)
