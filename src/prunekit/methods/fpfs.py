"""FPFS — "FPFS: Filter-level pruning via distance weight measuring filter similarity"
(Neurocomputing 2022).

Filters that are alike are redundant; FPFS measures how alike two filters are with a similarity
weighted by their distance, so that two filters count as copies only when they point the same
way *and* lie close together. Per layer:

1. flatten every filter ``F_i``; for every pair take the Euclidean distance ``d_ij`` and the
   cosine similarity ``cos_ij``;
2. the distance weight ``w_ij = exp(-d_ij / mean(d))`` (``mean(d)``: the mean distance between
   two filters of the layer, so the weight is the same for a layer and a rescaled copy of it)
   and the distance-weighted similarity ``s_ij = w_ij * cos_ij``;
3. the score of filter ``i`` is ``sum_j (1 - s_ij)`` over the other filters of its layer: the
   filters with the lowest score are the most redundant and are removed;
4. fine-tune (the runner's fine-tuning, shared by every method).

The criterion is :func:`prunekit.criteria.filter_similarity.distance_weighted_redundancy`. The
structural core removes the same fraction of every group (layer scope) and closes the last gap to
the FLOPs or params target in score order.

Sources and deviations. The paper is behind the publisher's paywall and no official code is
published; this file follows its title and the catalogue entry ("filter similarity from a
distance-weighted measure; prune the most redundant"). The form of the distance weight (an
exponential decay in the distance relative to the layer's mean distance) and the score (the
summed distance-weighted dissimilarity) are prunekit's reading of that description, not checked
against the paper's equations; an all-zero filter counts as aligned with every filter (cosine 1).
Per-layer rates come from the run's target; a unit produced by several layers (a residual stage)
sums its scores over them.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.criteria.filter_similarity import distance_weighted_redundancy
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, prune_channels


@dataclass(frozen=True)
class FPFSOptions(Options):
    scope: str = option(
        "layer",
        help=SHARED["scope"],
        source="catalogue entry (filters are compared within their layer)",
        choices=("layer", "global"),
    )


@register_method("fpfs")
class FPFS(Method):
    """FPFS (Neurocomputing 2022): each filter's summed dissimilarity to the other filters of its
    layer, the cosine similarity weighted by exp(-distance / mean distance); the most redundant
    (lowest) filters are removed, then the runner fine-tunes."""

    Options = FPFSOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        return prune_channels(
            ctx.model,
            ctx.example_input,
            importance=distance_weighted_redundancy,
            scope=opts.scope,
            **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
        )


__all__ = ["FPFS", "FPFSOptions"]
