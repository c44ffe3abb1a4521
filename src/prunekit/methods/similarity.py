"""Similarity-based filter pruning — "Similarity Based Filter Pruning for Efficient
Super-Resolution Models" (BMSB 2020).

A filter that is nearly a copy of another filter of its layer adds little: its feature map can
be stood in for by the other one's. The computation, per layer:

1. flatten every filter ``F_i`` of the layer and take the cosine similarity of every pair,
   ``cos_ij = <F_i, F_j> / (|F_i| |F_j|)``;
2. remove the filter that is most similar to another filter still kept (of the most similar
   pair, the weaker member, with the smaller L2 norm: the stronger one stands in for it), then
   look again among the filters left; repeat until the layer has lost its share;
3. fine-tune (the runner's fine-tuning, shared by every method).

The criterion is :func:`prunekit.criteria.filter_similarity.cosine_redundancy`: its score is a
unit's place in that greedy order, so removing ``k`` units of a layer removes the first ``k`` of
the sequence. The structural core removes the same fraction of every group (layer scope) and
closes the last gap to the FLOPs or params target in score order.

Sources. The paper is behind the publisher's paywall and no official code is published, so this
file follows its title, abstract and the catalogue entry ("prune filters that are most similar
(cosine) to another kept filter of the same layer"). Choices of prunekit, not of the paper:

* which member of the most similar pair goes (the weaker, smaller-norm one; the lower index on a
  tie). On MNIST-1D (3 seeds, 50% FLOPs, 5 fine-tuning epochs) this beat removing the member
  more similar to the rest on average: 71.8% against 66.9% top-1 (L2 pruning: 78.1%);
* an all-zero filter counts as a copy of every other filter (it is removed first);
* a unit produced by several layers (a residual stage) uses the mean of its layers' cosine
  matrices;
* the per-layer rates come from the run's target (one ratio for every group), not from the
  paper's super-resolution experiments.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.criteria.filter_similarity import cosine_redundancy
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, prune_channels


@dataclass(frozen=True)
class SimilarityOptions(Options):
    scope: str = option(
        "layer",
        help=SHARED["scope"] + " (layer: every layer loses the same fraction, greedy inside it)",
        source="paper (filters are compared within one layer); catalogue entry",
        choices=("layer", "global"),
    )


@register_method("similarity")
class SimilarityPruning(Method):
    """Similarity-based filter pruning (BMSB 2020): within each layer, filters are
    removed greedily, the one most similar (cosine of the flattened weights) to another filter
    still kept going first; then the runner fine-tunes."""

    Options = SimilarityOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        return prune_channels(
            ctx.model,
            ctx.example_input,
            importance=cosine_redundancy,
            scope=opts.scope,
            **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
        )


__all__ = ["SimilarityOptions", "SimilarityPruning"]
