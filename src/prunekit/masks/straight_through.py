"""The straight-through mask: ``w * m`` forward, the gradient reaches all of ``w`` unchanged.

Methods whose pruned weights keep learning and may come back (Dynamic Network Surgery, global
dynamic pruning) mask the weight in the forward pass only: the backward pass hands
``dL/d(w * m)`` to every entry of ``w``, masked or not. Contrast :class:`prunekit.masks.Mask`
parametrizations, under which a pruned entry gets zero gradient and stays exactly zero.

The mask is a float 0/1 buffer of any shape that broadcasts against the weight: the weight's own
shape (element masks) or, for channel masks, :func:`channel_shape`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["StraightThroughMask", "attach_straight_through", "channel_shape", "straight_through"]


class _MaskForwardOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``weight * mask`` whose gradient with respect to ``weight`` is the incoming gradient,
    unmasked (``mask`` broadcasts against ``weight``; it gets no gradient)."""
    return _MaskForwardOnly.apply(weight, mask.to(weight.dtype))


def channel_shape(weight: torch.Tensor, dim: int = 0) -> tuple[int, ...]:
    """The shape of a mask with one value per entry of ``weight``'s dimension ``dim``."""
    shape = [1] * weight.dim()
    shape[dim] = weight.shape[dim]
    return tuple(shape)


class StraightThroughMask(nn.Module):
    """Parametrization ``w -> straight_through(w, mask)``; ``mask`` is a float buffer (saved in
    the model's state dict, moved with it) that callers update in place."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().float().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return straight_through(weight, self.mask)

    @torch.no_grad()
    def set(self, mask: torch.Tensor) -> None:
        """Write ``mask`` (same shape, any 0/1 dtype) into the buffer."""
        self.mask.copy_(mask.to(self.mask))


def attach_straight_through(
    module: nn.Module, mask: torch.Tensor, name: str = "weight"
) -> StraightThroughMask:
    """Register a :class:`StraightThroughMask` on ``module.<name>`` (after any parametrization
    already there) and return it; ``parametrize.remove_parametrizations`` takes it off."""
    tensor = getattr(module, name)
    st = StraightThroughMask(mask).to(tensor.device)
    parametrize.register_parametrization(module, name, st)
    return st
