"""Thin helpers over ``torch.distributed`` that also work, as no-ops, in a single process.

Training and (later) pruning call these unconditionally: outside ``torchrun`` they report rank 0
of a world of 1 and reduce nothing, so the same code path runs everywhere. Pruning methods use
:func:`all_reduce_sum` so that every rank scores channels identically and removes the same ones.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_objects",
    "all_reduce_sum",
    "average_gradients",
    "barrier",
    "broadcast",
    "broadcast_buffers",
    "env_world_size",
    "init_from_env",
    "is_distributed",
    "local_rank",
    "rank",
    "shutdown",
    "world_size",
]


def env_world_size() -> int:
    """World size announced by the launcher (``torchrun`` sets ``WORLD_SIZE``); 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """Rank within this machine (``LOCAL_RANK``), used to pick the CUDA device."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the default process group from ``torchrun``'s environment, if it asks for one.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group already exists (the caller may
    have set one up itself). ``backend`` defaults to ``nccl`` when CUDA is available and ``gloo``
    otherwise; pass ``"gloo"`` to train on CPU on a machine that has GPUs. Returns
    :func:`is_distributed`.
    """
    if env_world_size() > 1 and dist.is_available() and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return is_distributed()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place and return it (unchanged in a single process).

    With the ``nccl`` backend the tensor must live on this rank's CUDA device.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its mean over ranks (no-op alone): a hand-written
    training loop then takes the same step on every rank, as DDP would."""
    if not is_distributed():
        return
    n = world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(n)


def broadcast_buffers(model: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s buffers (BatchNorm running statistics, which each rank
    updates from its own batches); no-op alone."""
    if is_distributed():
        for buf in model.buffers():
            dist.broadcast(buf, src=src)


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank ``src``'s copy and return it (no-op alone).

    Lets one rank decide (e.g. which channels to prune) and the others follow.
    """
    if is_distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (picklable), indexed by rank; ``[obj]`` in a single process."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then destroy the default process group (no-op when there is none).

    A process that exits with a live gloo group can abort in the group's threads at interpreter
    teardown ("terminate called without an active exception"), failing the whole launch; every
    entry point that trains under ``torchrun`` calls this before it returns.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
