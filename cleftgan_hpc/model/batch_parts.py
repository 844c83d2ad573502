"""StyleGAN3's synthesis batch in parts: serial parts for big images, and on the CPU parts on
Python threads, each with one intra-op thread. (StyleGAN2's 64x64 fixture, mostly convolutions
that gain from a larger batch, was no faster in parts at batch 8 and 10% slower at batch 32.)

At the small sizes the demo, the tests and CI run (64x64, batch 8), most ops are too small for
PyTorch's intra-op threads to pay: on the 2-core Intel Xeon here two threads ran the fixture
generator at 1.4-1.6x one thread, while sgemm scales 1.9-2x. Two Python threads, each drawing
half the batch with one intra-op thread (torch releases the GIL inside its ops), ran it at
1.3-1.4x the two-thread rate. The samples of a synthesis network are independent given their
ws (and their noise, drawn up front), so parts give the same images as one batch up to the last
bits (about 1e-7: each part is batched differently, as with any change of batch size).

Without gradients on the CPU the parts are always of ``PART_SAMPLES`` samples (fewer for big
images), whether they then run on threads or one after another, so an image depends on its
batch's size, never on how many threads the machine has: a job resumed on another node draws
the same pixels. (With gradients, training, the batch runs whole: its arithmetic differs from
the parts' in the last bits.) Threads are used only where nothing else depends on them: no
dispatch mode active (a FLOP counter sees only its own thread), no tracing or compiling, no CPU
autocast, and more than one torch thread. ``torch.set_num_threads`` is process-wide, so it is 1
while the parts run and restored after.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable

import torch

from .ops.upfirdn2d import unobserved_eager

PART_SAMPLES = 4
"""Samples per part without gradients on the CPU. One thread drew the fixture generator at least
as fast in parts of 4 as in whole batches of 8 and 32 (cache), so parts cost nothing serially."""


def threads_for(parts: int, device: torch.device) -> int:
    """How many Python threads may share ``parts`` parts of a batch here (1: one after another)."""
    if device.type != "cpu" or parts < 2 or torch.is_grad_enabled():
        return 1
    if not unobserved_eager() or torch.is_autocast_enabled("cpu"):
        return 1
    return max(1, min(torch.get_num_threads(), parts))


def run_in_parts(run: Callable[[int, int], torch.Tensor], n: int, step: int, device: torch.device) -> torch.Tensor:
    """``run(start, stop)`` over the batch [0, n) in parts of at most ``step`` samples (and of
    ``PART_SAMPLES`` without gradients on the CPU), joined along the batch in order; the parts on
    threads where ``threads_for`` allows it."""
    if device.type == "cpu" and not torch.is_grad_enabled():
        step = min(step, PART_SAMPLES)
    if step >= n:
        return run(0, n)
    bounds = [(start, min(start + step, n)) for start in range(0, n, step)]
    threads = threads_for(len(bounds), device)
    if threads == 1:
        return torch.cat([run(a, b) for a, b in bounds])
    results: list[torch.Tensor | None] = [None] * len(bounds)
    errors: list[BaseException] = []
    inference = torch.is_inference_mode_enabled()

    def work(parts: range) -> None:
        try:
            with torch.inference_mode() if inference else torch.no_grad():  # grad mode is per thread
                for k in parts:
                    results[k] = run(*bounds[k])
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # each thread its own copy of the caller's context (ops settings live in contextvars)
        workers = [threading.Thread(target=contextvars.copy_context().run,
                                    args=(work, range(t, len(bounds), threads)), name=f"batch-part-{t}", daemon=True)
                   for t in range(1, threads)]
        for w in workers:
            w.start()
        work(range(0, len(bounds), threads))
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(before)
    if errors:
        raise errors[0]
    return torch.cat(results)  # type: ignore[arg-type]
