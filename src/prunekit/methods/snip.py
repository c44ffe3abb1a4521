"""Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019.

On ``snip_batches`` (1, the paper's one batch) calibration batches: connection sensitivity
``s_j = |g_j w_j| / sum_k |g_k w_k|`` with ``g = dL/dw`` of the cross-entropy loss (``dL/dc``
at ``c = 1`` is ``g * w``); the global top ``1 - s`` fraction is kept. The paper scores the
network at initialisation; prunekit usually gets a trained model, so scoring uses the given
weights unless ``reinit`` (False) is set, in which case every module's ``reset_parameters``
re-initialises the model first (seeded by the run's seed). The forward pass runs in eval
mode so scoring leaves BatchNorm running statistics untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    Weights,
    check_positive_int,
    share_of_targets,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.initialisation import reinitialise
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


@register_method("snip")
class SNIP(Method):
    """Lee et al. (ICLR 2019): single-shot pruning by connection sensitivity
    ``|g w| / sum |g w|`` on ``snip_batches`` (1) batches, the global top ``1 - s`` kept;
    ``reinit`` (False) re-initialises first, as the paper prunes at initialisation. See the
    module docstring."""

    defaults: ClassVar[dict[str, Any]] = {"snip_batches": 1, "reinit": False}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        check_positive_int("snip_batches", opts["snip_batches"])
        model = ctx.model
        before = count_nonzero(model)
        if opts["reinit"]:
            reinitialise(model, ctx.seed)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        batches = dataclasses.replace(ctx, calib_batches=opts["snip_batches"]).calibration()
        if not batches:
            raise ConfigError("snip needs at least one training batch, the training set is empty")
        grads = weight_gradients(model, layers, batches)
        weights = {n: stored_weight(m).detach() for n, m in layers.items()}
        scores = sensitivity(grads, weights)
        keep = global_keep(scores, share)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return SparsityReport.measure(model, before)


__all__ = ["SNIP", "sensitivity", "weight_gradients"]
