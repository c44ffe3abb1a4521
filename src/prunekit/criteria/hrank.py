"""HRank: Lin et al., "HRank: Filter Pruning using High-Rank Feature Map" (CVPR 2020).

A filter whose feature maps have low rank carries little information and goes first. The score
of output channel ``k`` is the mean over calibration images ``i`` of ``rank(O_i^k)``, the matrix
rank (``torch.linalg.matrix_rank``, default tolerance) of the channel's ``H x W`` feature map
for that image (the paper's method section). The map is the one the next layer reads
(:mod:`prunekit.criteria.activations`): after BatchNorm and ReLU, and after the pooling or the
residual addition that follows. The official code (lmbxmu/HRank, ``rank_generation.py``) hooks
the ReLU modules (``relu1``/``relu2`` of each ResNet block, the ReLUs of VGG) and, for
ResNet-50's stem, the max-pool after it. Before the ReLU every map of a trained conv is
almost surely of full rank, so ranking there cannot tell channels apart.

Calibration data: the official code averages over ``--limit 5`` batches of the training loader
(500 images in the paper, which finds the average rank stable after a few batches); pass
that many with ``batches`` or cap them with ``max_batches``.

A channel carried by several maps (a residual stage: each block's output after its addition
and ReLU) scores the mean of their average ranks. A map with more than two spatial dims is
ranked as a matrix of (all but the last dim) x (last dim); a 1-D map (a Conv1d's input, the
positions a flatten gives a channel before a Linear) or a single feature as a column, whose rank
is 1 unless it is zero: on 1-D data HRank separates only channels that are often all zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, Tap, collect

__all__ = ["HRank", "feature_map_ranks"]


def feature_map_ranks(act: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Matrix rank of each channel's map: ``(N, C, ...)`` maps -> ``(N, C)`` ranks."""
    n, c = act.shape[:2]
    maps = act.reshape(n, c, -1, act.shape[-1] if act.dim() >= 4 else 1)
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    return torch.linalg.matrix_rank(maps)


class HRank(ActivationCriterion):
    """Average rank per channel of the feature map the next layer reads, over calibration
    images (higher = keep).

    ``batches``: input tensors or ``(x, y)`` pairs (labels unused), e.g. 5 batches of 100 images
    as in the paper; at least one is needed. ``max_batches`` caps how many are used. ``model`` is
    what the batches run through (default: the model the group's graph was built on; pass e.g. a
    DDP wrapper of it). Usage: ``prune_channels(model, x, ratio=0.5, importance=HRank(batches))``.
    """

    name = "HRank"

    def __init__(
        self,
        batches: Iterable[Any],
        model: nn.Module | None = None,
        *,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(batches, model=model, max_batches=max_batches)

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        """Mean rank per unit of each tapped map."""
        return collect(model, taps, self.batches, feature_map_ranks, max_batches=self.max_batches)
