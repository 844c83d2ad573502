"""`cleftgan-hpc convert` on malformed pickles that pass the allow-list: one clear line, no traceback.

Each file is a small valid network pickle with one thing wrong (a container of the wrong type,
a negative or huge size, a list inside itself, a kwarg of the wrong type, a cut-off file...).
The real CLI runs in a subprocess; it must exit 1 and print a single `error: <file>: ...` line.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hostile_pickles import NDARRAY, RECONSTRUCT, Call, dtype, dumps, generator_only, network_pickle, np_scalar, tensor


def _self_list() -> list[Any]:
    x: list[Any] = [1]
    x.append(x)
    return x


def _truncated() -> bytes:
    data = dumps(network_pickle())
    return data[: len(data) // 2]


def _object_array() -> Call:
    # numpy's own __setstate__ crashes the interpreter on this (an object array with a short list)
    return Call(RECONSTRUCT, (NDARRAY, (0,), b"b"), (1, (1 << 20,), dtype("O", "|"), False, [1]))


def _pipe_with_p(p: torch.Tensor) -> dict[str, Any]:
    from hostile_pickles import record

    return {**network_pickle(), "augment_pipe": record("AugmentPipe", {"_buffers": {"p": tensor(p)}})}


CASES: dict[str, Callable[[], Any]] = {
    "parameters-are-a-list": lambda: generator_only(state_edit={"_parameters": [1, 2, 3]}),
    "modules-are-a-string": lambda: generator_only(state_edit={"_modules": "synthesis"}),
    "init-kwargs-a-list": lambda: generator_only(state_edit={"_init_kwargs": [512, 512]}),
    "negative-z-dim": lambda: generator_only(kwargs={"z_dim": -5}),
    "huge-w-dim": lambda: generator_only(kwargs={"w_dim": 10**30}),
    "resolution-a-string": lambda: generator_only(kwargs={"img_resolution": "1024"}),
    "mapping-kwargs-an-int": lambda: generator_only(kwargs={"mapping_kwargs": 5}),
    "self-recursive-list": lambda: generator_only(kwargs={"mapping_kwargs": {"num_layers": _self_list()}}),
    "numpy-scalar-size": lambda: generator_only(kwargs={"w_dim": np_scalar(np.int64(2**40))}),
    "numpy-object-array": lambda: generator_only(kwargs={"c_dim": _object_array()}),
    "augment-p-not-scalar": lambda: _pipe_with_p(torch.zeros(4)),
    "bytes-in-training-set-kwargs": lambda: network_pickle(training_set_kwargs={"path": b"\x00" * 10}),
    "storage-not-a-storage": lambda: generator_only(
        state_edit={"_buffers": {"x": Call(tensor(torch.zeros(1)).func, ("junk", 0, (1,), (1,), False, None))}}
    ),
    "truncated": _truncated,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_convert_malformed_pickle_is_one_line(tmp_path: Path, case: str) -> None:
    made = CASES[case]()
    src = tmp_path / f"{case}.pkl"
    src.write_bytes(made if isinstance(made, bytes) else dumps(made))
    out = tmp_path / "out.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "cleftgan_hpc.cli", "convert", str(src), str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(err.splitlines()) == 1 and len(err) < 600, err[-3000:]
    assert err.startswith(f"error: {src}: "), err
    assert not out.exists()


def test_convert_valid_pickle(tmp_path: Path) -> None:
    """The control: the same tiny pickle, unchanged, converts."""
    src = tmp_path / "ok.pkl"
    src.write_bytes(dumps(network_pickle()))
    out = tmp_path / "out.safetensors"
    proc = subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", "convert", str(src), str(out)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.exists() and "wrote" in proc.stdout
