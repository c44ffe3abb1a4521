"""FPGM — He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration" (CVPR 2019). The same soft schedule, but a filter's
score is the sum of its distances to the other filters of its layer
(:func:`prunekit.criteria.fpgm`); the filters nearest the layer's geometric median are zeroed.

The soft schedule, the budget and the deviations are in :mod:`prunekit.methods.soft_pruning`.
"""

from __future__ import annotations

from prunekit.methods.base import register_method
from prunekit.methods.soft_pruning import SoftPruningMethod


@register_method("fpgm")
class FPGMMethod(SoftPruningMethod):
    """FPGM (He et al., CVPR 2019): the SFP schedule with the geometric-median criterion — the
    filters with the smallest summed distance to the other filters of their layer are zeroed."""

    criterion = "fpgm"


__all__ = ["FPGMMethod"]
