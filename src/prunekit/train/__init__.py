"""Training and evaluation of classifiers: reproducible, exactly resumable, DDP-aware.

``fit(model, train_set, TrainConfig(...))`` trains in place and returns a :class:`TrainResult`;
``evaluate(model, dataset)`` reports top-1/top-5 accuracy and loss. Pruning methods fine-tune with
``fit`` and hook into it through callbacks; they use the helpers of
:mod:`prunekit.train.distributed` to agree across ranks.
"""

from __future__ import annotations

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import (
    all_reduce_sum,
    barrier,
    broadcast,
    init_from_env,
    is_distributed,
    rank,
    shutdown,
    world_size,
)
from .evaluate import evaluate
from .loop import Callback, TrainResult, epochs_trained, fit
from .optim import build_loss, build_optimizer
from .schedules import LRFactor, build_scheduler

__all__ = [
    "Callback",
    "LRFactor",
    "TrainConfig",
    "TrainResult",
    "all_reduce_sum",
    "barrier",
    "broadcast",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "epochs_trained",
    "evaluate",
    "fit",
    "init_from_env",
    "is_distributed",
    "load_checkpoint",
    "rank",
    "shutdown",
    "world_size",
]
