"""Checks of the Triton kernels under TRITON_INTERPRET=1, run in one child process by
test_triton_kernels.py (each check is one of its tests).

Triton's interpreter needs TRITON_INTERPRET=1 before triton itself is imported (its standard
library functions, tl.sum and the like, are decorated when triton is imported), and the test
process imports triton long before; hence a child started with it set:

    TRITON_INTERPRET=1 python tests/model/triton_interpret_checks.py [NAME ...]

prints one JSON object {name: "ok" | "skip: why" | "fail: traceback"} on its last line.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable

import torch

from cleftgan_hpc.model import ops
from cleftgan_hpc.model.filters import design_lowpass_filter
from cleftgan_hpc.model.ops import compiled
from cleftgan_hpc.model.ops.lean import pack_bits
from cleftgan_hpc.model.ops.upfirdn2d import upfirdn2d

BF16_SKIP = ("bfloat16: Triton 3.7's interpreter misreads bfloat16 memory (a loaded value is not the stored one), "
             "so interpret mode cannot check it; on a GPU the self-check checks bfloat16 before the kernels are used")


class Skip(Exception):
    pass


def _filter(k: int, two_d: bool = False, seed: int = 0) -> torch.Tensor:
    """An asymmetric filter (a flipped filter would not pass for the right one)."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand([k, k] if two_d else [k], generator=g) + 0.1
    return f / f.sum()


# fu, fd, up, down, padding: the StyleGAN3-T/R cases (up 1/2/4, down 1/2, separable and 2-D
# filters, the radial 2-D down filters of R), with paddings that crop as well as pad
CASES = {
    "T-up2-down2": (design_lowpass_filter(12, 3.0, 4.0, 16.0), design_lowpass_filter(12, 3.0, 4.0, 16.0), 2, 2,
                    (9, 8, 9, 8)),
    "T-up4-down2": (_filter(8), _filter(6, seed=1), 4, 2, (5, 2, 3, -1)),
    "T-up2-down1": (_filter(6), _filter(4, seed=1), 2, 1, (3, 2, 1, 4)),
    "R-up2-down2-radial": (_filter(6), _filter(5, True, seed=1), 2, 2, (4, 3, 2, 5)),
    "R-up4-down2-radial": (_filter(8), design_lowpass_filter(6, 3.0, 4.0, 16.0, radial=True), 4, 2, (5, 4, 5, 4)),
    "up2-2d-up-filter": (_filter(4, True), _filter(4, seed=1), 2, 2, (2, 1, 1, 2)),
    "up4-down2-cropped": (_filter(8, seed=3), _filter(4, seed=2), 4, 2, (-3, -4, -2, -5)),
    "up1-down2": (None, _filter(4), 1, 2, (0, 0, 0, 0)),
    "up1-down1-activation-only": (None, None, 1, 1, (0, 0, 0, 0)),
}
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _run(x: torch.Tensor, b: torch.Tensor, case: tuple, clamp: float | None, grad_w: torch.Tensor | None = None):
    fu, fd, up, down, padding = case
    xs, bs = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
    y = ops.filtered_lrelu(xs, fu, fd, bs, up=up, down=down, padding=padding, gain=math.sqrt(2), slope=0.2,
                           clamp=clamp)
    if grad_w is None:
        grad_w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
    gx, gb = torch.autograd.grad(y, [xs, bs], grad_w.to(y.dtype))
    return y.detach(), gx, gb, grad_w


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item() / max(b.float().abs().max().item(), 1e-6)


