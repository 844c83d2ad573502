"""Data-parallel set-up from the environment (torchrun or Slurm), and gradient averaging.

Gradients are averaged by hand (one flattened all-reduce per network) rather than with
DistributedDataParallel: the R1 penalty's double backward and the per-phase parameter
subsets make DDP's hooks a poor fit, and the explicit version is easy to follow.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: 'gpu[003-005,010],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def detect() -> DistEnv:
    """Rank and world from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or Slurm (SLURM_PROCID/...)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", 29500)),
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            int(env["SLURM_PROCID"]),
            int(env["SLURM_NTASKS"]),
            int(env.get("SLURM_LOCALID", 0)),
            env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            int(env.get("MASTER_PORT", 20000 + job % 20000)),  # per-job port: jobs may share a node
        )
    return DistEnv()


def init(d: DistEnv, device: torch.device) -> None:
    """Join the process group (nccl on GPUs, gloo on CPU); a no-op for one process."""
    if d.world_size == 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, init_method=f"tcp://{d.master_addr}:{d.master_port}", rank=d.rank, world_size=d.world_size,
        timeout=datetime.timedelta(hours=2),  # rank 0 alone writes snapshots (metrics, big checkpoints)
    )


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce and average the gradients of ``params`` (missing grads count as zero)."""
    if world_size == 1:
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
    comm = values.clone()
    if dist.get_backend() == "nccl" and comm.device.type != "cuda":
        comm = comm.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(comm)
    return comm.to(values.device)


def broadcast_module(module: torch.nn.Module, world_size: int) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if world_size == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)
