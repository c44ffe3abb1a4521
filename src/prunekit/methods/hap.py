"""HAP — Yu, Yao, Gholami, Dong, Kim, Mahoney, Keutzer, "Hessian-Aware Pruning and Optimal
Neural Implant" (WACV 2022). Official code: github.com/yaozhewei/HAP
(``pruner/hessian_pruner.py``, ``pruner/hessian_fact.py``).

Removing a structure ``S`` (the filters that make one channel) perturbs the weights by
``Δw = -w_S``; at a trained minimum the loss changes by about ``½ w_Sᵀ H_SS w_S``. HAP
approximates the block ``H_SS`` by its average eigenvalue, ``Tr(H_SS) / |S|`` times the
identity, so the sensitivity of ``S`` is

    ``Ω(S) = Tr(H_SS) / |S| · ||w_S||²``

(the official ``_compute_hessian_importance``: ``channel_trace * ||w_c||² / numel``).

1. On the calibration data, in eval mode, estimate ``Tr(H_SS)`` of every channel by
   Hutchinson's method: the mean over ``n_v`` Rademacher vectors ``v`` of ``vᵀ(H v)`` restricted
   to the channel's parameters, ``H v`` by double back-propagation of the cross-entropy
   (:func:`prunekit.criteria.hessian.hutchinson_diagonal`). Only conv and Linear weights carry
   the estimate (the official code sets ``requires_grad`` on 2-D and 4-D parameters only).
2. Score every channel group by ``Ω``: trace, size and squared norm are summed over every filter
   that produces the unit (several convs for the channels of a residual stage).
3. Rank all channels of the network together by the raw ``Ω`` (one global threshold, official
   ``_do_prune``), never removing more than ``max_layer_ratio`` of one group (official
   ``prune_ratio_limit``), and remove the lowest to the FLOPs or params target through the
   structural core. The runner fine-tunes afterwards.

Defaults and their sources:

* ``n_v = 300`` Rademacher vectors: official ``make_pruned_model(..., n_v=300)``.
* ``calib_batches = 1``: the official CIFAR runs estimate the trace on one batch
  (``get_trace_hut(..., loader=False)``, batch size 64 in ``configs/exp_for_cifar/
  hessian_trace.json``); the batch size here is the run's.
* ``max_layer_ratio = 0.95``: ``prune_ratio_limit`` in the same config.
* ``scope = "global"``: one threshold over all layers (official ``_do_prune``); ``"layer"``
  removes one rate from every group instead (for nets too small for a one-channel-step
  global ranking to land within 1% of the target).

Deviations: the optional Optimal Neural Implant (replacing moderately sensitive channels by a
low-rank implant, the official ``use_decompose`` / ``_do_prune_ni`` path) is not implemented:
every selected channel is removed. The official code ranks by a prune ratio of channels; here
the same global ranking is cut where the FLOPs or params target is met (within 1%). The trace
estimates are averaged over DDP ranks, and the Rademacher vectors come from a generator seeded
by ``ctx.seed``, so every rank removes the same channels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.criteria.hessian import hutchinson_diagonal, unit_sums
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels


@dataclass(frozen=True)
class HAPOptions(Options):
    scope: str = option(
        "global",
        help=SHARED["scope"] + " (raw scores in both)",
        source="official pruner/hessian_pruner.py _do_prune: one threshold over all layers",
        choices=("global", "layer"),
    )
    n_v: int = option(
        300,
        help="Rademacher vectors of the Hutchinson trace estimate",
        source="official pruner/hessian_pruner.py: make_pruned_model(n_v=300)",
        low=1,
    )
    calib_batches: int | None = option(
        1,
        help=SHARED["calib_batches"] + " (the Hessian's; None: the run's)",
        source="official CIFAR runs: one batch (get_trace_hut loader=False, batch size 64)",
        low=1,
    )
    max_layer_ratio: float = option(
        0.95,
        help="most of one group's channels the global ranking may remove",
        source="official configs/exp_for_cifar/hessian_trace.json: prune_ratio_limit 0.95",
        low=0,
        high=1,
        low_open=True,
    )


def filter_weights(model: nn.Module) -> list[nn.Parameter]:
    """The conv and Linear weights (two or more dimensions) that require grad: the parameters
    the official code differentiates."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def hap_scores(graph: Graph, diag: dict[nn.Parameter, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group, ``Ω = Tr(H_SS) / |S| · ||w_S||²`` of every unit, from the Hutchinson
    estimates ``diag`` (``v ⊙ Hv`` per weight); a unit with no estimated weight scores 0."""
    norms = {p: p.detach().pow(2) for p in diag}
    ones = {p: torch.ones_like(p) for p in diag}
    out = {}
    for g in graph.groups:
        trace = unit_sums(g, diag)
        size = unit_sums(g, ones)
        sq = unit_sums(g, norms)
        out[g.name] = torch.where(size > 0, trace / size.clamp(min=1) * sq, torch.zeros_like(sq))
    return out


def capped(scores: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """``scores`` with the highest ``size - floor(max_ratio * size)`` set to ``+inf`` (never
    removed)."""
    keep = scores.numel() - math.floor(max_ratio * scores.numel() + 1e-9)
    if keep <= 0:
        return scores
    out = scores.clone()
    out[torch.argsort(scores, descending=True, stable=True)[:keep]] = math.inf
    return out


@register_method("hap")
class HAP(Method):
    """Hessian-aware pruning (Yu et al., WACV 2022): each channel's sensitivity is the
    Hutchinson estimate of its Hessian block's trace divided by its parameter count, times its
    squared weight norm; channels are ranked globally and the least sensitive removed to the
    target (at most ``max_layer_ratio`` of a group). The neural implant is not implemented."""

    Options = HAPOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        batches = ctx.calibration()
        if not batches:
            raise ConfigError("method 'hap' needs calibration data: the training set gave none")
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            params = filter_weights(ctx.model)
            g = torch.Generator().manual_seed(ctx.seed)
            diag = hutchinson_diagonal(ctx.model, params, batches, opts.n_v, g)
            scores = hap_scores(graph, dict(zip(params, diag, strict=True)))

            def importance(group: Group) -> torch.Tensor:
                return capped(scores[group.name], opts.max_layer_ratio)

            picks = select_channels(
                graph, scope=opts.scope, normalize=False, importance=importance, **target.as_dict()
            )
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = ["HAP", "HAPOptions", "capped", "filter_weights", "hap_scores"]
