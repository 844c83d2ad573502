"""The local backend: each stage in its own process on this machine, in dependency order."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from cleftgan_hpc.context import EXIT_REQUEUE
from cleftgan_hpc.errors import LaunchError
from cleftgan_hpc.execute import PARENT_PID_ENV
from cleftgan_hpc.plan import Plan, PlannedStage
from cleftgan_hpc.runs import RunState, StageStatus, decide, prepare_stage, say


def _relay(proc: subprocess.Popen[str], label: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        say(f"  [{label}] {line.rstrip()}")


def _wait_all(procs: list[subprocess.Popen[str]], grace: float = 60.0) -> list[int]:
    """Exit codes of all processes; when one fails the others are stopped (they would wait in a
    collective for it forever): SIGTERM, then SIGKILL after ``grace`` seconds."""
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return [c for c in codes if c is not None]
        if deadline is None and any(c not in (None, 0) for c in codes):
            for p in procs:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
        if deadline is not None and time.monotonic() > deadline:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.2)


def process_alive(pid: int) -> bool:
    """A live process (not a zombie left by a dead parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalLauncher:
    """Runs the plan to completion here. A done, up-to-date stage is skipped; a failed stage
    cancels everything downstream and the run stops there."""

    runs_to_completion = True

    def launch(self, plan: Plan, run: RunState, force: set[str]) -> bool:
        self._refuse_if_active(plan, run)
        # SIGTERM to this launcher (a job scheduler, kill) is handled like Ctrl-C: the running
        # stage gets SIGTERM and stops at a safe point, instead of being orphaned.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        for s in plan.stages:  # make every stage visible in `status` from the start
            if not run.store.exists(run.key(s.name, "status.json")):
                run.set_status(s.name, StageStatus())
        decisions = decide(plan, run, force)
        outcome: dict[str, str] = {}
        for s in plan.stages:
            decision, why = decisions[s.name]
            if decision == "skip":
                say(f"= {s.name}: {why}, skipped")
                outcome[s.name] = "done"
                continue
            blocked = [d for d in s.needs if outcome.get(d) != "done"]
            if blocked:
                reason = f"not run: upstream stage {blocked[0]!r} {outcome.get(blocked[0], 'did not finish')}"
                run.set_status(s.name, run.status(s.name).cancelled(reason))
                say(f"x {s.name}: {reason}")
                outcome[s.name] = "cancelled"
                continue
            prepare_stage(run, s.name, decision, why)
            outcome[s.name] = self._run_stage(plan, run, s)
        return all(v == "done" for v in outcome.values())

    def _run_stage(self, plan: Plan, run: RunState, s: PlannedStage) -> str:
        say(f"> {s.name} ({s.kind}) starting")
        t0 = time.monotonic()
        cmd = [
            sys.executable,
            "-u",
            "-m",
            "cleftgan_hpc.execute",
            "--store",
            json.dumps(plan.spec.store.model_dump(mode="json")),
            "--run",
            run.run_id,
            "--stage",
            s.name,
        ]
        world = s.config.world_size  # data-parallel stages run one process per rank
        port = _free_port() if world > 1 else 0
        procs = []
        for rank in range(world):
            env = dict(os.environ)
            env[PARENT_PID_ENV] = str(os.getpid())  # the stage stops if this launcher dies
            # One stage's thread pools must not oversubscribe the cores it was given.
            env.setdefault("OMP_NUM_THREADS", str(max(1, s.resources.cpus_per_task // world)))
            if world > 1:
                env.update(
                    RANK=str(rank),
                    LOCAL_RANK=str(rank),
                    WORLD_SIZE=str(world),
                    MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port),
                )
            # Every rank's lines are shown; a new session keeps the terminal's Ctrl-C away from
            # the stage, which gets SIGTERM from us instead and stops at a safe point.
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
                )
            )
        readers = [
            threading.Thread(target=_relay, args=(p, s.name if i == 0 else f"{s.name}.rank{i}"), daemon=True)
            for i, p in enumerate(procs)
        ]
        for t in readers:
            t.start()
        try:
            codes = _wait_all(procs)
        except KeyboardInterrupt:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)  # let the stage checkpoint and record itself
            codes = [p.wait() for p in procs]
            say(f"! {s.name}: interrupted; run again with --run {run.run_id} to resume")
            raise
        finally:
            for t in readers:
                t.join(timeout=5)
        code = codes[0] if codes[0] != 0 or all(c == 0 for c in codes) else next(c for c in codes if c)
        if code != 0 and codes[0] == 0:  # rank 0 recorded success but a worker failed
            run.set_status(s.name, run.status(s.name).failed(f"a data-parallel worker exited with {code}"))
        elapsed = time.monotonic() - t0
        status = run.status(s.name)
        if code == 0 and status.state == "done":
            say(f"+ {s.name} done in {elapsed:.1f}s")
            return "done"
        if code == EXIT_REQUEUE:
            say(f"! {s.name}: stopped on request after {elapsed:.1f}s; run again to resume")
            return "stopped"
        if status.state in ("running", "pending"):  # killed before it could record anything
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            status = status.failed(f"process {how}")
            run.set_status(s.name, status)
        say(f"x {s.name} failed after {elapsed:.1f}s: {status.error}")
        return "failed"

    def _refuse_if_active(self, plan: Plan, run: RunState) -> None:
        for s in plan.stages:
            st = run.status(s.name)
            if st.state == "running" and st.host == socket.gethostname() and st.pid and process_alive(st.pid):
                raise LaunchError(
                    f"stage {s.name!r} of run {run.run_id} is running now (pid {st.pid}); "
                    "wait for it or stop it before running the job again"
                )

    def reconcile(self, plan: Plan, run: RunState) -> None:
        """A stage recorded running here whose process is gone (killed with its launcher, the
        machine rebooted) failed, whatever its record still says."""
        for s in plan.stages:
            st = run.status(s.name)
            if st.state == "running" and st.host == socket.gethostname() and st.pid and not process_alive(st.pid):
                run.set_status(s.name, st.failed(f"its process (pid {st.pid}) ended without recording an outcome"))

    def describe(self, plan: Plan, run: RunState) -> dict[str, str]:
        return {}

    def cancel(self, plan: Plan, run: RunState) -> None:
        for s in plan.stages:
            status = run.status(s.name)
            if status.state == "running" and status.pid and status.host == socket.gethostname():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(status.pid, signal.SIGTERM)
