"""Weight-magnitude criteria: the norm of the filters that produce each channel.

A unit of a group may be produced by several layers (every conv of a residual stage, a conv and
the depthwise conv after it); its score sums over all of them. Only filters count (weights of
two or more dimensions): normalisation scales such as BatchNorm's gamma are a different criterion
(network slimming) with a different scale.
"""

from __future__ import annotations

import torch

from prunekit.graph import Group


def _per_filter(fn):  # type: ignore[no-untyped-def]
    """``fn`` over each output filter (dim 0) of a weight; 1-D scales (BatchNorm) count 0."""
    return lambda w: fn(w.flatten(1)) if w.dim() >= 2 else torch.zeros(w.shape[0])


def l1_norm(group: Group) -> torch.Tensor:
    """Sum of absolute filter weights per unit (Li et al. 2017)."""
    return group.scores(_per_filter(lambda w: w.abs().sum(1)))


def l2_norm(group: Group) -> torch.Tensor:
    """Euclidean norm of the filters per unit."""
    return group.scores(_per_filter(lambda w: w.pow(2).sum(1))).sqrt()


def random_scores(group: Group) -> torch.Tensor:
    """Uniform random scores from torch's global generator (seed it for reproducible picks)."""
    return torch.rand(group.size, dtype=torch.float64)
