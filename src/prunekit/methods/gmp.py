"""Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop.

Gradual magnitude pruning while training: at steps ``t0, t0 + dt, ..., t0 + n dt`` the
smallest-magnitude weights are masked so that the sparsity is
``s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3`` (:class:`prunekit.masks.GradualCubic`),
with ``s_i = 0``. Options: ``epochs`` (3), ``lr`` (0.01), ``frequency`` (``dt``
in steps, 100: the paper suggests 100 to 1000), ``begin`` / ``end`` (fractions of
the training steps where pruning starts / reaches ``s_f``: 0 and 0.75, leaving the last
quarter to recover, as the paper's runs leave time after the last update),
``scope`` (``"layer"``: the paper prunes every layer to the same sparsity; or
``"global"``). Whatever the step count, the final sparsity is ``s_f``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    share_of_targets,
    target_sparsity,
    targets,
)
from prunekit.methods.options import SHARED, Options, option


@dataclass(frozen=True)
class GMPOptions(Options):
    renamed: ClassVar[dict[str, str]] = {
        "gmp_epochs": "epochs",
        "gmp_lr": "lr",
        "gmp_frequency": "frequency",
        "gmp_begin": "begin",
        "gmp_end": "end",
        "gmp_scope": "scope",
    }

    epochs: int = option(
        3,
        help="epochs of training while pruning",
        source="prunekit (a budget near the other methods'; the paper trains for its full run)",
        low=0,
    )
    lr: float = option(
        0.01,
        help="learning rate of that training (SGD, momentum 0.9, weight decay 5e-4, cosine)",
        source="prunekit (a trained model is retrained at a tenth of a usual peak rate)",
        low=0,
        low_open=True,
    )
    frequency: int = option(
        100,
        help="steps between pruning updates (dt)",
        source="paper Sec. 3: dt between 100 and 1000 training steps",
        low=1,
    )
    begin: float = option(
        0.0,
        help="fraction of the training steps where pruning starts (t0)",
        source="prunekit (the model arrives trained, so pruning starts at once)",
        low=0,
        high=1,
        high_open=True,
    )
    end: float = option(
        0.75,
        help="fraction of the training steps where the sparsity reaches s_f (t0 + n dt)",
        source="prunekit (the paper's runs keep training after the last update to recover)",
        low=0,
        high=1,
        low_open=True,
    )
    scope: str = option(
        "layer",
        help=SHARED["scope"],
        source="paper Sec. 3: every layer pruned to the same sparsity",
        choices=SCOPES,
    )


@register_method("gmp")
class GradualMagnitudePruning(Method):
    """Zhu & Gupta (ICLR 2018 workshop): magnitude pruning during training along the cubic
    schedule of :class:`prunekit.masks.GradualCubic` (``s_i = 0``). See the module docstring."""

    Options = GMPOptions

    def __init__(self) -> None:
        self.history: list[tuple[int, float, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        begin, end = opts.begin, opts.end
        if not begin < end:
            raise ConfigError(
                f"options 'begin' and 'end' of gmp must satisfy begin < end, got {begin} and {end}"
            )
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        steps = opts.epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        t0 = math.floor(begin * steps)
        t1 = max(t0 + 1, round(end * steps))
        schedule = masks.GradualCubic(0.0, share, t0, t1, opts.frequency)
        pruner = masks.ScheduledMagnitudePruner(schedule, list(layers), opts.scope)
        pruner.prepare(model)
        ctx.train(
            model,
            opts.epochs,
            opts.lr,
            name="gmp",
            callbacks=[pruner],
            progress=opts.progress,
        )
        if not pruner.history or pruner.history[-1][1] != share:
            pruner.prune_to(steps, share)  # no training, or too few steps to reach s_f
        self.history = pruner.history
        return SparsityReport.measure(model, before)


__all__ = ["GradualMagnitudePruning"]
