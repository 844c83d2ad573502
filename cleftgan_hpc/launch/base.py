"""The Launcher interface and the explicit registry of backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cleftgan_hpc.plan import Plan
from cleftgan_hpc.runs import RunState


class Launcher(Protocol):
    """Starts the stages of a plan somewhere and reports on them."""

    runs_to_completion: bool
    """True: ``launch`` returns when the run has ended (local); False: once it is queued (batch)."""

    def launch(self, plan: Plan, run: RunState, force: set[str]) -> bool:
        """Start (local: run to completion) every stage not already done; True when all are done
        (local) or submitted (batch backends)."""
        ...

    def reconcile(self, plan: Plan, run: RunState) -> None:
        """Record the end of stages that died without recording it (a killed process, a job
        Slurm ended); the one backend call that writes outside ``launch`` and ``cancel``."""
        ...

    def describe(self, plan: Plan, run: RunState) -> dict[str, str]:
        """Backend-specific detail per stage for `status` (e.g. Slurm job state); may be empty. Reads only."""
        ...

    def cancel(self, plan: Plan, run: RunState) -> None:
        """Stop every stage of the run that is still queued or running."""
        ...


def _local() -> Launcher:
    from cleftgan_hpc.launch.local import LocalLauncher

    return LocalLauncher()


def _slurm() -> Launcher:
    from cleftgan_hpc.launch.slurm import SlurmLauncher  # imports submitit: only when asked for

    return SlurmLauncher()


BACKENDS: dict[str, Callable[[], Launcher]] = {"local": _local, "slurm": _slurm}


def get_launcher(backend: str) -> Launcher:
    return BACKENDS[backend]()
