"""HRank: Lin et al., "HRank: Filter Pruning using High-Rank Feature Map" (CVPR 2020).

A filter whose feature maps have low rank carries little information and goes first. The score
of output channel ``k`` of a layer is the mean over calibration images ``i`` of
``rank(O_i^k)``, the matrix rank (``torch.linalg.matrix_rank``, default tolerance) of the
channel's ``H x W`` output map for that image. The paper finds the average rank stable after a
few batches and uses 500 images (5 batches of 100 on CIFAR-10); pass that many with ``batches``
or cap them with ``max_batches``.

What is ranked here: the output of each output-side layer of a group as the graph sees it (the
conv, and the BatchNorm after it, both carry the channel), and a unit's score sums over those
layers. The paper ranks the block output after BN and ReLU; the ReLU is not a layer with channels
in the graph, so it is not hooked. A map with more than two spatial dims is ranked as a matrix of
(all but the last dim) x (last dim); a map with one spatial dim, or none (Linear features), as a
column, whose rank is 1 unless it is zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, collect

__all__ = ["HRank", "feature_map_ranks"]


def feature_map_ranks(act: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Matrix rank of each channel's map: ``(N, C, ...)`` activations -> ``(N, C)`` ranks."""
    n, c = act.shape[:2]
    maps = act.reshape(n, c, -1, act.shape[-1] if act.dim() >= 4 else 1)
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    return torch.linalg.matrix_rank(maps)


class HRank(ActivationCriterion):
    """Average feature-map rank per channel over calibration images (higher = keep).

    ``batches``: input tensors or ``(x, y)`` pairs (labels unused), e.g. 5 batches of 100 images
    as in the paper; ``max_batches`` caps how many are used. ``model`` is what the batches run
    through (default: the model the group's graph was built on; pass e.g. a DDP wrapper of it).
    Usage: ``prune_channels(model, x, ratio=0.5, importance=HRank(batches))``.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        model: nn.Module | None = None,
        *,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(batches, model=model, max_batches=max_batches)

    def gather(
        self, model: nn.Module, layers: dict[str, tuple[nn.Module, int]]
    ) -> dict[str, torch.Tensor]:
        """Mean rank per output channel of each layer."""
        return collect(model, layers, self.batches, feature_map_ranks, max_batches=self.max_batches)
