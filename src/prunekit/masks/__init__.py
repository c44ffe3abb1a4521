"""Fine-grained sparsity masks: element, kernel, channel, n:m and 1xN patterns under several scopes.

:func:`prune` computes and applies masks (as parametrizations, so training keeps pruned weights at
exactly zero); :func:`finalize` bakes them in; :func:`report` counts what is left. Pruning during
training follows one protocol (:class:`Pruner`: ``prepare / step / state_dict``, driven by a
sparsity schedule); masks whose pruned weights keep learning use :class:`StraightThroughMask`.
"""

from __future__ import annotations

from prunekit.masks.apply import apply_masks, finalize, get_masks
from prunekit.masks.engine import PRUNABLE, prunable_layers, prune, select_targets
from prunekit.masks.granularity import GRANULARITIES, PatternOptions
from prunekit.masks.mask import Mask, MaskParametrization
from prunekit.masks.pruner import Pruner, ScheduledMagnitudePruner
from prunekit.masks.report import report
from prunekit.masks.schedules import (
    SCHEDULES,
    GradualCubic,
    Iterative,
    OneCycle,
    OneShot,
    SparsitySchedule,
    make_schedule,
)
from prunekit.masks.scope import SCOPES, erk_densities, lamp_scores
from prunekit.masks.store import load_masks, save_masks
from prunekit.masks.straight_through import (
    StraightThroughMask,
    attach_straight_through,
    channel_shape,
    straight_through,
)
from prunekit.masks.torch_prune import from_torch_prune, to_torch_prune

__all__ = [
    "GRANULARITIES",
    "PRUNABLE",
    "SCHEDULES",
    "SCOPES",
    "GradualCubic",
    "Iterative",
    "Mask",
    "MaskParametrization",
    "OneCycle",
    "OneShot",
    "PatternOptions",
    "Pruner",
    "ScheduledMagnitudePruner",
    "SparsitySchedule",
    "StraightThroughMask",
    "apply_masks",
    "attach_straight_through",
    "channel_shape",
    "erk_densities",
    "finalize",
    "from_torch_prune",
    "get_masks",
    "lamp_scores",
    "load_masks",
    "make_schedule",
    "prunable_layers",
    "prune",
    "report",
    "save_masks",
    "select_targets",
    "straight_through",
    "to_torch_prune",
]
