"""SFP — He, Kang, Dong, Fu, Yang, "Soft Filter Pruning for Accelerating Deep Convolutional
Neural Networks" (IJCAI 2018). Every layer ``i`` loses the same fraction ``P`` of its filters.
After each training epoch the filters of every layer are ranked by their L2 norm
``||F_ij||_2`` and the ``floor(P * n_i)`` smallest are set to zero. They are *not* removed: the
next epoch updates them like every other weight, so a filter zeroed once can grow back and be
kept while another one takes its place. After the last epoch the filters selected last are
removed for good.

The soft schedule, the budget and the deviations are in :mod:`prunekit.methods.soft_pruning`.
"""

from __future__ import annotations

from prunekit.methods.base import register_method
from prunekit.methods.soft_pruning import SoftPruningMethod


@register_method("sfp")
class SFPMethod(SoftPruningMethod):
    """SFP (He et al., IJCAI 2018): after every epoch zero the filters of lowest L2 norm, the
    same rate per layer, and keep training them; remove them after the last epoch."""

    criterion = "l2"


__all__ = ["SFPMethod"]
