"""``prune_channels``: shrink a model's channels in place to a ratio, a FLOPs, a params or a
measured-latency target.

Scoring (a criterion), selection (how many units each group loses) and surgery (the graph) stay
separate: this module only decides *which* units go, evaluating candidate selections with the
graph's plan (predicted params and FLOPs, no surgery) or the latency table's prediction
(:mod:`prunekit.measure.latency_table`) until the target is met, then removes them. A latency
target is then checked on a pruned copy of the model, timed for real.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, Plan, build
from prunekit.graph.explain import PinnedSet, pinned_sets
from prunekit.measure._inputs import Inputs
from prunekit.targets import LatencySetting

TOLERANCE = 0.01  # a FLOPs or params target is met within 1% of the dense figure


@dataclass
class GroupChange:
    name: str
    before: int
    after: int


@dataclass
class PruneReport:
    """What :func:`prune_channels` did, with measured (not predicted) sizes."""

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    groups: list[GroupChange] = field(default_factory=list)
    removed: dict[str, list[int]] = field(default_factory=dict)
    pinned: list[PinnedSet] = field(default_factory=list)  # channels that had to stay, and why
    latency: Any = None  # a latency target's LatencyCheck: dense, predicted and measured ms

    @property
    def flops_reduction(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "groups": [(g.name, g.before, g.after) for g in self.groups],
            **(self.latency.as_dict() if self.latency is not None else {}),
        }


class _Selector:
    """Turns a knob (a ratio, or a count of units in global order) into units to remove."""

    def __init__(
        self,
        graph: Graph,
        scores: dict[str, torch.Tensor],
        round_to: int | None,
        normalize: bool = True,
        snap: Any = None,
        unit_cost: dict[str, float] | None = None,
        max_ratio: float = 1.0,
    ) -> None:
        self.graph = graph
        self.round_to = round_to
        self.max_ratio = max_ratio  # the most of a group's units that may go
        self.snap = snap  # (group, kept width) -> the width kept instead (a latency knee)
        self.unit_cost = unit_cost  # global order: score per ms a unit of the group saves
        self.scores = scores
        self.normalize = normalize
        self.order = {
            g.name: torch.argsort(scores[g.name], stable=True).tolist() for g in graph.groups
        }
        # units scored +inf are never removed, in either scope
        self.finite = {g.name: int(torch.isfinite(scores[g.name]).sum()) for g in graph.groups}

    @functools.cached_property
    def global_order(self) -> list[tuple[str, int]]:
        """Every finite-scored unit as ``(group, index)``, lowest first (a unit scored ``+inf``
        is never removed); with ``normalize``, scores are divided by their group's mean so groups
        compare, else raw scores compete across groups."""
        flat = []
        for g in self.graph.groups:
            s = self.scores[g.name]
            finite = s[torch.isfinite(s)]
            if self.normalize and len(finite) and float(finite.mean()) > 0:
                s = s / finite.mean()
            if self.unit_cost is not None:
                s = s / max(self.unit_cost.get(g.name, 0.0), 1e-12)
            flat += [(float(s[i]), g.name, i) for i in range(g.size) if torch.isfinite(s[i])]
        flat.sort()
        return [(name, i) for _, name, i in flat]

    def max_remove(self, g: Group) -> int:
        return min(g.size - self.min_keep(g), self.finite[g.name])

    def min_keep(self, g: Group) -> int:
        r = self.round_to or 1
        floor = math.ceil((1.0 - self.max_ratio) * g.size - 1e-9)
        return min(g.size, max(r, floor))

    def _rounded(self, g: Group, n_remove: int) -> int:
        n_remove = max(0, min(n_remove, self.max_remove(g)))
        if self.round_to:
            keep = g.size - n_remove
            keep = min(g.size, math.ceil(keep / self.round_to) * self.round_to)
            n_remove = g.size - keep
        if self.snap is not None and n_remove:
            n_remove = g.size - self.snap(g, g.size - n_remove)
        return n_remove

    def by_ratio(self, ratio: float) -> dict[str, int]:
        return {
            g.name: self._rounded(g, math.floor(ratio * g.size + 1e-9)) for g in self.graph.groups
        }

    def by_global_count(self, k: int) -> dict[str, int]:
        counts = dict.fromkeys((g.name for g in self.graph.groups), 0)
        groups = {g.name: g for g in self.graph.groups}
        taken = 0
        for name, _ in self.global_order:
            if taken >= k:
                break
            if counts[name] < self.max_remove(groups[name]):
                counts[name] += 1
                taken += 1
        return {n: self._rounded(groups[n], c) for n, c in counts.items()}

    def roots(self, counts: dict[str, int]) -> dict[str, list[int]]:
        """Indices per group: each group loses its ``counts[name]`` lowest-scored units."""
        return {
            g.name: sorted(self.order[g.name][: counts[g.name]])
            for g in self.graph.groups
            if counts[g.name]
        }


def selection_roots(graph: Graph, picks: dict[str, list[int]]) -> list[int]:
    """The graph's unit labels (roots) of a selection ``{group name: indices}``, as
    :meth:`~prunekit.graph.Graph.plan` and :meth:`~prunekit.graph.Graph.remove` take them."""
    groups = {g.name: g for g in graph.groups}
    return [groups[n].units[i] for n, idx in picks.items() for i in idx]


def check_max_ratio(value: Any) -> float:
    """``value`` as a ``max_ratio``: a number in (0, 1], else a ConfigError naming it."""
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value <= 1):
        raise ConfigError(f"max_ratio must be a fraction in (0, 1], got {value!r}")
    return float(value)


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> float:
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and lo_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(f"{name} must be a fraction in {bound} of what to remove, got {value!r}")
    return float(value)


def prune_channels(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    ratio: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    latency: Any = None,
    scope: str = "layer",
    importance: str | criteria.Criterion = "l1",
    ignore: Iterable[str | nn.Module] = (),
    round_to: int | None = None,
    max_ratio: float = 1.0,
) -> PruneReport:
    """Remove channels of ``model`` in place and return what changed.

    Exactly one of: ``ratio`` (fraction of channels removed: of every group with
    ``scope="layer"``, of all prunable channels with ``scope="global"``), ``target_flops`` or
    ``target_params`` (fraction of the model's FLOPs or parameters removed, met within 1% of the
    dense figure), ``target_latency`` (fraction of the dense model's measured latency removed, on
    the ``latency`` setting: a :class:`~prunekit.targets.LatencySetting`, default torch, batch 1,
    one thread, or a :class:`~prunekit.measure.latency_table.LatencyMeter`; the report's
    ``latency`` holds the predicted and the measured figures). ``importance`` names a criterion (``prunekit.criteria.list_criteria()``) or is
    a callable ``group -> scores``; lowest scores go first. With ``scope="global"`` scores are
    divided by their group's mean so groups compare. ``round_to`` keeps every group's width a
    multiple of it. ``max_ratio`` is the largest fraction of any group's channels removed (a
    global or latency-per-millisecond ranking otherwise may empty a layer). Protected layers
    (the model's ``protected_layers``) and ``ignore`` layers keep their output channels; every
    group keeps at least one channel.
    """
    graph = build(model, example_inputs, ignore=ignore)
    dense = graph.plan([])
    if target_latency is not None:
        from prunekit.measure.latency_table import LatencyMeter

        latency = LatencyMeter.of(latency).predictor(graph, example_inputs)
    picks = select_channels(
        graph,
        ratio=ratio,
        target_flops=target_flops,
        target_params=target_params,
        target_latency=target_latency,
        latency=latency,
        scope=scope,
        importance=importance,
        round_to=round_to,
        max_ratio=max_ratio,
    )
    report = remove_selected(graph, picks, dense)
    _warn_if_short(report, ratio, target_flops, target_params or target_latency)
    if scope == "global" and max_ratio > COLLAPSE:
        _warn_if_collapsed(report)
    return report


COLLAPSE = 0.9  # a layer left with at most 1 - this of its channels (or one) has collapsed


def _warn_if_collapsed(report: PruneReport) -> None:
    """Name the layers a global selection nearly emptied (one channel left, or at most
    ``1 - COLLAPSE`` of them): a network through such a layer rarely recovers, and
    ``max_ratio`` prevents it."""
    gone = [
        g
        for g in report.groups
        if g.before > 1 and g.after <= max(1.0, (1.0 - COLLAPSE) * g.before)
    ]
    if not gone:
        return
    shown = ", ".join(f"{g.name} ({g.after} of {g.before} left)" for g in gone[:5])
    more = f" and {len(gone) - 5} more" if len(gone) > 5 else ""
    warnings.warn(
        f"the global selection nearly emptied {len(gone)} layer(s): {shown}{more}; "
        "max_ratio (--max-ratio) caps the fraction of any layer removed",
        stacklevel=3,
    )


_EXPECTED = ("model input", "model output", "protected layer", "ignored layer")


def _warn_if_short(
    report: PruneReport, ratio: float | None, flops: float | None, params: float | None
) -> None:
    """Say which channels were pinned, and why, when less was removed than asked."""
    removed = sum(len(v) for v in report.removed.values())
    prunable = sum(g.before for g in report.groups)
    # the model's inputs and outputs and its protected layers are meant to stay
    notable = [p for p in report.pinned if not p.reason.startswith(_EXPECTED)]
    pinned = sum(p.units for p in notable)
    if ratio is not None:
        asked = math.floor(ratio * (prunable + pinned) + 1e-9)
        short = removed < asked
        what = f"removed {removed} of the {asked} channels asked ({ratio:g} of {prunable + pinned})"
    else:
        short = removed == 0 and bool(flops or params)
        what = "removed nothing"
    if not short or not notable:
        return
    reasons = "; ".join(f"{p.units} units: {p.reason}" for p in notable[:5])
    more = f" (and {len(notable) - 5} more reasons)" if len(notable) > 5 else ""
    warnings.warn(
        f"prune_channels {what}: {pinned} channel units are pinned: {reasons}{more}; "
        "see prunekit.graph.explain(model, inputs) for the full list",
        stacklevel=3,
    )


def remove_selected(graph: Graph, picks: dict[str, list[int]], dense: Plan) -> PruneReport:
    """Remove ``picks`` (``{group name: indices}``) physically and report the sizes before
    (``dense``) and after.

    The plan equals what torch.utils.flop_counter and a parameter count measure on the pruned
    model (the graph tests check this on every zoo model and 40 other networks), so the report
    needs no second forward pass. Every method that ends in removal reports through here.
    """
    roots = selection_roots(graph, picks)
    planned = graph.plan(roots)
    pinned = pinned_sets(graph)
    before = {g.name: g.size for g in graph.groups}
    if roots:
        graph.remove(roots)
    after = {g.name: g.size for g in graph.groups}
    return PruneReport(
        params_before=dense.params,
        params_after=planned.params,
        flops_before=dense.flops,
        flops_after=planned.flops,
        groups=[GroupChange(n, before[n], after.get(n, 0)) for n in before],
        removed=picks,
        pinned=pinned,
        latency=getattr(graph, "latency_check", None),  # a latency target's figures
    )


def select_channels(
    graph: Graph,
    *,
    ratio: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    target_latency: float | None = None,
    latency: Any = None,
    scope: str = "layer",
    importance: str | criteria.Criterion = "l1",
    round_to: int | None = None,
    normalize: bool = True,
    tolerance: float = TOLERANCE,
    max_ratio: float = 1.0,
) -> dict[str, list[int]]:
    """Which channels of each group :func:`prune_channels` would remove, without removing them:
    ``{group name: indices}``. Soft-pruning methods zero these (``group.zero``) and let training
    continue; one-shot methods remove them. ``normalize=False`` compares raw scores across groups
    in global scope (one threshold on one quantity, as network slimming's |gamma|).
    ``tolerance``: how close to a FLOPs or params target the selection must land, as a fraction
    of this graph's dense figure (a method pruning in steps passes the original model's
    tolerance rescaled to the current one). ``target_latency`` with ``latency`` (a
    :class:`~prunekit.targets.LatencySetting`, a
    :class:`~prunekit.measure.latency_table.LatencyMeter` or a ready
    :class:`~prunekit.measure.latency_table.LatencyPredictor` of this graph): widths snap to the
    latency table's knees, and the selection is verified on a pruned copy (see
    :func:`_meet_latency`); where no selection lands within the tolerance (knees are coarse),
    the closest one removing more than asked is taken. In global scope each unit's (normalised)
    score is divided by the latency a unit of its group saves, so the units that cost the least
    importance per millisecond go first. ``max_ratio``: the largest fraction of any group's
    channels that may go (Torch-Pruning's ``max_pruning_ratio``), so a global selection cannot
    empty a layer whose units look cheap; 1.0 leaves one channel as the only floor."""
    given = [
        k
        for k, v in (
            ("ratio", ratio),
            ("target_flops", target_flops),
            ("target_params", target_params),
            ("target_latency", target_latency),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of ratio, target_flops, target_params, target_latency "
            f"(got {given or 'none'})"
        )
    if latency is not None and target_latency is None:
        raise ConfigError("latency (a latency setting) goes with target_latency")
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be a positive int, got {round_to!r}")
    check_max_ratio(max_ratio)
    criterion = criteria.get(importance)
    scores = {g.name: criterion(g).double() for g in graph.groups}
    for g in graph.groups:
        if scores[g.name].shape != (g.size,):
            raise ConfigError(
                f"importance returned shape {tuple(scores[g.name].shape)} for group {g.name!r} of {g.size} channels"
            )
    if target_latency is not None:
        from prunekit.measure.latency_table import LatencyPredictor

        target = _check_fraction("target_latency", target_latency, allow_zero=False)
        predictor = latency
        if not (isinstance(predictor, LatencyPredictor) and predictor.graph is graph):
            from prunekit.measure.latency_table import LatencyMeter

            predictor = LatencyMeter.of(latency).predictor(graph)
        cost = predictor.unit_costs() if scope == "global" else None
        sel = _Selector(
            graph,
            scores,
            round_to,
            normalize,
            snap=predictor.snap,
            unit_cost=cost,
            max_ratio=max_ratio,
        )
        return _meet_latency(graph, sel, scope, target, tolerance, predictor)
    sel = _Selector(graph, scores, round_to, normalize, max_ratio=max_ratio)
    total_units = sum(g.size for g in graph.groups)
    if ratio is not None:
        ratio = _check_fraction("ratio", ratio, allow_zero=True)
        counts = (
            sel.by_ratio(ratio)
            if scope == "layer"
            else sel.by_global_count(math.floor(ratio * total_units))
        )
    else:
        metric = "flops" if target_flops is not None else "params"
        target = _check_fraction(
            f"target_{metric}",
            target_flops if target_flops is not None else target_params,  # type: ignore[arg-type]
            allow_zero=False,
        )
        counts = _search(graph, sel, scope, metric, target, graph.plan([]), tolerance)
    return sel.roots(counts)


def _meet_latency(
    graph: Graph, sel: _Selector, scope: str, target: float, tolerance: float, predictor: Any
) -> dict[str, list[int]]:
    """A selection removing ``target`` of the measured latency: predicted from the table, then
    verified on a pruned copy; a measured miss larger than the meter's tolerance corrects the
    predicted goal by the miss and selects again (at most ``rounds`` selections). The closest
    measured selection that meets the target (removes at least the target less the tolerance)
    is returned, else the closest; its figures are kept in ``predictor.last``."""
    from prunekit.measure.latency_table import LatencyCheck

    meter = predictor.meter
    goal, best, best_key = target, None, (True, math.inf)
    for r in range(1, (meter.rounds if meter.verify else 1) + 1):
        try:
            counts = _search(graph, sel, scope, "latency", goal, None, tolerance, predictor.predict)
        except ConfigError:
            if best is None:
                raise
            break  # the corrected goal is out of reach: keep the closest selection so far
        picks = sel.roots(counts)
        check = LatencyCheck(
            meter.setting,
            predictor.dense_ms,
            predictor.predict(selection_roots(graph, picks)),
            rounds=r,
        )
        if not meter.verify:
            best = (picks, check)
            break
        check.measured_ms = predictor.measure(picks)
        miss = target - check.measured_reduction
        key = (miss > meter.tolerance, abs(miss))  # short of the target last
        if key < best_key:
            best, best_key = (picks, check), key
        if abs(miss) <= meter.tolerance:
            break
        goal = min(0.999, max(1e-3, goal + miss))
    assert best is not None
    predictor.last = graph.latency_check = best[1]  # remove_selected reports it
    return best[0]


def _search(
    graph: Graph,
    sel: _Selector,
    scope: str,
    metric: str,
    target: float,
    dense: Any,
    tolerance: float,
    predict: Any = None,
) -> dict[str, int]:
    """A selection whose predicted ``metric`` lies within the tolerance of ``(1 - target)``
    times the dense figure.

    ``scope="layer"``: bisection over one ratio for every group, then single units in global
    score order close the remaining gap. ``scope="global"``: single units in global score order
    from the start. ``predict(roots)`` (a latency prediction) replaces the graph's plan.
    """
    dense_value = predict(()) if predict is not None else getattr(dense, metric)
    goal = (1.0 - target) * dense_value
    tol = tolerance * dense_value
    groups = {g.name: g for g in graph.groups}

    def value(counts: dict[str, int]) -> float:
        roots = selection_roots(graph, sel.roots(counts))
        if predict is not None:
            return predict(roots)
        return getattr(graph.plan(roots), metric)

    start = dict.fromkeys(groups, 0)
    if scope == "layer":
        lo, hi = 0.0, 1.0
        for _ in range(30):  # largest uniform ratio whose model stays above the goal
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if value(sel.by_ratio(mid)) <= goal else (mid, hi)
        if abs(value(sel.by_ratio(hi)) - goal) <= tol:
            return sel.by_ratio(hi)
        start = sel.by_ratio(lo)
    # "one more unit of group g", in global score order, for the units not yet taken
    rank = {name: {u: r for r, u in enumerate(order)} for name, order in sel.order.items()}
    steps = [name for name, i in sel.global_order if rank[name][i] >= start[name]]
    best = _walk(start, steps, groups, sel, value, goal, tol, over_ok=predict is not None)
    achieved = value(best)
    # a latency target moves in knee-sized steps: removing more than asked is accepted there
    if abs(achieved - goal) > tol and not (predict is not None and achieved <= goal):
        rounding = f", widths rounded to {sel.round_to}" if sel.round_to else ""
        raise ConfigError(
            f"cannot reach target_{metric}={target:g}: the closest selection removes "
            f"{1 - achieved / dense_value:.3f} (every group keeps at least one channel{rounding}; "
            "protected layers are kept)"
        )
    return best


def _walk(
    start: dict[str, int],
    steps: list[str],
    groups: dict[str, Group],
    sel: _Selector,
    value: Any,
    goal: float,
    tol: float,
    over_ok: bool = False,
) -> dict[str, int]:
    """Take units in ``steps`` order until within ``tol`` of ``goal``.

    Bisection finds how many steps reach the goal; if the last step overshoots by more than the
    tolerance (one unit of a wide layer can be several percent of a small model), a greedy pass
    continues from just before it, skipping any group whose next unit would overshoot.
    """

    def rounded(raw: dict[str, int]) -> dict[str, int]:
        return {n: sel._rounded(groups[n], c) for n, c in raw.items()}

    def after(prefix: list[str], base: dict[str, int]) -> dict[str, int]:
        raw = dict(base)  # unrounded counts: with round_to, single units accumulate
        for name in prefix:
            raw[name] = min(raw[name] + 1, sel.max_remove(groups[name]))
        return raw

    lo, hi = 0, len(steps)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if value(rounded(after(steps[:mid], start))) <= goal else (mid + 1, hi)
    if lo == 0 or abs(value(rounded(after(steps[:lo], start))) - goal) <= tol:
        return rounded(after(steps[:lo], start))
    raw = after(steps[: lo - 1], start)
    skipped: set[str] = set()
    for name in steps[lo - 1 :]:
        if name in skipped:
            continue
        trial = after([name], raw)
        v = value(rounded(trial))
        if v < goal - tol:
            skipped.add(name)  # this group's next unit is too coarse; its later ones too
            continue
        raw = trial
        if abs(v - goal) <= tol:
            break
    if over_ok and value(rounded(raw)) > goal + tol and lo <= len(steps):
        return rounded(after(steps[:lo], start))  # the first prefix past the goal
    return rounded(raw)


__all__ = [
    "GroupChange",
    "LatencySetting",
    "PruneReport",
    "prune_channels",
    "remove_selected",
    "select_channels",
    "selection_roots",
]
