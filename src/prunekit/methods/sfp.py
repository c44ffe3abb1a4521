"""SFP — He, Kang, Dong, Fu, Yang, "Soft Filter Pruning for Accelerating Deep Convolutional
Neural Networks" (IJCAI 2018). Every layer ``i`` loses the same fraction ``P`` of its filters.
Before training and after each training epoch the filters of every layer are ranked by their L2
norm ``||F_ij||_2`` and the ``floor(P * n_i)`` smallest are set to zero. They are *not*
removed, and their gradients are not masked (the official ``pruning_cifar10_resnet.py`` and
``pruning_train.py`` step the optimiser on every weight): the next epoch updates them like
every other weight, so a filter zeroed once can grow back and be kept while another one takes
its place. After the last epoch the filters selected last are removed for good.

The soft schedule, the official code's defaults and the deviations are in
:mod:`prunekit.methods.soft_pruning`.
"""

from __future__ import annotations

from prunekit.methods.base import register_method
from prunekit.methods.soft_pruning import SoftPruningMethod, SoftPruningOptions


@register_method("sfp")
class SFPMethod(SoftPruningMethod):
    """SFP (He et al., IJCAI 2018): before training and after every epoch zero the filters of
    lowest L2 norm, the same rate per layer, and keep training them (their gradients are not
    masked: ``mask_gradients`` False, as the official code); remove them after the last
    epoch."""

    criterion = "l2"
    Options = SoftPruningOptions  # mask_gradients False: the official train() masks nothing


__all__ = ["SFPMethod"]
