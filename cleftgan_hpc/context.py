"""StageContext: everything a stage function may use besides its own config.

A stage is ``run(cfg, ctx) -> dict[str, str]`` (output name -> store key). Backends build the
context; stages never know whether they run in a local process, a Slurm job or a Ray trial.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.models import StoreConfig
from cleftgan_hpc.layout import join_key, stage_prefix
from cleftgan_hpc.progress import Progress
from cleftgan_hpc.storage.base import ObjectStore

EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped on request with a checkpoint written; run me again


class StopRequested(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a stage that saw ``ctx.should_stop()`` and saved its state: run it again later."""


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
    store_config: StoreConfig | None = None  # how to open the store again (for trials and subprocesses)
    task: int | None = None  # array task index (one part of a split stage); None: the whole stage / its commit
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

    def stop_when_parent_dies(self, parent_pid: int, poll_s: float = 0.5) -> None:
        """Ask this stage to stop (checkpoint, record itself pending) once ``parent_pid`` is no
        longer its parent: the local launcher that started it was killed, even with SIGKILL, and
        nothing else would ever tell the stage. Its stdout then leads nowhere, so output goes to
        /dev/null (the log file keeps every line)."""

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(poll_s)
            devnull = os.open(os.devnull, os.O_WRONLY)
            for fd in (1, 2):  # a write to the dead launcher's pipe would raise BrokenPipeError
                os.dup2(devnull, fd)
            self.log.warning(f"the launcher (pid {parent_pid}) is gone: stopping at the next safe point")
            self._stop.set()

        threading.Thread(target=watch, name="parent-watch", daemon=True).start()

    # -- inputs ------------------------------------------------------------------------
    def fetch(self, ref: str) -> Path:
        """A local path for an input: a path as is; ``store:KEY`` downloaded into scratch (a file,
        or every object under the prefix for a directory). The executor has already turned
        ``stage:NAME`` inputs into the store keys those stages recorded. A cached download is
        reused only while its sha256 matches the object's (an upstream stage may have re-run)."""
        if not ref.startswith("store:"):
            if ref.startswith("stage:"):
                raise CleftGanError(f"stage {self.stage!r}: input {ref!r} was not resolved to a store key")
            return Path(ref)
        key = ref[len("store:"):]
        dest = self.scratch / "inputs" / key
        info = self.store.head(key)
        if info is not None:
            stamp = dest.with_name(dest.name + ".sha256")
            if not (dest.is_file() and stamp.is_file() and stamp.read_text() == (info.sha256 or "")):
                self.store.get_file(key, dest)
                stamp.write_text(info.sha256 or "")
            return dest
        prefix = key.rstrip("/") + "/"
        objects = list(self.store.list(prefix))
        if not objects:
            raise CleftGanError(f"input {ref!r}: nothing at {self.store.uri(key)}")
        if dest.exists():  # a directory input is fetched whole each time: no stale or extra files
            shutil.rmtree(dest)
        for obj in objects:
            self.store.get_file(obj.key, dest / obj.key[len(prefix):])
        return dest
