"""A synthesis process SIGKILLed mid-run and run again ends byte-identical to an uninterrupted run
(file:// and the S3 server), through the standalone command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _command(store: Any, net: Path, scratch: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "cleftgan_hpc.synthesis.commands", "synthesize", "--network", str(net),
           "--store", store.url, "--dataset", "killed", "--count", "120", "--shard-size", "4", "--batch", "2",
           "--workers", "1", "--scratch", str(scratch), "--device", "cpu", *extra]
    if getattr(store, "endpoint_url", None):
        cmd += ["--endpoint-url", store.endpoint_url]
    return cmd


def _shards(store: Any) -> int:
    return sum(1 for _ in store.list("datasets/killed/shard-"))


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical(store: Any, tiny_net: Path, make_cfg: Any, run_synthesis: Any,
                                               dataset_bytes: Any, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    proc = subprocess.Popen(_command(store, tiny_net, tmp_path / "s1"), env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while _shards(store) < 3:  # kill it in the middle: some shards uploaded, others in flight
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no shards appeared"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    # an S3 server may still finish a PUT whose body had arrived when the client died (up to
    # upload_concurrency of them): count what is there once it has settled
    time.sleep(1.0)
    before = _shards(store)
    assert 3 <= before < 30 and not store.exists("datasets/killed/manifest.json")

    rerun = subprocess.run(_command(store, tiny_net, tmp_path / "s1"), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    # shards it finished are kept (a file-store put killed before its metadata was written is remade,
    # found byte-identical and kept): the re-run skips at least some
    done = int(re.search(r"(\d+) already done", rerun.stderr).group(1))  # type: ignore[union-attr]
    assert 1 <= done <= before and "committed" in rerun.stdout
    assert not list((tmp_path / "s1").rglob("*.part"))

    clean = run_synthesis(make_cfg(dataset="clean", count=120, shard_size=4, batch=2), store)
    killed = store.get_json("datasets/killed/manifest.json")
    assert killed["shards"] == clean["shards"]
    assert dataset_bytes(store, "datasets/killed") == dataset_bytes(store, "datasets/clean")
