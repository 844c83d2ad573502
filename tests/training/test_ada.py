"""The ADA controller: direction and size of p's steps, the interval, clamping, resume state."""

from __future__ import annotations

import pytest
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.training.ada import AdaConfig, AdaController

BATCH = 32
STEP = BATCH * 4 / (500 * 1000)  # batch * interval / (ada_kimg * 1000)


def logits_with_rt(rt: float, n: int = BATCH) -> torch.Tensor:
    """[n, 1] logits whose mean sign is ``rt`` (n * (1 + rt) / 2 positive)."""
    pos = round(n * (1 + rt) / 2)
    return torch.tensor([1.5] * pos + [-0.7] * (n - pos)).view(n, 1)


def run_batches(ada: AdaController, rt: float, batches: int) -> list[bool]:
    updates = []
    for _ in range(batches):
        ada.accumulate(logits_with_rt(rt))
        updates.append(ada.end_batch())
    return updates


def test_p_rises_by_one_step_when_d_is_overconfident_on_reals() -> None:
    ada = AdaController(AdaConfig(), BATCH)
    assert ada.step_size == pytest.approx(STEP)
    assert run_batches(ada, 0.9, 4) == [False, False, False, True]
    assert ada.rt == pytest.approx(0.9, abs=1 / BATCH)
    assert ada.p == pytest.approx(STEP)
    run_batches(ada, 0.9, 8)
    assert ada.p == pytest.approx(3 * STEP)


def test_p_falls_when_d_is_not_overconfident_and_never_goes_below_zero() -> None:
    ada = AdaController(AdaConfig(), BATCH, p=2.5 * STEP)
    run_batches(ada, 0.2, 8)
    assert ada.p == pytest.approx(0.5 * STEP)
    run_batches(ada, 0.2, 8)
    assert ada.p == 0.0


def test_r_t_is_the_mean_sign_over_the_whole_interval() -> None:
    ada = AdaController(AdaConfig(target=0.6, interval=2), BATCH)
    ada.accumulate(logits_with_rt(1.0))  # 1.0 and 0.0 average to 0.5 < 0.6: p must not rise
    ada.end_batch()
    ada.accumulate(logits_with_rt(0.0))
    assert ada.end_batch()
    assert ada.rt == pytest.approx(0.5) and ada.p == 0.0


def test_exactly_at_target_p_stays() -> None:
    ada = AdaController(AdaConfig(target=0.5, interval=1), BATCH, p=0.1)
    ada.accumulate(logits_with_rt(0.5))
    ada.end_batch()
    assert ada.p == 0.1


def test_custom_kimg_interval_and_presummed_signs() -> None:
    ada = AdaController(AdaConfig(interval=2, kimg=100), batch_size=8)
    ada.accumulate_signs(torch.tensor(8.0), 8)
    ada.end_batch()
    ada.accumulate_signs(6.0, 8)
    ada.end_batch()
    assert ada.rt == pytest.approx(14 / 16)
    assert ada.p == pytest.approx(8 * 2 / (100 * 1000))


def test_reduce_hook_sums_over_ranks() -> None:
    """Two 'ranks', one over-confident and one not: the reduced r_t decides for both."""
    seen = []

    def fake_all_reduce(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        other = torch.tensor([-BATCH * 1.0, BATCH], dtype=torch.float64)  # the other rank: r_t = -1
        return t + other

    ada = AdaController(AdaConfig(interval=1), 2 * BATCH)
    ada.accumulate(logits_with_rt(1.0))
    ada.end_batch(reduce=fake_all_reduce)
    assert seen[0].tolist() == [BATCH, BATCH]
    assert ada.rt == 0.0 and ada.p == 0.0


def test_no_logits_in_an_interval_leaves_p_alone() -> None:
    ada = AdaController(AdaConfig(interval=1), BATCH, p=0.3)
    assert not ada.end_batch()
    assert ada.p == 0.3


def test_state_dict_resumes_mid_interval_exactly() -> None:
    full = AdaController(AdaConfig(), BATCH)
    run_batches(full, 0.9, 6)
    state = full.state_dict()
    resumed = AdaController(AdaConfig(), BATCH)
    resumed.load_state_dict(state)
    for ada in (full, resumed):
        run_batches(ada, 0.1, 2)  # completes the pending interval: (2 * 0.9 + 2 * 0.1) / 4 = 0.5
    assert resumed.state_dict() == full.state_dict()
    assert full.rt == pytest.approx(0.5, abs=1 / BATCH)
    assert isinstance(state["signs_sum"], float) and state["batches"] == 2


@pytest.mark.parametrize("kwargs", [{"target": 1.5}, {"interval": 0}, {"kimg": 0}])
def test_bad_config_is_a_clear_error(kwargs: dict[str, float]) -> None:
    with pytest.raises(CleftGanError):
        AdaConfig(**kwargs)  # type: ignore[arg-type]
