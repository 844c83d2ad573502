"""Runs and their state in the store: run ids, the resolved spec, one status record per stage.

Layout (under the store root):
    runs/<run-id>/spec.yaml                    the resolved spec the run executes
    runs/<run-id>/stages/<stage>/status.json   state, attempt, times, host, error, job ids
    runs/<run-id>/stages/<stage>/result.json   outputs (name -> store key) of a done stage
    runs/<run-id>/stages/<stage>/log.txt       the stage's log, uploaded as it finishes
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import yaml

from cleftgan_hpc.errors import CleftGanError, ObjectNotFound
from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.layout import stage_prefix
from cleftgan_hpc.plan import Plan
from cleftgan_hpc.storage.base import ObjectStore, join_key

State = Literal["pending", "running", "done", "failed", "cancelled"]
STATES: tuple[State, ...] = ("pending", "running", "done", "failed", "cancelled")


def new_run_id(job_name: str) -> str:
    """``<job>-<UTC time>-<random>``: sorts by creation time, unique across machines."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{job_name}-{stamp}-{secrets.token_hex(2)}"


def check_run_id(run_id: str) -> str:
    if not run_id or "/" in run_id or run_id.startswith(".") or len(run_id) > 128:
        raise CleftGanError(f"bad run id {run_id!r}: no '/', not starting with '.', at most 128 characters")
    return run_id


@dataclass
class StageStatus:
    """The record of one stage of one run.

    Records change only through the named transitions below, each returning the next record
    (``run.set_status(name, run.status(name).failed(reason))``): running, from the process that
    runs the stage, submitted/cancelled by a backend, ended with the stage's own outcome, or
    failed by whoever saw the stage die without saying so.
    """

    state: State = "pending"
    attempt: int = 0  # how many times the stage has started
    started: float | None = None  # unix time of the current/last attempt's start
    finished: float | None = None
    host: str | None = None
    pid: int | None = None
    error: str | None = None  # one-paragraph summary of why it failed or was cancelled
    fingerprint: str | None = None  # the plan fingerprint the stage ran with (done => up to date)
    work_fingerprint: str | None = None  # the part of it its saved work depends on (see decide)
    job_ids: list[str] = field(default_factory=list)  # backend job ids (Slurm), newest last
    updated: float = field(default_factory=time.time)

    @classmethod
    def from_json(cls, data: dict) -> StageStatus:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    # -- transitions ---------------------------------------------------------------------
    def running(self, fingerprint: str, work_fingerprint: str, job_id: str | None = None) -> StageStatus:
        """This process starts another attempt of the stage."""
        return StageStatus(
            state="running",
            attempt=self.attempt + 1,
            started=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            fingerprint=fingerprint,
            work_fingerprint=work_fingerprint,
            job_ids=self.job_ids + ([job_id] if job_id else []),
        )

    def submitted(self, fingerprint: str, work_fingerprint: str, job_ids: list[str]) -> StageStatus:
        """A batch backend queued the stage's jobs; it waits for them (and their dependencies)."""
        return StageStatus(
            state="pending",
            attempt=self.attempt,
            fingerprint=fingerprint,
            work_fingerprint=work_fingerprint,
            job_ids=self.job_ids + job_ids,
        )

    def ended(self, state: State, error: str | None = None) -> StageStatus:
        """The stage said how its attempt ended: done, pending (stopped on request) or failed."""
        return replace(self, state=state, error=error, finished=time.time())

    def failed(self, reason: str) -> StageStatus:
        """The stage died without recording why (killed, a worker failed, its job vanished)."""
        return replace(self, state="failed", error=reason, finished=self.finished or time.time())

    def cancelled(self, reason: str) -> StageStatus:
        """It will not run (upstream failed, the user cancelled); it keeps the fingerprints it ran
        with, so the next launch still sees what changed since."""
        return replace(self, state="cancelled", error=reason, finished=self.finished or time.time())


