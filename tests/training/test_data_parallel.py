"""Two data-parallel CPU processes (gloo) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SPEC = """
name: dp
stages:
  train:
    kind: finetune
    network: random
    dataset: {dataset}
    random_network: {{channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}}
    batch: 8
    {split}
    kimg: 0.048
    snapshot_kimg: 1
    augment: none
    seed: 5
    metrics: [kid]                # a collective: every rank generates a slice of the images
    feature_extractor: demo
    metric_samples: 17            # not a multiple of 2: the slices differ in size
"""


def frozen_step_records(dataset: Path, out: Path, world: int) -> dict:
    """dp_gradients.py in ``world`` processes (ranks as the local backend starts them)."""
    script = Path(__file__).with_name("dp_gradients.py")
    port = str(_free_port())
    procs = [
        subprocess.Popen([sys.executable, str(script), str(dataset), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         # threads as the local backend splits 2 cores: the sums run in another order
                         env={**os.environ, "OMP_NUM_THREADS": str(2 // world), **({"RANK": str(r), "LOCAL_RANK": str(r),
                              "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
                              if world > 1 else {})})
        for r in range(world)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output
    return torch.load(out)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """The largest difference of two lists of tensors, each relative to its tensor's scale."""
    return max(((x - y).abs().max() / x.abs().max().clamp_min(1e-12)).item() for x, y in zip(a, b, strict=True))


# float32 sums in another order differ by about 1e-7 of the tensor's scale; a wrong slice,
# order or average differs by its whole scale
ROUNDING = 1e-4


def test_two_processes_average_what_one_process_accumulates(tiny_dataset: Path, tmp_path: Path) -> None:
    one = frozen_step_records(tiny_dataset, tmp_path / "one.pt", 1)
    two = frozen_step_records(tiny_dataset, tmp_path / "two.pt", 2)
    assert len(one["grads"]) == len(two["grads"]) == 5  # G, D, R1 at step 0; G, D at step 1
    for i, (a, b) in enumerate(zip(one["grads"], two["grads"], strict=True)):
        assert _worst(a, b) < ROUNDING, f"optimiser step {i}: gradients differ by {_worst(a, b):.2e} of their scale"
    assert one["buffers"].keys() == two["buffers"].keys() and one["buffers"]
    worst = _worst(list(one["buffers"].values()), list(two["buffers"].values()))
    assert worst < ROUNDING, f"G's running averages differ by {worst:.2e}"
    # The bound can fail: the next step's samples, or a sum where a mean belongs, break it.
    assert _worst(one["grads"][0], one["grads"][3]) > 100 * ROUNDING
    assert _worst(one["grads"][1], [2 * g for g in two["grads"][1]]) > 100 * ROUNDING


def train(tmp_path: Path, dataset: Path, split: str) -> dict[str, torch.Tensor]:
    tmp_path.mkdir()
    spec = tmp_path / "job.yaml"
    spec.write_text(SPEC.format(dataset=dataset, split=split))
    out = subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", "run", str(spec), "--run", "dp-1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread per process in both runs
    assert out.returncode == 0, out.stdout + out.stderr
    return load_file(str(tmp_path / "store/runs/dp-1/stages/train/network.safetensors"))


def test_two_processes_match_one_process_accumulating(tiny_dataset: Path, tmp_path: Path) -> None:
    one = train(tmp_path / "one", tiny_dataset, "batch_per_gpu: 4")  # 1 process, 2 rounds of 4
    two = train(tmp_path / "two", tiny_dataset, "processes: 2")  # 2 processes, 1 round of 4 each
    assert one.keys() == two.keys()
    # With the same threads per process (set below), each 4-image slice is computed by the same
    # kernels in both runs, scaling by 1/2 is exact, and the two halves are added once either
    # way: the weights agree to the bit on any CPU. (With other thread counts the sums differ
    # by rounding, which the frozen-weights test above bounds; Adam with beta1 = 0 turns noise
    # on near-zero gradients into whole steps, so weights after training cannot be compared.)
    params = [k for k in one if k.startswith(("G.", "D.")) and one[k].is_floating_point()]
    diffs = torch.cat([(one[k].float() - two[k].float()).abs().flatten() for k in params])
    assert diffs.max().item() < 1e-6, f"largest weight difference {diffs.max().item():.2e}"
    assert one["D.b4.out.bias"].abs().max().item() > 1e-3  # and they did train: D's output bias left 0
    kid = [json.loads((tmp_path / run / "store/runs/dp-1/stages/train/metrics.jsonl").read_text().splitlines()[-1])
           for run in ("one", "two")]
    assert kid[0]["kid"] == pytest.approx(kid[1]["kid"], rel=1e-4, abs=1e-6)  # equal weights, same images
