"""FMI — "Filter Pruning via Measuring Feature Map Information" (Sensors 2021).

The more information a channel's feature map carries, the more its filter matters; information
is measured by entropy:

1. feed calibration images; for each channel and image put the values of the feature map into
   ``bins`` equal-width bins between the map's minimum and maximum and take the entropy
   ``H = -sum_k p_k log2 p_k`` of the bin frequencies (0 for a constant map);
2. average ``H`` over the images;
3. normalise each layer's entropies (divided by the layer's largest) so that layers compare,
   and remove the channels of lowest normalised entropy across the whole network (one global
   ranking), to the FLOPs or params target;
4. fine-tune (the runner's fine-tuning, shared by every method).

The criterion is :class:`prunekit.criteria.feature_information.FeatureEntropy`, on the map the
next layer reads (:mod:`prunekit.criteria.activations`: after BatchNorm, ReLU, pooling or the
residual addition), with sums reduced over DDP ranks. ``scope="layer"`` instead removes the same
fraction of every layer.

Sources and deviations. Only the paper's abstract was available to us (no official code is
published): it states the entropy of feature maps as the measure of a filter's importance and a
normalisation that makes layers comparable. The histogram (``bins`` equal bins over each map's
range), the normalisation by the layer's largest entropy and the number of calibration batches
are prunekit's choices. A channel read as one number per image (a Linear layer's input after
global pooling) has no spatial distribution: its entropy is that of its values over a batch.
The paper's second method (FMI run in parallel with network slimming) is not implemented here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.criteria.feature_information import FeatureEntropy
from prunekit.graph import build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels


@dataclass(frozen=True)
class FMIOptions(Options):
    bins: int = option(
        16,
        help="histogram bins over each feature map's value range for its entropy",
        source="prunekit (the bin count is not given in the abstract)",
        low=2,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"] + " (global: one ranking of the normalised entropies)",
        source="paper abstract: normalisation to compare filters across layers",
        choices=("layer", "global"),
    )
    calib_batches: int | None = option(
        None,
        help=SHARED["calib_batches"] + " (None: the run's calib_batches)",
        source="prunekit",
        low=1,
    )


@register_method("fmi")
class FMI(Method):
    """FMI (Sensors 2021): each channel's mean feature-map entropy over calibration images,
    normalised per layer by its largest, one global ranking; the lowest are removed, then the
    runner fine-tunes."""

    Options = FMIOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        criterion = FeatureEntropy(ctx.calibration(), bins=opts.bins)
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            picks = select_channels(
                graph,
                importance=criterion,
                scope=opts.scope,
                normalize=False,  # the entropies are already normalised per layer
                **target.as_dict(),
            )
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = ["FMI", "FMIOptions"]
