"""The one place that touches torch.distributed: process groups, DDP wrapping, reductions."""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nepa.device import pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init_distributed(device_request: str, timeout_s: float = 300.0) -> DistEnv:
    """Read torchrun's environment; start a process group (nccl on GPU, gloo on CPU) if world > 1.
    A collective that waits longer than ``timeout_s`` (a hung or stopped rank) fails the job
    instead of holding it for torch's default 30 minutes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_request, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
        if device.type == "cpu":
            # Ranks on one host share its cores; oversubscribing threads slows every rank.
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        log.info("process group: %s, rank %d of %d", backend, rank, world)
    return DistEnv(rank, world, local_rank, device)


def wrap_model(model: nn.Module, env: DistEnv) -> nn.Module:
    if not env.active:
        return model
    ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, skip: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    return model.no_sync() if skip and isinstance(model, DistributedDataParallel) else nullcontext()


def all_reduce(t: torch.Tensor, op: str = "mean") -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    if op == "max":
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    elif op == "sum":
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
