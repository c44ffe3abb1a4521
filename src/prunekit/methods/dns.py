"""Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NIPS 2016.

Each targeted layer carries a 0/1 mask ``T`` and keeps its dense weight ``W``. The forward
pass uses ``W * T``; the backward pass hands the gradient of ``W * T`` to *all* of ``W``
(straight-through), so pruned weights keep learning and can come back. At a mask update,
with two thresholds ``a < b`` per layer: ``|w| < a -> T = 0`` (pruned), ``|w| > b -> T = 1``
(spliced back), in between ``T`` is unchanged. Thresholds: from the mean ``mu`` and standard
deviation ``sigma`` of the layer's ``|W|`` (measured once, before training) we set
``r = mu + c * sigma``, ``a = (1 - margin) r``, ``b = (1 + margin) r``; ``c`` plays the
role of the paper's per-layer compression rate and is one number for all layers, solved so
that the fraction of weights below ``r`` is the target; ``margin`` (option ``dns_margin``,
0.1) widens the band. Masks are checked every ``dns_update_every`` steps (1) and updated
with probability ``sigma(iter) = (1 + gamma * iter)^(-power)`` (paper: ``gamma = 1e-4``,
``power = 1``; options ``dns_gamma``, ``dns_power``), over ``dns_epochs`` (3) of training at
``dns_lr`` (0.01). One update is made before training starts (the paper starts from an
all-ones ``T``). At the end the surgery masks are replaced by regular masks equal to the
final ``T``; if ``T``'s sparsity is not exactly the target, the final adjustment keeps
``T``'s decisions as far as possible: more weights are pruned among the kept ones, smallest
``(|w| - mu) / sigma`` first, or, if ``T`` is too sparse, the pruned ones largest first are
spliced back. Masks already on the model stay in force (ANDed into the final ``T``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.scope import global_keep
from prunekit.masks.straight_through import StraightThroughMask
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    Weights,
    check_nonnegative,
    check_positive_int,
    share_of_targets,
    target_sparsity,
    targets,
)
from prunekit.methods.retraining import retrain


class SurgeryMask(StraightThroughMask):
    """Parametrization ``w -> w * T`` whose backward is the identity (Dynamic Network Surgery):
    pruned weights keep receiving the gradient of the masked weight. ``T`` is a float 0/1
    buffer; ``low`` / ``high`` are the thresholds ``a`` / ``b``."""

    def __init__(self, shape: torch.Size, low: float, high: float) -> None:
        super().__init__(torch.ones(shape))
        self.low, self.high = float(low), float(high)

    @torch.no_grad()
    def update(self, weight: torch.Tensor) -> None:
        """One surgery step on the dense ``weight``: below ``a`` -> 0, above ``b`` -> 1."""
        self.mask.copy_(surgery_update(weight, self.mask, self.low, self.high))


def surgery_update(
    weight: torch.Tensor, mask: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """The new mask: 0 where ``|w| < low``, 1 where ``|w| > high``, else the old value."""
    magnitude = weight.detach().abs()
    out = mask.detach().clone()
    out[magnitude < low] = 0
    out[magnitude > high] = 1
    return out


def update_probability(iteration: int, gamma: float, power: float) -> float:
    """``(1 + gamma * iteration)^(-power)``: the chance a mask update happens at ``iteration``."""
    return (1.0 + gamma * iteration) ** (-power)


def dns_thresholds(weights: Weights, sparsity: float, margin: float) -> dict[str, tuple]:
    """Per layer ``(a, b, mu, sigma)``: ``r = mu + c sigma`` over ``|w|`` with one ``c`` for all
    layers such that ``sparsity`` of all entries lie below their layer's ``r``;
    ``a = (1 - margin) r``, ``b = (1 + margin) r``."""
    stats = {}
    for n, w in weights.items():
        mag = w.detach().abs().double().reshape(-1)
        mu = float(mag.mean())
        sigma = float(mag.std(correction=0)) if mag.numel() > 1 else 0.0
        stats[n] = (mu, sigma if sigma > 0 else 1.0)
    z = {n: (w.detach().abs().double() - stats[n][0]) / stats[n][1] for n, w in weights.items()}
    flat = torch.sort(torch.cat([v.reshape(-1) for v in z.values()])).values
    k = min(flat.numel(), round(sparsity * flat.numel()))
    if k == 0:
        c = float(flat[0]) - 1.0  # below every weight: nothing pruned
    elif k == flat.numel():
        c = float(flat[-1]) + 1.0
    else:
        c = 0.5 * (float(flat[k - 1]) + float(flat[k]))
    out = {}
    for n, (mu, sigma) in stats.items():
        r = max(mu + c * sigma, 0.0)
        out[n] = ((1.0 - margin) * r, (1.0 + margin) * r, mu, sigma)
    return out


def attach_surgery(module: nn.Module, low: float, high: float) -> SurgeryMask:
    """Put a :class:`SurgeryMask` on ``module.weight`` (after any mask already there)."""
    surgery = SurgeryMask(module.weight.shape, low, high).to(module.weight.device)
    parametrize.register_parametrization(module, "weight", surgery)
    return surgery


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight under the parametrizations of ``module.weight``."""
    return module.parametrizations.weight.original


