"""L1-filter — Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets"
(ICLR 2017).

A filter's score is the L1 norm of its kernel weights
  ``s_j = sum |F_j|``; each layer drops its smallest-norm filters. How many each layer drops
  comes from a *sensitivity analysis*: every layer is pruned on its own (the others untouched)
  at increasing ratios and the pruned model's validation accuracy is measured, without
  retraining. Layers whose accuracy falls quickly are sensitive and lose fewer filters. In
  residual networks only the inner convolutions of each block are pruned (the channels of the
  residual stream are kept). The pruned model is then retrained (the runner's fine-tuning).

How the sensitivity curves become per-layer rates. The paper reads the curves by eye
and picks the layers and rates by hand. Here each prunable group gets a *tolerance*: the largest
ratio ``r`` of ``sensitivity_ratios`` such that the accuracy at ``r`` and at every smaller ratio
stays within ``max_drop`` percentage points of the unpruned accuracy (``min_tolerance``, default
0.05, if not even the smallest ratio does, so every group can still contribute). One global
selection then meets the run's FLOPs or params target with every group losing a fraction of its
channels proportional to its tolerance (:func:`prunekit.methods.common.share_importance`), the
lowest L1 norms first inside each group. During the analysis, "pruning" a group means zeroing
its channels whole (filter, bias and BatchNorm terms), which gives exactly the outputs of the
model with those channels removed; every weight is restored afterwards.

Options and defaults (``ctx.options``):

* ``sensitivity_ratios`` ("0.1,0.2,...,0.9": the fraction of a layer's filters pruned, in
  steps of 10%, comma-separated);
* ``max_drop`` (2.0 percentage points), ``min_tolerance`` (0.05);
* ``val_batches`` (0: the whole validation set; ``n`` > 0: its first ``n`` batches of the run's
  batch size);
* ``only_chains`` (True): prune only groups that are plain layer-to-layer chains
  (:func:`prunekit.methods.common.chains`): the inner convolutions of residual blocks, every
  conv of a plain network. False prunes every group.

Deviations a reader should know:

* The filters of all layers are scored on the trained model at once (the paper's
  "independent" strategy; its "greedy" variant, which ignores kernels of already removed
  channels, is not used). Rates come from the tolerance rule above rather than by hand.
* A group keeps at least one channel; channels of protected layers are kept.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Group, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import (
    check_val_batches,
    eval_modes,
    prunable_groups,
    restore_modes,
    share_importance,
)
from prunekit.methods.retraining import accuracy
from prunekit.prune import PruneReport, remove_selected, select_channels

DEFAULT_RATIOS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def parse_ratios(text: str) -> list[float]:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``: increasing fractions in (0, 1)."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if (
        not values
        or any(not 0 < v < 1 for v in values)
        or any(b <= a for a, b in itertools.pairwise(values))
    ):
        raise ConfigError(
            "sensitivity_ratios must be increasing fractions in (0, 1) separated by commas, "
            f"e.g. {DEFAULT_RATIOS!r}; got {text!r}"
        )
    return values


def sensitivity_curves(
    model: nn.Module,
    groups: Sequence[Group],
    val_set: Dataset[Any],
    ratios: Sequence[float],
    *,
    val_batches: int = 0,
    batch_size: int = 64,
    within: criteria.Criterion = criteria.l1_norm,
) -> tuple[float, dict[str, list[tuple[float, float]]]]:
    """The unpruned accuracy and, per group, ``[(ratio, accuracy), ...]`` with only that group
    pruned: its ``floor(ratio * size)`` lowest-``within`` channels (at most ``size - 1``) zeroed
    whole. ``model`` is the graph's model; its weights and buffers are restored exactly after
    each measurement."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = accuracy(model, val_set, val_batches, batch_size)
    curves: dict[str, list[tuple[float, float]]] = {}
    try:
        for group in groups:
            order = torch.argsort(within(group).double(), stable=True).tolist()
            curve = []
            for r in ratios:
                k = min(math.floor(r * group.size + 1e-9), group.size - 1)
                if k == 0:
                    curve.append((r, base))
                    continue
                group.zero(order[:k])
                try:
                    curve.append((r, accuracy(model, val_set, val_batches, batch_size)))
                finally:
                    model.load_state_dict(saved)
            curves[group.name] = curve
    finally:
        model.load_state_dict(saved)
    return base, curves


def tolerance(
    curve: Sequence[tuple[float, float]], base: float, max_drop: float, minimum: float
) -> float:
    """The largest ratio whose accuracy, and that of every smaller ratio, stays within
    ``max_drop`` points of ``base``; ``minimum`` if none does (and never less than it)."""
    best = 0.0
    for r, acc in curve:
        if acc < base - max_drop:
            break
        best = r
    return max(best, minimum)


@register_method("l1_filter")
class L1Filter(Method):
    """L1-filter pruning (Li et al., ICLR 2017): filters ranked by the L1 norm of their kernel
    weights, the smallest removed per layer, with per-layer rates from a sensitivity analysis
    (each layer pruned alone at ratios 0.1..0.9, validation accuracy measured). Each group's
    tolerance (largest ratio within ``max_drop`` points) sets its share of one global selection
    that meets the target. Only chains (inner convs of residual blocks) by default.

    After :meth:`prune`: ``baseline_accuracy``, ``sensitivity`` (``{group: [(ratio, acc)]}``)
    and ``tolerances`` (``{group: ratio}``). See the module docstring for options and
    deviations."""

    defaults: ClassVar[dict[str, Any]] = {
        "sensitivity_ratios": DEFAULT_RATIOS,
        "max_drop": 2.0,
        "min_tolerance": 0.05,
        "val_batches": 0,
        "only_chains": True,
    }

    def __init__(self) -> None:
        self.baseline_accuracy: float | None = None
        self.sensitivity: dict[str, list[tuple[float, float]]] = {}
        self.tolerances: dict[str, float] = {}

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        check_val_batches(opts)
        ratios = parse_ratios(opts["sensitivity_ratios"])
        if not (opts["max_drop"] >= 0 and math.isfinite(opts["max_drop"])):
            raise ConfigError(f"max_drop must be >= 0 percentage points, got {opts['max_drop']}")
        if not 0 < opts["min_tolerance"] < 1:
            raise ConfigError(f"min_tolerance must be in (0, 1), got {opts['min_tolerance']}")
        l1 = criteria.get("l1")
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            groups = prunable_groups(graph, opts["only_chains"])
            if not groups:
                raise ConfigError(
                    "l1_filter found no prunable groups"
                    + (
                        " (only_chains=True: no plain conv-to-conv chains)"
                        if opts["only_chains"]
                        else ""
                    )
                )
            base, curves = sensitivity_curves(
                ctx.model,
                groups,
                ctx.val_set,
                ratios,
                val_batches=opts["val_batches"],
                batch_size=ctx.batch_size,
                within=l1,
            )
            self.baseline_accuracy, self.sensitivity = base, curves
            self.tolerances = {
                name: tolerance(curve, base, opts["max_drop"], opts["min_tolerance"])
                for name, curve in curves.items()
            }
            picks = select_channels(
                graph,
                scope="global",
                normalize=False,
                importance=share_importance(l1, self.tolerances),
                **ctx.target.require("flops", "params", method=self.id).as_dict(),
            )
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = ["DEFAULT_RATIOS", "L1Filter", "parse_ratios", "sensitivity_curves", "tolerance"]
