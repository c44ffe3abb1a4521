"""Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NIPS 2016 (official code:
yiwenguo/Dynamic-Network-Surgery, ``src/caffe/layers/compress_conv_layer.cu``).

The algorithm, top to bottom:

1. **Masks and dense weights.** Each targeted layer keeps its dense weight ``W`` and a 0/1 mask
   ``T`` (all ones at the start). The forward pass uses ``W * T``; the backward pass hands the
   gradient of ``W * T`` to *all* of ``W`` (the straight-through mask of
   :mod:`prunekit.masks.straight_through`), so pruned weights keep learning and can come back.
2. **Thresholds, once per layer.** Before training, the mean ``mu`` and standard deviation
   ``sigma`` of the layer's ``|W|`` (official: ``CCMomentCalc`` at iteration 0). With the layer's
   compression rate ``c``, ``r = max(mu + c sigma, 0)``; the surgery prunes ``|w| <= a = 0.9 r``
   and splices back ``|w| > b = 1.1 r`` (``CCMaskCalc``; ``margin`` 0.1). The paper sets ``c``
   by hand per layer (``c_rate`` in the layer's prototxt); prunekit is given one target instead,
   so each layer's ``c`` is solved for that layer alone, so that ``a`` (the threshold that
   prunes) has the run's share of the layer's weights below it: every layer starts at the same
   sparsity.
3. **Surgery while training.** After every ``update_every`` training steps (1: the official
   layer considers an update at every forward pass), with probability
   ``(1 + gamma * iter)^(-power)`` (``gamma`` 1e-4, ``power`` 1: paper Sec. 3 and the official
   README's example) and while ``iter < iter_stop`` (official ``iter_stop``, here a fraction of
   the surgery's training steps, 0.75: the masks then stay fixed so the kept weights settle),
   ``T = 0`` where ``|w| <= a``, ``T = 1`` where ``|w| > b``, unchanged in between. One update
   is made before training starts. :attr:`DynamicNetworkSurgery.history` records every update
   that ran (step, weights pruned and spliced, each layer's sparsity).
4. **The result.** The surgery masks become regular masks equal to the final ``T``. The
   thresholds fix each layer's sparsity only at the start, so ``T`` drifts from the target
   while the weights train; a last adjustment meets the target exactly and keeps ``T``'s
   decisions as far as possible (more weights pruned among the kept ones, smallest
   ``(|w| - mu) / sigma`` first, or the largest pruned ones spliced back);
   :attr:`DynamicNetworkSurgery.adjusted` counts the entries it changed. Masks already on the
   model stay in force (ANDed into the final ``T``).

Deviations: ``mu`` and ``sigma`` are over the weights only (the official layer also counts its
bias); the training phase (``epochs`` 3 at ``lr`` 0.01, SGD with momentum 0.9, weight decay 5e-4,
cosine) is far shorter than the paper's; ``iter_stop`` is a fraction of it, not an iteration
count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.masks.granularity import prune_count
from prunekit.masks.scope import global_keep
from prunekit.masks.straight_through import StraightThroughMask
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    Weights,
    share_of_targets,
    target_sparsity,
    targets,
)
from prunekit.methods.options import Options, option


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
    """Per layer ``(a, b, mu, sigma)``: ``mu``, ``sigma`` of the layer's ``|w|``; the layer's own
    ``c`` puts ``r = mu + c sigma`` where the prune threshold ``a = (1 - margin) r`` has
    ``sparsity`` of the layer's entries below it (rounded to whole entries; tied magnitudes stay
    together); ``b = (1 + margin) r``."""
    out = {}
    for n, w in weights.items():
        mag = w.detach().abs().double().reshape(-1)
        mu = float(mag.mean())
        sigma = float(mag.std(correction=0)) if mag.numel() > 1 else 0.0
        ordered = torch.sort(mag).values
        k = prune_count(mag.numel(), sparsity)
        if k == 0:
            a = 0.0  # no magnitude is below 0
        elif k == mag.numel():
            a = math.nextafter(float(ordered[-1]), math.inf)
        else:
            a = 0.5 * (float(ordered[k - 1]) + float(ordered[k]))
        r = a / (1.0 - margin)
        out[n] = (a, (1.0 + margin) * r, mu, sigma if sigma > 0 else 1.0)
    return out


def attach_surgery(module: nn.Module, low: float, high: float) -> SurgeryMask:
    """Put a :class:`SurgeryMask` on ``module.weight`` (after any mask already there)."""
    surgery = SurgeryMask(module.weight.shape, low, high).to(module.weight.device)
    parametrize.register_parametrization(module, "weight", surgery)
    return surgery


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight under the parametrizations of ``module.weight``."""
    return module.parametrizations.weight.original


