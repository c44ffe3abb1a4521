"""What the graph makes of a model, in words: :func:`explain`.

Users' first question about a pruning tool is why a model, or part of it, does not prune. The
report lists the prunable groups, every set of pinned channels with the reason and the layers
that carry it, the submodules kept whole (and why), and, when the graph cannot be built at all,
the refusal with the fix: the handler or op rule to register, or the layer to leave out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from prunekit.errors import UnsupportedError
from prunekit.graph.core import Graph, build
from prunekit.measure._inputs import Inputs


@dataclass
class GroupInfo:
    name: str
    size: int
    layers: list[str]
    exact: bool


@dataclass
class PinnedSet:
    """Channels that stay, all for one reason: how many units, and the layers carrying them."""

    reason: str
    units: int
    layers: list[str]


@dataclass
class Report:
    """The result of :func:`explain`; ``str(report)`` is the readable form."""

    model: str
    groups: list[GroupInfo] = field(default_factory=list)
    pinned: list[PinnedSet] = field(default_factory=list)
    opaque: dict[str, str] = field(default_factory=dict)
    refusal: str | None = None
    fix: str | None = None

    @property
    def prunable(self) -> int:
        return sum(g.size for g in self.groups)

    def __str__(self) -> str:
        lines = [f"{self.model}:"]
        if self.refusal is not None:
            lines.append(f"  refused: {self.refusal}")
            if self.fix:
                lines.append(f"  fix: {self.fix}")
            return "\n".join(lines)
        lines.append(f"  {len(self.groups)} prunable groups, {self.prunable} units")
        for g in self.groups:
            tag = "" if g.exact else " (inexact: a member normalises across the channels)"
            lines.append(f"    {g.name}: {g.size} units over {len(g.layers)} layers{tag}")
        if self.pinned:
            lines.append("  pinned:")
            for p in self.pinned:
                shown = ", ".join(p.layers[:6]) + (" ..." if len(p.layers) > 6 else "")
                lines.append(f"    {p.units} units: {p.reason} [{shown}]")
        for name, why in self.opaque.items():
            lines.append(f"  kept whole: {name} ({why})")
        return "\n".join(lines)


def pinned_sets(graph: Graph) -> list[PinnedSet]:
    """Every pinned class of channels the layers carry, grouped by reason."""
    labels = graph.labels
    reasons: dict[int, str] = {}
    for root in labels.fixed_roots():
        reason = labels.fixed_reason(root)
        if reason is not None:
            reasons[root] = reason
    units: dict[str, set[int]] = {}
    layers: dict[str, dict[str, None]] = {}
    for site, _, _, roots in graph._unit_sides():
        for r in np.unique(roots).tolist():
            why = reasons.get(r)
            if why is not None:
                units.setdefault(why, set()).add(r)
                layers.setdefault(why, {})[site.name] = None
    return [
        PinnedSet(why, len(units[why]), list(layers[why]))
        for why in sorted(units, key=lambda w: -len(units[w]))
    ]


def explain(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    ignore: Iterable[str | nn.Module] = (),
    protected: Iterable[str] | None = None,
) -> Report:
    """Build the graph of ``model`` (which is left untouched) and report what prunes, what is
    pinned and why, and what was refused with its fix."""
    report = Report(type(model).__name__)
    try:
        graph = build(model, example_inputs, ignore=ignore, protected=protected)
    except UnsupportedError as err:
        report.refusal = str(err)
        report.fix = getattr(err, "fix", None)
        return report
    report.groups = [
        GroupInfo(g.name, g.size, sorted({m.layer for m in g.members}), g.exact)
        for g in graph.groups
    ]
    report.pinned = pinned_sets(graph)
    report.opaque = dict(graph.opaque)
    return report
