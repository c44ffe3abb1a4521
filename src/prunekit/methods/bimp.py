"""Budgeted IMP — Zimmer, Spiegel & Pokutta, "How I Learned to Stop Worrying and Love
Retraining", ICLR 2023: prune-retrain cycles inside one budget, each cycle retrained with ALLR
(adaptive linear learning-rate restarting). The class docstring gives the computation, the
defaults and the deviations.

Training goes through :class:`~prunekit.methods.retraining.Retraining` and pruning through
:func:`~prunekit.methods.fine_grained.magnitude_prune`; :mod:`prunekit.methods.fine_grained` says
how ``target_sparsity`` counts weights and why protected layers stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.base import Context, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    covered_sparsity,
    magnitude_prune,
    target_sparsity,
    targets,
)
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining


def bimp_schedule(target: float, cycles: int) -> list[float]:
    """Overall sparsity after each of ``cycles`` prune-retrain cycles: the IMP geometric
    schedule ``1 - (1 - target) ** (j / cycles)``, ending exactly at ``target``."""
    out = [1.0 - (1.0 - target) ** (j / cycles) for j in range(1, cycles)]
    return [*out, target]


def relative_norm_drop(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> float:
    """``||W - W_pruned||_2 / ||W||_2`` over all the given tensors together (0 for zero W)."""
    num = sum(float((before[n].double() - after[n].double()).pow(2).sum()) for n in before)
    den = sum(float(before[n].double().pow(2).sum()) for n in before)
    return math.sqrt(num / den) if den > 0 else 0.0


def allr_initial_lr(
    norm_drop: float, pruned_fraction: float, base_lr: float, budget_ratio: float
) -> float:
    """ALLR's starting learning rate: ``d = norm_drop / sqrt(pruned_fraction)`` (the relative
    norm removed by pruning, against the ``sqrt(pruned_fraction)`` it would be if all weights had
    the same magnitude), ``lr_0 = clip(d * base_lr, min(budget_ratio, 1) * base_lr, base_lr)``.
    ``budget_ratio`` is the retraining length over the original training length."""
    d = norm_drop / math.sqrt(pruned_fraction) if pruned_fraction > 0 else 0.0
    low = min(budget_ratio, 1.0) * base_lr
    return float(min(max(d * base_lr, low), base_lr))


def _effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in targets(model, "").items()}


@dataclass(frozen=True)
class BIMPOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"budget_epochs": "epochs"}

    cycles: int = option(
        3,
        help="prune-retrain cycles inside the budget",
        source="prunekit (a few cycles fit the short budget)",
        low=1,
    )
    epochs: int = option(
        3,
        help="the whole retraining budget in epochs, split over the cycles",
        source="prunekit (a budget near the other methods')",
        low=1,
    )
    base_lr: float = option(
        0.1,
        help="peak learning rate of the original training (ALLR's upper bound)",
        source="prunekit (the usual peak rate of CIFAR training; prunekit does not see it)",
        low=0,
        low_open=True,
    )
    original_epochs: int = option(
        200,
        help="length of the original training (ALLR's lower bound is budget / this)",
        source="prunekit (the usual CIFAR training length; prunekit does not see it)",
        low=1,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"],
        source="paper Sec. 2: global magnitude pruning",
        choices=SCOPES,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="prunekit (the usual CIFAR SGD setting)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="prunekit (the usual CIFAR SGD setting)", low=0
    )


@register_method("bimp")
class BudgetedIMP(Retraining):
    """Budgeted IMP with ALLR retraining (Zimmer, Spiegel & Pokutta, ICLR 2023).

    ``cycles`` (J) prune-retrain cycles share one budget of ``epochs`` epochs: cycle ``j``
    masks the smallest-magnitude weights up to the overall sparsity ``1 - (1 - s) ** (j / J)``
    (the IMP geometric schedule, the same fraction of the remaining weights each cycle, the last
    cycle exactly at the target ``s``), then retrains with ALLR: a learning rate decaying linearly
    from ``lr_0`` to 0 over the cycle's steps, where

    * ``n = ||W - W_pruned|| / ||W||`` is the relative L2 norm removed by this cycle's pruning
      (over the pruned layers' weights), ``p`` the fraction of the still-remaining weights this
      cycle pruned, and ``d = n / sqrt(p)`` (equal to 1 when all weights have the same
      magnitude, small when pruning removes little norm);
    * ``lr_0 = clip(d * base_lr, min(E_j / original_epochs, 1) * base_lr, base_lr)``, with
      ``base_lr`` the peak learning rate of the original training and ``E_j`` the cycle's
      epochs.

    This ALLR rule is from this implementation's reading of the paper and its public reference
    code. ``self.history`` lists, per cycle, ``sparsity``, ``pruned_fraction``,
    ``relative_norm_drop``, ``lr0`` and ``epochs``.

    Defaults: ``cycles`` 3, ``epochs`` 3 (split as evenly as possible, later cycles taking
    the remainder), ``base_lr`` 0.1 (the usual peak rate of CIFAR training), ``original_epochs``
    200, momentum 0.9, weight decay 5e-4, ``scope`` ``"global"`` (the paper's global magnitude
    pruning). Deviations: the model arrives trained, so the budget covers only the prune-retrain
    cycles (the paper's BIMP also budgets the dense training before them); the 10% warm-up the
    reference code puts before the linear decay is left out; ``base_lr`` and
    ``original_epochs`` describe the original training, which prunekit does not see, so they
    are options.
    """

    Options = BIMPOptions

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    @staticmethod
    def cycle_epochs(budget: int, cycles: int) -> list[int]:
        """``budget`` epochs split over ``cycles``: ``budget // cycles`` each, the last
        ``budget % cycles`` cycles one more."""
        base, extra = divmod(budget, cycles)
        return [base + (1 if j >= cycles - extra else 0) for j in range(cycles)]

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        if opts.epochs < opts.cycles:
            raise ConfigError(
                f"option 'epochs' of bimp must be >= cycles ({opts.cycles}) so every cycle "
                f"retrains at least one epoch, got {opts.epochs}"
            )
        model = ctx.model
        nonzero_before = count_nonzero(model)
        covered_sparsity(model, target)  # fail early when the target cannot be met
        epochs = self.cycle_epochs(opts.epochs, opts.cycles)
        self.history = []
        for j, (s, e) in enumerate(zip(bimp_schedule(target, opts.cycles), epochs, strict=True)):
            before = _effective_weights(model)
            kept_before = sum(int(torch.count_nonzero(t)) for t in before.values())
            magnitude_prune(model, s, opts.scope)
            after = _effective_weights(model)
            kept_after = sum(int(torch.count_nonzero(t)) for t in after.values())
            fraction = 1.0 - kept_after / kept_before if kept_before else 0.0
            drop = relative_norm_drop(before, after)
            lr0 = allr_initial_lr(drop, fraction, opts.base_lr, e / opts.original_epochs)
            self._train(ctx, opts, epochs=e, lr=lr0, schedule="linear", seed=ctx.seed + j)
            self.history.append(
                {
                    "cycle": j + 1,
                    "sparsity": SparsityReport.measure(model, 0).sparsity,
                    "pruned_fraction": fraction,
                    "relative_norm_drop": drop,
                    "lr0": lr0,
                    "epochs": e,
                }
            )
        return SparsityReport.measure(model, nonzero_before)


__all__ = ["BudgetedIMP", "allr_initial_lr", "bimp_schedule", "relative_norm_drop"]
