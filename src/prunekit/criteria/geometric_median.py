"""FPGM: filters near the geometric median of their layer are redundant.

He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks
Acceleration" (CVPR 2019). Within one layer with filters ``F_1 .. F_n`` (each flattened to a
vector), the score of filter ``i`` is the sum of its Euclidean distances to every other filter
of that layer::

    s_i = sum_j ||F_i - F_j||_2

The geometric median of the layer minimises exactly this sum, so the filters with the smallest
``s_i`` lie nearest the median: the others can stand in for them, and they are pruned first.
``fpgm`` returns ``s_i`` itself (higher = keep), matching prunekit's "lowest scores go first".

The comparison is among the filters of one layer only. A unit produced by several layers (every
conv of a residual stage) gets the sum of its filters' scores over those layers. Only filters
count (weights of two or more dimensions): BatchNorm scales and the like are skipped. The paper
applies the criterion layer by layer with the soft schedule of SFP (prune by zeroing, keep
training, re-score every epoch); that schedule belongs to the pruning method, not the criterion.
"""

from __future__ import annotations

import torch

from prunekit.graph import Group
from prunekit.graph.core import Site, out_weight


def distance_sums(weight: torch.Tensor) -> torch.Tensor:
    """``s_i = sum_j ||F_i - F_j||_2`` over the filters (dim 0) of ``weight``, in float64."""
    filters = weight.detach().reshape(weight.shape[0], -1).to(torch.float64)
    return torch.cdist(filters, filters, p=2.0).sum(1)


def _site_values(site: Site) -> torch.Tensor | None:
    w = out_weight(site.module)
    if w is None or w.dim() < 2:
        return None  # no filters to compare (BatchNorm, LayerNorm, a grouped transposed conv)
    return distance_sums(w)


def fpgm(group: Group) -> torch.Tensor:
    """FPGM score per unit (He et al., CVPR 2019): sum of Euclidean distances from each filter
    to the other filters of its layer, summed over the group's output-side layers.

    Lowest scores are nearest the layer's geometric median, i.e. the most replaceable.
    """
    return group.values(_site_values)


__all__ = ["distance_sums", "fpgm"]