@dataclass(frozen=True)
class DNSOptions(Options):
    renamed: ClassVar[dict[str, str]] = {
        "dns_epochs": "epochs",
        "dns_lr": "lr",
        "dns_update_every": "update_every",
        "dns_gamma": "gamma",
        "dns_power": "power",
        "dns_margin": "margin",
    }

    epochs: int = option(
        3,
        help="epochs of training with surgery",
        source="prunekit (a budget near the other methods'; the paper trains to convergence)",
        low=0,
    )
    lr: float = option(
        0.01,
        help="learning rate of that training (SGD, momentum 0.9, weight decay 5e-4, cosine)",
        source="prunekit (a trained model is retrained at a tenth of a usual peak rate)",
        low=0,
        low_open=True,
    )
    update_every: int = option(
        1,
        help="training steps between chances of a mask update",
        source="official compress_conv_layer.cu: an update is drawn at every training forward",
        low=1,
    )
    gamma: float = option(
        1e-4,
        help="update probability (1 + gamma * iter)^(-power)",
        source="paper Sec. 3; official README example (gamma: 0.0001)",
        low=0,
    )
    power: float = option(
        1.0,
        help="update probability (1 + gamma * iter)^(-power)",
        source="paper Sec. 3; official README example (power: 1)",
        low=0,
    )
    margin: float = option(
        0.1,
        help="a = (1 - margin) r prunes, b = (1 + margin) r splices back",
        source="official compress_conv_layer.cu CCMaskCalc: 0.9 r and 1.1 r",
        low=0,
        high=1,
        high_open=True,
    )
    iter_stop: float = option(
        0.75,
        help="fraction of the training steps after which the masks stay fixed",
        source="official iter_stop (an iteration count); the fraction is prunekit's choice",
        low=0,
        high=1,
        low_open=True,
    )


class Surgery:
    """The training callback of step 3: draws the update chance after every ``update_every``
    steps and, while ``step < stop``, updates every layer's mask; keeps the history and its
    random state (``state_dict``), so a resumed training phase continues the same draws."""

    def __init__(
        self,
        layers: dict[str, nn.Module],
        surgery: dict[str, SurgeryMask],
        opts: DNSOptions,
        stop: int,
        seed: int,
    ) -> None:
        self.layers, self.surgery, self.opts, self.stop = layers, surgery, opts, stop
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, Any]] = []

    def update(self, step: int) -> None:
        pruned = spliced = 0
        for n, m in self.layers.items():
            before = self.surgery[n].mask.clone()
            self.surgery[n].update(dense_weight(m))
            after = self.surgery[n].mask
            pruned += int(((before == 1) & (after == 0)).sum())
            spliced += int(((before == 0) & (after == 1)).sum())
        layers = {n: 1.0 - float(t.mask.mean()) for n, t in self.surgery.items()}
        self.history.append({"step": step, "pruned": pruned, "spliced": spliced, "layers": layers})

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        step = state.get("step", 0)
        if event != "step_end" or step % self.opts.update_every or step >= self.stop:
            return
        chance = update_probability(step, self.opts.gamma, self.opts.power)
        if float(torch.rand((), generator=self.generator)) < chance:
            self.update(step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])


@register_method("dns")
class DynamicNetworkSurgery(Method):
    """Guo et al. (NIPS 2016): per-layer thresholds ``a = 0.9 r < b = 1.1 r`` (prune below,
    splice back above, each layer's ``c`` solved for the run's share), masks updated while the
    dense weights keep training through a straight-through mask, until ``iter_stop``. See the
    module docstring."""

    Options = DNSOptions

    def __init__(self) -> None:
        self.thresholds: dict[str, tuple[float, float]] = {}
        self.history: list[dict[str, Any]] = []
        self.adjusted = 0

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        existing = masks.get_masks(model)
        weights = {n: m.weight.detach().clone() for n, m in layers.items()}
        thresholds = dns_thresholds(weights, share, opts.margin)
        self.thresholds = {n: (t[0], t[1]) for n, t in thresholds.items()}
        surgery = {}
        for n, m in layers.items():
            a, b, _, _ = thresholds[n]
            surgery[n] = attach_surgery(m, a, b)
        steps = opts.epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        surgeon = Surgery(layers, surgery, opts, math.ceil(opts.iter_stop * steps), ctx.seed)
        surgeon.update(0)
        try:
            ctx.train(
                model,
                opts.epochs,
                opts.lr,
                name="dns",
                callbacks=[surgeon],
                progress=opts.progress,
            )
        finally:
            final_t = {n: surgery[n].mask.detach().bool() for n in layers}
            for m in layers.values():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        self.history = surgeon.history
        # the dense weights after surgery; earlier masks (if any) were zeroed into them
        weights = {n: m.weight.detach() for n, m in layers.items()}
        for n, mask in existing.items():
            if n in final_t:
                final_t[n] &= mask.data.to(final_t[n].device)
        keep = _adjust(weights, final_t, thresholds, share)
        self.adjusted = sum(int((keep[n] != final_t[n]).sum()) for n in keep)
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
    "Surgery",
    "SurgeryMask",
    "attach_surgery",
    "dense_weight",
    "dns_thresholds",
    "surgery_update",
    "update_probability",
]
