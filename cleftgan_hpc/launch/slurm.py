"""The Slurm backend: each stage of a plan becomes Slurm jobs, submitted through submitit.

What `submit` makes of a plan
  - one job per stage, ``--dependency=afterok:<upstream jobs>`` and ``--kill-on-invalid-dep=yes``
    (a failed stage cancels everything downstream; the failing job also marks their status
    records 'cancelled' with the reason, so `status` says why);
  - all jobs are submitted held, recorded in the run state (status.json ``job_ids`` and
    ``slurm.json`` per stage), then released: a fast job can never race its own record;
  - every job runs ``StageJob`` (below) through submitit, which runs ``python -m
    cleftgan_hpc.execute`` for the stage in a child process, inside the spec's container.

Contract for stage configs (optional attributes, read in the submitting process only)
  - ``array_tasks(self) -> int``: N > 0 makes the stage an array of N tasks. Task i runs
    ``execute_stage(..., task=i)`` (``python -m cleftgan_hpc.execute ... --task i``, so
    ``ctx.task == i``), with global indices: an array larger than the cluster's MaxArraySize,
    or slurm.max_array_size, is split into several array jobs, chained so that at most
    ``slurm.array_parallelism`` tasks run at once. After every task succeeded, one commit job
    runs the stage once more without a task: it finds the parts done, writes the manifest and
    the stage result. Tasks must be idempotent (create-only puts per shard).
  - ``task_per_gpu: ClassVar[bool] = True``: one srun task per GPU (``--ntasks-per-node`` =
    resources.gpus, on resources.nodes nodes); the stage reads its rank from SLURM_PROCID,
    SLURM_LOCALID, SLURM_NTASKS (submitit's JobEnvironment gives the same).

Preemption and time-outs: the stage resumes from its own checkpoint in the store; nothing of
its state is pickled at submission. Slurm sends SIGUSR2 ``slurm.signal_delay_s`` before the time
limit (submitit then calls ``StageJob.checkpoint``, which lets the stage stop and requeues) and
SIGTERM on preemption (the partition's GraceTime is the time to checkpoint; Slurm requeues).
A stage that exits 75 on its own is requeued with ``scontrol requeue``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from cleftgan_hpc.context import EXIT_REQUEUE
from cleftgan_hpc.errors import LaunchError
from cleftgan_hpc.launch.sbatch import (
    ACTIVE,
    TERMINAL_OK,
    check_line,
    max_array_size,
    python_words,
    resource_options,
    sacct_states,
    setup_lines,
    slurm_cmd,
    srun_words,
    stage_shape,
    summarize,
)
from cleftgan_hpc.plan import Plan, PlannedStage
from cleftgan_hpc.runs import RunState, decide, prepare_stage, say

RECORD = "slurm.json"  # per stage, next to status.json: what was submitted for it


# -- what runs inside each job ---------------------------------------------------------------------


@dataclass
class StageJob:
    """The callable submitit pickles: which stage of which run, nothing else (no stage state)."""

    store: dict[str, Any]  # StoreConfig as JSON
    run_id: str
    stage: str
    downstream: list[str] = field(default_factory=list)  # stages to mark cancelled if this one fails
    task_index: int | None = None  # array task (global index), None for a plain or commit job
    task_count: int = 0  # array size; with task_index None and task_count > 0: the commit job
    ray_cluster: bool = False  # start a Ray head (and workers on the job's other nodes) for a sweep
    grace_s: float = 60.0  # how long checkpoint() waits for the stage to stop
    time_limit_s: float = 0.0  # the job's time limit; checkpoint() leaves 10 s of it to requeue

    def __post_init__(self) -> None:
        self._child: subprocess.Popen[bytes] | None = None
        self._code: int | None = None
        self._terminated = False
        self._t0 = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:  # the child process is not part of the pickle
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def __call__(self) -> int:
        self._t0 = time.monotonic()
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        what = "commit" if self.task_count and self.task_index is None else (
            f"task {self.task_index}/{self.task_count}" if self.task_count else f"rank {rank}")
        say(f"cleftgan-hpc: run {self.run_id} stage {self.stage} {what}, slurm job {_job_id()}, "
            f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')}, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}")
        if rank == 0:
            from cleftgan_hpc.launch.doctor import preflight

            problem = preflight(self.store)
            if problem:
                self._record_failure(problem)
                raise LaunchError(problem)
        # SIGTERM (preemption, scancel): let the stage stop at a safe point; Slurm requeues.
        signal.signal(signal.SIGTERM, self._on_term)
        cmd = [sys.executable, "-u", "-m", "cleftgan_hpc.execute", "--store", json.dumps(self.store),
               "--run", self.run_id, "--stage", self.stage]
        if self.task_index is not None:
            cmd += ["--task", str(self.task_index)]
        env = dict(os.environ)
        if self.ray_cluster and rank == 0:
            # A token of this job's own: only its processes may join its Ray cluster.
            import secrets

            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
            env["RAY_ADDRESS"] = self._start_ray(env)
        try:
            self._child = subprocess.Popen(cmd, env=env)
            code = self._wait(None)
        finally:
            if self.ray_cluster and rank == 0:
                self._stop_ray()
        say(f"cleftgan-hpc: stage {self.stage} exited with {code}")
        if code == 0:
            return 0
        if code == EXIT_REQUEUE:
            # Also after SIGTERM: a preempted job that ends within its GraceTime is not requeued
            # by Slurm. A job cancelled with scancel is already CANCELLED, so this fails harmlessly.
            self._requeue()
            sys.exit(EXIT_REQUEUE)  # no result pickle: the job is not over
        if self._terminated:  # killed while stopping: the job is being requeued or cancelled
            sys.exit(code if code > 0 else 128 - code)
        if rank == 0:
            self._cancel_downstream()
        raise LaunchError(f"stage {self.stage} failed (exit {code}); see `cleftgan-hpc status`")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on SIGUSR2 before the time limit: let the stage write its
        checkpoint and stop, then requeue this same call (which resumes from the store)."""
        if self._child is not None and self._code is None:
            with contextlib.suppress(ProcessLookupError):
                self._child.send_signal(signal.SIGUSR2)
            # Slurm may send the signal late (it checks limits every ~30 s): never wait past
            # the limit, or the job times out before it is requeued.
            left = self.time_limit_s - (time.monotonic() - self._t0) - 10 if self.time_limit_s else self.grace_s
            self._wait(max(1.0, min(self.grace_s, left)))
        return submitit.helpers.DelayedSubmission(self)

    # -- helpers ------------------------------------------------------------------------------
    def _wait(self, timeout: float | None) -> int | None:
        """Reap the child with waitpid, not Popen.wait: this also runs inside signal handlers,
        where Popen.wait would deadlock on its own lock."""
        assert self._child is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._code is None:
            try:
                pid, status = os.waitpid(self._child.pid, os.WNOHANG)
            except ChildProcessError:
                break  # reaped by the other caller
            except InterruptedError:
                continue
            if pid:
                self._code = os.waitstatus_to_exitcode(status)
                self._child.returncode = self._code
                break
            if deadline is not None and time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        while self._code is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)  # the signal handler is reaping it
        return self._code

    def _ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))

    def _start_ray(self, env: dict[str, str]) -> str:
        """A Ray head on this node and one worker on each other node of the job; the whole
        cluster dies with the job, so a requeued sweep restores from Tune's state in the store."""
        import socket

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        host = socket.gethostname()
        cpus = os.environ.get("SLURM_CPUS_ON_NODE") or str(os.cpu_count() or 1)
        gpus = len([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g])
        temp = Path(os.environ.get("TMPDIR") or "/tmp") / f"ray-{_job_id()}"  # short: unix socket paths
        # --block keeps the head in this process group: stopping it stops exactly our cluster
        # (`ray stop` would stop every Ray of this user on the node, other jobs' included).
        self._ray_head = subprocess.Popen(
            [self._ray(), "start", "--head", f"--port={port}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
             f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats", "--block"],
            start_new_session=True, env=env,
        )
        deadline = time.monotonic() + 120
        while True:  # ready when the GCS port answers
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if self._ray_head.poll() is not None or time.monotonic() > deadline:
                raise LaunchError(f"the Ray head did not start (exit {self._ray_head.poll()})")
            time.sleep(0.5)
        address = f"{host}:{port}"
        nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
        if nodes > 1:
            self._ray_workers = subprocess.Popen([
                "srun", "--overlap", f"--nodes={nodes - 1}", f"--ntasks={nodes - 1}", f"--exclude={host}",
                self._ray(), "start", f"--address={address}", f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--block",
            ], start_new_session=True, env=env)
        say(f"cleftgan-hpc: Ray cluster at {address} ({nodes} node(s))")
        return address

    def _stop_ray(self) -> None:
        for proc in (getattr(self, "_ray_workers", None), getattr(self, "_ray_head", None)):
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

    def _on_term(self, signum: int, _frame: object) -> None:
        self._terminated = True
        if self._child is not None and self._code is None:
            with contextlib.suppress(ProcessLookupError):
                self._child.send_signal(signum)

    def _requeue(self) -> None:
        jid = _job_id()
        try:
            slurm_cmd(["scontrol", "requeue", jid])
            say(f"cleftgan-hpc: requeued {jid}")
        except LaunchError as exc:
            say(f"cleftgan-hpc: could not requeue {jid}: {exc}")

    def _run(self) -> RunState:
        from cleftgan_hpc.jobspec.models import StoreConfig
        from cleftgan_hpc.storage import open_store

        return RunState(open_store(StoreConfig.model_validate(self.store)), self.run_id)

    def _record_failure(self, reason: str) -> None:
        run = self._run()
        run.set_status(self.stage, run.status(self.stage).failed(reason))
        self._cancel_downstream(run)

    def _cancel_downstream(self, run: RunState | None = None) -> None:
        """Mark every downstream stage cancelled with the reason and cancel its jobs (Slurm's
        kill-on-invalid-dep does too; this also covers clusters that ignore it)."""
        run = run or self._run()
        error = (run.status(self.stage).error or "").split("\n", 1)[0][:200]
        ids: list[str] = []
        for name in self.downstream:
            st = run.status(name)
            if st.state in ("pending", "running"):
                reason = f"not run: upstream stage {self.stage!r} failed" + (f": {error}" if error else "")
                run.set_status(name, st.cancelled(reason))
                ids += [r["id"] for r in read_record(run, name).get("jobs", [])]
        if ids:
            subprocess.run(["scancel", *ids], check=False, capture_output=True)


def _job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "?")


