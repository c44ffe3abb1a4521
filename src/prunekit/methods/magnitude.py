"""Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015.

Iterative: prune every weight whose magnitude is below ``q * std`` of its layer's weights,
retrain with the masks, repeat. The paper tunes the quality parameter ``q`` by hand; here one
``q`` shared by all layers is solved for in each round so that the overall sparsity after
the round equals the round's target. The set pruned by a threshold ``q`` is
``{w : |w| / std(layer) < q}``, so the ``q`` meeting an exact count is read off the sorted
normalised magnitudes (the value a bisection over ``q`` converges to, found exactly; ties at
the threshold are broken by position so the count is exact). ``std`` is the population
standard deviation of the layer's weights still kept when the round starts. Round targets
follow :class:`prunekit.masks.Iterative` (the same fraction of the remaining weights each
round, ``s_r = 1 - (1 - s)^(r / rounds)``). Options: ``rounds`` (3), ``epochs`` of retraining per
round (1), ``lr`` (0.01: the paper retrains at 1/10 to 1/100 of the original rate). The
paper's dropout-ratio adjustment and its L1/L2 choice for retraining are not reproduced
(retraining uses weight decay 5e-4). Retraining follows every round, the last one included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from prunekit import masks
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    Weights,
    share_of_targets,
    target_sparsity,
    targets,
)
from prunekit.methods.options import Options, option


def layer_std(weight: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Population standard deviation of the kept entries of ``weight`` (all when ``keep`` is
    None); 1.0 for a layer with fewer than two kept entries or no spread, so scores stay finite."""
    values = weight.detach().reshape(-1).double()
    if keep is not None:
        values = values[keep.reshape(-1)]
    if values.numel() < 2:
        return 1.0
    std = float(values.std(correction=0))
    return std if std > 0 else 1.0


def threshold_keep(weights: Weights, quality: float, stds: dict[str, float]) -> Weights:
    """Han et al.'s rule: keep ``|w| >= quality * std`` of its layer, prune the rest."""
    return {n: w.detach().abs() >= quality * stds[n] for n, w in weights.items()}


def quality_for(
    weights: Weights, keep: Weights, stds: dict[str, float], sparsity: float
) -> tuple[float, Weights]:
    """The one quality ``q`` whose threshold ``q * std`` prunes exactly ``sparsity`` of all the
    entries of ``weights`` (entries already pruned by ``keep`` count and stay pruned), and the
    resulting keep-masks. Ties at the threshold are broken by position."""
    scores = {
        n: torch.where(keep[n], w.detach().abs().double() / stds[n], -1.0)
        for n, w in weights.items()
    }
    new_keep = global_keep(scores, sparsity)
    kept = torch.cat([s[new_keep[n] & keep[n]] for n, s in scores.items()])
    quality = float(kept.min()) if kept.numel() else math.inf
    return quality, new_keep


@dataclass(frozen=True)
class MagnitudeOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"retrain_epochs": "epochs"}

    rounds: int = option(
        3,
        help="prune-retrain rounds, the same fraction of the remaining weights each",
        source="prunekit (the paper iterates until pruning stops being loss-free)",
        low=1,
    )
    epochs: int = option(
        1,
        help="retraining epochs after each round (the last one included)",
        source="prunekit (the paper retrains to convergence each round)",
        low=0,
    )
    lr: float = option(
        0.01,
        help="retraining learning rate (SGD, momentum 0.9, weight decay 5e-4, cosine)",
        source="paper: retraining at 1/10 to 1/100 of the original learning rate",
        low=0,
        low_open=True,
    )


@register_method("magnitude")
class MagnitudePruning(Method):
    """Han et al. (NIPS 2015): iterative magnitude pruning with per-layer thresholds
    ``q * std(layer)``, one ``q`` solved per round to meet that round's target, retraining with
    the masks after each round. See the module docstring."""

    Options = MagnitudeOptions

    def __init__(self) -> None:
        self.qualities: list[float] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        final = share_of_targets(model, layers, s)
        schedule = masks.Iterative(final, opts.rounds, 1) if final > 0 else None
        self.qualities = []
        for r in range(1, opts.rounds + 1):
            goal = schedule.sparsity(r) if schedule is not None else 0.0
            weights = {n: m.weight.detach() for n, m in layers.items()}
            keep = {n: w != 0 for n, w in weights.items()}
            stds = {n: layer_std(w, keep[n]) for n, w in weights.items()}
            quality, new_keep = quality_for(weights, keep, stds, goal)
            self.qualities.append(quality)
            masks.apply_masks(model, {n: masks.Mask(k) for n, k in new_keep.items()})
            ctx.train(model, opts.epochs, opts.lr, name=f"round{r}", progress=opts.progress)
        return SparsityReport.measure(model, before)


__all__ = ["MagnitudePruning", "layer_std", "quality_for", "threshold_keep"]
