"""Iterative pruning with the first-order Taylor criterion: Molchanov, Tyree, Karras, Aila, Kautz,
"Pruning Convolutional Neural Networks for Resource Efficient Inference" (ICLR 2017).

The criterion (:class:`prunekit.criteria.taylor.Taylor`) estimates the change of the loss from
removing feature map ``z`` (the map the next layer reads, after the nonlinearity) as
``|mean(z * dC/dz)|`` per example, averaged over the examples, and L2-normalises the scores of
each layer (each channel group) so that layers compare. The method is the procedure around it,
repeated until the budget is met (the paper alternates pruning and fine-tuning):

1. score every channel with the Taylor criterion;
2. remove the ``maps_per_step`` lowest-scoring channels of the whole network (one global ranking
   of the normalised scores), physically;
3. fine-tune with ``finetune_steps`` minibatch SGD updates; the criterion for the next removal is
   averaged over these updates (their backward passes give the gradients at no extra cost), and
   the loop starts again.

The loop stops when the next step would reach the FLOPs or params target of the *original*
model: that last step removes, with the same global ranking, exactly what remains (a fraction of
the current model chosen so that the total meets the target within 1% of the original figure).
The runner fine-tunes the result afterwards.

FLOPs regulariser (paper: ``Theta_flops = Theta - lambda * FLOPs_l``). With ``flops_lambda``
``> 0`` each channel's score is lowered by ``flops_lambda`` times the FLOPs its removal saves,
expressed as a fraction of the original model's FLOPs (removing one channel from the current
model; every channel of a group is removed from the same layers, so one plan per group gives it).
Channels of costly layers then go first. The unit of FLOPs is this library's choice; the
default 0 leaves the criterion as is.

Cost, and the defaults. The paper removes one feature map per iteration with 10 updates between
(``maps_per_step=1``): a run costs one iteration per removed channel. On ResNet-20 / digits at
50% FLOPs that is about 210 iterations, i.e. ~2,100 SGD updates and 210 rescorings: about an
hour at the ~18 s per iteration measured on a shared CPU core (one thread; the defaults' run is
in ``benchmarks/results/method_walltime.md``). By default
(``maps_per_step=None``) each iteration removes about ``1/iterations`` of the channels a
one-shot global selection at the target would remove, so a run has about ``iterations`` (10)
iterations whatever the model. Each iteration is cheap: the channel graph is updated in place by
the removal (no re-tracing), and the scores come from the fine-tuning updates already run.

Options: :class:`TaylorOptions` (``prunekit methods --show taylor``).

Scoring data: the first iteration scores on ``ctx.calibration()`` (eval mode); later ones on the
``finetune_steps`` training minibatches since the last removal (train mode, the paper's
setting), or, with ``scoring="calibration"`` or ``finetune_steps=0``, on the next
``ctx.calib_batches`` minibatches of a seeded shuffle of the training set in eval mode. Sums are
reduced across DDP ranks.

Deviations a reader should know:

* Every group keeps at least one channel; channels of protected layers are kept.
* The last step may remove more or fewer than ``maps_per_step`` channels so that the target is
  met; the runner's fine-tuning replaces the paper's continued fine-tuning after it.
* A coupled group (the channels of a residual stage) is one vector, normalised once (see
  :mod:`prunekit.criteria.taylor`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from prunekit.criteria.activations import Recorder, per_group, readers
from prunekit.criteria.taylor import Taylor
from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import batch_stream, sgd_steps
from prunekit.prune import (
    TOLERANCE,
    GroupChange,
    PruneReport,
    remove_selected,
    select_channels,
    selection_roots,
)


@dataclass(frozen=True)
class TaylorOptions(Options):
    renamed = {"finetune_lr": "lr"}  # noqa: RUF012 - a ClassVar of the base

    maps_per_step: int | None = option(
        None,
        help="channels removed per iteration (None: about 1/iterations of the channels a "
        "one-shot selection at the target removes). 1 is the paper's setting: one iteration "
        "per removed channel, ~210 on ResNet-20 / digits at 50% FLOPs: about an hour at the ~18 s per iteration measured on a shared CPU core",
        source="paper (pruning procedure): one feature map per iteration; None: prunekit",
        low=1,
    )
    iterations: int = option(
        10,
        help="iterations when maps_per_step is None",
        source="prunekit: a few minutes on the zoo models on one CPU core",
        low=1,
    )
    finetune_steps: int = option(
        10,
        help="minibatch SGD updates between removals (momentum 0.9, no weight decay)",
        source="paper (pruning procedure): 10 minibatch updates between pruning iterations",
        low=0,
    )
    lr: float = option(
        0.001,
        help=SHARED["lr"] + " (the updates between removals)",
        source="prunekit (the paper's rate depends on the task)",
        low=0,
        low_open=True,
    )
    flops_lambda: float = option(
        0.0,
        help="FLOPs regulariser weight: score minus lambda x (FLOPs a removal saves / dense FLOPs)",
        source="paper (FLOPs regularization, Theta_flops); 0: off",
        low=0,
    )
    scoring: str = option(
        "updates",
        help="'updates': score on the fine-tuning minibatches since the last removal; "
        "'calibration': a separate eval-mode pass on fresh training batches every iteration",
        source="prunekit",
        choices=("updates", "calibration"),
    )


def _closest_single(
    graph: Graph, scores: dict[str, torch.Tensor], metric: str, goal: float
) -> dict[str, list[int]]:
    """Of removing nothing or one channel (the lowest-scored of one group), the selection whose
    ``metric`` lands nearest ``goal``."""
    options: list[dict[str, list[int]]] = [{}]
    options += [
        {g.name: [int(torch.argmin(scores[g.name]))]}
        for g in graph.groups
        if g.size > 1 and torch.isfinite(scores[g.name]).any()
    ]
    return min(
        options, key=lambda p: abs(getattr(graph.plan(selection_roots(graph, p)), metric) - goal)
    )


def flops_savings(graph: Graph, unit: float) -> dict[str, float]:
    """Per group, the FLOPs saved by removing one of its channels from the graph's model,
    divided by ``unit``."""
    now = graph.plan([]).flops
    return {g.name: (now - graph.plan([g.units[0]]).flops) / unit for g in graph.groups}


def regularised(
    graph: Graph, scores: dict[str, torch.Tensor], flops_lambda: float, flops_unit: float
) -> dict[str, torch.Tensor]:
    """``scores`` minus ``flops_lambda`` times the FLOPs each channel's removal saves (in
    ``flops_unit``s), when ``flops_lambda > 0``."""
    if not flops_lambda > 0:
        return scores
    saved = flops_savings(graph, flops_unit)
    return {n: s - flops_lambda * saved[n] for n, s in scores.items()}


def taylor_scores(
    graph: Graph,
    batches: list[Any],
    *,
    flops_lambda: float = 0.0,
    flops_unit: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per group, each channel's L2-normalised Taylor score on ``batches``, minus
    ``flops_lambda`` times the FLOPs its removal saves (in ``flops_unit``s) when that is > 0."""
    crit = Taylor(batches)
    scores = {g.name: crit(g).double() for g in graph.groups}
    return regularised(graph, scores, flops_lambda, flops_unit)


