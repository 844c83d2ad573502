"""A synthesis process SIGKILLed mid-run leaves no process behind, and run again ends byte-identical to
an uninterrupted run (file:// and the S3 server), through the standalone command line."""

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
from waiting import wait_until_stable

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


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a process from /proc/PID/stat, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)": comm may hold spaces and ')'
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0], fields[19]


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process descended from ``root`` (the start time tells a reused pid)."""
    stats = {int(d): st for d in os.listdir("/proc") if d.isdigit() and (st := _stat(int(d))) is not None}
    found: dict[int, str] = {}
    parents = [root]
    while parents:
        parent = parents.pop()
        for pid, (ppid, _, start) in stats.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                parents.append(pid)
    return found


def _alive(pid: int, start: str) -> bool:
    st = _stat(pid)
    return st is not None and st[2] == start and st[1] != "Z"  # a zombie has ended (its reaper may be slow)


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
        # the encoding worker and multiprocessing's resource tracker
        children = _descendants(proc.pid) if sys.platform.startswith("linux") else {}
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    # nothing it started outlives it: the workers die with it, then the tracker sees its pipe close
    if sys.platform.startswith("linux"):  # /proc
        assert children, "the encoding worker was not found"
        deadline = time.monotonic() + 10
        while (left := {p for p, start in children.items() if _alive(p, start)}) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes of the killed synthesize still run: {left}"
    # an S3 server may still finish a PUT whose body had arrived when the client died (up to
    # upload_concurrency of them): count what is there once it has settled
    before = wait_until_stable(lambda: _shards(store), 30, "the shard count after the kill",
                               quiet=1.0, interval=0.1)
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