def _no_warning(fn: Callable[[], object]) -> object:
    """Run fn; a warning from the compiled path (a failed self-check) fails the check."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    ours = [str(w.message) for w in caught if "Triton" in str(w.message)]
    assert not ours, ours
    return out


def match(name: str, dtype_name: str) -> None:
    """Forward, input and bias gradients, and the no-grad forward equal the plain PyTorch ops."""
    dtype = DTYPES[dtype_name]
    if dtype == torch.bfloat16:
        raise Skip(BF16_SKIP)
    case = CASES[name]
    calls = []
    real = compiled.CompiledFilteredLReLU.apply
    compiled.CompiledFilteredLReLU.apply = lambda *a: calls.append(1) or real(*a)  # type: ignore[method-assign]
    try:
        g = torch.Generator().manual_seed(2)
        size = 9 if case[2] < 4 else 6
        x = (torch.randn(2, 3, size, size + 1, generator=g) * 2).to(dtype)
        b = torch.randn(3, generator=g)
        clamp = 1.0  # crossed by some values: the clamp code matters
        y, gx, gb, w = _no_warning(lambda: _run(x, b, case, clamp))
    finally:
        compiled.CompiledFilteredLReLU.apply = real  # type: ignore[method-assign]
    assert calls, "the compiled path was not taken"
    with ops.plain_ops():  # the plain reference ops, in float32 from the same inputs
        y0, gx0, gb0, _ = _run(x.float(), b, case, clamp, w)
    tol = 2e-5 if dtype == torch.float32 else 2e-2
    assert y.dtype == dtype and y.shape == y0.shape
    assert _err(y, y0) < tol, ("forward", _err(y, y0))
    assert _err(gx, gx0) < tol * (1 if dtype == torch.float32 else 5), ("grad x", _err(gx, gx0))
    assert _err(gb, gb0) < tol * (1 if dtype == torch.float32 else 5), ("grad b", _err(gb, gb0))
    with torch.no_grad():  # inference: the kernels without codes
        fu, fd, up, down, padding = case
        yn = ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, clamp=clamp)
    assert _err(yn, y0) < tol, ("no-grad forward", _err(yn, y0))


def codes_are_lean_format() -> None:
    """The codes kept are lean.py's: pack_bits of u <= 0 and of |lrelu(u)| > bound."""
    fu, fd = _filter(6), _filter(4, seed=1)
    x, b = torch.randn(2, 3, 7, 8), torch.randn(3)
    padding = (3, 2, 1, 4)
    out, codes, u_shape = compiled.forward(x, b, fu, fd, 2, 2, padding, math.sqrt(2), 0.2, 0.5 * math.sqrt(2),
                                           keep_codes=True)
    u = upfirdn2d(x + b.reshape(1, -1, 1, 1), fu, up=2, padding=padding, gain=4)
    assert u.shape == u_shape and len(codes) == 2
    assert torch.equal(codes[0], pack_bits(u <= 0))
    assert torch.equal(codes[1], pack_bits(torch.nn.functional.leaky_relu(u, 0.2).abs() > 0.5))


def double_backward() -> None:
    """create_graph: the PyTorch backward runs on the kernel's codes; second derivatives match."""
    fu, fd, up, down, padding = CASES["T-up2-down1"]
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    b = torch.randn(2, requires_grad=True)
    y = _no_warning(lambda: ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding, clamp=1.0))
    assert y.grad_fn is not None and "Compiled" in type(y.grad_fn).__name__, type(y.grad_fn)
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with ops.plain_ops():
        xr, br = x.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
        yr = ops.filtered_lrelu(xr, fu, fd, br, up=up, down=down, padding=padding, clamp=1.0)
        (gxr,) = torch.autograd.grad(yr.square().sum(), [xr], create_graph=True)
    assert _err(gx, gxr) < 1e-4
    (ggb,) = torch.autograd.grad(gx.square().sum(), [b])  # through the recorded (PyTorch) backward
    (ggbr,) = torch.autograd.grad(gxr.square().sum(), [br])
    assert _err(ggb, ggbr) < 1e-4


class _WrongKernel:
    """Stands in for a kernel: launches the real one with a wrong slope, or fails to compile
    (for every dtype, or only for ``only``)."""

    def __init__(self, real: object, fail: bool, only: torch.dtype | None = None) -> None:
        self.real, self.fail, self.only = real, fail, only

    def __getitem__(self, grid: tuple):
        def launch(*args, **kwargs):
            if self.only is not None and args[0].dtype != self.only:
                return self.real[grid](*args, **kwargs)
            if self.fail:
                raise RuntimeError("PTX compile error (simulated)")
            args = list(args)
            args[14] = args[14] * 1.5  # the slope (the 15th argument of _fir)
            return self.real[grid](*args, **kwargs)

        return launch


