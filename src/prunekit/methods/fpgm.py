"""FPGM — He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration" (CVPR 2019). The SFP schedule (zero before training
and after every epoch, remove at the end), but a filter's score is the sum of its distances to
the other filters of its layer (:func:`prunekit.criteria.fpgm`); the filters nearest the layer's
geometric median are zeroed. As in the official code (``he-y/filter-pruning-geometric-median``,
``pruning_cifar10.py``: ``m.do_grad_mask()`` between ``loss.backward()`` and
``optimizer.step()``), the gradients of the zeroed filters are masked at every iteration, so
they stay at zero through the epoch and the selection is stable from one epoch to the next.

The soft schedule, the official code's defaults and the deviations are in
:mod:`prunekit.methods.soft_pruning`.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.methods.base import register_method
from prunekit.methods.options import option
from prunekit.methods.soft_pruning import SoftPruningMethod, SoftPruningOptions


@dataclass(frozen=True)
class FPGMOptions(SoftPruningOptions):
    """The soft phase of FPGM: zeroed filters get no gradient, as the official code."""

    mask_gradients: bool = option(
        True,
        help="mask the gradients of zeroed filters at every iteration and hold them at zero",
        source="official FPGM pruning_cifar10.py: train() calls m.do_grad_mask() before step()",
    )


@register_method("fpgm")
class FPGMMethod(SoftPruningMethod):
    """FPGM (He et al., CVPR 2019): the SFP schedule with the geometric-median criterion — the
    filters with the smallest summed distance to the other filters of their layer are zeroed —
    and the gradients of zeroed filters masked at every iteration (``mask_gradients`` True, as
    the official code)."""

    criterion = "fpgm"
    Options = FPGMOptions


__all__ = ["FPGMMethod", "FPGMOptions"]
