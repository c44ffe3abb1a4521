"""Budgeted training — Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural Network
Training Under Resource Constraints", ICLR 2020: one-shot magnitude pruning, then retraining
within a fixed epoch budget under the budget-aware linear learning-rate decay. The class
docstring gives the computation, the defaults and the deviations.

Training goes through :class:`~prunekit.methods.retraining.Retraining` and pruning through
:func:`~prunekit.methods.fine_grained.magnitude_prune`; :mod:`prunekit.methods.fine_grained` says
how ``target_sparsity`` counts weights and why protected layers stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from prunekit.methods.base import Context, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    magnitude_prune,
    target_sparsity,
)
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining


@dataclass(frozen=True)
class BudgetedOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"budget_epochs": "epochs"}

    epochs: int = option(
        3,
        help="the retraining budget in epochs, over which the learning rate decays linearly to 0",
        source="prunekit (a budget near the other methods'; the paper sweeps budgets)",
        low=1,
    )
    lr: float = option(
        0.01,
        help="initial learning rate of the linear decay",
        source="prunekit (a trained model is retrained at a tenth of a usual peak rate)",
        low=0,
        low_open=True,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"],
        source="prunekit (global magnitude pruning, as Zimmer et al. ICLR 2023 use it)",
        choices=SCOPES,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="prunekit (the usual CIFAR SGD setting)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="prunekit (the usual CIFAR SGD setting)", low=0
    )


@register_method("budgeted")
class BudgetedRetraining(Retraining):
    """Budget-aware retraining (Li, Yumer & Ramanan, ICLR 2020).

    The paper's finding: under a fixed budget of ``B`` epochs, a learning rate that decays
    linearly to zero over exactly that budget, ``lr_t = lr_0 * (1 - t / T)`` with ``T`` the
    budget's optimizer steps, beats schedules made for full-length training. As a pruning method:
    magnitude pruning to the target in one shot (``scope`` ``"global"``: one threshold;
    ``"layer"``: the same sparsity in every pruned layer), then ``epochs`` of SGD with the
    masks attached under that linear decay (:class:`prunekit.train.TrainConfig`
    ``schedule="linear"``, which gives step ``t`` (from 0) the rate ``lr * (1 - t / T)``: the
    first step uses ``lr_0`` and the rate reaches 0 at the end of the budget).

    Defaults: ``epochs`` 3, ``lr`` 0.01 (retraining a trained model), momentum 0.9,
    weight decay 5e-4. Deviations: the paper studies training from scratch under a budget; here
    the budget is spent retraining the pruned model (the setting in which Zimmer et al., ICLR
    2023, apply it); no warm-up.
    """

    Options = BudgetedOptions

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        nonzero_before = count_nonzero(ctx.model)
        magnitude_prune(ctx.model, target, opts.scope)
        self._train(ctx, opts, epochs=opts.epochs, lr=opts.lr, schedule="linear")
        return SparsityReport.measure(ctx.model, nonzero_before)


__all__ = ["BudgetedRetraining"]
