"""Importance criteria: a criterion maps a channel group to one score per unit (higher = keep).

Criteria are registered by name; :func:`get` turns a name or a callable into a criterion, and an
unknown name is an error listing the known ones. Families of papers get one module each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.criteria.geometric_median import fpgm
from prunekit.criteria.magnitude import l1_norm, l2_norm, random_scores
from prunekit.graph import Group
from prunekit.registry import Registry

Criterion = Callable[[Group], torch.Tensor]

CRITERIA: Registry[Criterion] = Registry("importance criterion")
CRITERIA.add("l1", l1_norm, paper="Li et al., Pruning Filters for Efficient ConvNets (ICLR 2017)")
CRITERIA.add("l2", l2_norm, paper="He et al., Soft Filter Pruning (IJCAI 2018)")
CRITERIA.add("random", random_scores, paper="baseline: uniform random scores")
CRITERIA.add(
    "fpgm",
    fpgm,
    paper="He et al., Filter Pruning via Geometric Median for Deep CNN Acceleration (CVPR 2019)",
)


def get(criterion: str | Criterion) -> Criterion:
    """A registered criterion by name, or ``criterion`` itself if it is callable."""
    if callable(criterion):
        return criterion
    return CRITERIA.get(criterion)


def list_criteria() -> list[str]:
    return CRITERIA.names()


__all__ = [
    "CRITERIA",
    "Criterion",
    "fpgm",
    "get",
    "l1_norm",
    "l2_norm",
    "list_criteria",
    "random_scores",
]