@register_method("dns")
class DynamicNetworkSurgery(Method):
    """Guo et al. (NIPS 2016): masks from two thresholds ``a < b`` per layer (prune below,
    splice back above), updated while the dense weights keep training through a straight-through
    mask; options ``dns_epochs`` 3, ``dns_lr`` 0.01, ``dns_update_every`` 1, ``dns_gamma`` 1e-4,
    ``dns_power`` 1, ``dns_margin`` 0.1. See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {
        "dns_epochs": 3,
        "dns_lr": 0.01,
        "dns_update_every": 1,
        "dns_gamma": 1e-4,
        "dns_power": 1.0,
        "dns_margin": 0.1,
    }

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        check_nonnegative("dns_epochs", opts["dns_epochs"])
        check_positive_int("dns_update_every", opts["dns_update_every"])
        check_nonnegative("dns_gamma", opts["dns_gamma"])
        check_nonnegative("dns_power", opts["dns_power"])
        if not 0.0 <= opts["dns_margin"] < 1.0:
            raise ConfigError(f"option 'dns_margin' must be in [0, 1), got {opts['dns_margin']}")
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        existing = masks.get_masks(model)
        weights = {n: m.weight.detach().clone() for n, m in layers.items()}
        thresholds = dns_thresholds(weights, share, opts["dns_margin"])
        surgery = {}
        for n, m in layers.items():
            a, b, _, _ = thresholds[n]
            surgery[n] = attach_surgery(m, a, b)
            surgery[n].update(dense_weight(m))
        generator = torch.Generator().manual_seed(ctx.seed)

        def callback(event: str, state: dict[str, Any]) -> None:
            step = state.get("step", 0)
            if event != "step_end" or step % opts["dns_update_every"]:
                return
            chance = update_probability(step, opts["dns_gamma"], opts["dns_power"])
            if float(torch.rand((), generator=generator)) < chance:
                for n, m in layers.items():
                    surgery[n].update(dense_weight(m))

        try:
            retrain(
                model,
                ctx,
                opts["dns_epochs"],
                opts["dns_lr"],
                callbacks=[callback],
                progress=opts["progress"],
            )
        finally:
            final_t = {n: surgery[n].mask.detach().bool() for n in layers}
            for m in layers.values():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        # the dense weights after surgery; earlier masks (if any) were zeroed into them
        weights = {n: m.weight.detach() for n, m in layers.items()}
        for n, mask in existing.items():
            if n in final_t:
                final_t[n] &= mask.data.to(final_t[n].device)
        keep = _adjust(weights, final_t, thresholds, share)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return SparsityReport.measure(model, before)


def _adjust(
    weights: Weights, keep: Weights, thresholds: dict[str, tuple], sparsity: float
) -> Weights:
    """Keep-masks at exactly ``sparsity`` that follow ``keep`` as far as possible: every kept
    entry ranks above every pruned one, and within each side entries rank by
    ``(|w| - mu) / sigma`` of their layer."""
    scores = {}
    for n, w in weights.items():
        _, _, mu, sigma = thresholds[n]
        z = (w.abs().double() - mu) / sigma
        scores[n] = z
    span = max(float(s.max() - s.min()) for s in scores.values()) + 1.0
    ranked = {n: torch.where(keep[n], z + span, z) for n, z in scores.items()}
    return global_keep(ranked, sparsity)


__all__ = [
    "DynamicNetworkSurgery",
    "SurgeryMask",
    "attach_surgery",
    "dense_weight",
    "dns_thresholds",
    "surgery_update",
    "update_probability",
]
