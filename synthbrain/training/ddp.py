"""DistributedDataParallel plumbing: process group from torchrun's environment, local launch."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


@dataclass
class DistContext:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = (
        False  # True when this module created the process group (and must destroy it)
    )

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files."""
        return self.rank == 0


def env_context() -> DistContext:
    """Rank, world size and local rank from the torchrun environment (1 process when unset)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    return DistContext(rank, world, _env_int("LOCAL_RANK", rank))


def _env_int(name: str, default: int) -> int:
    """An integer environment variable, or `default` when unset."""
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(ctx: DistContext, device: torch.device) -> DistContext:
    """Create the process group when running under torchrun and none exists yet.

    gloo on CPU, nccl on CUDA. A process group created by the caller is used as it is.
    """
    if not ctx.distributed or dist.is_initialized():
        return ctx
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=ctx.rank, world_size=ctx.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=ctx.rank, world_size=ctx.world_size)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, owns_group=True)


def finish_distributed(ctx: DistContext) -> None:
    """Wait for every rank, then destroy the process group if this module created it."""
    if ctx.distributed and dist.is_initialized():
        barrier(ctx)
        if ctx.owns_group:
            dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """All ranks meet here (no-op on one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The element-wise mean of `values` over ranks (unchanged on one process)."""
    if not (ctx.distributed and dist.is_initialized()):
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / ctx.world_size


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_local(fn: Callable[..., Any], world_size: int, *args: Any) -> None:
    """Run `fn(*args)` in `world_size` spawned processes set up as torchrun would set them up.

    Each process gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free
    MASTER_PORT in its environment, so `fit` inside `fn` joins one process group (gloo on CPU).
    `fn` must be picklable (a module-level function). An exception in any process is raised here.
    """
    port = free_port()
    mp.spawn(_spawned, args=(fn, world_size, port, args), nprocs=world_size, join=True)


def _spawned(
    rank: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple[Any, ...]
) -> None:
    """Entry point of one spawned process: torchrun's environment, then `fn`."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    fn(*args)
