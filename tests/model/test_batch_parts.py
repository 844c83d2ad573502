"""A synthesis network's batch in parts on Python threads (model/batch_parts.py): the same images
as one batch, the caller's settings carried into the threads, serial wherever threads would
change what the caller sees."""

from __future__ import annotations

import contextvars
import threading

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cleftgan_hpc.model import Generator
from cleftgan_hpc.model.batch_parts import run_in_parts, threads_for

SETTING: contextvars.ContextVar[str] = contextvars.ContextVar("test_setting", default="unset")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _record(seen: list[tuple[str, int, int, bool, str, int]]):
    def run(a: int, b: int) -> torch.Tensor:
        seen.append((threading.current_thread().name, a, b, torch.is_grad_enabled(), SETTING.get(),
                     torch.get_num_threads()))
        return torch.arange(a, b, dtype=torch.float32)
    return run


def test_parts_run_on_threads_in_order_with_the_callers_settings(two_threads) -> None:
    seen: list = []
    token = SETTING.set("caller's")
    try:
        with torch.no_grad():
            out = run_in_parts(_record(seen), 7, 100, torch.device("cpu"))
    finally:
        SETTING.reset(token)
    assert torch.equal(out, torch.arange(7, dtype=torch.float32))  # joined in batch order
    assert sorted((a, b) for _, a, b, *_ in seen) == [(0, 4), (4, 7)]  # parts of PART_SAMPLES
    assert len({name for name, *_ in seen}) == 2  # the caller and one worker thread
    assert all(not grad and setting == "caller's" and threads == 1 for _, _, _, grad, setting, threads in seen)
    assert torch.get_num_threads() == 2  # restored


def test_parts_no_larger_than_step_and_errors_reach_the_caller(two_threads) -> None:
    seen: list = []
    with torch.no_grad():
        run_in_parts(_record(seen), 10, 3, torch.device("cpu"))
    assert sorted((a, b) for _, a, b, *_ in seen) == [(0, 3), (3, 6), (6, 9), (9, 10)]

    def fails(a: int, b: int) -> torch.Tensor:
        if a > 0:
            raise RuntimeError("part failed")
        return torch.zeros(b - a)

    with torch.no_grad(), pytest.raises(RuntimeError, match="part failed"):
        run_in_parts(fails, 8, 8, torch.device("cpu"))
    assert torch.get_num_threads() == 2


def test_serial_where_threads_would_change_what_the_caller_sees(two_threads) -> None:
    cpu = torch.device("cpu")
    assert threads_for(8, cpu) == 1  # gradients recorded (the default)
    with torch.no_grad():
        assert threads_for(8, cpu) == 2
        assert threads_for(1, cpu) == 1
        with FlopCounterMode(display=False):  # a dispatch mode sees only its own thread
            assert threads_for(8, cpu) == 1
        torch.set_num_threads(1)
        assert threads_for(8, cpu) == 1
    seen: list = []
    run_in_parts(_record(seen), 10, 100, cpu)  # with gradients: the whole batch, as before
    assert [(a, b) for _, a, b, *_ in seen] == [(0, 10)]


def test_threaded_synthesis_equals_one_batch(two_threads, monkeypatch) -> None:
    """StyleGAN3's synthesis (StyleGAN2's runs its batch whole: its 64 px fixture was no faster in
    parts, and 10% slower at batch 32, being mostly convolutions that gain from the larger batch)."""
    torch.manual_seed(0)
    g = Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256,
                  channel_max=16).eval()
    z = torch.randn(5, 16)
    runs: list[tuple[str, int]] = []
    original = g.synthesis._run

    def recorded(ws: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        runs.append((threading.current_thread().name, ws.shape[0]))
        return original(ws, *args, **kwargs)

    monkeypatch.setattr(g.synthesis, "_run", recorded)
    with torch.no_grad():
        threaded = g(z, None, noise_mode="const")
        assert sorted(n for _, n in runs) == [1, 4] and len({name for name, _ in runs}) == 2
        runs.clear()
        with FlopCounterMode(display=False):  # the same parts one after another, in this thread
            serial = g(z, None, noise_mode="const")
        assert [n for _, n in runs] == [4, 1]
        torch.set_num_threads(1)
        one_thread = g(z, None, noise_mode="const")
    assert torch.equal(threaded, one_thread)  # the same pixels whatever the thread count
    # (a dispatch mode also turns off the banded FIR products: the same sums, rounded apart)
    assert torch.allclose(threaded, serial, atol=1e-6, rtol=0)
    runs.clear()
    whole = g(z, None, noise_mode="const")  # with gradients: one batch, equal up to its rounding
    assert [n for _, n in runs] == [5]
    assert torch.allclose(threaded, whole, atol=1e-5, rtol=0), (threaded - whole).abs().max()
