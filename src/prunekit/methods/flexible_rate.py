"""FlexPruner — Li, Ma, Wang, Yue, Li, Liu, Feng, Xue, "Optimizing deep neural networks on
intelligent edge accelerators via flexible-rate filter pruning" (J. Syst. Archit. 2022).

Fixed per-layer pruning rates ignore that layers differ in how much the loss and the device's
latency depend on them. FlexPruner lets every layer find its own rate: a greedy selection of the
filters to prune inside an iterative, loss-aware pruning process, measured against the target
device's latency. As run here (one step of the loop removes one layer's next block of filters):

1. **Latency of each width.** The per-layer latency table of the run's device setting
   (:mod:`prunekit.measure.latency_table`: every layer timed per width on the runtime, batch
   size and threads of the target) predicts the model's latency for any set of widths. With a
   FLOPs or params target the graph's planned FLOPs or params stand in for latency.
2. **Candidates.** For every channel group, remove its next ``step`` of filters (a fraction of
   its width, at least one, moved to the table's knee: the fastest measured width at or above),
   the lowest-ranked ones by ``criterion`` inside the layer. Each candidate is scored by what it
   costs and what it buys: the increase of the calibration loss (cross-entropy on
   ``loss_batches`` batches, with the candidate's filters zeroed on top of everything already
   pruned; zeroing a group is exactly its removal) over the latency it saves.
3. **Greedy step.** The candidate with the least loss per latency saved is pruned (its filters
   stay zeroed), and the loop goes back to 2 on the pruned model: the rates are re-decided after
   every step, so each layer's rate is whatever the loss and the device make it.
4. **Stop and check.** The last step takes only as many of its filters as the goal needs
   (FLOPs or params; a latency step stays on the knees). When the predicted latency meets the
   target, the selected filters are
   removed; a copy is timed for real first, and a measured shortfall beyond the table's
   tolerance lowers the predicted goal by the miss and the loop continues (at most ``rounds``
   checks). The report holds the dense, predicted and measured latency.

The paper's full text (its algorithm box and settings) was not available here: what is above
follows its abstract ("a greedy-based strategy to select the filters to be pruned and ... an
iterative loss-aware pruning process", per-layer rates evaluated on the edge device's latency)
and the catalogue entry. Deviations: no fine-tuning between greedy steps (the runner fine-tunes
once afterwards; the loss after each step is that of the model pruned so far); the device is
the machine's CPU through torch or onnxruntime, not an edge accelerator.

Defaults and where they come from:

* ``step`` 1/16 of a group's width per greedy step: chosen here (the paper's step size is not
  in its abstract); with widths of 16 to 64 it moves one to four filters, a knee of a CPU kernel;
* ``criterion`` ``l2``: filter norm ranks filters inside a layer, the ranking the norm-based
  filter pruning that FlexPruner compares with and builds on uses (assumed, see above);
* ``loss_batches`` 1: calibration batches per loss evaluation, chosen here for cost
  (candidates x steps forward passes);
* the latency setting: the run's latency target (``--latency-runtime/-batch/-threads``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.measure.latency_table import LatencyMeter, width_grid
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import Options, option
from prunekit.prune import PruneReport, remove_selected, selection_roots


@dataclass(frozen=True)
class FlexibleRateOptions(Options):
    step: float = option(
        1 / 16,
        help="fraction of a group's width one greedy step removes (at least one filter)",
        source="chosen here: the paper's step size is not in its abstract (see the module docstring)",
        low=1e-6,
        high=1.0,
    )
    criterion: str = option(
        "l2",
        help="ranking of the filters inside a group (lowest pruned first)",
        source="filter-norm ranking of the norm-based methods the paper compares with (assumed)",
        choices=("l1", "l2", "fpgm"),
    )
    loss_batches: int = option(
        1,
        help="calibration batches the loss of each candidate is measured on",
        source="chosen here for cost: one loss per candidate per greedy step",
        low=1,
    )


def _loss(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x.to(device))
            total += float(nn.functional.cross_entropy(out, y.to(device), reduction="sum"))
            n += len(y)
    return total / max(n, 1)


class _Zeroed:
    """Zero some units of a group, and put every touched layer back afterwards."""

    def __init__(self, graph: Graph, group: Group, indices: list[int]) -> None:
        self.graph, self.group, self.indices = graph, group, indices

    def __enter__(self) -> None:
        layers = {m.layer for m in self.group.members}
        self.saved = [
            (t, t.detach().clone())
            for name in layers
            for t in (
                *self.graph.sites[name].module.parameters(recurse=False),
                *self.graph.sites[name].module.buffers(recurse=False),
            )
        ]
        with torch.no_grad():
            self.group.zero(self.indices)

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for t, v in self.saved:
                t.copy_(v)


@dataclass
class Candidate:
    group: str
    indices: list[int]  # the group's units this step removes
    loss: float  # calibration loss with them zeroed (and everything chosen before)
    saved: float  # latency (or FLOPs / params) they save


def greedy_step(candidates: list[Candidate], base_loss: float) -> Candidate | None:
    """The candidate with the least loss increase per latency saved (None if none saves any)."""
    useful = [c for c in candidates if c.saved > 0]
    if not useful:
        return None
    return min(useful, key=lambda c: ((c.loss - base_loss) / c.saved, -c.saved))


class FlexibleRate:
    """The greedy loop on one graph; ``cost(roots)`` is the latency (or FLOPs, params) of the
    model without ``roots``, ``snap(group, keep)`` the width kept instead of ``keep``."""

    def __init__(
        self,
        graph: Graph,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        opts: FlexibleRateOptions,
        cost: Any,
        snap: Any = None,
        grid: Any = None,
    ) -> None:
        self.graph, self.batches, self.opts = graph, batches, opts
        self.cost, self.snap = cost, snap
        self.grid = grid or (lambda n: list(range(1, n + 1)))
        crit = criteria.get(opts.criterion)
        self.order = {
            g.name: torch.argsort(crit(g).double(), stable=True).tolist() for g in graph.groups
        }
        self.removed: dict[str, int] = {g.name: 0 for g in graph.groups}

    def picks(self, removed: dict[str, int] | None = None) -> dict[str, list[int]]:
        removed = self.removed if removed is None else removed
        return {n: sorted(self.order[n][:k]) for n, k in removed.items() if k}

    def _next(self, g: Group) -> int | None:
        """How many units of ``g`` are removed after its next step (None: it cannot shrink)."""
        keep = g.size - self.removed[g.name]
        want = keep - max(1, math.ceil(self.opts.step * g.size))
        if want < 1:
            return None
        below = [w for w in self.grid(g.size) if w <= want]
        w = max(below) if below else want
        if self.snap is not None:
            w = self.snap(g, w)
        return g.size - w if w < keep else None

    def candidates(self) -> list[Candidate]:
        now = self.cost(selection_roots(self.graph, self.picks()))
        out = []
        for g in self.graph.groups:
            n = self._next(g)
            if n is None:
                continue
            trial = {**self.removed, g.name: n}
            saved = now - self.cost(selection_roots(self.graph, self.picks(trial)))
            new = self.order[g.name][self.removed[g.name] : n]
            with _Zeroed(self.graph, g, new):
                loss = _loss(self.graph.model, self.batches)
            out.append(Candidate(g.name, new, loss, saved))
        return out

    def run(self, goal: float) -> None:
        """Greedy steps until the cost is at most ``goal``."""
        groups = {g.name: g for g in self.graph.groups}
        while self.cost(selection_roots(self.graph, self.picks())) > goal:
            base = _loss(self.graph.model, self.batches)
            best = greedy_step(self.candidates(), base)
            if best is None:
                raise ConfigError(
                    "flexible_rate cannot reach the target: no group can lose more channels "
                    "(every group keeps at least one; protected layers are kept)"
                )
            take = best.indices
            if self.snap is None:  # FLOPs / params: the last step stops at the goal
                for n in range(1, len(take) + 1):
                    trial = {**self.removed, best.group: self.removed[best.group] + n}
                    if self.cost(selection_roots(self.graph, self.picks(trial))) <= goal:
                        take = take[:n]
                        break
            with torch.no_grad():
                groups[best.group].zero(take)  # kept zeroed: removed at the end
            self.removed[best.group] += len(take)


@register_method("flexible_rate")
class FlexibleRateMethod(Method):
    """FlexPruner (Li et al., J. Syst. Archit. 2022): per-layer pruning rates found greedily
    against the target device's measured latency, each step pruning the layer whose next filters
    cost the least calibration loss per millisecond saved; the result is checked on a timed
    copy. A FLOPs or params target uses the planned FLOPs or params instead of latency."""

    Options = FlexibleRateOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("latency", "flops", "params", method=self.id)
        model = ctx.model
        modes = eval_modes(model)
        try:
            graph = build(model, ctx.example_input)
            dense = graph.plan([])
            batches = ctx.calibration()[: opts.loss_batches]
            if not batches:
                raise ConfigError("flexible_rate needs at least one calibration batch")
            original = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if target.kind == "latency":
                meter = LatencyMeter(target.setting, progress=bool(opts.progress))
                predictor = meter.predictor(graph, ctx.example_input)
                loop = FlexibleRate(
                    graph,
                    batches,
                    opts,
                    predictor.predict,
                    predictor.snap,
                    lambda n: width_grid(n, meter.max_points, meter.granularity),
                )
                check = _meet(loop, predictor, target.fraction)
            else:
                metric = target.kind

                def cost(roots: list[int]) -> float:
                    return float(getattr(graph.plan(roots), metric))

                loop = FlexibleRate(graph, batches, opts, cost)
                loop.run((1.0 - target.fraction) * getattr(dense, metric))
                check = None
            picks = loop.picks()
            model.load_state_dict(original)  # the zeros were for scoring; removal is exact
            report = remove_selected(graph, picks, dense)
            report.latency = check
            return report
        finally:
            restore_modes(modes)


def _meet(loop: FlexibleRate, predictor: Any, fraction: float) -> Any:
    """Run the greedy loop to the predicted goal, check on a timed copy, and go on while the
    measured reduction falls short by more than the meter's tolerance."""
    from prunekit.measure.latency_table import LatencyCheck

    meter = predictor.meter
    goal = fraction
    check = None
    for r in range(1, meter.rounds + 1):
        loop.run((1.0 - goal) * predictor.dense_ms)
        picks = loop.picks()
        check = LatencyCheck(
            meter.setting,
            predictor.dense_ms,
            predictor.predict(selection_roots(loop.graph, picks)),
            rounds=r,
        )
        if not meter.verify:
            break
        check.measured_ms = predictor.measure(picks)
        miss = fraction - check.measured_reduction
        if miss <= meter.tolerance:
            break
        goal = min(0.999, goal + miss)
    return check
