"""Capacity — Zuo, Chen, Shi, Sun, "Filter Pruning Without Damaging Networks Capacity" (IEEE
Access 8, 2020).

What a layer can compute is the span of its filters: every output it can make is a linear
combination of them. Removing a filter that the other filters reconstruct linearly loses
nothing of that span; removing one that points in a direction no other filter covers loses that
direction. The criterion is the damage to the span:

1. Flatten the layer's ``n`` filters into rows ``F_1 .. F_n`` (the producer's weights of each
   chain, :func:`prunekit.methods.common.chains`).
2. For every kept filter ``j``, the reconstruction residual ``r_j = min_a ||F_j - sum_{i in
   K, i != j} a_i F_i||_2``: the part of ``F_j`` outside the span of the other kept filters,
   i.e. how much the layer's capacity shrinks if ``j`` goes (least squares, float64).
3. Remove the filter of smallest residual, recompute the residuals of the rest, and repeat
   (greedy backward elimination): a filter that becomes the only carrier of a direction once
   its near-copy is gone is then protected. The elimination order ranks the layer's filters.
4. Every chain loses its first-eliminated filters at one uniform rate that meets the run's FLOPs
   or params target (layer scope, per-layer ranking); the runner fine-tunes.

Deviations and choices (the paper's text was not available to check them; its official code is
not published): the residual is absolute (in weight units), not relative to the filter's
norm, so a filter twice as large that lies outside the span costs twice as much capacity; only
the chains are pruned (the inner layers of residual blocks, as the other similarity papers of
the catalogue), groups that several layers produce keep their channels; the next layer's
weights are not refitted (a BatchNorm and a nonlinearity between the layers make the removed
map no linear combination of the kept ones). Directions below ``1e3 * eps`` of the largest
eigenvalue of the filters' Gram matrix are treated as rounding noise: a small ridge term of that
size (:func:`reconstruction_residuals`; :func:`prunekit.methods.reconstruct.rcond_for`) also
breaks the ties where a layer has more filters than each filter has weights (every residual is
then zero), in favour of the filters rebuilt with the smallest coefficients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.graph import Group, build
from prunekit.graph.core import out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import Chain, chains, eval_modes, restore_modes
from prunekit.methods.options import Options
from prunekit.methods.reconstruct import rcond_for
from prunekit.prune import PruneReport, remove_selected, select_channels


@dataclass(frozen=True)
class CapacityOptions(Options):
    """No settings beyond the shared ones: the criterion has none, and the target sets the
    rate."""


def _ridge(gram: torch.Tensor, rcond: float) -> float:
    return rcond * float(torch.linalg.eigvalsh(gram)[-1])


def _residuals(inv: torch.Tensor, lam: float) -> torch.Tensor:
    """Residuals from ``(G + lam I)^-1`` (Schur complement, see
    :func:`reconstruction_residuals`)."""
    return (1.0 / inv.diagonal() - lam).clamp(min=0.0).sqrt()


def reconstruction_residuals(filters: torch.Tensor, rcond: float | None = None) -> torch.Tensor:
    """``r_j = min_a ||F_j - sum_{i != j} a_i F_i||`` for every row ``j`` of ``filters``
    (``k x d``), in float64: the distance of each filter to the span of the others.

    All at once from the Gram matrix ``G = F F^T``: by the Schur complement,
    ``1 / [(G + lam I)^-1]_jj - lam = min_a ||F_j - F_-j a||^2 + lam ||a||^2``. ``lam`` is
    ``rcond`` times the largest eigenvalue of ``G`` (default :func:`rcond_for` the filters'
    dtype): directions that weak are rounding noise, and where more filters than dimensions
    make every residual zero, the filters rebuilt with the smallest coefficients go first.
    """
    f = filters.double()
    k = f.shape[0]
    if k == 1:
        return f.norm(dim=1)
    gram = f @ f.T
    lam = _ridge(gram, rcond_for(filters.dtype) if rcond is None else rcond)
    if lam <= 0:  # every filter is zero
        return torch.zeros(k, dtype=torch.float64)
    return _residuals(torch.linalg.inv(gram + lam * torch.eye(k, dtype=torch.float64)), lam)


def elimination_order(filters: torch.Tensor, rcond: float | None = None) -> list[int]:
    """Greedy backward elimination: repeatedly the filter with the smallest reconstruction
    residual among those left (ties to the lower index); all ``n`` filters, in removal order.
    The ridge ``lam`` is set once from all the filters; the inverse of the kept filters' Gram
    matrix is recomputed at every step (a rank-one downdate loses the small residuals that
    decide the order where the layer has more filters than weights per filter)."""
    f = filters.double()
    kept = list(range(f.shape[0]))
    gram = f @ f.T
    lam = _ridge(gram, rcond_for(filters.dtype) if rcond is None else rcond)
    if lam <= 0:  # every filter is zero: any order
        return kept
    order: list[int] = []
    while len(kept) > 1:
        sub = gram[kept][:, kept] + lam * torch.eye(len(kept), dtype=torch.float64)
        j = int(torch.argmin(_residuals(torch.linalg.inv(sub), lam)))
        order.append(kept.pop(j))
    return order + kept


def chain_filters(chain: Chain) -> torch.Tensor:
    """The producer's filter of each unit of ``chain``, one flattened row per unit."""
    w = out_weight(chain.producer.module)
    if w is None:
        raise ConfigError(f"layer {chain.producer.name!r} has no filters")
    return w.detach().reshape(w.shape[0], -1)[chain.producer_index.to(w.device)].cpu()


def capacity_scores(filters: torch.Tensor) -> torch.Tensor:
    """Score per filter (lowest removed first): its step in :func:`elimination_order`."""
    scores = torch.empty(filters.shape[0], dtype=torch.float64)
    for step, j in enumerate(elimination_order(filters, rcond_for(filters.dtype))):
        scores[j] = step
    return scores


@register_method("capacity")
class CapacityMethod(Method):
    """Filter pruning without damaging capacity (Zuo et al., IEEE Access 2020): in each chain,
    filters are eliminated greedily, each time the one the remaining filters reconstruct best
    by least squares (smallest residual: removing it shrinks the span of the layer least); one
    uniform rate over the chains meets the target."""

    Options = CapacityOptions

    def prune(self, ctx: Context) -> PruneReport:
        self.options(ctx)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            found = chains(graph)
            if not found:
                raise ConfigError(
                    "method 'capacity' prunes layers read by one conv or Linear layer (chains); "
                    "this model has none"
                )
            scores = {c.group.name: capacity_scores(chain_filters(c)) for c in found}

            def importance(group: Group) -> torch.Tensor:
                s = scores.get(group.name)
                return s if s is not None else torch.full((group.size,), math.inf)

            picks = select_channels(graph, scope="layer", importance=importance, **target.as_dict())
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = [
    "CapacityMethod",
    "CapacityOptions",
    "capacity_scores",
    "chain_filters",
    "elimination_order",
    "reconstruction_residuals",
]
