"""A synthesis network's batch in parts: serial parts for big images, and on the CPU parts on
Python threads, each with one intra-op thread.

At the small sizes the demo, the tests and CI run (64x64, batch 8), most ops are too small for
PyTorch's intra-op threads to pay: on the 2-core Intel Xeon here two threads ran the fixture
generator at 1.4-1.6x one thread, while sgemm scales 1.9-2x. Two Python threads, each drawing
half the batch with one intra-op thread (torch releases the GIL inside its ops), ran it at
1.3-1.4x the two-thread rate. The samples of a synthesis network are independent given their
ws (and their noise, drawn up front), so the parts give the same images; each part's arithmetic
is batched differently, so results may differ from one whole batch in the last bits (about
1e-7), as any change of batch size does.

Threads are used only where nothing else depends on them: on the CPU, with no gradient recorded
(autograd and EMA updates run the whole batch), no dispatch mode active (a FLOP counter sees
only its own thread), no tracing or compiling, no CPU autocast, and more than one torch thread.
``torch.set_num_threads`` is process-wide, so it is 1 while the parts run and restored after.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def threads_for(n: int, device: torch.device) -> int:
    """How many Python threads may share a batch of ``n`` samples here (1: run it serially)."""
    if device.type != "cpu" or n < 2 or torch.is_grad_enabled():
        return 1
    if _get_current_dispatch_mode() is not None or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return 1
    if torch.is_autocast_enabled("cpu"):
        return 1
    return max(1, min(torch.get_num_threads(), n))


def run_in_parts(run: Callable[[int, int], torch.Tensor], n: int, step: int, device: torch.device) -> torch.Tensor:
    """``run(start, stop)`` over the batch [0, n) in parts of at most ``step`` samples, joined
    along the batch in order; on threads where ``threads_for`` allows it."""
    threads = threads_for(n, device)
    if threads == 1:
        if step >= n:
            return run(0, n)
        return torch.cat([run(start, min(start + step, n)) for start in range(0, n, step)])
    count = max(math.ceil(n / step), threads)  # parts of near-equal size, at most `step` each
    bounds = [(n * k // count, n * (k + 1) // count) for k in range(count)]
    results: list[torch.Tensor | None] = [None] * count
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
        workers = [threading.Thread(target=contextvars.copy_context().run, args=(work, range(t, count, threads)),
                                    name=f"batch-part-{t}", daemon=True) for t in range(1, threads)]
        for w in workers:
            w.start()
        work(range(0, count, threads))
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(before)
    if errors:
        raise errors[0]
    return torch.cat(results)  # type: ignore[arg-type]
