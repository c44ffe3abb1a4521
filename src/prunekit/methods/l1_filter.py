"""L1-filter — Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets"
(ICLR 2017).

A filter's score is the L1 norm of its kernel weights
  ``s_j = sum |F_j|``; each layer drops its smallest-norm filters. How many each layer drops
  comes from a *sensitivity analysis*: every layer is pruned on its own (the others untouched)
  at increasing ratios and the pruned model's validation accuracy is measured, without
  retraining. Layers whose accuracy falls quickly are sensitive and lose fewer filters. In
  residual networks only the inner convolutions of each block are pruned (the channels of the
  residual stream are kept). The pruned model is then retrained (the runner's fine-tuning).

How the sensitivity curves become per-layer rates. The paper reads the curves by eye, prunes
the robust layers and *skips the sensitive ones* (for ResNet-56/110 on CIFAR-10 it names the
layers it leaves whole; for VGG-16 it prunes the first layer and the last six and keeps the
rest). Here each prunable group gets a *tolerance*: the largest ratio ``r`` of
``sensitivity_ratios`` such that the accuracy at ``r`` and at every smaller ratio stays within
``max_drop`` percentage points of the unpruned accuracy. A group whose accuracy falls by more
than ``max_drop`` already at the smallest ratio has tolerance 0 and is skipped: it keeps every
channel, as the paper's sensitive layers do. If the groups left cannot meet the target
within their tolerances, ``max_drop`` is doubled (up to 100 points) until they can, so that the most fragile layers are
the ones skipped (``max_drop_used`` records the value used). ``skip`` names groups to keep whole regardless (the
paper's hand-picked layers). One global selection then meets the run's FLOPs or params target
with every other group losing a fraction of its channels proportional to its tolerance, and
never more than its tolerance (:func:`prunekit.methods.common.share_importance` with ``cap``),
the lowest L1 norms first inside each group: past its tolerance the analysis saw the layer
fail, so a target that needs more raises ``max_drop`` (above) rather than emptying the robust
layers (without the cap, a target the robust layers could only meet by keeping one channel
each was met that way, and the model was lost: 22.9% on the MNIST-1D CNN at 70% fewer FLOPs).
During the analysis, "pruning" a group means zeroing its channels whole (filter, bias and
BatchNorm terms), which gives exactly the outputs of the model with those channels removed;
every weight is restored afterwards.

Options and defaults: see :class:`L1FilterOptions` (``prunekit methods --show l1_filter``).

Deviations a reader should know:

* The filters of all layers are scored on the trained model at once (the paper's
  "independent" strategy; its "greedy" variant, which ignores kernels of already removed
  channels, is not used). Rates come from the tolerance rule above rather than by eye.
* A group keeps at least one channel; channels of protected layers are kept.
* ``max_drop`` is a threshold in accuracy points; the paper picks the layers and rates by eye.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import (
    eval_modes,
    prunable_groups,
    restore_modes,
    share_importance,
)
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import accuracy
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target

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


def tolerance(curve: Sequence[tuple[float, float]], base: float, max_drop: float) -> float:
    """The largest ratio whose accuracy, and that of every smaller ratio, stays within
    ``max_drop`` points of ``base``; 0 if not even the smallest does (a sensitive layer)."""
    best = 0.0
    for r, acc in curve:
        if acc < base - max_drop:
            break
        best = r
    return best


def parse_names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (empty text: none)."""
    return [n for n in str(text).replace(" ", "").split(",") if n]


@dataclass(frozen=True)
class L1FilterOptions(Options):
    sensitivity_ratios: str = option(
        DEFAULT_RATIOS,
        help="fractions of a layer's filters pruned in the sensitivity analysis, comma-separated",
        source="paper Fig. 2 / Fig. 6: sensitivity curves in steps of 10% of the filters",
    )
    max_drop: float = option(
        2.0,
        help="percentage points of validation top-1 a layer may lose alone before it counts as "
        "sensitive (its tolerance is the largest ratio within this)",
        source="prunekit (the paper reads the curves by eye)",
        low=0,
    )
    skip: str = option(
        "",
        help="groups kept whole whatever their sensitivity, comma-separated (the paper's "
        "hand-picked sensitive layers)",
        source="paper: sensitive layers are skipped (ResNet-56/110 on CIFAR-10)",
    )
    val_batches: int = option(
        0,
        help="validation batches per accuracy measurement (0: the whole validation set)",
        source="prunekit",
        low=0,
    )
    only_chains: bool = option(
        True,
        help="prune only plain layer-to-layer chains (the inner convs of residual blocks)",
        source="paper: in residual blocks only the first conv is pruned",
    )


