"""Shared helpers: normalise example inputs and run a model in eval mode without gradients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | tuple[Any, ...] | list[Any]


def as_args(inputs: Inputs) -> tuple[Any, ...]:
    """A tensor becomes a 1-tuple; a tuple or list is passed as positional arguments."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    return tuple(inputs)


@contextlib.contextmanager
def inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd for the duration; every submodule's previous mode is restored
    (a model may keep some parts in eval mode while training others)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
