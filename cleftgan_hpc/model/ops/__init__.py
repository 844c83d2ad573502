"""The network ops, in two interchangeable versions: fast (default) and plain (reference.py).

`plain_ops()` switches every op to its plain version (for tests and benchmarks); the modules
call the dispatchers below, never an implementation directly.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch

from . import compiled, reference
from .bias_act import bias_act as _fast_bias_act
from .filtered_lrelu import filtered_lrelu as _fast_filtered_lrelu
from .lean import lean_autograd, lean_mode
from .modulated_conv import modulated_conv2d as _fast_modulated_conv2d
from .modulated_conv import modulated_filtered_lrelu as _fast_modulated_filtered_lrelu
from .upfirdn2d import Padding
from .upfirdn2d import upfirdn2d as _fast_upfirdn2d

_plain: contextvars.ContextVar[bool] = contextvars.ContextVar("cleftgan_plain_ops", default=False)


@contextlib.contextmanager
def plain_ops(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread / context only), every op runs its plain reference version."""
    token = _plain.set(enabled)
    try:
        yield
    finally:
        _plain.reset(token)


def using_plain_ops() -> bool:
    """True inside `plain_ops()`."""
    return _plain.get()


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    act: str = "linear",
    alpha: float = 0.2,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias, activation ("linear"/"lrelu"), gain, clamp."""
    fn = reference.ref_bias_act if using_plain_ops() else _fast_bias_act
    return fn(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp)


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: int = 1,
    down: int = 1,
    padding: Padding = (0, 0, 0, 0),
    flip_filter: bool = False,
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample, pad, FIR filter, downsample."""
    fn = reference.ref_upfirdn2d if using_plain_ops() else _fast_upfirdn2d
    return fn(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def filtered_lrelu(
    x: torch.Tensor,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    b: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = (0, 0, 0, 0),
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """bias -> upsample -> leaky ReLU * gain, clamp -> downsample."""
    fn = reference.ref_filtered_lrelu if using_plain_ops() else _fast_filtered_lrelu
    return fn(x, fu, fd, b, up=up, down=down, padding=padding, gain=gain, slope=slope, clamp=clamp)


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    input_gain: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated (and demodulated) convolution, optional bias after it."""
    if using_plain_ops():
        y = reference.ref_modulated_conv2d(x, weight, styles, demodulate, padding, input_gain)
        return y if bias is None else y + bias.to(y.dtype).reshape(1, -1, 1, 1)
    return _fast_modulated_conv2d(x, weight, styles, demodulate, padding, input_gain, bias)


def modulated_filtered_lrelu(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool,
    conv_padding: int,
    input_gain: torch.Tensor | None,
    bias: torch.Tensor | None,
    fu: torch.Tensor | None,
    fd: torch.Tensor | None,
    up: int,
    down: int,
    padding: Padding,
    gain: float,
    slope: float,
    clamp: float | None,
) -> torch.Tensor:
    """A synthesis layer's ops: modulated conv (+ bias), then filtered leaky ReLU."""
    if using_plain_ops():
        y = reference.ref_modulated_conv2d(x, weight, styles, demodulate, conv_padding, input_gain)
        return reference.ref_filtered_lrelu(y, fu, fd, bias, up, down, padding, gain, slope, clamp)
    return _fast_modulated_filtered_lrelu(
        x, weight, styles, demodulate, conv_padding, input_gain, bias, fu, fd, up, down, padding, gain, slope, clamp
    )


def op_paths(device: torch.device | str | None = None) -> list[tuple[str, str]]:
    """(op, the path it runs on ``device`` (default: the first GPU, else the CPU) and why) for
    `cleftgan-hpc doctor`. Only the filtered leaky ReLU has compiled (Triton) kernels, on CUDA."""
    lean = lean_mode()
    grad = ("autograd over the composite ops (lean path switched off)" if lean is False else "memory-lean autograd"
            + ("" if lean else " (on the CPU for intermediates of 32 MiB and more; always on a GPU)"))
    why = "no compiled kernel for this op: PyTorch's own kernels"
    triton = compiled.status(device)
    if triton.startswith("triton kernels"):
        flrelu = (f"{triton}: fused polyphase up FIR + bias/leaky ReLU/clamp/gain writing 1-2 bit codes, down FIR; "
                  "backward from the codes; PyTorch ops for a configuration that fails its check")
    else:
        flrelu = (f"PyTorch polyphase convolutions; {grad}: a 1-2 bit code per upsampled value "
                  f"kept for backward instead of the values (compiled kernels not used: {triton})")
    return [
        ("filtered_lrelu", flrelu),
        ("modulated_conv2d", f"one shared-weight PyTorch conv2d on modulated activations; {grad}: the "
                             f"unmodulated input kept, not its modulated copy ({why}); its leaky ReLU: filtered_lrelu"),
        ("upfirdn2d", f"PyTorch polyphase (transposed) depthwise convolutions, separable where the filter is ({why})"),
        ("bias_act", f"PyTorch elementwise ops, in place where autograd allows ({why})"),
    ]


__all__ = [
    "compiled",
    "op_paths",
    "Padding",
    "bias_act",
    "filtered_lrelu",
    "lean_autograd",
    "modulated_conv2d",
    "modulated_filtered_lrelu",
    "plain_ops",
    "upfirdn2d",
    "using_plain_ops",
]
