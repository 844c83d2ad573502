"""StageContext: everything a stage function may use besides its own config.

A stage is ``run(cfg, ctx) -> dict[str, str]`` (output name -> store key). Backends build the
context; stages never know whether they run in a local process, a Slurm job or a Ray trial.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.progress import Progress
from cleftgan_hpc.spec.models import StoreConfig, stage_ref
from cleftgan_hpc.storage.base import ObjectStore, join_key

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; run me again


class StopRequested(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a stage that saw ``ctx.should_stop()`` and saved its state: run it again later."""


def stage_prefix(run_id: str, stage: str) -> str:
    """The store prefix holding everything of one stage of one run."""
    return join_key("runs", run_id, "stages", stage)


@dataclass
class StageContext:
    """What a running stage gets: where to write, where to scratch, which device, how to report."""

    store: ObjectStore
    run_id: str
    stage: str
    scratch: Path  # private local directory for temporary files (inputs, partial outputs)
    log: logging.Logger
    device: str = "cpu"
    cpus: int = 1
    rank: int = 0
    world_size: int = 1
    store_config: StoreConfig | None = None  # how to open the store again (for trials and subprocesses)
    task: int | None = None  # array task index (one part of a split stage); None: the whole stage / its commit
    outputs_of: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> output -> store key
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def prefix(self) -> str:
        return stage_prefix(self.run_id, self.stage)

    def key(self, *parts: str) -> str:
        """A store key under this stage's prefix."""
        return join_key(self.prefix, *parts)

    def progress(self, total: int | None, desc: str, unit: str = "items") -> Progress:
        return Progress(total, desc, unit, logger=self.log)

    # -- stopping on request (Slurm sends SIGUSR2/SIGTERM before preemption or time-out) --
    def should_stop(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            self.log.warning(f"received {signal.Signals(signum).name}: stopping at the next safe point")
            self._stop.set()

        for sig in (signal.SIGTERM, signal.SIGUSR2):
            signal.signal(sig, handler)

    # -- inputs ------------------------------------------------------------------------
    def fetch(self, ref: str) -> Path:
        """A local path for an input: a path as is; ``store:KEY`` or ``stage:NAME[.OUTPUT]``
        downloaded into scratch (a file, or every object under a prefix for a directory)."""
        sref = stage_ref(ref)
        if sref is not None:
            name, output = sref
            outs = self.outputs_of.get(name)
            if outs is None:
                raise CleftGanError(f"stage {self.stage!r} reads {ref!r} but stage {name!r} has no recorded outputs")
            if output is None:
                output = next(iter(outs))
            if output not in outs:
                raise CleftGanError(f"stage {name!r} has no output {output!r}; it has {sorted(outs)}")
            key = outs[output]
        elif ref.startswith("store:"):
            key = ref[len("store:") :]
        else:
            return Path(ref)
        dest = self.scratch / "inputs" / key
        if self.store.exists(key):
            if not dest.exists():
                self.store.get_file(key, dest)
            return dest
        found = False
        for info in self.store.list(key.rstrip("/") + "/"):
            found = True
            target = dest / info.key[len(key.rstrip("/")) + 1 :]
            if not target.exists():
                self.store.get_file(info.key, target)
        if not found:
            raise CleftGanError(f"input {ref!r}: nothing at {self.store.uri(key)}")
        return dest
