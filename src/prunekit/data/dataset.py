"""The data set classes :func:`prunekit.data.load` returns.

In-memory sets keep one stacked, already normalised float tensor and index into it, so a sample
costs a view plus any random augmentation; only augmentation runs per item (on torch's global RNG).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset as TorchDataset

from prunekit.data.info import DataInfo

Transform = Callable[[Tensor], Tensor]


class Dataset(TorchDataset[tuple[Tensor, Tensor]]):
    """A torch data set of ``(x: float32, y: int64 scalar)`` pairs that also carries its ``info``."""

    info: DataInfo

    def __len__(self) -> int:
        raise NotImplementedError


class InMemoryDataset(Dataset):
    """Samples held as one float tensor ``x`` (N, C, ...) with int64 labels ``y`` (N,).

    ``x`` must already be resized and normalised; ``transform`` is the per-item augmentation only.
    """

    def __init__(
        self, x: Tensor, y: Tensor, info: DataInfo, transform: Transform | None = None
    ) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        self._x = x.to(torch.float32).contiguous()
        self._y = y.to(torch.int64).contiguous()
        self.info = info
        self.transform = transform

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self._x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self._y[index]

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        """All samples un-augmented (normalised) and all labels: for calibration and checks."""
        return self._x, self._y

    def __repr__(self) -> str:
        return f"InMemoryDataset({self.info.name!r}, n={len(self)}, transform={self.transform!r})"
