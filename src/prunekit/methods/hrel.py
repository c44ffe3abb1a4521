"""HRel — Sarvani, Ghorai, Dubey, Basha, "HRel: Filter pruning based on High Relevance between
activation maps and class labels" (Neural Networks 147, 2022).

1. Run labelled training batches through the trained model; for every channel estimate the
   mutual information ``I(T; Y)`` between its activation maps and the class labels with the
   matrix-based Rényi entropy of Gram matrices (Gaussian kernel of the maps, width chosen per
   layer by kernel alignment with the labels; label kernel width 0.1), averaged over the batches
   (:mod:`prunekit.criteria.hrel`, which gives the estimator and the source of each constant).
2. In every layer, remove the filters of lowest relevance (their channels carry least about the
   class), to the budget.
3. Fine-tune (the runner's fine-tuning, shared by every method).

Where the maps are read: the tensor the next layer reads (after BatchNorm, the nonlinearity and
any pooling), through :mod:`prunekit.criteria.activations`; the official code hooks the conv
outputs. The official code (``*/resnet_ex.py``) prunes in rounds: it removes a few of the least
relevant filters of every layer, retrains, and repeats until each layer reaches a hand-set
minimum width (``prune_limits`` per stage). Here, by default, one pass removes the least
relevant filters of every layer at one uniform rate that meets the run's FLOPs or params target
(layer scope, the paper's per-layer ranking), and the runner fine-tunes once; with ``rounds``
R > 1 the target is reached in R equal steps of the original FLOPs (or params), the relevance
recomputed on the pruned model each round and the model retrained ``epochs`` epochs at ``lr``
between rounds (:meth:`~prunekit.methods.base.Context.train`, checkpointed phases
``hrel_round<i>``). Calibration: the official code
averages over every training batch of 100 images; here ``calib_batches`` batches of the run's
batch size (the estimator needs two or more images per batch, and each batch's Gram matrices
are ``batch x batch``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.criteria.hrel import SIGMA_GRID, HRel
from prunekit.graph import build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import Options, option
from prunekit.prune import (
    TOLERANCE,
    GroupChange,
    PruneReport,
    prune_channels,
    remove_selected,
    select_channels,
    selection_roots,
)
from prunekit.targets import Target


@dataclass(frozen=True)
class HRelOptions(Options):
    calib_batches: int | None = option(
        None,
        help="labelled training batches the relevance is averaged over (None: the run's)",
        source="official */resnet_ex.py: every batch of the training loader (batch size 100)",
        low=1,
    )
    sigma_grid: int = option(
        SIGMA_GRID,
        help="kernel widths tried per layer and batch (linspace(0.3, 10 x mean distance, n))",
        source="official */resnet_network.py kernel_mat: 100 widths after epoch 20",
        low=1,
    )
    rounds: int = option(
        1,
        help="prune-and-retrain rounds reaching the target in equal FLOPs steps (1: one pass)",
        source="prunekit (the official resnet_ex.py prunes in rounds until per-stage limits)",
        low=1,
    )
    epochs: int = option(
        1,
        help="retraining epochs after every round but the last (the runner fine-tunes the last)",
        source="prunekit (official resnet_ex.py: new_epochs = 100 per round)",
        low=0,
    )
    lr: float = option(
        0.01,
        help="learning rate of the retraining between rounds",
        source="official resnet_ex.py: lr 0.01 after each pruning round",
        low=0.0,
        low_open=True,
    )


@register_method("hrel")
class HRelMethod(Method):
    """HRel (Sarvani et al., Neural Networks 2022): the mutual information between each
    channel's activation maps and the class labels (matrix-based Rényi entropy of Gram
    matrices), averaged over labelled calibration batches; the least relevant filters of every
    layer are removed, then the model is fine-tuned. One pass by default; ``rounds`` prunes in
    rounds with retraining between, as the official code (see the module docstring)."""

    Options = HRelOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        target = ctx.target.require("flops", "params", method=self.id)
        if opts.rounds == 1:
            return prune_channels(
                ctx.model,
                ctx.example_input,
                importance=HRel(ctx.calibration(), grid=opts.sigma_grid),
                scope="layer",
                **target.as_dict(),
            )
        modes = eval_modes(ctx.model)
        try:
            return self._rounds(ctx, opts, target)
        finally:
            restore_modes(modes)

    def _rounds(self, ctx: Context, opts: HRelOptions, target: Target) -> PruneReport:
        graph = build(ctx.model, ctx.example_input)  # traced once; removal updates it in place
        dense = graph.plan([])
        dense_value = getattr(dense, target.kind)
        sizes = {g.name: g.size for g in graph.groups}
        alive = {g.name: list(range(g.size)) for g in graph.groups}  # original indices left
        criterion = HRel(ctx.calibration(), grid=opts.sigma_grid)  # rescored when pruned
        for r in range(1, opts.rounds + 1):
            current = getattr(graph.plan([]), target.kind)
            goal = (1.0 - target.fraction * r / opts.rounds) * dense_value
            picks = select_channels(
                graph,
                scope="layer",
                importance=criterion,
                tolerance=TOLERANCE * dense_value / current,  # the original model's tolerance
                **{target.key: 1.0 - goal / current},
            )
            for name, idx in picks.items():
                drop = set(idx)
                alive[name] = [a for j, a in enumerate(alive[name]) if j not in drop]
            if r == opts.rounds:
                report = remove_selected(graph, picks, dense)
                break
            graph.remove(selection_roots(graph, picks))
            ctx.train(ctx.model, opts.epochs, opts.lr, name=f"hrel_round{r}")
            ctx.model.eval()
        report.groups = [GroupChange(n, sizes[n], len(alive[n])) for n in sizes]
        report.removed = {
            n: sorted(set(range(sizes[n])) - set(alive[n]))
            for n in sizes
            if len(alive[n]) < sizes[n]
        }
        return report