# -- the launcher -------------------------------------------------------------------------------------


def read_record(run: RunState, stage: str) -> dict[str, Any]:
    from cleftgan_hpc.errors import ObjectNotFound

    try:
        return run.store.get_json(run.key(stage, RECORD))
    except ObjectNotFound:
        return {}


class SlurmLauncher:
    """Submits a plan as Slurm jobs and returns at once; `status` asks sacct how they are doing."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    # -- submit ---------------------------------------------------------------------------------
    runs_to_completion = False

    def launch(self, plan: Plan, run: RunState, force: set[str]) -> bool:
        decisions = decide(plan, run, force)
        self._refuse_if_active(plan, run)
        chunk = min(max_array_size(), plan.spec.slurm.max_array_size or 10**9)
        submitted: dict[str, list[str]] = {}  # stage -> job ids its dependents wait for
        records: dict[str, dict[str, Any]] = {}
        try:
            for s in plan.stages:
                decision, why = decisions[s.name]
                if decision == "skip":
                    say(f"= {s.name}: {why}, skipped")
                    continue
                prepare_stage(run, s.name, decision, why)
                deps = [jid for d in s.needs for jid in submitted.get(d, [])]
                records[s.name] = self._submit_stage(plan, run, s, deps, chunk)
                submitted[s.name] = [j["id"] for j in records[s.name]["jobs"]]
            for name, record in records.items():
                planned = plan.stage(name)
                ids = [j["id"] for j in record["jobs"]]
                run.set_status(name, run.status(name).submitted(planned.fingerprint, planned.work_fingerprint, ids))
                run.store.put_json(run.key(name, RECORD), record)
        except BaseException:
            all_ids = [j["id"] for r in records.values() for j in r["jobs"]]
            if all_ids:
                subprocess.run(["scancel", *all_ids], check=False, capture_output=True)
            raise
        all_ids = [j["id"] for r in records.values() for j in r["jobs"]]
        if all_ids:
            slurm_cmd(["scontrol", "release", ",".join(all_ids)])
        for name, record in records.items():
            jobs = ", ".join(f"{j['id']}" + (f" (tasks {j['tasks']})" if j.get("tasks") else "") +
                             (" (commit)" if j["kind"] == "commit" else "") for j in record["jobs"])
            say(f"> {name}: submitted {jobs}")
        return True

    def _refuse_if_active(self, plan: Plan, run: RunState) -> None:
        ids = [j["id"] for s in plan.stages for j in read_record(run, s.name).get("jobs", [])]
        active = [jid for jid, states in sacct_states(ids).items() if any(st.state in ACTIVE for st in states)]
        if active:
            raise LaunchError(f"run {run.run_id} still has jobs in Slurm ({', '.join(active)}); "
                              "wait for them or `cleftgan-hpc cancel` first")

    def _executor(self, plan: Plan, run: RunState, s: PlannedStage) -> submitit.SlurmExecutor:
        spec = plan.spec
        folder = Path(spec.slurm.log_dir) / run.run_id / s.name
        check_line(str(folder), "log_dir")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            ex = submitit.SlurmExecutor(
                folder=folder, max_num_timeout=spec.slurm.max_requeues,
                python=" ".join(_quote(w) for w in python_words(spec, self.python)),
            )
        except RuntimeError as exc:  # no srun on PATH
            raise LaunchError(f"cannot submit to Slurm: {exc}") from None
        res = s.resources
        shape = stage_shape(s.config, res)
        opts = resource_options(spec, res)
        extra = {k: v for k, v in opts.items() if k not in
                 ("time", "nodes", "cpus-per-task", "mem", "gpus-per-node", "partition", "account", "qos",
                  "constraint", "exclude")}
        params: dict[str, Any] = {
            "job_name": f"{spec.name}.{s.name}",
            "time": res.time_minutes(),
            "nodes": res.nodes,
            "ntasks_per_node": shape.tasks_per_node,
            "cpus_per_task": res.cpus_per_task,
            "mem": opts["mem"],
            "signal_delay_s": spec.slurm.signal_delay_s,
            "array_parallelism": spec.slurm.array_parallelism,
            "setup": setup_lines(spec, res),
            "srun_args": srun_words(spec),
            "additional_parameters": {"kill-on-invalid-dep": "yes", "requeue": True, "hold": True, **extra},
        }
        if res.gpus:
            params["gpus_per_node"] = res.gpus
        for key in ("partition", "account", "qos", "constraint", "exclude"):
            if key in opts:
                params[key] = opts[key]
        ex.update_parameters(**params)
        return ex

    def _submit_stage(self, plan: Plan, run: RunState, s: PlannedStage, deps: list[str], chunk: int) -> dict:
        spec = plan.spec
        ex = self._executor(plan, run, s)
        shape = stage_shape(s.config, s.resources)
        grace = max(5.0, spec.slurm.signal_delay_s - 15.0)
        base = dict(store=spec.store.model_dump(mode="json"), run_id=run.run_id, stage=s.name,
                    downstream=plan.downstream(s.name), grace_s=grace,
                    ray_cluster=s.config.ray_cluster,
                    time_limit_s=s.resources.time_minutes() * 60.0)

        def set_deps(ids: list[str]) -> None:
            ex.update_parameters(dependency="afterok:" + ":".join(ids) if ids else None)

        jobs: list[dict[str, Any]] = []
        if not shape.array_tasks:
            set_deps(deps)
            job = ex.submit(StageJob(**base))
            return {"jobs": [{"id": job.job_id, "kind": "job"}], "folder": str(ex.folder), "submitted": time.time()}
        n, prev = shape.array_tasks, deps
        for start in range(0, n, chunk):
            set_deps(prev)
            idx = range(start, min(n, start + chunk))
            with ex.batch():
                batch = [ex.submit(StageJob(**base, task_index=i, task_count=n)) for i in idx]
            array_id = batch[0].job_id.split("_")[0]  # ids are set when the batch is submitted
            jobs.append({"id": array_id, "kind": "array", "offset": start, "tasks": f"{idx[0]}-{idx[-1]}"})
            prev = [array_id]  # chain the chunks: parallelism stays within array_parallelism
        set_deps([j["id"] for j in jobs])
        commit = ex.submit(StageJob(**base, task_count=n))
        jobs.append({"id": commit.job_id, "kind": "commit"})
        return {"jobs": jobs, "folder": str(ex.folder), "submitted": time.time()}

    # -- status, cancel ---------------------------------------------------------------------------
    def _states(self, plan: Plan, run: RunState) -> tuple[dict[str, dict], dict]:
        """Each stage's job record, and sacct's states of all their jobs (LaunchError off the cluster)."""
        records = {s.name: read_record(run, s.name) for s in plan.stages}
        ids = [j["id"] for r in records.values() for j in r.get("jobs", [])]
        return records, (sacct_states(ids) if ids else {})

    def reconcile(self, plan: Plan, run: RunState) -> None:
        """A job killed hard (out of memory, node failure, cancelled while queued) never writes
        its own record: take the outcome from Slurm so that `status` tells the truth."""
        try:
            records, states = self._states(plan, run)
        except LaunchError:
            return  # not on the cluster: nothing to learn
        for s in plan.stages:
            jobs = records[s.name].get("jobs", [])
            st = run.status(s.name)
            if not jobs or st.state not in ("pending", "running"):
                continue
            all_states = [x for j in jobs for x in states.get(j["id"], [])]
            if not all_states or any(x.state in ACTIVE or x.state in TERMINAL_OK for x in all_states):
                continue
            worst = next(x for x in all_states if x.state not in TERMINAL_OK)
            reason = st.error or (
                f"slurm job {worst.job_id} ended {worst.state} (exit {worst.exit_code}, {worst.reason})"
            )
            run.set_status(s.name, st.cancelled(reason) if worst.state == "CANCELLED" else st.failed(reason))

    def describe(self, plan: Plan, run: RunState) -> dict[str, str]:
        try:
            records, states = self._states(plan, run)
        except LaunchError as exc:  # not on the cluster: the records in the store still tell a lot
            why = str(exc).splitlines()[-1]
            return {s.name: (run.status(s.name).error or f"(no Slurm state: {why})").splitlines()[0][:160]
                    for s in plan.stages if read_record(run, s.name)}
        out: dict[str, str] = {}
        for s in plan.stages:
            jobs = records[s.name].get("jobs", [])
            if not jobs:
                continue
            parts = []
            for j in jobs:
                found = states.get(j["id"], [])
                label = "commit " if j["kind"] == "commit" else ""
                parts.append(f"{label}{j['id']} " + (summarize(found) if found else "unknown to sacct"))
            st = run.status(s.name)
            detail = "slurm " + "; ".join(parts)
            if st.error and st.state in ("failed", "cancelled"):
                detail += f" | {st.error.splitlines()[0][:160]}"
            out[s.name] = detail
        return out

    def cancel(self, plan: Plan, run: RunState) -> None:
        ids: list[str] = []
        for s in plan.stages:
            st = run.status(s.name)
            if st.state in ("pending", "running"):
                ids += [j["id"] for j in read_record(run, s.name).get("jobs", [])]
                run.set_status(s.name, st.cancelled("cancelled by the user (cleftgan-hpc cancel)"))
        if ids:
            slurm_cmd(["scancel", *ids])
            say(f"cancelled Slurm jobs {', '.join(ids)}")
        else:
            say("nothing to cancel: no stage of the run is pending or running")


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)
