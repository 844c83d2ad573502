"""Data-parallel set-up from the environment (torchrun or Slurm), and gradient averaging.

Gradients are averaged by hand (one flattened all-reduce per network) rather than with
DistributedDataParallel: the R1 penalty's double backward and the per-phase parameter
subsets make DDP's hooks a poor fit, and the explicit version is easy to follow.
"""

from __future__ import annotations

import datetime

import numpy as np
import torch
import torch.distributed as dist

from cleftgan_hpc.ranks import DistEnv, detect, first_host

__all__ = [
    "DistEnv", "detect", "first_host", "init", "shutdown", "average_gradients", "all_sum", "broadcast_module",
    "gather_rows",
]


def init(d: DistEnv, device: torch.device) -> None:
    """Join the process group (nccl on GPUs, gloo on CPU); a no-op for one process."""
    if d.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://{d.master_addr}:{d.master_port}",
        rank=d.rank,
        world_size=d.world_size,
        timeout=datetime.timedelta(hours=2),  # the others wait while rank 0 fills the real-set cache or writes
    )


def shutdown(synchronise: bool = False) -> None:
    """Leave the process group. ``synchronise`` (after success only: a rank that failed would
    never arrive) waits for every rank first, so none tears gloo down while another still talks
    to it, which can abort a process at exit."""
    if dist.is_initialized():
        if synchronise and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce and average the gradients of ``params``. A parameter no rank has a gradient
    for keeps none, as in one process: Adam skips it, while a zero gradient would advance its
    step count and change its later steps (R1 leaves D's output bias without one)."""
    if world_size == 1:
        return
    present = all_sum(torch.tensor([p.grad is not None for p in params], dtype=torch.float32), world_size)
    params = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def all_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    """Sum a small tensor over ranks (stats, flags, ADA's sign accumulator), on any device:
    nccl reduces CUDA tensors only, so CPU values travel through the current GPU and back."""
    if world_size == 1:
        return values
    comm = values.clone().to(_comm_device(values.device))
    dist.all_reduce(comm)
    return comm.to(values.device)


def broadcast_module(module: torch.nn.Module, world_size: int) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if world_size == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors must live: nccl moves CUDA tensors only."""
    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device


def gather_rows(rows: np.ndarray, world_size: int) -> np.ndarray:
    """Every rank's float rows [n_rank, D] joined in rank order, on every rank (ranks may hold
    different numbers of rows, none included)."""
    if world_size == 1:
        return rows
    dev = _comm_device(torch.device("cpu"))
    shape = torch.tensor([rows.shape[0], rows.shape[1] if rows.ndim == 2 else 0], device=dev)
    shapes = [torch.zeros_like(shape) for _ in range(world_size)]
    dist.all_gather(shapes, shape)
    longest, width = max(int(s[0]) for s in shapes), max(int(s[1]) for s in shapes)
    padded = torch.zeros([longest, width], dtype=torch.float32, device=dev)  # all_gather needs one shape
    if rows.shape[0]:
        padded[: rows.shape[0]] = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(dev)
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return np.concatenate([part[: int(s[0])].cpu().numpy() for part, s in zip(parts, shapes, strict=True)])