class RunState:
    """Reads and writes one run's records in the store."""

    def __init__(self, store: ObjectStore, run_id: str) -> None:
        self.store, self.run_id = store, check_run_id(run_id)

    @property
    def prefix(self) -> str:
        return join_key("runs", self.run_id)

    def key(self, stage: str, name: str) -> str:
        return join_key(stage_prefix(self.run_id, stage), name)

    # -- the spec ------------------------------------------------------------------------
    def save_spec(self, spec: JobSpec) -> None:
        text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        self.store.put_text(join_key(self.prefix, "spec.yaml"), text)

    def load_spec(self) -> JobSpec:
        from cleftgan_hpc.jobspec.load import parse_spec

        key = join_key(self.prefix, "spec.yaml")
        try:
            text = self.store.get_text(key)
        except ObjectNotFound:
            raise CleftGanError(f"no run {self.run_id!r} in {self.store.url} (missing {key})") from None
        return parse_spec(text, file=self.store.uri(key), interpolate=False).spec

    def exists(self) -> bool:
        return self.store.exists(join_key(self.prefix, "spec.yaml"))

    # -- status and results ----------------------------------------------------------------
    def status(self, stage: str) -> StageStatus:
        key = self.key(stage, "status.json")
        try:
            data = self.store.get_json(key)
        except ObjectNotFound:
            return StageStatus()
        except ValueError as exc:  # not JSON
            raise CleftGanError(f"{self.store.uri(key)} is not a status record ({exc}); delete it to reset") from None
        if not isinstance(data, dict):
            raise CleftGanError(f"{self.store.uri(key)} is not a status record (not a JSON object); delete it to reset")
        return StageStatus.from_json(data)

    def set_status(self, stage: str, status: StageStatus) -> None:
        status.updated = time.time()
        self.store.put_json(self.key(stage, "status.json"), asdict(status))

    def reset_stage(self, stage: str) -> int:
        """Delete what a stage made (checkpoints, outputs, logs), keeping its status record, so it
        starts over instead of resuming from work done with another config."""
        keep = self.key(stage, "status.json")
        doomed = [i.key for i in self.store.list(stage_prefix(self.run_id, stage) + "/") if i.key != keep]
        for key in doomed:
            self.store.delete(key)
        return len(doomed)

    def result(self, stage: str) -> dict[str, str] | None:
        key = self.key(stage, "result.json")
        try:
            data = self.store.get_json(key)
        except ObjectNotFound:
            return None
        except ValueError as exc:
            raise CleftGanError(f"{self.store.uri(key)} is not a stage result ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("outputs"), dict):
            raise CleftGanError(f"{self.store.uri(key)} is not a stage result (no outputs mapping)")
        return data["outputs"]

    def set_result(self, stage: str, outputs: dict[str, str]) -> None:
        self.store.put_json(self.key(stage, "result.json"), {"outputs": outputs})


def latest_run_id(store: ObjectStore, job_name: str) -> str | None:
    """The run of ``job_name`` started or resumed last (its spec.yaml is rewritten each time).
    Runs of other jobs whose names merely start the same are not candidates."""
    auto = re.compile(re.escape(job_name) + r"-\d{8}-\d{6}-[0-9a-f]{4}")
    best: tuple[float, str] | None = None
    for info in store.list(f"runs/{job_name}-"):
        parts = info.key.split("/")
        if len(parts) != 3 or parts[2] != "spec.yaml":
            continue
        run_id = parts[1]
        if not auto.fullmatch(run_id) and _job_of(store, info.key) != job_name:
            continue  # an id given by hand: trust the stored spec's name, not the prefix
        candidate = (info.last_modified or 0.0, run_id)
        best = candidate if best is None or candidate > best else best
    return best[1] if best else None


def _job_of(store: ObjectStore, spec_key: str) -> str | None:
    try:
        data = yaml.safe_load(store.get_text(spec_key))
    except (ObjectNotFound, yaml.YAMLError):
        return None
    return data.get("name") if isinstance(data, dict) else None


def open_run(spec: JobSpec, run_id: str | None, *, create: bool) -> RunState:
    """The run ``run_id`` of ``spec`` in its store: a new one when ``create`` and no id is given,
    the latest one when neither is; an existing one must exist unless ``create``."""
    from cleftgan_hpc.storage import open_store

    store = open_store(spec.store)
    if run_id is None and not create:
        run_id = latest_run_id(store, spec.name)
        if run_id is None:
            raise CleftGanError(f"no runs of job {spec.name!r} in {spec.store.url}")
    run = RunState(store, run_id or new_run_id(spec.name))
    if not create and not run.exists():
        raise CleftGanError(f"no run {run.run_id!r} in {spec.store.url}")
    return run


def format_status(plan: Plan, run: RunState, extra: dict[str, str] | None = None) -> str:
    """The stage table of a run: state, attempts, start, duration, host, and a detail per stage."""
    def when(t: float | None) -> str:
        return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"

    rows = [("STAGE", "KIND", "STATE", "TRY", "STARTED", "TOOK", "HOST", "DETAIL")]
    for s in plan.stages:
        st = run.status(s.name)
        took = (
            f"{st.finished - st.started:.1f}s"
            if st.started and st.finished
            else (f"{time.time() - st.started:.0f}s+" if st.started and st.state == "running" else "-")
        )
        detail = (extra or {}).get(s.name) or (st.error or "").split("\n", 1)[0][:120]
        rows.append((s.name, s.kind, st.state, str(st.attempt), when(st.started), took, st.host or "-", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1] for r in rows]
    return "\n".join(line.rstrip() for line in lines)


Decision = Literal["skip", "resume", "fresh"]


def decide(plan: Plan, run: RunState, force: set[str]) -> dict[str, tuple[Decision, str]]:
    """What each stage of a (re)started run does, and why: skip (done, up to date), resume
    (continue from its own checkpoints; also when only fields in its kind's ``reusable_changes``
    changed) or fresh (forced, or its config changed otherwise: start over)."""
    forced = set(force)
    for name in force:
        forced.update(plan.downstream(name))
    out: dict[str, tuple[Decision, str]] = {}
    for s in plan.stages:
        st = run.status(s.name)
        if s.name in forced:
            out[s.name] = ("fresh", "forced")
        elif st.fingerprint and st.fingerprint != s.fingerprint:
            if st.work_fingerprint and st.work_fingerprint == s.work_fingerprint:
                # e.g. a longer kimg: the stage continues from its checkpoints, which it checks itself
                out[s.name] = ("resume", "its config changed only in settings it can continue with; continuing")
            else:
                out[s.name] = ("fresh", "its config or an upstream stage changed since it ran")
        elif st.state == "done":
            out[s.name] = ("skip", f"done earlier (attempt {st.attempt})")
        else:
            out[s.name] = ("resume", "")
    return out


def say(msg: str) -> None:
    """A line of a launcher's report to the user (stdout, unbuffered)."""
    print(msg, flush=True)


def prepare_stage(run: RunState, stage: str, decision: Decision, why: str) -> None:
    """Before a stage runs again: clear its old work when it starts over, and say why it runs."""
    if decision == "fresh":
        removed = run.reset_stage(stage)
        say(f"~ {stage}: {why}; starting over" + (f" ({removed} old objects removed)" if removed else ""))
    elif why:
        say(f"~ {stage}: {why}")
