"""Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019 (official code: namhoonlee/snip-public).

The algorithm, top to bottom:

1. **Initialise.** The paper prunes at initialisation, before any training, with variance
   scaling (``snip/network.py``: ``tf.variance_scaling_initializer()``: scale 1, fan-in, a
   normal truncated at two standard deviations; biases zero). That is the default, ``init =
   "variance_scaling"``: the given (trained) weights are discarded, every conv / Linear weight is
   drawn with standard deviation ``sqrt(1 / fan_in)``, every other module is re-initialised as
   its architecture does (:func:`prunekit.methods.initialisation.reinitialise`), all under the
   run's seed. ``init = "architecture"`` uses the architecture's own initialisation throughout;
   ``init = "none"`` scores the weights as given (SNIP's criterion on a trained model, which is
   not the paper's setting).
2. **Score.** On ``calib_batches`` (1: the paper's one mini-batch) batches of training data, the
   connection sensitivity ``s_j = |g_j w_j| / sum_k |g_k w_k|`` with ``g = dL/dw`` of the
   cross-entropy loss (``dL/dc`` at ``c = 1`` is ``g * w``). The forward pass runs in eval mode,
   so scoring leaves BatchNorm running statistics untouched.
3. **Prune.** The global top ``1 - s`` fraction of the scores is kept (masks attached); the
   pruned network is then trained from the initialisation: the report says
   ``at_initialisation``, and the runner trains the sparse network with the baseline's schedule
   (the budget of the width-scaled reference), then gives it the common fine-tuning.

Under the default, the accuracy "right after pruning" is that of a network at initialisation
(chance level); results carry ``at_initialisation``, ``scratch_epochs`` and ``acc_scratch``
(after the baseline's schedule, before the fine-tuning).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    Weights,
    share_of_targets,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import model_device


def sensitivity(grads: Weights, weights: Weights) -> Weights:
    """Connection sensitivity ``|g w| / sum over all layers of |g w|`` (zeros if the sum is 0)."""
    raw = {n: (grads[n].detach() * weights[n].detach()).abs().double() for n in weights}
    total = sum(float(r.sum()) for r in raw.values())
    return {n: r / total if total > 0 else r for n, r in raw.items()}


def weight_gradients(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> Weights:
    """``dL/dw`` of every layer's stored weight, summed over ``batches``, in eval mode; no
    ``.grad`` is left behind. Under a mask the gradient is that of the masked weight, times the
    mask."""
    device = model_device(model)
    params = {n: stored_weight(m) for n, m in layers.items()}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            with torch.enable_grad():
                loss = loss_fn(model(x.to(device)), y.to(device))
                found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, found, strict=True):
                if g is not None:
                    grads[n] += g.detach()
    finally:
        model.train(was_training)
    return grads


# the standard deviation of a standard normal truncated to [-2, 2]: TensorFlow divides by it so
# the truncated draw keeps the intended standard deviation
_TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def variance_scaling(model: nn.Module, seed: int) -> None:
    """SNIP's initialisation of ``model`` under ``seed``: every conv / Linear weight from a normal
    of standard deviation ``sqrt(1 / fan_in)`` truncated at two standard deviations (scale 1,
    fan-in, TensorFlow's ``variance_scaling_initializer``), biases zero; every other parameter and
    buffer as the architecture initialises it. Masks on the model stay in force."""
    reinitialise(model, seed)
    g = torch.Generator().manual_seed(seed)
    for module in targets_and_protected(model).values():
        w = stored_weight(module)
        std = math.sqrt(1.0 / w[0].numel()) / _TRUNCATED_STD
        draw = torch.empty(w.shape, dtype=torch.float64)
        nn.init.trunc_normal_(draw, 0.0, 1.0, -2.0, 2.0, generator=g)
        w.copy_((draw * std).to(device=w.device, dtype=w.dtype))
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    current = masks.get_masks(model)
    if current:
        masks.apply_masks(model, current)  # re-zeroes the stored weights under the masks


def targets_and_protected(model: nn.Module) -> dict[str, nn.Module]:
    """Every conv / Linear layer of ``model`` by name, protected ones included."""
    return {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    }


INITS = ("variance_scaling", "architecture", "none")


@dataclass(frozen=True)
class SNIPOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"snip_batches": "calib_batches"}

    init: str = option(
        "variance_scaling",
        help="initialise before scoring: variance_scaling (the paper's), architecture (the "
        "model's own init) or none (score the given weights)",
        source="paper Sec. 5 and snip-public network.py (tf.variance_scaling_initializer)",
        choices=INITS,
    )
    calib_batches: int = option(
        1,
        help="training batches the sensitivity is summed over",
        source="paper Sec. 4: one mini-batch",
        low=1,
    )


@register_method("snip")
class SNIP(Method):
    """Lee et al. (ICLR 2019): at initialisation (variance scaling by default), connection
    sensitivity ``|g w| / sum |g w|`` on one batch, the global top ``1 - s`` kept. See the module
    docstring."""

    Options = SNIPOptions

    def __init__(self) -> None:
        self.at_initialisation = True

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        if opts.init == "variance_scaling":
            variance_scaling(model, ctx.seed)
        elif opts.init == "architecture":
            reinitialise(model, ctx.seed)
        self.at_initialisation = opts.init != "none"
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        batches = dataclasses.replace(ctx, calib_batches=opts.calib_batches).calibration()
        if not batches:
            raise ConfigError("snip needs at least one training batch, the training set is empty")
        grads = weight_gradients(model, layers, batches)
        weights = {n: stored_weight(m).detach() for n, m in layers.items()}
        scores = sensitivity(grads, weights)
        keep = global_keep(scores, share)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        report = SparsityReport.measure(model, before)
        report.at_initialisation = self.at_initialisation  # the runner trains it from there
        return report


__all__ = ["INITS", "SNIP", "sensitivity", "variance_scaling", "weight_gradients"]
