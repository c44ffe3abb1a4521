"""Hubens, Mancas, Gosselin, Preda, Zaharia, "One-Cycle Pruning: Pruning ConvNets Under a Tight
Training Budget", ICIP 2022 (arXiv 2107.02086); the authors' library is fasterai
(``nathanhubens/fasterai``, now ``FasterAI-Labs/fasterai``).

The paper drops the first stage of train -> prune -> fine-tune: pruning starts at the first step
of training and ends at its last, in one training cycle, with no separate fine-tuning. The
algorithm, top to bottom:

1. **Initialise.** The network starts from its initialisation, not from a trained model
   (``init = "architecture"``): the given weights are discarded and the model is re-initialised
   the way its architecture initialises it (:func:`prunekit.methods.initialisation.reinitialise`,
   under the run's seed). ``init = "none"`` prunes the given weights during a retraining instead
   (not the paper's setting).
2. **One cycle.** Train ``epochs``; after every optimizer step ``t`` of the ``T`` steps the
   smallest-magnitude weights are masked so that the sparsity is the one-cycle schedule

       s_t = s_f * g(t / T),   g(x) = (sigma(alpha x - beta) - sigma(-beta))
                                      / (sigma(alpha - beta) - sigma(-beta)),

   :class:`prunekit.masks.OneCycle` (the logistic ramp of fasterai's ``sched_onecycle``,
   ``(1 + e^(beta - alpha)) / (1 + e^(beta - alpha x))``, rescaled by prunekit so it is exactly
   0 at the first step). Pruning is gentle while the weights are still random, fastest around
   ``x = beta / alpha`` and gentle again at the end, where the network recovers; masks only
   grow (a pruned weight stays zero). The last step reaches ``s_f`` exactly; if training is too
   short to get there, the last update prunes to ``s_f``.
3. **No fine-tuning** of its own: the network the cycle ends with is the result. (The prunekit
   runner still fine-tunes for its ``finetune_epochs``; set them to 0 for the paper's budget.)

The in-training pruner is :class:`prunekit.masks.ScheduledMagnitudePruner` driven by
:class:`~prunekit.masks.OneCycle`, passed to :meth:`Context.train` (phase ``one_cycle``): the
pruner's state is checkpointed with every epoch, so an interrupted run resumes.

Defaults and their sources: ``alpha = 14`` and ``beta = 6``: fasterai ``core/schedule.py``
(``sched_onecycle(start, end, pos, α=14, β=6)``, the same in ``sparse/schedule.py``);
``frequency = 1``: fasterai ``sparse/sparsify_callback.py`` recomputes the masks before every
batch whose target differs from the last; the criterion is weight magnitude (fasterai's
``large_final``, the paper's). ``epochs = None``: the run's baseline epochs (the paper prunes
over the whole training budget of its experiments, the budget its dense baseline gets;
:func:`~prunekit.methods.base.scratch_epochs`, 3 outside a run). ``scope = "global"``, ``lr =
0.1``, ``schedule = "cosine"``: prunekit (fasterai's callback takes ``'local'`` or ``'global'``
from the caller).

Deviations: the schedule is rescaled to start at exactly 0; protected layers stay dense (the others are pruned a little further
so the overall target is met). Results say the network was trained from its initialisation
(:attr:`OneCyclePruning.at_initialisation`, and ``from_init_epochs`` in the run's metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunekit import masks
from prunekit.methods.base import (
    Context,
    Method,
    SparsityReport,
    count_nonzero,
    register_method,
    scratch_epochs,
)
from prunekit.methods.fine_grained import SCOPES, share_of_targets, target_sparsity, targets
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import SHARED, Options, option

_FASTERAI = "fasterai core/schedule.py sched_onecycle (α=14, β=6)"


@dataclass(frozen=True)
class OneCycleOptions(Options):
    init: str = option(
        "architecture",
        help="start from the architecture's own initialisation (the paper) or prune the given "
        "weights while retraining them (none)",
        source="paper Sec. 1/3: pruning from the first step of training, no pre-training",
        choices=("architecture", "none"),
    )
    epochs: int | None = option(
        None,
        help="epochs of the one training cycle that prunes (None: the run's baseline epochs, "
        "3 outside a run)",
        source="prunekit: the paper prunes over its whole training budget, the baseline's",
        low=0,
    )
    lr: float = option(0.1, help=SHARED["lr"], source="prunekit", low=0, low_open=True)
    momentum: float = option(0.9, help=SHARED["momentum"], source="prunekit", low=0, high=1)
    weight_decay: float = option(5e-4, help=SHARED["weight_decay"], source="prunekit", low=0)
    schedule: str = option("cosine", help=SHARED["schedule"], source="prunekit")
    alpha: float = option(
        14.0,
        help="steepness of the logistic sparsity ramp",
        source=_FASTERAI,
        low=0,
        low_open=True,
    )
    beta: float = option(
        6.0,
        help="offset of the logistic ramp (fastest pruning at beta / alpha of training)",
        source=_FASTERAI,
        low=0,
        low_open=True,
    )
    frequency: int = option(
        1,
        help="optimizer steps between mask updates",
        source="fasterai sparse/sparsify_callback.py (masks recomputed before every batch)",
        low=1,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"],
        source="prunekit (fasterai's SparsifyCallback leaves 'local' / 'global' to the caller)",
        choices=SCOPES,
    )


@register_method("one_cycle")
class OneCyclePruning(Method):
    """Hubens et al. (ICIP 2022): magnitude pruning from the first to the last step of one
    training cycle from initialisation, along the logistic one-cycle sparsity schedule. See the
    module docstring."""

    Options = OneCycleOptions

    def __init__(self) -> None:
        self.history: list[tuple[int, float, float]] = []
        self.at_initialisation = True

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        if opts.init == "architecture":
            reinitialise(model, ctx.seed)
        self.at_initialisation = opts.init == "architecture"
        epochs = scratch_epochs(opts.epochs, ctx)
        steps = epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        schedule = masks.OneCycle(
            share,
            max(steps, 1),
            frequency=opts.frequency,
            alpha=opts.alpha,
            beta=opts.beta,
        )
        pruner = masks.ScheduledMagnitudePruner(schedule, list(layers), opts.scope)
        pruner.prepare(model)
        ctx.train(
            model,
            epochs,
            opts.lr,
            name="one_cycle",
            callbacks=[pruner],
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            schedule=opts.schedule,
            progress=opts.progress,
        )
        if not pruner.history or pruner.history[-1][1] != share:
            pruner.prune_to(steps, share)  # no training, or the last step fell short of s_f
        self.history = pruner.history
        report = SparsityReport.measure(model, before)
        report.from_init_epochs = epochs if self.at_initialisation else 0
        return report


__all__ = ["OneCycleOptions", "OneCyclePruning"]
