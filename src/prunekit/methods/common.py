"""Pieces several methods share: which groups are plain layer-to-layer chains, and per-group
widths chosen by a share per group.

* :func:`chains`: the groups whose channels are made by exactly one layer with filters and read
  by exactly one Conv1d / Conv2d (``groups=1``) or Linear layer, whatever element-wise ops,
  nonlinearities and pooling lie between (conv -> BN -> ReLU -> max-pool -> conv is a chain).
  A conv reads one input position per channel; a Linear after a flatten reads several (the
  channel's spatial positions), all of them the chain's. These are the channels the layer-wise
  papers prune (ThiNet, channel pruning by LASSO, L1-filter in residual networks: "only the inner
  convs of a residual block"); a residual stream and a concat feeding several layers are not
  chains. Layers that carry the channels on both sides pass them through: a depthwise conv
  between the producer and the consumer (an inverted residual's expand -> depthwise -> project)
  leaves a chain, whose removal also removes the depthwise filters.
* :func:`prunable_groups`: the chains, or every group; :func:`eval_modes` /
  :func:`restore_modes`: put a model in eval mode and back (tracing and measuring must not update
  BatchNorm statistics).
* :func:`share_importance`: an importance for :func:`prunekit.prune.select_channels` (global
  scope, raw scores) that removes channels from every group in proportion to a given share, the
  lowest-scored first inside each group. One FLOPs or params target then fixes the overall
  amount, and the shares fix how it spreads: random shares (random channel pruning) or shares
  from a sensitivity analysis (L1-filter).
* :func:`tune_knob` / :func:`removed_fraction`: for methods whose paper derives every layer's
  width from one setting (affinity propagation's preference, a pruning-error threshold), that
  setting bisected until the widths it gives come nearest a FLOPs or params target;
  :func:`select_at_proportions` then meets the target at those widths' proportions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group
from prunekit.graph.core import Site, out_weight
from prunekit.prune import select_channels, selection_roots
from prunekit.targets import Target

__all__ = [
    "Chain",
    "chains",
    "eval_modes",
    "prunable_groups",
    "removed_fraction",
    "restore_modes",
    "select_at_proportions",
    "share_importance",
    "tune_knob",
]


@dataclass
class Chain:
    """A group whose channels go from one ``producer`` to one ``consumer``.

    ``producer_index[i]``: the output position of the producer that carries unit ``i`` of
    ``group``; ``consumer_index[i]``: the input position of the consumer that reads it (a
    ``(units,)`` tensor), or, for a Linear consumer after a flatten, the positions (a ``(units,
    positions)`` tensor, one row per unit).
    """

    group: Group
    producer: Site
    consumer: Site
    producer_index: torch.Tensor
    consumer_index: torch.Tensor


def _positions(
    graph: Graph, site: Site, side: str, group: Group, *, several: bool = False
) -> np.ndarray | None:
    """For each unit of ``group``, its positions on ``side`` of ``site``: ``(units,)`` (one
    each) or, with ``several``, ``(units, P)`` when every unit has the same ``P > 1`` positions.
    None unless the side carries this group's units and nothing else."""
    arr = getattr(site, f"{side}_labels")
    if arr is None or not len(arr) or len(arr) % group.size:
        return None
    per_unit = len(arr) // group.size
    if per_unit > 1 and not several:
        return None
    roots = graph.labels.roots(arr)
    order = np.argsort(roots, kind="stable")
    units = np.asarray(group.units, dtype=np.int64)
    sorted_roots = roots[order].reshape(-1, per_unit)  # equal counts: one row per unit
    if not (sorted_roots == sorted_roots[:, :1]).all():
        return None
    row = {int(r): i for i, r in enumerate(sorted_roots[:, 0])}
    if len(row) != group.size or any(int(u) not in row for u in units):
        return None
    pos = order.reshape(-1, per_unit)[[row[int(u)] for u in units]]
    return pos[:, 0] if per_unit == 1 else pos


def _is_plain_consumer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1


def chains(graph: Graph) -> list[Chain]:
    """Every group of ``graph`` that is a plain chain (see the module docstring), in the graph's
    group order."""
    out = []
    for group in graph.groups:
        members = group.members
        out_side = {m.layer for m in members if m.side == "out"}
        in_side = {m.layer for m in members if m.side == "in"}
        # a layer on both sides (BatchNorm, a depthwise conv) passes the channels through
        producers = [
            name
            for name in out_side - in_side
            if (w := out_weight(graph.sites[name].module)) is not None and w.dim() >= 2
        ]
        consumers = [m.layer for m in members if m.side == "in" and m.layer not in out_side]
        if len(producers) != 1 or len(consumers) != 1:
            continue
        producer, consumer = graph.sites[producers[0]], graph.sites[consumers[0]]
        if not _is_plain_consumer(consumer.module) or len(consumer.calls) > 1:
            continue
        p_idx = _positions(graph, producer, "out", group)
        c_idx = _positions(
            graph, consumer, "in", group, several=isinstance(consumer.module, nn.Linear)
        )
        if p_idx is None or c_idx is None:
            continue
        out.append(
            Chain(group, producer, consumer, torch.from_numpy(p_idx), torch.from_numpy(c_idx))
        )
    return out


