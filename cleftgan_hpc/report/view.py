"""What the report knows about one stage of a run: its kind, config, status record, result, keys."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cleftgan_hpc.layout import join_key, stage_prefix
from cleftgan_hpc.runs import StageStatus

REPORT_FILE = "report.html"


@dataclass
class StageView:
    """One stage as the report shows it; ``problems`` are about its records (status, result)."""

    run_id: str
    name: str
    kind: str | None  # None: the run's spec could not be read
    config: Any = None  # the stage's config as planned (stage: inputs resolved to store keys)
    status: StageStatus | None = None
    result: dict[str, str] | None = None
    problems: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # store keys: log.txt, then array tasks' tasks/<i>.log.txt

    @property
    def prefix(self) -> str:
        return stage_prefix(self.run_id, self.name)

    @property
    def state(self) -> str:
        return self.status.state if self.status is not None else "unknown"

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def settled(self) -> bool:
        """Its final outputs are worth reading: done, or its record is unreadable (show what is there)."""
        return self.state in ("done", "unknown")

    def key(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def output(self, name: str) -> str:
        """The store key of output ``name``: as the stage recorded it, else where its kind puts it."""
        if self.result and isinstance(self.result.get(name), str):
            return self.result[name]
        outputs = getattr(type(self.config), "outputs", {}) if self.config is not None else {}
        return self.key(outputs.get(name, name))

    def cfg(self, name: str, default: Any = None) -> Any:
        return getattr(self.config, name, default) if self.config is not None else default

    def href(self, key: str) -> str:
        return href(self.run_id, key)


def href(run_id: str, key: str) -> str:
    """A link from runs/<run>/report.html to ``key``: relative, so it works in a file store, a
    pulled copy of the store, or wherever the store's tree is served."""
    base = join_key("runs", run_id) + "/"
    # quoted: a grid instance's stage name (train[a,b]) or a file name may hold URL syntax
    return quote(key[len(base):] if key.startswith(base) else "../../" + key)


def when(t: float | None) -> str:
    return dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def took(st: StageStatus | None) -> str:
    if st is None or not st.started:
        return "-"
    if st.finished and st.finished >= st.started and st.state != "running":
        return f"{st.finished - st.started:.1f}s"
    return f"{time.time() - st.started:.0f}s+" if st.state == "running" else "-"


def overall(states: list[str]) -> str:
    """The run's state from its stages': done only when every stage is."""
    if states and all(s == "done" for s in states):
        return "done"
    for s in ("failed", "running", "cancelled", "unknown"):
        if s in states:
            return s
    return "pending"