@register_method("l1_filter")
class L1Filter(Method):
    """L1-filter pruning (Li et al., ICLR 2017): filters ranked by the L1 norm of their kernel
    weights, the smallest removed per layer, with per-layer rates from a sensitivity analysis
    (each layer pruned alone at ratios 0.1..0.9, validation accuracy measured). Each group's
    tolerance (largest ratio within ``max_drop`` points) sets its share of one global selection
    that meets the target; sensitive groups (tolerance 0) and those named in ``skip`` are kept
    whole. Only chains (inner convs of residual blocks) by default.

    After :meth:`prune`: ``baseline_accuracy``, ``sensitivity`` (``{group: [(ratio, acc)]}``)
    and ``tolerances`` (``{group: ratio}``, 0 for a skipped group). See the module docstring
    for the rule and deviations."""

    Options = L1FilterOptions

    def __init__(self) -> None:
        self.baseline_accuracy: float | None = None
        self.sensitivity: dict[str, list[tuple[float, float]]] = {}
        self.tolerances: dict[str, float] = {}
        self.max_drop_used: float | None = None

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        ratios = parse_ratios(opts.sensitivity_ratios)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        l1 = criteria.get("l1")
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            skip = set(parse_names(opts.skip))
            unknown = skip - {g.name for g in graph.groups}
            if unknown:
                raise ConfigError(
                    f"l1_filter: skip names no group of this model: {', '.join(sorted(unknown))}; "
                    f"groups: {', '.join(g.name for g in graph.groups)}"
                )
            groups = [g for g in prunable_groups(graph, opts.only_chains) if g.name not in skip]
            if not groups:
                raise ConfigError(
                    "l1_filter found no prunable groups"
                    + (" (only_chains=True: no conv-to-conv chains)" if opts.only_chains else "")
                )
            base, curves = sensitivity_curves(
                ctx.model,
                groups,
                ctx.val_set,
                ratios,
                val_batches=opts.val_batches,
                batch_size=ctx.batch_size,
                within=l1,
            )
            self.baseline_accuracy, self.sensitivity = base, curves
            picks = self._select(graph, l1, base, curves, opts.max_drop, target)
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)

    def _select(
        self,
        graph: Graph,
        l1: criteria.Criterion,
        base: float,
        curves: dict[str, list[tuple[float, float]]],
        max_drop: float,
        target: Target,
    ) -> dict[str, list[int]]:
        """The channels to remove: tolerances at ``max_drop``, doubled until the groups that
        are not skipped can meet ``target`` (sets ``tolerances`` and ``max_drop_used``)."""
        drop = max_drop
        while True:
            self.tolerances = {name: tolerance(c, base, drop) for name, c in curves.items()}
            self.max_drop_used = drop
            if any(self.tolerances.values()):
                try:
                    return select_channels(
                        graph,
                        scope="global",
                        normalize=False,
                        importance=share_importance(l1, self.tolerances, cap=True),
                        **target.as_dict(),
                    )
                except ConfigError:
                    if drop >= 100.0:
                        raise
            elif drop >= 100.0:
                raise ConfigError(
                    "l1_filter: every layer loses its accuracy when pruned alone; no group can "
                    "be pruned"
                )
            drop = min(100.0, 2 * drop if drop > 0 else 1.0)


__all__ = [
    "DEFAULT_RATIOS",
    "L1Filter",
    "L1FilterOptions",
    "parse_names",
    "parse_ratios",
    "sensitivity_curves",
    "tolerance",
]
