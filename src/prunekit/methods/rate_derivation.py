"""Automatic pruning-rate derivation — Sakai, Iwakawa, Tabaru, "Structured Pruning with Automatic
Pruning Rate Derivation for Image Processing Neural Networks" (ISMSI 2022).

The filters of a layer are pruned by L1 norm, smallest first, as in Li et al.; what the paper
derives is *how many* per layer, from the layer's statistics instead of by hand. The pruning
error of layer ``l`` at ``k`` removed filters is the L1 norm of the removed weights,
``E_l(k) = sum of the k smallest filter L1 norms``. A first-order bound ties it to the loss:
removing weights ``dW_l`` changes the loss by ``|g_l . dW_l| <= ||g_l||_inf ||dW_l||_1`` (``g_l``
the loss gradient of the layer's weights). The per-layer threshold

    Th_l = eps * L / (G * ||g_l||_inf)

(``L`` the loss of the trained model, ``G`` the number of layers pruned) guarantees that
pruning every layer up to its threshold raises the loss by at most ``eps * L`` to first order.
Each layer's rate is the largest ``k`` with ``E_l(k) <= Th_l``: layers whose weights barely move
the loss (small gradients) or whose filters are small lose many; sensitive layers lose few.

Computed here: ``L`` and ``g_l`` averaged over the calibration batches (cross-entropy, eval
mode, reduced over DDP ranks so every rank derives the same rates); the filters of a group are
the weights (two or more dimensions) of every layer that produces its channels, ``||g_l||_inf``
the largest gradient entry on any of them. Meeting a FLOPs or params target: the paper fixes
``eps`` and reports the size that results; here ``eps`` is tuned by a geometric bisection
(:func:`~prunekit.methods.common.tune_knob`; rates grow with ``eps``) until the derived rates come
nearest the target, and the last gap is closed at the same per-layer proportions
(:func:`~prunekit.methods.common.select_at_proportions`, L1 order inside each layer; a layer
whose derived rate is 0 loses channels only if the target cannot be met within 1% otherwise).

Sources and deviations: the paper's full text and code were not available; the computation
above follows its abstract and that of the companion papers by the same authors ("Automatic
Pruning Rate Derivation for Structured Pruning of Deep Neural Networks", ICPR 2022: "compares
the pruning error (L1-norm of the pruned weight) and the threshold"; Sakai, Eto, Teranishi,
JAIT 13(3) 2022: "a threshold of L1-norm of the pruned weight for each layer using loss function
and gradient per layer [that] guarantees no degradation of the loss function"). Those papers
prune iteratively (derive, prune, retrain, repeat); here the rates are derived once and the
runner fine-tunes once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.magnitude import l1_norm
from prunekit.errors import ConfigError, DataError
from prunekit.graph import Group, build
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import (
    eval_modes,
    restore_modes,
    select_at_proportions,
    tune_knob,
)
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import model_device
from prunekit.prune import PruneReport, remove_selected
from prunekit.train.distributed import all_reduce_sum


@dataclass(frozen=True)
class RateDerivationOptions(Options):
    eps_low: float = option(
        1e-8,
        help="smallest allowed relative loss increase eps tried when tuning to the target",
        source="prunekit",
        low=0.0,
        low_open=True,
    )
    eps_high: float = option(
        1e8,
        help="largest allowed relative loss increase eps tried when tuning to the target",
        source="prunekit",
        low=0.0,
        low_open=True,
    )
    tune_steps: int = option(
        40,
        help="bisection steps over eps (geometric) to come nearest the target",
        source="prunekit: 16 decades to 1e-11 of one",
        low=1,
    )


def derived_count(filter_l1: torch.Tensor, threshold: float, max_remove: int) -> int:
    """The largest ``k <= max_remove`` with the ``k`` smallest entries of ``filter_l1`` summing
    to at most ``threshold``."""
    errors = torch.cumsum(torch.sort(filter_l1.double()).values, 0)
    return min(int((errors <= threshold).sum()), max_remove)


def thresholds(loss: float, grad_max: dict[str, float], eps: float) -> dict[str, float]:
    """``Th_l = eps * L / (G * ||g_l||_inf)`` per layer (``+inf`` where the gradient is 0)."""
    g = len(grad_max)
    return {name: (math.inf if gm <= 0 else eps * loss / (g * gm)) for name, gm in grad_max.items()}


def _out_view(module: nn.Module, t: torch.Tensor) -> torch.Tensor | None:
    """``t`` (shaped like ``module.weight``) with output channels on dim 0, as
    :func:`~prunekit.graph.core.out_weight` views the weight."""
    w = out_weight(module)
    if w is None:
        return None
    if w.shape == t.shape:
        return t
    return t.transpose(0, 1)  # a transposed conv or an embedding


def loss_and_gradients(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, dict[nn.Module, torch.Tensor]]:
    """Mean cross-entropy over ``batches`` and the mean gradient of every conv / Linear weight
    (two or more dims), in eval mode, summed over DDP ranks."""
    layers = [
        m
        for m in model.modules()
        if isinstance(getattr(m, "weight", None), nn.Parameter) and m.weight.dim() >= 2
    ]
    weights = [m.weight for m in layers]
    device = model_device(model)
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    total = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, samples
    modes = eval_modes(model)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum")
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            for s, g in zip(sums, grads, strict=True):
                if g is not None:
                    s += g.double()
            total += torch.tensor(
                [float(loss.detach()), len(y)], dtype=torch.float64, device=device
            )
    finally:
        restore_modes(modes)
    flat = all_reduce_sum(torch.cat([total, *(s.reshape(-1) for s in sums)]))
    n = float(flat[1])
    if n == 0:
        raise DataError("rate_derivation needs labelled calibration batches; got none")
    out = {}
    offset = 2
    for m, s in zip(layers, sums, strict=True):
        out[m] = flat[offset : offset + s.numel()].reshape(s.shape) / n
        offset += s.numel()
    return float(flat[0]) / n, out


def group_grad_max(group: Group, grads: dict[nn.Module, torch.Tensor]) -> float:
    """``||g||_inf`` over the filters that produce the group's channels."""

    def per_row(site: Site) -> torch.Tensor | None:
        g = grads.get(site.module)
        view = None if g is None else _out_view(site.module, g)
        return None if view is None else view.reshape(view.shape[0], -1).abs().amax(1)

    return float(group.values(per_row).max())


