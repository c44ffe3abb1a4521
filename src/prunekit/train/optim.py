"""Optimizer and loss construction from a :class:`TrainConfig`.

Kept apart from the loop so pruning methods that fine-tune with their own loop (or add a
regulariser) build exactly the optimizer a plain ``fit`` would.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or Adam over all trainable parameters.

    Weight decay is the coupled L2 form of both optimizers and applies to every parameter,
    BatchNorm and biases included, the usual recipe for CIFAR-style pruning baselines.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def build_loss(config: TrainConfig) -> nn.CrossEntropyLoss:
    """Per-sample cross-entropy (``reduction="none"``): the loop weights samples itself so that
    a batch split unevenly across DDP ranks still averages exactly like one process."""
    return nn.CrossEntropyLoss(reduction="none", label_smoothing=config.label_smoothing)
