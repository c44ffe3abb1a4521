"""HRank — Lin, Ji, Wang, Zhang, Zhang, Tian, Shao, "HRank: Filter Pruning using High-Rank
Feature Map" (CVPR 2020).

1. Feed calibration images; for each channel average the matrix rank of its feature map over
   them: the map the next layer reads, after BatchNorm, ReLU and any pooling
   (:mod:`prunekit.criteria.hrank`; the official ``rank_generation.py`` hooks the ReLUs).
2. Remove the filters of lowest average rank in every layer, to the budget.
3. Fine-tune (the runner's fine-tuning, shared by every method).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.criteria.hrank import HRank
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import Options, option
from prunekit.prune import PruneReport, prune_channels


@dataclass(frozen=True)
class HRankOptions(Options):
    calib_batches: int | None = option(
        None,
        help="training batches the ranks are averaged over (None: the run's calib_batches)",
        source="official rank_generation.py: --limit 5 batches of --train_batch_size 128",
        low=1,
    )


@register_method("hrank")
class HRankMethod(Method):
    """HRank (Lin et al., CVPR 2020): the average rank of each channel's feature maps over a
    calibration batch of images; the lowest-rank filters are removed, then the model is
    fine-tuned. The paper estimates ranks from 500 images (5 batches of 100 on CIFAR); here
    ``calib_batches`` batches of the run's batch size. Per-layer scope, as in the paper."""

    Options = HRankOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        criterion = HRank(ctx.calibration())
        return prune_channels(
            ctx.model,
            ctx.example_input,
            importance=criterion,
            scope="layer",
            **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
        )
