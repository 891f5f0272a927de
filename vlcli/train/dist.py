"""Distributed helpers: one process by default; DDP under ``torchrun`` / ``accelerate launch``.

The rank and world size come from the launcher's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); ``--distributed`` / ``--multiGPU`` / ``--local_rank`` are accepted for compatibility
but are not needed. Backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(prefer_cuda: bool = True) -> Context:
    """Initialise the process group when launched with several processes; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Context(rank, world, local, device)


def teardown(finished: bool = False) -> None:
    """Destroy the process group; ``finished`` (this rank succeeded): first wait for every rank, since gloo aborts a
    process whose peer has already left ("terminate called without an active exception")."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def gather_pairs(ctx: Context, pairs: Iterable[tuple[Hashable, Any]]) -> dict[Hashable, Any]:
    """All ranks' ``(id, prediction)`` pairs merged into one dict (duplicates from padded shards dropped)."""
    local = list(pairs)
    if not ctx.distributed:
        return dict(local)
    gathered: list[list[tuple[Hashable, Any]]] = [[] for _ in range(ctx.world_size)]
    dist.all_gather_object(gathered, local)
    merged: dict[Hashable, Any] = {}
    for part in gathered:
        for key, value in part:
            merged.setdefault(key, value)
    return merged


def broadcast_object(ctx: Context, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the validation score only rank 0 computes)."""
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def free_port() -> int:
    """A TCP port free on this machine now (a rendezvous for a launch that is not torchrun's)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def broadcast_flag(ctx: Context, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a NaN loss or Ctrl-C somewhere)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_flags(ctx: Context, flags: list[bool]) -> list[bool]:
    """Each flag true on every rank when it is true on any rank (one collective for several flags)."""
    if not ctx.distributed:
        return list(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(x) for x in t.tolist()]