def share_importance(
    within: Callable[[Group], torch.Tensor], share: Mapping[str, float], *, cap: bool = False
) -> Callable[[Group], torch.Tensor]:
    """An importance for ``select_channels(scope="global", normalize=False)`` that spreads the
    removal over groups in proportion to ``share[group name]``.

    Inside a group, units are ranked by ``within(group)`` (lowest first); the unit of rank ``k``
    (from 0) in a group of ``n`` scores ``(k + 1) / n / share``. A global threshold ``t`` then
    removes about ``t * share * n`` units of each group: a group with twice the share loses twice
    the fraction of its channels. Groups with no share (or share 0) score ``+inf`` and are kept.
    With ``cap``, the share (a fraction in (0, 1]) is also the most a group may lose: units
    beyond ``share * n`` score ``+inf``, so a target that needs more cannot be met (the caller
    sees :func:`~prunekit.prune.select_channels`' error) instead of emptying a group.
    """

    def importance(group: Group) -> torch.Tensor:
        s = float(share.get(group.name, 0.0))
        if not s > 0 or not math.isfinite(s):
            return torch.full((group.size,), math.inf, dtype=torch.float64)
        order = torch.argsort(within(group).double(), stable=True)
        rank = torch.empty(group.size, dtype=torch.float64)
        rank[order] = torch.arange(1, group.size + 1, dtype=torch.float64)
        scores = rank / group.size / s
        if cap:
            scores[rank > s * group.size + 1e-9] = math.inf
        return scores

    return importance


def removed_fraction(graph: Graph, counts: Mapping[str, int], kind: str) -> float:
    """The fraction of ``graph``'s FLOPs or params (``kind``) that removing ``counts[name]``
    units of each group would remove (the plan's prediction; which units does not change it)."""
    dense = getattr(graph.plan([]), kind)
    picks = {name: list(range(c)) for name, c in counts.items() if c}
    after = getattr(graph.plan(selection_roots(graph, picks)), kind)
    return 1.0 - after / dense if dense else 0.0


def tune_knob(
    graph: Graph,
    counts_at: Callable[[float], dict[str, int]],
    kind: str,
    fraction: float,
    lo: float,
    hi: float,
    steps: int = 24,
) -> tuple[float, dict[str, int]]:
    """The knob in ``[lo, hi]`` (both > 0) whose per-group removal counts ``counts_at(knob)``
    remove the fraction of ``kind`` nearest ``fraction``, by geometric bisection (the counts
    must grow with the knob): ``(knob, counts)``. Methods whose paper decides every layer's
    width from one setting (a preference, a threshold) tune that setting to a target with it;
    :func:`share_importance` then closes the last gap at the same proportions."""
    best: tuple[float, float, dict[str, int]] | None = None
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        counts = counts_at(mid)
        got = removed_fraction(graph, counts, kind)
        if best is None or abs(got - fraction) < best[0]:
            best = (abs(got - fraction), mid, counts)
        lo, hi = (mid, hi) if got < fraction else (lo, mid)
    assert best is not None
    return best[1], best[2]


def select_at_proportions(
    graph: Graph,
    within: Callable[[Group], torch.Tensor],
    counts: Mapping[str, int],
    target: Target,
) -> dict[str, list[int]]:
    """The selection meeting ``target`` (within the core's tolerance) that removes from each
    group of ``counts`` a share proportional to ``counts[name] / size`` (the widths a knob gave,
    scaled by one factor), lowest ``within`` first; groups not in ``counts`` keep everything.
    A group whose count is 0 gets a vanishing share: its channels come after every other, only
    when the target cannot be met within the tolerance without them (a net of a few wide layers
    moves in steps larger than 1%). If no selection in that order lands within the tolerance
    (two narrow layers whose channels each cost several percent), the core's layer-scope
    search (one rate for the groups of ``counts``, then single channels) decides instead."""
    sizes = {g.name: g.size for g in graph.groups}
    shares = {n: c / sizes[n] for n, c in counts.items() if n in sizes}
    floor = 1e-9 * min((s for s in shares.values() if s > 0), default=1.0)
    shares = {n: max(s, floor) for n, s in shares.items()}
    try:
        return select_channels(
            graph,
            scope="global",
            normalize=False,
            importance=share_importance(within, shares),
            **target.as_dict(),
        )
    except ConfigError:

        def in_counts(group: Group) -> torch.Tensor:
            if group.name in shares:
                return within(group).double()
            return torch.full((group.size,), math.inf, dtype=torch.float64)

        return select_channels(graph, scope="layer", importance=in_counts, **target.as_dict())


def prunable_groups(graph: Graph, only_chains: bool) -> list[Group]:
    return [c.group for c in chains(graph)] if only_chains else list(graph.groups)


def eval_modes(model: nn.Module) -> dict[nn.Module, bool]:
    modes = {m: m.training for m in model.modules()}
    model.eval()  # tracing must not update BatchNorm statistics
    return modes


def restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, mode in modes.items():
        m.train(mode)
