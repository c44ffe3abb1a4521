"""HRel — Sarvani, Ghorai, Dubey, Basha, "HRel: Filter pruning based on High Relevance between
activation maps and class labels" (Neural Networks 147, 2022).

1. Run labelled training batches through the trained model; for every channel estimate the
   mutual information ``I(T; Y)`` between its activation maps and the class labels with the
   matrix-based Rényi entropy of Gram matrices (Gaussian kernel of the maps, width chosen per
   layer by kernel alignment with the labels; label kernel width 0.1), averaged over the batches
   (:mod:`prunekit.criteria.hrel`, which gives the estimator and the source of each constant).
2. In every layer, remove the filters of lowest relevance (their channels carry least about the
   class), to the budget.
3. Fine-tune (the runner's fine-tuning, shared by every method).

Where the maps are read: the tensor the next layer reads (after BatchNorm, the nonlinearity and
any pooling), through :mod:`prunekit.criteria.activations`; the official code hooks the conv
outputs. The official code (``*/resnet_ex.py``) prunes in rounds: it removes a few of the least
relevant filters of every layer, retrains, and repeats until each layer reaches a hand-set
minimum width (``prune_limits`` per stage); here one pass removes the least relevant filters
of every layer at one uniform rate that meets the run's FLOPs or params target (layer scope,
the paper's per-layer ranking), and the runner fine-tunes once. Calibration: the official code
averages over every training batch of 100 images; here ``calib_batches`` batches of the run's
batch size (the estimator needs two or more images per batch, and each batch's Gram matrices
are ``batch x batch``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.criteria.hrel import SIGMA_GRID, HRel
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import Options, option
from prunekit.prune import PruneReport, prune_channels


@dataclass(frozen=True)
class HRelOptions(Options):
    calib_batches: int | None = option(
        None,
        help="labelled training batches the relevance is averaged over (None: the run's)",
        source="official */resnet_ex.py: every batch of the training loader (batch size 100)",
        low=1,
    )
    sigma_grid: int = option(
        SIGMA_GRID,
        help="kernel widths tried per layer and batch (linspace(0.3, 10 x mean distance, n))",
        source="official */resnet_network.py kernel_mat: 100 widths after epoch 20",
        low=1,
    )


@register_method("hrel")
class HRelMethod(Method):
    """HRel (Sarvani et al., Neural Networks 2022): the mutual information between each
    channel's activation maps and the class labels (matrix-based Rényi entropy of Gram
    matrices), averaged over labelled calibration batches; the least relevant filters of every
    layer are removed, then the model is fine-tuned. One pass instead of the paper's rounds of
    pruning and retraining (see the module docstring)."""

    Options = HRelOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        criterion = HRel(ctx.calibration(), grid=opts.sigma_grid)
        return prune_channels(
            ctx.model,
            ctx.example_input,
            importance=criterion,
            scope="layer",
            **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
        )
