"""Iterative pruning with the first-order Taylor criterion: Molchanov, Tyree, Karras, Aila, Kautz,
"Pruning Convolutional Neural Networks for Resource Efficient Inference" (ICLR 2017).

The criterion (:class:`prunekit.criteria.taylor.Taylor`) estimates the change of the loss from
removing feature map ``z`` as ``|mean(z * dC/dz)|`` per example, averaged over the examples, and
L2-normalises the scores of each layer so that layers compare. The method is the procedure around
it, repeated until the budget is met:

1. score every channel with the Taylor criterion on fresh calibration minibatches;
2. remove the ``maps_per_step`` lowest-scoring channels of the whole network (one global ranking
   of the normalised scores), physically;
3. fine-tune with ``finetune_steps`` minibatch SGD updates, then rebuild the channel graph of the
   smaller model and start again.

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

Options and defaults (``ctx.options``):

* ``maps_per_step`` (1): channels removed per iteration. The paper removes one feature map per
  iteration; raise it to shorten the procedure on large networks.
* ``finetune_steps`` (10): SGD updates between pruning iterations, as in the paper (10 minibatch
  updates); ``finetune_lr`` (0.001; the paper's learning rate depends on the task), momentum 0.9,
  no weight decay, minibatches of ``ctx.batch_size`` from a seeded shuffle of the training set
  (seed ``ctx.seed + 1``), model in train mode (every module's mode is restored afterwards).
* ``flops_lambda`` (0.0): the regulariser weight above.

Scoring data: each iteration takes the next ``ctx.calib_batches`` minibatches of an endless
seeded shuffle of the training set (seed ``ctx.seed``; the first iteration's batches are
``ctx.calibration()``), so every step sees fresh examples. The criterion runs the model in eval
mode (BatchNorm uses running statistics); the criterion reduces its sums across DDP ranks.

Deviations a reader should know:

* Scores are taken in eval mode on separate calibration batches, not from the training
  minibatches of the fine-tuning updates.
* A unit's score sums the normalised scores of every layer whose output carries it: a conv and
  its BatchNorm, or every layer of a residual stream (one coupled unit there).
* Every group keeps at least one channel; channels of protected layers are kept.
* The last step may remove more or fewer than ``maps_per_step`` channels so that the target is
  met; the runner's fine-tuning replaces the paper's continued fine-tuning after it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch

from prunekit.criteria.taylor import Taylor
from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.retraining import batch_stream, sgd_steps
from prunekit.prune import (
    TOLERANCE,
    GroupChange,
    PruneReport,
    remove_selected,
    select_channels,
    selection_roots,
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
    if flops_lambda > 0:
        saved = flops_savings(graph, flops_unit)
        scores = {n: s - flops_lambda * saved[n] for n, s in scores.items()}
    return scores


@register_method("taylor")
class TaylorPruning(Method):
    """Iterative Taylor pruning (Molchanov et al., ICLR 2017): score every channel with the
    normalised first-order Taylor criterion on fresh calibration batches, remove the
    ``maps_per_step`` lowest globally, fine-tune ``finetune_steps`` SGD updates, repeat until the
    original model's FLOPs or params target is met (the last step meets it within 1%). Optional
    FLOPs regulariser ``flops_lambda``.

    After :meth:`prune`: ``history``, the channels removed at every step (``{group: indices}``
    in that step's graph). The returned report compares the original model with the final one;
    its ``removed`` holds indices of the original groups. See the module docstring for options
    and deviations."""

    defaults: ClassVar[dict[str, Any]] = {
        "maps_per_step": 1,
        "finetune_steps": 10,
        "finetune_lr": 0.001,
        "flops_lambda": 0.0,
    }

    def __init__(self) -> None:
        self.history: list[dict[str, list[int]]] = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        self._check(opts)
        target = ctx.target.require("flops", "params", method=self.id)
        modes = {m: m.training for m in ctx.model.modules()}
        ctx.model.eval()  # tracing and scoring in eval mode; fine-tuning switches to train
        try:
            return self._run(ctx, opts, target.key, target.fraction)
        finally:
            for m, mode in modes.items():
                m.train(mode)

    @staticmethod
    def _check(opts: dict[str, Any]) -> None:
        if opts["maps_per_step"] < 1:
            raise ConfigError(f"maps_per_step must be a positive int, got {opts['maps_per_step']}")
        if opts["finetune_steps"] < 0:
            raise ConfigError(f"finetune_steps must be >= 0, got {opts['finetune_steps']}")
        if not (opts["finetune_lr"] > 0 and math.isfinite(opts["finetune_lr"])):
            raise ConfigError(f"finetune_lr must be a positive number, got {opts['finetune_lr']}")
        if not (opts["flops_lambda"] >= 0 and math.isfinite(opts["flops_lambda"])):
            raise ConfigError(f"flops_lambda must be a number >= 0, got {opts['flops_lambda']}")

    def _run(self, ctx: Context, opts: dict[str, Any], key: str, target: float) -> PruneReport:
        metric = key.removeprefix("target_")
        score_batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed)
        tune_batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed + 1)
        graph = build(ctx.model, ctx.example_input)
        dense = graph.plan([])
        dense_value = getattr(dense, metric)
        goal = (1.0 - target) * dense_value
        tol = TOLERANCE * dense_value
        sizes = {g.name: g.size for g in graph.groups}
        alive = {g.name: list(range(g.size)) for g in graph.groups}  # original indices left
        self.history = []
        k = opts["maps_per_step"]
        while True:
            current = getattr(graph.plan([]), metric)
            batches = [next(score_batches) for _ in range(max(1, ctx.calib_batches))]
            scores = taylor_scores(
                graph, batches, flops_lambda=opts["flops_lambda"], flops_unit=dense.flops or 1
            )

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
                if name not in alive:  # pragma: no cover - rebuilt groups keep their names
                    continue
                drop = set(idx)
                alive[name] = [a for j, a in enumerate(alive[name]) if j not in drop]
            if last:
                report = remove_selected(graph, picks, dense)
                break
            graph.remove(selection_roots(graph, picks))
            sgd_steps(ctx.model, tune_batches, opts["finetune_steps"], opts["finetune_lr"])
            graph = build(ctx.model, ctx.example_input)  # the smaller model, afresh
        report.groups = [GroupChange(n, sizes[n], len(alive[n])) for n in sizes]
        report.removed = {
            n: sorted(set(range(sizes[n])) - set(alive[n]))
            for n in sizes
            if len(alive[n]) < sizes[n]
        }
        return report


__all__ = ["TaylorPruning", "flops_savings", "taylor_scores"]
