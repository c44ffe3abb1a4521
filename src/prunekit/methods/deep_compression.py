"""Deep Compression (Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks with
Pruning, Trained Quantization and Huffman Coding", ICLR 2016, https://arxiv.org/abs/1510.00149).

The paper's pipeline, as this method runs it:

1. **Pruning.** Weights below a magnitude threshold are removed and the network is retrained
   with the pruned weights held at zero, as in Han et al. (NeurIPS 2015), whose threshold is a
   quality parameter times the standard deviation of the layer's weights. With
   ``pruning="std"`` (default) each weight scores ``|w| / std(W_layer)`` and one threshold ``q``
   over all layers removes exactly the target count: the per-layer thresholds are ``q * std``,
   with ``q`` chosen to meet ``target_sparsity``. ``pruning="global"`` ranks raw ``|w|``
   across layers instead. ``prune_iterations`` steps ramp the sparsity linearly to the target,
   each followed by ``prune_epochs`` of retraining under the masks.
2. **Trained quantisation.** Every conv / Linear layer's kept weights are clustered by k-means
   with linear initialisation into ``2**bits_conv`` / ``2**bits_fc`` shared values
   (:func:`prunekit.compress.deep_compression.quantize_model`); the layer's weight becomes
   ``where(mask, centroids[index], 0)`` and ``quant_epochs`` of training update the centroids
   only, each by the sum of the gradients of the weights in its cluster.
3. **Huffman coding** happens when the model is written:
   :func:`prunekit.compress.deep_compression.compress_model` /
   :func:`~prunekit.compress.deep_compression.save_deep_compressed`.

Defaults and options (``ctx.options``):

* ``bits_conv`` (8), ``bits_fc`` (5): the paper's AlexNet / VGG setting (256 shared weights
  per conv layer, 32 per fully connected layer).
* ``pruning`` ("std"); ``prune_iterations`` (1), ``prune_epochs`` (1), ``prune_lr`` (0.01),
  ``prune_weight_decay`` (5e-4): the paper retrains for as long as the original training in
  several prune/retrain rounds; here a short retraining of the given model.
* ``quant_epochs`` (1), ``quant_lr`` (0.001), ``quant_weight_decay`` (0.0): the paper
  fine-tunes the centroids with the network's training settings; it gives no separate figures.

What the runner gets: the masks stay attached, as :class:`SharedWeights` parametrizations
(which are :class:`prunekit.masks.MaskParametrization`), so ``prunekit.masks.get_masks``,
``finalize`` and ``report`` work as for any unstructured method. A runner fine-tune after
``prune`` keeps the weight sharing: the centroids are the only trainable tensor of each conv /
Linear weight (biases and BatchNorm train as usual), so it is more trained quantisation.
``finalize`` then bakes the shared values into plain weights with at most ``2**bits`` distinct
values per layer, which ``compress_model`` stores exactly (no second clustering).

Deviations a reader should know:

* Layers the model protects (``model.protected_layers``, e.g. a classifier) are not pruned, as
  for every prunekit mask method; the other layers prune proportionally more so that the
  sparsity over all conv / Linear weights meets the target. All conv / Linear layers are
  quantised, protected ones included, as in the paper.
* The standard deviation of a layer is that of its currently stored weights (pruned entries are
  zero there), recomputed at each pruning step.
* Weight decay during trained quantisation (when set) acts on the centroid values, not on each
  shared weight; the runner's fine-tune weight decay acts the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit import masks
from prunekit.compress.deep_compression import quantize_model
from prunekit.errors import ConfigError
from prunekit.methods.base import (
    Context,
    Method,
    SparsityReport,
    count_nonzero,
    register_method,
)
from prunekit.methods.fine_grained import covered_sparsity
from prunekit.methods.options import Options, option

PRUNING = ("std", "global")


def std_scores(weight: torch.Tensor) -> torch.Tensor:
    """Han et al.'s score: ``|w|`` over the standard deviation of the layer's weights, so one
    threshold on the scores is ``q * std`` per layer."""
    w = weight.detach().float()
    std = w.std() if w.numel() > 1 else w.new_tensor(0.0)
    return w.abs() / std if float(std) > 0 else w.abs()


@dataclass(frozen=True)
class DeepCompressionOptions(Options):
    pruning: str = option(
        "std",
        help="std: one q over |w| / std(layer), per-layer thresholds q * std (Han et al. 2015); "
        "global: one threshold over raw |w|",
        source="paper: network pruning as Han et al. NIPS 2015 (quality x std per layer)",
        choices=PRUNING,
    )
    prune_iterations: int = option(
        1,
        help="prune-retrain steps ramping the sparsity linearly to the target",
        source="prunekit (the paper iterates prune-retrain; one step keeps the budget short)",
        low=1,
    )
    prune_epochs: int = option(
        1,
        help="retraining epochs after each pruning step",
        source="prunekit (the paper retrains as long as the original training)",
        low=0,
    )
    prune_lr: float = option(
        0.01,
        help="retraining learning rate",
        source="prunekit (Han et al. 2015: 1/10 to 1/100 of the original rate)",
        low=0,
        low_open=True,
    )
    prune_weight_decay: float = option(
        5e-4, help="retraining weight decay", source="prunekit (the usual CIFAR setting)", low=0
    )
    bits_conv: int = option(
        8,
        help="bits per shared weight index in conv layers (2**bits clusters)",
        source="paper, AlexNet / VGG-16 results: 8 bits for conv layers",
        low=1,
        high=16,
    )
    bits_fc: int = option(
        5,
        help="bits per shared weight index in Linear layers",
        source="paper, AlexNet / VGG-16 results: 5 bits for fully connected layers",
        low=1,
        high=16,
    )
    quant_epochs: int = option(
        1,
        help="epochs of centroid fine-tuning",
        source="prunekit (the paper gives no separate figure)",
        low=0,
    )
    quant_lr: float = option(
        0.001,
        help="centroid fine-tuning learning rate",
        source="prunekit (the paper gives no separate figure)",
        low=0,
        low_open=True,
    )
    quant_weight_decay: float = option(
        0.0,
        help="weight decay on the centroids",
        source="prunekit (none: decay would pull shared values toward 0)",
        low=0,
    )


@register_method("deep_compression")
class DeepCompression(Method):
    """Deep Compression's pruning and trained quantisation (Han, Mao and Dally, ICLR 2016).

    Magnitude pruning to ``target_sparsity`` (per-layer ``q * std`` thresholds or one global
    threshold) with retraining, then k-means weight sharing (linear initialisation, ``bits_conv``
    / ``bits_fc`` bits) and fine-tuning of the shared centroids, whose gradient is the sum of
    their weights' gradients. The model is left with :class:`SharedWeights` masks attached; see
    the module docstring for the options, defaults and deviations.
    """

    Options = DeepCompressionOptions
    result_file: ClassVar[str] = "model.deepc"  # the paper's result is this file (stage 3)

    def write_result(self, model: nn.Module, path: Any, options: dict[str, Any]) -> None:
        """Huffman coding, the paper's third stage: the run's model, its masks baked in, written
        as one file (at most ``2**bits`` shared values per layer, stored exactly)."""
        from prunekit.compress.deep_compression import compress_model

        opts = self.resolve(options)
        compress_model(model, path, bits_conv=opts["bits_conv"], bits_fc=opts["bits_fc"])

    def _check(self, ctx: Context, opts: dict[str, Any]) -> float:
        target = ctx.target.require("sparsity", method=self.id).fraction
        if opts["pruning"] not in PRUNING:
            raise ConfigError(
                f"option 'pruning' must be one of {', '.join(PRUNING)}, got {opts['pruning']!r}"
            )
        if opts["prune_iterations"] < 1:
            raise ConfigError(f"prune_iterations must be >= 1, got {opts['prune_iterations']}")
        for key in ("prune_epochs", "quant_epochs"):
            if opts[key] < 0:
                raise ConfigError(f"{key} must be >= 0, got {opts[key]}")
        for key in ("prune_lr", "quant_lr"):
            if not (opts[key] > 0 and math.isfinite(opts[key])):
                raise ConfigError(f"{key} must be a positive number, got {opts[key]}")
        for key in ("prune_weight_decay", "quant_weight_decay"):
            if not (opts[key] >= 0 and math.isfinite(opts[key])):
                raise ConfigError(f"{key} must be a number >= 0, got {opts[key]}")
        for key in ("bits_conv", "bits_fc"):
            if not 1 <= opts[key] <= 16:
                raise ConfigError(f"{key} must be an integer in [1, 16], got {opts[key]}")
        return float(target)

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = self._check(ctx, opts)
        model = ctx.model
        before = count_nonzero(model)
        chosen = masks.select_targets(model, None, ())
        importance = std_scores if opts["pruning"] == "std" else "magnitude"
        steps = opts["prune_iterations"]
        for step in range(1, steps + 1):
            overall = target * step / steps
            if chosen:  # the layers' share of the overall count (the fine-grained accounting)
                local = covered_sparsity(model, overall)
                masks.prune(model, local, scope="global", importance=importance)
            ctx.train(
                model,
                opts["prune_epochs"],
                opts["prune_lr"],
                name=f"prune{step}",
                weight_decay=opts["prune_weight_decay"],
                schedule="constant",
                progress=opts["progress"],
            )
        quantize_model(model, bits_conv=opts["bits_conv"], bits_fc=opts["bits_fc"], seed=ctx.seed)
        ctx.train(
            model,
            opts["quant_epochs"],
            opts["quant_lr"],
            name="quantized",
            weight_decay=opts["quant_weight_decay"],
            schedule="constant",
            progress=opts["progress"],
        )
        return SparsityReport.measure(model, before)