@register_method("rate_derivation")
class RateDerivationMethod(Method):
    """Automatic pruning-rate derivation (Sakai et al., ISMSI 2022): each layer removes its
    smallest-L1 filters up to the largest count whose summed L1 norm stays below the threshold
    ``eps * L / (G * ||g_l||_inf)`` derived from the loss and the layer's gradient; ``eps`` is
    tuned to meet the run's target. See the module docstring."""

    Options = RateDerivationOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        if opts.eps_low >= opts.eps_high:
            raise ConfigError(
                f"eps_low must be below eps_high, got {opts.eps_low} and {opts.eps_high}"
            )
        batches = ctx.calibration()
        if not batches:
            raise DataError("rate_derivation needs calibration data: the training set gave none")
        loss, grads = loss_and_gradients(ctx.model, batches)
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            norms = {g.name: l1_norm(g) for g in graph.groups}
            grad_max = {g.name: group_grad_max(g, grads) for g in graph.groups}
            groups = {g.name: g for g in graph.groups}

            def counts_at(eps: float) -> dict[str, int]:
                th = thresholds(loss, grad_max, eps)
                return {n: derived_count(norms[n], th[n], groups[n].size - 1) for n in groups}

            eps, counts = tune_knob(
                graph,
                counts_at,
                target.kind,
                target.fraction,
                opts.eps_low,
                opts.eps_high,
                opts.tune_steps,
            )
            if not any(counts.values()):
                raise ConfigError(
                    f"rate_derivation: no eps in [{opts.eps_low:g}, {opts.eps_high:g}] removes "
                    f"a filter; cannot reach {target}"
                )
            picks = select_at_proportions(graph, lambda g: norms[g.name], counts, target)
            self.eps = eps  # the tuned allowed loss increase, for inspection
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = [
    "RateDerivationMethod",
    "RateDerivationOptions",
    "derived_count",
    "group_grad_max",
    "loss_and_gradients",
    "thresholds",
]
