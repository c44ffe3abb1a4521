"""The :class:`Mask` value and the parametrization that multiplies a weight by it.

A mask is kept apart from the weight (rather than zeroing the weight once) so that training after
pruning cannot regrow pruned entries: every forward recomputes ``w * m``, hence the gradient that
reaches a pruned entry is exactly zero whatever the optimizer does to the stored dense weight.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError


class Mask:
    """A validated binary mask for one parameter: bool storage, values exactly 0/1.

    ``meta`` carries how the mask was made when that matters later (the 1xN output-channel
    permutation, the pattern's ``n``/``m``); it holds only tensors and plain data so mask files
    load with ``weights_only=True``.
    """

    __slots__ = ("data", "meta")

    def __init__(self, data: torch.Tensor, *, meta: dict[str, Any] | None = None) -> None:
        if not isinstance(data, torch.Tensor):
            raise ConfigError(f"a mask must be a tensor, got {type(data).__name__}")
        if data.dtype != torch.bool:
            if data.is_complex() or not bool(((data == 0) | (data == 1)).all()):
                raise ConfigError("a mask must hold only 0 and 1 values")
            data = data != 0
        self.data: torch.Tensor = data.detach()
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def numel(self) -> int:
        return self.data.numel()

    @property
    def nonzero(self) -> int:
        """Entries kept."""
        return int(self.data.sum())

    @property
    def sparsity(self) -> float:
        """Fraction of entries pruned (0 for an empty mask)."""
        return 1.0 - self.nonzero / self.numel if self.numel else 0.0

    def to(self, device: torch.device | str) -> Mask:
        return Mask(self.data.to(device), meta=self.meta)

    def check_shape(self, name: str, shape: torch.Size | tuple[int, ...]) -> None:
        """Raise :class:`ConfigError` naming ``name`` when this mask cannot cover ``shape``."""
        if tuple(self.shape) != tuple(shape):
            raise ConfigError(
                f"mask for {name} has shape {tuple(self.shape)}, the parameter has {tuple(shape)}"
            )

    def __and__(self, other: Mask) -> Mask:
        return Mask(self.data & other.data.to(self.data.device), meta={**other.meta, **self.meta})

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Mask)
            and self.shape == other.shape
            and bool((self.data == other.data.to(self.data.device)).all())
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensor inside

    def __repr__(self) -> str:
        return f"Mask(shape={tuple(self.shape)}, sparsity={self.sparsity:.4f})"

    def state_dict(self) -> dict[str, Any]:
        return {"mask": self.data.cpu(), "meta": dict(self.meta)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Mask:
        if not isinstance(state, dict) or not isinstance(state.get("mask"), torch.Tensor):
            raise ConfigError("a mask state must be a dict with a 'mask' tensor")
        meta = state.get("meta", {})
        if not isinstance(meta, dict):
            raise ConfigError("a mask state's 'meta' must be a dict")
        return cls(state["mask"], meta=meta)


class MaskParametrization(nn.Module):
    """``weight -> weight * mask`` for ``torch.nn.utils.parametrize``.

    The mask is a bool buffer so it follows ``.to(device)`` and lands in the state_dict; ``meta``
    is a plain attribute (not saved with the model; mask files keep it).
    """

    def __init__(self, mask: Mask) -> None:
        super().__init__()
        self.register_buffer("mask", mask.data.clone())
        self.meta: dict[str, Any] = dict(mask.meta)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def as_mask(self) -> Mask:
        return Mask(self.mask.clone(), meta=self.meta)
