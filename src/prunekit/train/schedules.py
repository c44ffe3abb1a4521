"""Learning-rate schedules, stepped once per optimizer step.

Stepping per iteration rather than per epoch means the learning rate is a function of the global
step alone, so a run resumed from a checkpoint continues on exactly the same curve. Each schedule
is a :class:`torch.optim.lr_scheduler.LambdaLR` over a picklable :class:`LRFactor`, so its
``state_dict`` saves and loads like any PyTorch scheduler.

Step ``s`` (0-based) trains with ``lr * factor(s)``:

* warm-up (``warmup_steps`` > 0): ``factor(s) = (s + 1) / warmup_steps`` for ``s < warmup_steps``;
* ``constant``: 1;
* ``cosine``: ``(1 + cos(pi * p)) / 2``, ``p = (s - warmup_steps) / (total_steps - warmup_steps)``;
* ``linear``: ``1 - p``;
* ``step``: ``gamma ** k``, ``k`` = number of milestones ``m`` with ``s >= round(m * total_steps)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

from prunekit.errors import ConfigError

from .config import SCHEDULES, TrainConfig


@dataclass
class LRFactor:
    """The multiplier of the base learning rate at a given step (see the module docstring)."""

    schedule: str
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            passed = sum(step >= round(m * self.total_steps) for m in self.milestones)
            return self.gamma**passed
        span = max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0 - p  # linear


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> LambdaLR:
    """The scheduler of ``config`` for a run of ``config.epochs * steps_per_epoch`` steps."""
    factor = LRFactor(
        schedule=config.schedule,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        milestones=tuple(config.milestones),
        gamma=config.gamma,
    )
    return LambdaLR(optimizer, factor)


def summed_lr(config: TrainConfig, steps_per_epoch: int) -> float:
    """The learning rate of ``config``'s schedule summed over its ``config.epochs *
    steps_per_epoch`` steps: how far a constant-size pull (a penalty's subgradient or proximal
    step, ``lr * lambda`` per step) moves a weight in all."""
    factor = LRFactor(
        schedule=config.schedule,
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        milestones=tuple(config.milestones),
        gamma=config.gamma,
    )
    return config.lr * sum(factor(t) for t in range(config.epochs * steps_per_epoch))