def failing_kernel(fail: bool) -> None:
    """A kernel that disagrees (or does not compile): one warning, then the PyTorch ops, and
    doctor's report says so."""
    mod = compiled.kernels()
    real = mod._fir
    mod._fir = _WrongKernel(real, fail)
    try:
        fu, fd, up, down, padding = CASES["T-up2-down2"]
        x, b = torch.randn(2, 3, 9, 9), torch.randn(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ys = [ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding) for _ in range(2)]
            ops.filtered_lrelu(x, fu, fd, b, up=4, down=2, padding=(5, 4, 5, 4))  # another configuration
        ours = [str(w.message) for w in caught if "Triton" in str(w.message)]
        assert len(ours) == 1, ours
        assert "self-check" in ours[0] and "PyTorch ops" in ours[0], ours[0]
        assert ("compile error" in ours[0]) == fail, ours[0]
        with compiled.compiled_kernels(False):
            want = ops.filtered_lrelu(x, fu, fd, b, up=up, down=down, padding=padding)
        assert torch.equal(ys[0], want) and torch.equal(ys[1], want)
        assert "self-check failed" in compiled.status("cpu")
        path = dict(ops.op_paths("cpu"))["filtered_lrelu"]
        assert "self-check failed" in path and "PyTorch polyphase" in path, path
    finally:
        mod._fir = real


def one_dtype_fails() -> None:
    """float16 fails its check, float32 passes: float16 runs the PyTorch ops, float32 the
    kernels, and the report names both."""
    mod = compiled.kernels()
    real = mod._fir
    mod._fir = _WrongKernel(real, False, only=torch.float16)
    try:
        fu, fd, up, down, padding = CASES["T-up2-down2"]
        x, b = torch.randn(1, 2, 9, 9), torch.randn(2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for dtype in (torch.float32, torch.float16):
                ops.filtered_lrelu(x.to(dtype), fu, fd, b, up=up, down=down, padding=padding)
        assert len([w for w in caught if "Triton" in str(w.message)]) == 1
        status = compiled.status("cpu")
        assert status.startswith("triton kernels on cpu (interpreted; self-checked: float32)"), status
        assert "float16: self-check failed" in status, status
    finally:
        mod._fir = real


def stylegan3_self_checks() -> None:
    """What the image build and doctor run on a GPU (every T/R configuration), here a few in float32."""
    cfgs = compiled.stylegan3_configs()
    out = compiled.check_device("cpu", [cfgs[0], cfgs[1], cfgs[4]])  # interpret mode is slow: T and R, up 2/4
    assert out.startswith("triton kernels on cpu (interpreted") and "float32" in out, out
    assert compiled._checked and all(compiled._checked.values()), compiled._failed


def doctor_paths() -> None:
    paths = dict(ops.op_paths("cpu"))
    assert set(paths) == {"filtered_lrelu", "modulated_conv2d", "upfirdn2d", "bias_act"}
    assert paths["filtered_lrelu"].startswith("triton kernels on cpu (interpreted"), paths["filtered_lrelu"]
    for op in ("upfirdn2d", "bias_act"):
        assert "no compiled kernel for this op" in paths[op]


CHECKS: dict[str, Callable[[], None]] = {
    **{f"match[{n}-{d}]": (lambda n=n, d=d: match(n, d)) for n in CASES for d in DTYPES},
    "codes_are_lean_format": codes_are_lean_format,
    "double_backward": double_backward,
    "failing_kernel[disagrees]": lambda: failing_kernel(False),
    "failing_kernel[does-not-compile]": lambda: failing_kernel(True),
    "one_dtype_fails": one_dtype_fails,
    "stylegan3_self_checks": stylegan3_self_checks,
    "doctor_paths": doctor_paths,
}


def main(names: list[str]) -> int:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET was read"
    torch.set_num_threads(1)
    results = {}
    for name in names or list(CHECKS):
        compiled.reset()
        try:
            with compiled.interpret_on_cpu():
                assert compiled.kernels() is not None, compiled.load_error()
                assert compiled.interpreted()
                CHECKS[name]()
            results[name] = "ok"
        except Skip as why:
            results[name] = f"skip: {why}"
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = "fail: " + traceback.format_exc()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
