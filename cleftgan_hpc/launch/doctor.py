"""`cleftgan-hpc doctor`: is this machine (or container, or job) fit to run stages?

Checks torch and CUDA visibility, the GPU count, the compiled (Triton) StyleGAN3 kernels and
which path each op runs (or says loudly that the slower PyTorch ops are in use on a GPU), that
the store is reachable and writable, and the Slurm environment. The container's %test runs it, and every Slurm job runs
``preflight`` (the store part) before its stage.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OK, WARN, FAIL = "ok", "WARN", "FAIL"



@dataclass
class Check:
    name: str
    level: str  # ok, WARN, FAIL
    detail: str

    def __str__(self) -> str:
        return f"[{self.level:>4}] {self.name:<10} {self.detail}"


def check_torch(require_gpus: int = 0) -> list[Check]:
    try:
        import torch
    except ImportError as exc:
        return [Check("torch", FAIL, f"cannot import torch: {exc}")]
    out = [Check("torch", OK, f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        names = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(n)}))
        level = FAIL if require_gpus and n < require_gpus else OK
        out.append(Check("cuda", level, f"CUDA {torch.version.cuda}: {n} GPU(s) ({names}); "
                                        f"CUDA_VISIBLE_DEVICES={visible or '-'}"))
    else:
        level = FAIL if require_gpus else WARN
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU visible"
        out.append(Check("cuda", level, f"{why}; CUDA_VISIBLE_DEVICES={visible or '-'}: stages run on the CPU"))
    return out


def check_kernels() -> list[Check]:
    """The compiled (Triton) kernels: on a GPU, load them and self-check every StyleGAN3-T/R
    configuration in each dtype now (seconds with the image's warm cache); then each op's path."""
    try:
        import torch

        from cleftgan_hpc.model.ops import compiled, op_paths
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return [Check("ops", FAIL, f"cannot import the network ops: {exc}")]
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    try:
        path = compiled.check_device(device) if gpu else compiled.status(device)
    except Exception as exc:  # noqa: BLE001 - a broken kernel is reported, not raised
        path = f"pytorch ops: the check itself failed: {type(exc).__name__}: {exc}"
    triton = compiled.kernels() is not None
    version = getattr(sys.modules.get("triton"), "__version__", "?") if triton else None
    if not gpu:
        out = [Check("kernels", OK, "no GPU: the networks run on PyTorch ops; "
                                    + (f"triton {version} installed for GPUs" if triton else compiled.load_error()))]
    elif path.startswith("triton kernels"):  # where one dtype fails, the others still run the kernels
        out = [Check("kernels", WARN if "self-check failed" in path else OK, f"filtered_lrelu: {path}")]
    else:
        out = [Check("kernels", WARN, f"FALLBACK: the Triton kernels are not used on {device} ({path}); the networks "
                                      "run on their PyTorch ops (correct; slower on GPUs)")]
    return out + [Check("op", OK, f"{name}: {p}") for name, p in op_paths(device)]


def check_store(store: Any) -> list[Check]:
    """Reach the store, write a probe object, read it back, delete it."""
    from cleftgan_hpc.jobspec.models import StoreConfig
    from cleftgan_hpc.storage import open_store

    cfg = store if isinstance(store, StoreConfig) else StoreConfig.model_validate(store)
    key = f"_doctor/{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    try:
        st = open_store(cfg)
        st.put_text(key, "ok")
        back = st.get_text(key)
        st.delete(key)
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer
        return [Check("store", FAIL, f"{cfg.url}: not writable: {type(exc).__name__}: {exc}")]
    if back != "ok":
        return [Check("store", FAIL, f"{cfg.url}: read back {back!r} instead of what was written")]
    return [Check("store", OK, f"{cfg.url}: writable ({(time.monotonic() - t0) * 1000:.0f} ms round trip)")]


def check_slurm() -> list[Check]:
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        keys = ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NODELIST",
                "SLURM_RESTART_COUNT", "SLURM_CPUS_PER_TASK")
        return [Check("slurm", OK, "in a job: " + " ".join(f"{k}={os.environ[k]}" for k in keys if k in os.environ))]
    tools = [t for t in ("sbatch", "srun", "sacct", "scontrol") if shutil.which(t)]
    if not tools:
        return [Check("slurm", WARN, "no Slurm client tools on PATH: backend slurm cannot submit from here")]
    from cleftgan_hpc.launch.sbatch import slurm_cmd

    try:
        slurm_cmd(["scontrol", "ping"], timeout=15)
        slurm_cmd(["sacct", "-n", "-X", "-S", "now"], timeout=15)
    except Exception as exc:  # noqa: BLE001
        why = str(exc).splitlines()[-1]
        return [Check("slurm", WARN, f"client tools found but the cluster does not answer: {why}")]
    return [Check("slurm", OK, f"{', '.join(tools)} on PATH; slurmctld and accounting answer"
                               + (f" (SLURM_CONF={os.environ['SLURM_CONF']})" if "SLURM_CONF" in os.environ else ""))]


def run_checks(store: Any | None, require_gpus: int = 0) -> list[Check]:
    steps: list[Callable[[], list[Check]]] = [lambda: check_torch(require_gpus), check_kernels, check_slurm]
    if store is not None:
        steps.insert(2, lambda: check_store(store))
    return [c for step in steps for c in step()]


def preflight(store: Any) -> str | None:
    """The check every Slurm job runs first: None when fine, else why the stage cannot start."""
    checks = check_store(store)
    for c in checks:
        print(f"cleftgan-hpc doctor: {c}", flush=True)
    bad = [c for c in checks if c.level == FAIL]
    return f"doctor on {socket.gethostname()}: {bad[0].detail}" if bad else None
