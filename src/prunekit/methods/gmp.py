"""Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop.

Gradual magnitude pruning while training: at steps ``t0, t0 + dt, ..., t0 + n dt`` the
smallest-magnitude weights are masked so that the sparsity is
``s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3`` (:class:`prunekit.masks.GradualCubic`),
with ``s_i = 0``. Options: ``gmp_epochs`` (3), ``gmp_lr`` (0.01), ``gmp_frequency`` (``dt``
in steps, 100: the paper suggests 100 to 1000), ``gmp_begin`` / ``gmp_end`` (fractions of
the training steps where pruning starts / reaches ``s_f``: 0 and 0.75, leaving the last
quarter to recover, as the paper's runs leave time after the last update),
``gmp_scope`` (``"layer"``: the paper prunes every layer to the same sparsity; or
``"global"``). Whatever the step count, the final sparsity is ``s_f``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    check_nonnegative,
    check_positive_int,
    share_of_targets,
    target_sparsity,
    targets,
)


@register_method("gmp")
class GradualMagnitudePruning(Method):
    """Zhu & Gupta (ICLR 2018 workshop): magnitude pruning during training along the cubic
    schedule of :class:`prunekit.masks.GradualCubic` (``s_i = 0``); options ``gmp_epochs`` 3,
    ``gmp_lr`` 0.01, ``gmp_frequency`` 100 steps, ``gmp_begin`` 0.0, ``gmp_end`` 0.75,
    ``gmp_scope`` "layer". See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {
        "gmp_epochs": 3,
        "gmp_lr": 0.01,
        "gmp_frequency": 100,
        "gmp_begin": 0.0,
        "gmp_end": 0.75,
        "gmp_scope": "layer",
    }

    def __init__(self) -> None:
        self.history: list[tuple[int, float, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        check_nonnegative("gmp_epochs", opts["gmp_epochs"])
        check_positive_int("gmp_frequency", opts["gmp_frequency"])
        if opts["gmp_scope"] not in ("layer", "global"):
            raise ConfigError(
                f"option 'gmp_scope' must be 'layer' or 'global', got {opts['gmp_scope']!r}"
            )
        begin, end = opts["gmp_begin"], opts["gmp_end"]
        if not 0.0 <= begin < end <= 1.0:
            raise ConfigError(
                f"options 'gmp_begin' and 'gmp_end' must satisfy 0 <= begin < end <= 1, "
                f"got {begin} and {end}"
            )
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        steps = opts["gmp_epochs"] * math.ceil(len(ctx.train_set) / ctx.batch_size)
        t0 = math.floor(begin * steps)
        t1 = max(t0 + 1, round(end * steps))
        schedule = masks.GradualCubic(0.0, share, t0, t1, opts["gmp_frequency"])
        pruner = masks.ScheduledMagnitudePruner(schedule, list(layers), opts["gmp_scope"])
        pruner.prepare(model)
        ctx.train(
            model,
            opts["gmp_epochs"],
            opts["gmp_lr"],
            name="gmp",
            callbacks=[pruner],
            progress=opts["progress"],
        )
        if not pruner.history or pruner.history[-1][1] != share:
            pruner.prune_to(steps, share)  # no training, or too few steps to reach s_f
        self.history = pruner.history
        return SparsityReport.measure(model, before)


__all__ = ["GradualMagnitudePruning"]