def scores_from_updates(
    ctx: Context, graph: Graph, crit: Taylor, batches: Any, steps: int, lr: float
) -> dict[str, torch.Tensor] | None:
    """Run ``steps`` SGD updates and return the Taylor scores averaged over them (None if a
    channel was never seen)."""
    taps = readers(graph)
    with Recorder(ctx.model, taps, crit.stat, grad=True) as rec:
        sgd_steps(ctx.model, batches, steps, lr)
    values = per_group(graph, taps, rec.means())
    if any(torch.isnan(v).any() for v in values.values()):
        return None
    return {name: crit.finish(v) for name, v in values.items()}


@register_method("taylor")
class TaylorPruning(Method):
    """Iterative Taylor pruning (Molchanov et al., ICLR 2017): score every channel with the
    normalised first-order Taylor criterion, remove the lowest globally (``maps_per_step``, by
    default about 1/10 of what the target needs), fine-tune ``finetune_steps`` SGD updates
    (which also give the next scores), repeat until the original model's FLOPs or params target
    is met (the last step meets it within 1%). Optional FLOPs regulariser ``flops_lambda``.

    After :meth:`prune`: ``history``, the channels removed at every step (``{group: indices}``
    in that step's graph). The returned report compares the original model with the final one;
    its ``removed`` holds indices of the original groups. See the module docstring for the cost
    of the paper's one-map-per-iteration setting and the deviations."""

    Options = TaylorOptions

    def __init__(self) -> None:
        self.history: list[dict[str, list[int]]] = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        modes = {m: m.training for m in ctx.model.modules()}
        ctx.model.eval()  # tracing and scoring in eval mode; fine-tuning switches to train
        try:
            return self._run(ctx, opts, target.key, target.fraction)
        finally:
            for m, mode in modes.items():
                m.train(mode)

    def _run(self, ctx: Context, opts: TaylorOptions, key: str, target: float) -> PruneReport:
        metric = key.removeprefix("target_")
        score_batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed)
        tune_batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed + 1)
        graph = build(ctx.model, ctx.example_input)  # traced once; removal updates it in place
        dense = graph.plan([])
        dense_value = getattr(dense, metric)
        goal = (1.0 - target) * dense_value
        tol = TOLERANCE * dense_value
        sizes = {g.name: g.size for g in graph.groups}
        alive = {g.name: list(range(g.size)) for g in graph.groups}  # original indices left
        self.history = []
        first = [next(score_batches) for _ in range(max(1, ctx.calib_batches))]
        crit = Taylor(first)
        unit = dense.flops or 1
        scores: dict[str, torch.Tensor] | None = taylor_scores(
            graph, first, flops_lambda=opts.flops_lambda, flops_unit=unit
        )
        k = opts.maps_per_step or self._auto_step(graph, scores, key, target, opts.iterations)
        while True:
            if scores is None:
                batches = [next(score_batches) for _ in range(max(1, ctx.calib_batches))]
                scores = taylor_scores(
                    graph, batches, flops_lambda=opts.flops_lambda, flops_unit=unit
                )
            current = getattr(graph.plan([]), metric)

            def importance(group: Any, scores: dict[str, torch.Tensor] = scores) -> torch.Tensor:
                return scores[group.name]

            total = sum(g.size for g in graph.groups)
            # floor(ratio * total) == k exactly: the k lowest scores of the whole network
            ratio = min(k + 0.5, total - 0.5) / total
            picks = select_channels(
                graph, ratio=ratio, scope="global", normalize=False, importance=importance
            )
            if not any(picks.values()):
                raise ConfigError(
                    f"cannot reach {key}={target:g}: no channel is left to remove (every group "
                    "keeps at least one channel; protected layers are kept)"
                )
            after = getattr(graph.plan(selection_roots(graph, picks)), metric)
            last = after <= goal + tol
            if last and after < goal - tol:  # this step overshoots: remove exactly what remains
                try:
                    picks = select_channels(
                        graph,
                        scope="global",
                        normalize=False,
                        importance=importance,
                        tolerance=tol / current,  # the original model's tolerance
                        **{key: 1.0 - goal / current},
                    )
                except ConfigError:
                    # every way to remove what remains misses by more than the tolerance: take
                    # the closest of "stop here" and "one more channel" (each group's lowest)
                    picks = _closest_single(graph, scores, metric, goal)
                    achieved = getattr(graph.plan(selection_roots(graph, picks)), metric)
                    warnings.warn(
                        f"taylor: the channels left are too coarse to meet {key}={target:g} "
                        f"within {TOLERANCE:.0%}; stopping at "
                        f"{1 - achieved / dense_value:.2%} removed",
                        stacklevel=2,
                    )
            self.history.append(picks)
            for name, idx in picks.items():
                drop = set(idx)
                alive[name] = [a for j, a in enumerate(alive[name]) if j not in drop]
            if last:
                report = remove_selected(graph, picks, dense)
                break
            graph.remove(selection_roots(graph, picks))
            scores = None
            if opts.scoring == "updates" and opts.finetune_steps > 0:
                scores = scores_from_updates(
                    ctx, graph, crit, tune_batches, opts.finetune_steps, opts.lr
                )
                if scores is not None:
                    scores = regularised(graph, scores, opts.flops_lambda, unit)
            else:
                sgd_steps(ctx.model, tune_batches, opts.finetune_steps, opts.lr)
            ctx.model.eval()
        report.groups = [GroupChange(n, sizes[n], len(alive[n])) for n in sizes]
        report.removed = {
            n: sorted(set(range(sizes[n])) - set(alive[n]))
            for n in sizes
            if len(alive[n]) < sizes[n]
        }
        return report

    @staticmethod
    def _auto_step(
        graph: Graph, scores: dict[str, torch.Tensor], key: str, target: float, iterations: int
    ) -> int:
        """About ``1/iterations`` of the channels one global selection at the target removes."""
        try:
            picks = select_channels(
                graph,
                scope="global",
                normalize=False,
                importance=lambda g: scores[g.name],
                **{key: target},
            )
            needed = sum(len(v) for v in picks.values())
        except ConfigError:  # too coarse to meet within the tolerance in one shot: estimate
            needed = sum(g.size for g in graph.groups) // 2
        return max(1, math.ceil(needed / iterations))


__all__ = [
    "TaylorOptions",
    "TaylorPruning",
    "flops_savings",
    "regularised",
    "scores_from_updates",
    "taylor_scores",
]
