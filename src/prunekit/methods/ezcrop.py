"""EZCrop — Lin, Ran, Wang, Chiu, Wong, "EZCrop: Energy-Zoned Channels for Robust Output
Pruning" (WACV 2022); official code ``rlin27/EZCrop`` (``SelectedEnergyRatio.py``,
``ratio_generation.py``, built on HRankPlus).

A channel whose maps have high rank (HRank) has energy spread over the spectrum; EZCrop measures
that directly in the frequency domain, without a rank:

1. feed calibration images; for each channel and image take the 2-D FFT of the feature map,
   the magnitude compressed as ``log(1 + |F|)``, shifted so the zero frequency sits at the
   centre (``torch_fftshift``: a roll by ``n // 2`` per dimension);
2. the low-frequency zone is the square of half-width ``step = min(ceil((h - c_h - 1) alpha),
   ceil((w - c_w - 1) alpha))`` around the centre (``StepDecision``; ``step = 0`` for a side of 2
   or 3); the channel's score for the image is ``1 - E_zone / E_total`` (``EnergyRatio``; 0 for
   an all-zero map);
3. average the score over the images (official: ``--limit 5`` batches of ``--batch_size 128``);
4. remove the lowest-scoring filters of every layer (the HRankPlus pruning of
   ``evaluate_cifar.py`` with the scores in place of ranks), then fine-tune (the runner's).

The criterion is :class:`prunekit.criteria.feature_information.EnergyZone`, on the map the next
layer reads (:mod:`prunekit.criteria.activations`: after BatchNorm, ReLU, pooling or the
residual addition), with statistics reduced over DDP ranks.

Deviations a reader should know:

* The map: the official ``ratio_generation.py`` hooks the ReLU modules for VGG and offers
  ``--conv_fm 1`` (conv outputs) for ResNets; here the tensor the next layer reads, the rule
  for every activation criterion of prunekit (a raw conv output before BatchNorm and ReLU is not
  what the next layer sees).
* The zone's centre is ``n // 2`` in each dimension (where the zero frequency lands after the
  shift); the official code uses ``(n - 1) / 2`` for an even side when the other side is odd,
  one bin off the zero frequency.
* 1-D maps (Conv1d inputs, a flattened channel before a Linear layer) use the 1-D FFT with the
  same zone rule; a single number per image (a Linear layer's input after global pooling) has
  only the zero frequency, so every such channel scores 0 and the group is cut in index order.
* One pass: the paper's "repetitive pruning" (prune, retrain 300 epochs, prune again) is its
  robustness experiment; run the method again on the fine-tuned model for another pass.
* Per-layer rates come from the run's target (one ratio for every group, the last gap closed in
  score order), not the hand-set ``--compress_rate`` lists of the official scripts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.criteria.feature_information import EnergyZone
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, prune_channels


@dataclass(frozen=True)
class EZCropOptions(Options):
    alpha: float = option(
        0.25,
        help="size of the low-frequency zone: its half-width is ceil(alpha x the bins beyond the "
        "centre)",
        source="official SelectedEnergyRatio.py EnergyRatio(alpha=1/4); ratio_generation.py "
        "--alpha default 1/4",
        low=0,
        high=1,
        low_open=True,
    )
    calib_batches: int | None = option(
        None,
        help=SHARED["calib_batches"] + " (None: the run's calib_batches)",
        source="official ratio_generation.py: --limit 5 batches of --batch_size 128",
        low=1,
    )


@register_method("ezcrop")
class EZCrop(Method):
    """EZCrop (Lin et al., WACV 2022): each channel's share of log-magnitude spectral energy
    outside the low-frequency zone of its feature maps, averaged over calibration images; the
    lowest-scoring filters of every layer are removed, then the runner fine-tunes."""

    Options = EZCropOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        criterion = EnergyZone(ctx.calibration(), alpha=opts.alpha)
        return prune_channels(
            ctx.model,
            ctx.example_input,
            importance=criterion,
            scope="layer",
            **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
        )


__all__ = ["EZCrop", "EZCropOptions"]
