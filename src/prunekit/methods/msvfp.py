"""MSVFP — Ghimire, Kim, "Magnitude and Similarity Based Variable Rate Filter Pruning for
Efficient Convolution Neural Networks" (Applied Sciences 13(1):316, 2022/23); official code
``ghimiredhikura/msvsp-filter-pruning`` (``main_vgg_cifar10.py``, ``main_resnet_imagenet.py``).

Two criteria remove two kinds of filters: the magnitude criterion (L2 norm) the *weak* ones, the
similarity criterion (summed Euclidean distance to the other filters of the layer, as FPGM) the
*redundant* ones. Per-layer rates are not fixed: each step prunes the layer whose pruning hurts
the loss least, so the rates vary from layer to layer. The algorithm (official ``prune()``):

1. until the FLOPs reduction reaches the target:

   a. criterion: L2 norm while the reduction is below ``magnitude_share`` x the target
      (official ``--method mix``: ``'norm' if current < rate_flop / 2 else 'eucl'``), then the
      summed Euclidean distance (:func:`prunekit.criteria.fpgm`);
   b. for every layer (channel group) that has lost less than ``max_layer_rate`` of its
      original filters: on a copy, remove ``round(step_rate x current width)`` of its filters
      by the criterion and measure the loss on a fixed subset of the training data;
   c. remove those filters from the layer whose trial loss was smallest;
   d. when the FLOPs reduction has grown by more than ``retrain_step`` since the last recovery,
      train ``epochs`` epochs (official: one epoch on CIFAR-10, ``--recover_epoch 2`` on
      ImageNet);

2. fine-tune (the runner's fine-tuning, shared by every method).

Here a "layer" is a channel group of the coupling graph (the convs of a residual stage form one),
and a trial is computed without copying the model: the group's channels are zeroed whole
(filter, bias, BatchNorm terms), which gives exactly the outputs of the model without them, and
the weights are restored afterwards. The loss is the mean cross-entropy over the subset
(:func:`prunekit.train.evaluate`, reduced over DDP ranks, so every rank removes the same
filters). After :meth:`MSVFP.prune`, ``history`` lists each step (group, count, criterion,
trial loss, FLOPs reduction) and ``recoveries`` the reductions at which the model was retrained.

Deviations a reader should know:

* The last step is cut so the result lands within 1% of the target (the official loop stops at
  the first step past it, overshooting by up to one step); a group whose smallest step would
  overshoot is skipped. When no group's step fits (a coarse model near its target), the rest is
  taken in single channels across groups by the current criterion (the structural core's global
  walk); that step is recorded with the names of the groups it touched and no trial loss.
* ``round(0.1 x width)`` is 0 for a width below 5 (the official code then never prunes that
  layer); here a step removes at least one filter. When no group is below ``max_layer_rate``
  and the target is not met, the limit is lifted (every group keeps at least one channel) and
  ``limit_lifted`` is set.
* The loss subset is ``loss_samples`` seeded random training samples (official: 10,000 random
  training images, ``train_loader_subset``); the default uses ``calib_batches x batch size``.
* The official recovery keeps the best checkpoint of each recovery on the test set (ImageNet
  script); here the model after the recovery epochs is kept (no selection on held-out data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Subset

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.explain import pinned_sets
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import (
    TOLERANCE,
    GroupChange,
    PruneReport,
    select_channels,
    selection_roots,
)
from prunekit.train import evaluate


@dataclass(frozen=True)
class MSVFPOptions(Options):
    step_rate: float = option(
        0.1,
        help="fraction of a group's current filters removed in one step",
        source="official main_vgg_cifar10.py / main_resnet_imagenet.py: step_prune_rate = 0.1",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    max_layer_rate: float = option(
        0.7,
        help="a group that has lost this fraction of its original filters takes no more steps",
        source="official prune(): filter_prune_limit_per_layer = 0.7",
        low=0,
        high=1,
        low_open=True,
    )
    magnitude_share: float = option(
        0.5,
        help="share of the FLOPs target reached with the magnitude (L2) criterion before the "
        "similarity (summed Euclidean distance) criterion takes over",
        source="official prune(): flop_partition_rate = rate_flop / 2 with --method mix; paper "
        "Sec. 4.5.1 (magnitude weighted against similarity)",
        low=0,
        high=1,
    )
    retrain_step: float = option(
        0.03,
        help="FLOPs reduction gained since the last recovery that triggers the next one",
        source="official main_vgg_cifar10.py (> 0.03); main_resnet_imagenet.py "
        "--retrain_step_flop 0.03",
        low=0,
        low_open=True,
    )
    epochs: int = option(
        1,
        help="recovery epochs after each retrain_step of FLOPs reduction (0: none)",
        source="official main_vgg_cifar10.py: one train_epoch per recovery (ImageNet script: "
        "--recover_epoch 2)",
        low=0,
    )
    lr: float = option(
        0.01,
        help=SHARED["lr"] + " (the recoveries)",
        source="official scripts/run_vgg16_cifar10_pruning.sh: --lr 0.01",
        low=0,
        low_open=True,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="official main_vgg_cifar10.py --momentum 0.9", low=0
    )
    weight_decay: float = option(
        5e-4,
        help=SHARED["weight_decay"],
        source="official scripts/run_vgg16_cifar10_pruning.sh: --decay 0.0005",
        low=0,
    )
    schedule: str = option(
        "constant",
        help=SHARED["schedule"],
        source="official main_vgg_cifar10.py: the recovery epoch runs at the fixed --lr",
        choices=("constant", "step", "cosine", "linear"),
    )
    loss_samples: int | None = option(
        None,
        help="training samples the trial losses are measured on (None: calib_batches x batch size)",
        source="official: a random subset of 10,000 training images (train_loader_subset)",
        low=1,
    )


@dataclass
class Step:
    """One pruning step of MSVFP."""

    group: str
    count: int
    criterion: str
    loss: float
    reduction: float
    losses: dict[str, float] = field(default_factory=dict)  # trial loss of every candidate


def step_count(width: int, step_rate: float) -> int:
    """Filters one step removes from a group of ``width``: ``int(width x rate + 0.5)`` (official
    rounding), at least 1, at most ``width - 1``."""
    return min(max(1, int(width * step_rate + 0.5)), width - 1)


@register_method("msvfp")
class MSVFP(Method):
    """MSVFP (Ghimire & Kim, Appl. Sci. 2022): loss-aware variable-rate pruning. Each step trial-
    prunes 10% of every group by the current criterion (L2 norm for the first half of the FLOPs
    target, then the summed Euclidean distance of FPGM) and removes them from the group whose
    trial loss on a training subset is smallest; short recoveries every 3% of FLOPs."""

    Options = MSVFPOptions

    def __init__(self) -> None:
        self.history: list[Step] = []
        self.recoveries: list[float] = []
        self.limit_lifted = False

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        metric, fraction = next(iter(target.as_dict().items()))
        metric = metric.removeprefix("target_")
        self.history, self.recoveries, self.limit_lifted = [], [], False
        loss_set = self._loss_subset(ctx, opts.loss_samples)

        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
        finally:
            restore_modes(modes)
        dense = graph.plan([])
        pinned = pinned_sets(graph)
        original = {g.name: list(g.units) for g in graph.groups}
        dense_value = getattr(dense, metric)
        goal = (1.0 - fraction) * dense_value
        tol = TOLERANCE * dense_value
        limit = opts.max_layer_rate
        last_recovery = 0.0

        def value(picks: dict[str, list[int]]) -> float:
            return getattr(graph.plan(selection_roots(graph, picks)), metric)

        while getattr(graph.plan([]), metric) > goal + tol:
            reduction = 1.0 - getattr(graph.plan([]), metric) / dense_value
            use_magnitude = reduction < opts.magnitude_share * fraction
            name = "l2" if use_magnitude else "distance"
            crit = criteria.l2_norm if use_magnitude else criteria.fpgm
            candidates = []
            for g in graph.groups:
                if 1.0 - g.size / len(original[g.name]) >= limit or g.size < 2:
                    continue
                order = torch.argsort(crit(g).double(), stable=True).tolist()
                count = step_count(g.size, opts.step_rate)
                while count > 0 and value({g.name: order[:count]}) < goal - tol:
                    count -= 1  # the last step: land within the tolerance, not past it
                if count > 0:
                    candidates.append((g, sorted(order[:count])))
            if not candidates:
                if limit < 1.0:
                    limit, self.limit_lifted = 1.0, True
                    continue
                self._close_gap(graph, crit, name, metric, goal, tol, dense_value, fraction)
                break
            losses = {g.name: self._trial_loss(ctx, g, idx, loss_set) for g, idx in candidates}
            group, idx = min(candidates, key=lambda c: losses[c[0].name])  # first on a tie
            graph.remove([group.units[i] for i in idx])
            reduction = 1.0 - getattr(graph.plan([]), metric) / dense_value
            self.history.append(
                Step(group.name, len(idx), name, losses[group.name], reduction, losses)
            )
            if opts.epochs > 0 and reduction - last_recovery > opts.retrain_step:
                self._recover(ctx, opts, len(self.recoveries) + 1)
                self.recoveries.append(reduction)
                last_recovery = reduction

        final = graph.plan([])
        sizes = {g.name: g.size for g in graph.groups}
        removed = {}
        for gname, units in original.items():
            alive = set(next((g.units for g in graph.groups if g.name == gname), []))
            gone = [i for i, u in enumerate(units) if u not in alive]
            if gone:
                removed[gname] = gone
        return PruneReport(
            params_before=dense.params,
            params_after=final.params,
            flops_before=dense.flops,
            flops_after=final.flops,
            groups=[GroupChange(n, len(u), sizes.get(n, 0)) for n, u in original.items()],
            removed=removed,
            pinned=pinned,
        )

    # ------------------------------------------------------------------ pieces
    def _close_gap(
        self,
        graph: Graph,
        crit: criteria.Criterion,
        name: str,
        metric: str,
        goal: float,
        tol: float,
        dense_value: float,
        fraction: float,
    ) -> None:
        """No single group's step lands within the tolerance: the rest of the reduction is
        taken in single channels across groups (the structural core's global walk, lowest
        scores of the current criterion first)."""
        current = getattr(graph.plan([]), metric)
        try:
            picks = select_channels(
                graph,
                scope="global",
                importance=crit,
                tolerance=tol / current,
                **{f"target_{metric}": 1.0 - goal / current},
            )
        except ConfigError:
            raise ConfigError(
                f"msvfp cannot reach target_{metric}={fraction:g}: no selection of channels lands "
                "within 1% of it (every group keeps at least one channel; protected layers are "
                "kept)"
            ) from None
        graph.remove(selection_roots(graph, picks))
        reduction = 1.0 - getattr(graph.plan([]), metric) / dense_value
        count = sum(len(v) for v in picks.values())
        self.history.append(Step("+".join(sorted(picks)), count, name, math.nan, reduction))

    @staticmethod
    def _loss_subset(ctx: Context, samples: int | None) -> Subset[Any]:
        total = len(ctx.train_set)  # type: ignore[arg-type]
        n = min(total, samples if samples is not None else ctx.calib_batches * ctx.batch_size)
        g = torch.Generator().manual_seed(ctx.seed)
        return Subset(ctx.train_set, torch.randperm(total, generator=g)[:n].tolist())

    @staticmethod
    def _trial_loss(ctx: Context, group: Group, idx: list[int], data: Subset[Any]) -> float:
        """Mean cross-entropy on ``data`` with the channels ``idx`` of ``group`` zeroed whole
        (the outputs of the model without them); every weight and buffer is put back."""
        model = ctx.model
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            group.zero(idx)
            loss = float(evaluate(model, data, batch_size=ctx.batch_size)["loss"])
        finally:
            model.load_state_dict(saved)
        return loss if math.isfinite(loss) else math.inf

    @staticmethod
    def _recover(ctx: Context, opts: MSVFPOptions, k: int) -> None:
        ctx.train(
            ctx.model,
            opts.epochs,
            opts.lr,
            name=f"recover{k}",
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            schedule=opts.schedule,
            progress=bool(opts.progress),
        )


__all__ = ["MSVFP", "MSVFPOptions", "Step", "step_count"]
