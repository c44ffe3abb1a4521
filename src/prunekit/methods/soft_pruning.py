"""The soft filter pruning mechanism shared by SFP and FPGM: zero the weakest filters after every
epoch, keep training them, remove them physically at the end.

Both papers prune with the soft step every epoch over the whole training schedule, from scratch
or from a pretrained model (CIFAR-10 ResNets: the usual 200-epoch schedule). Here the model
arrives trained, and the soft phase is short: ``soft_epochs`` epochs (option, default 3) of SGD
at ``soft_lr`` (option, default 0.01; momentum, weight decay and the cosine schedule are
:class:`~prunekit.train.TrainConfig`'s defaults). ``soft_epochs=0`` reduces to one-shot pruning
with the method's criterion.

Differences from the papers, on purpose:

* The per-layer rate comes from the run's FLOPs or params target: :func:`prunekit.prune.
  select_channels` with ``scope="layer"`` finds the uniform rate that meets it (and closes the
  last gap with single filters in score order), so the rate is one number for every layer, as
  in the papers, up to that last adjustment. Coupled channels (a residual stage) form one group
  and are scored and zeroed together.
* Between epochs only the filters are zeroed (conv / Linear weights and biases,
  ``Group.zero(..., filters_only=True)``), as in the papers: BatchNorm keeps its scale and
  shift, so a zeroed filter keeps receiving gradient and can recover. At the end the final
  selection is zeroed whole (BatchNorm terms included) and removed, so the removed model computes
  exactly what that fully zeroed model computes; it differs from the soft-trained model by the
  BatchNorm shifts of the removed channels, as pruning does in the papers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import Dataset

from prunekit import criteria
from prunekit.graph import Graph, build
from prunekit.measure._inputs import Inputs
from prunekit.methods.base import Context, Method
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import TrainConfig, TrainResult, fit

DEFAULT_SOFT_EPOCHS = 3
DEFAULT_SOFT_LR = 0.01


class SoftPruner:
    """The soft filter pruning mechanism shared by SFP and FPGM.

    Builds the channel graph of ``model`` once. :meth:`step` selects, for the ``target``
    (``{"target_flops": f}`` or ``{"target_params": f}``), the lowest-scored channels of every
    group under ``criterion`` and zeroes them in place; :meth:`callback` runs it at every
    ``"epoch_end"`` of :func:`prunekit.train.fit`; :meth:`finish` selects once more, zeroes and
    removes the selection physically.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Inputs,
        target: Target | Mapping[str, float],
        criterion: str | criteria.Criterion = "l2",
    ) -> None:
        self.model = model
        self.target = Target.of(target).require("flops", "params")
        self.criterion = criteria.get(criterion)
        self.graph: Graph = build(model, example_input)
        self.dense = self.graph.plan([])
        self.history: list[dict[str, list[int]]] = []  # the selection of every step, in order

    def select(self) -> dict[str, list[int]]:
        """``{group name: indices}`` to zero now: the same rate in every group (``scope="layer"``)
        meeting the target, lowest scores first."""
        return select_channels(
            self.graph, scope="layer", importance=self.criterion, **self.target.as_dict()
        )

    def step(self) -> dict[str, list[int]]:
        """Zero the currently selected channels (they stay in the model and keep training)."""
        picks = self.select()
        groups = {g.name: g for g in self.graph.groups}
        for name, indices in picks.items():
            # the filters only, as in the papers: BatchNorm keeps its scale, so a zeroed filter
            # keeps receiving gradient and can recover in the next epoch
            groups[name].zero(indices, filters_only=True)
        self.history.append(picks)
        return picks

    def callback(self, event: str, state: dict[str, Any]) -> None:
        """A :func:`prunekit.train.fit` callback: :meth:`step` after every epoch."""
        if event == "epoch_end":
            self.step()

    def train(
        self, train_set: Dataset[Any], config: TrainConfig, *, progress: bool = True
    ) -> TrainResult:
        """Train the model in place by ``config``, soft-pruning after every epoch."""
        return fit(self.model, train_set, config, progress=progress, callbacks=[self.callback])

    def finish(self) -> PruneReport:
        """Select and zero once more, then remove the zeroed channels physically.

        The removed channels output zero before removal, so the pruned model computes what the
        soft-pruned one did (exactly, up to floating point, unless a group is not
        :attr:`~prunekit.graph.Group.exact`)."""
        picks = self.step()
        groups = {g.name: g for g in self.graph.groups}
        for name, indices in picks.items():  # now the whole channel, BatchNorm terms included
            groups[name].zero(indices)
        return remove_selected(self.graph, picks, self.dense)


class SoftPruningMethod(Method):
    """Soft pruning with the criterion named by ``criterion``; options ``soft_epochs``
    (default 3), ``soft_lr`` (default 0.01) and ``progress`` (default True)."""

    criterion = "l2"
    defaults: ClassVar[dict[str, Any]] = {
        "soft_epochs": DEFAULT_SOFT_EPOCHS,
        "soft_lr": DEFAULT_SOFT_LR,
    }

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        pruner = SoftPruner(ctx.model, ctx.example_input, ctx.target, self.criterion)
        if opts["soft_epochs"] > 0:
            config = TrainConfig(
                epochs=opts["soft_epochs"],
                lr=opts["soft_lr"],
                batch_size=ctx.batch_size,
                seed=ctx.seed,
            )
            pruner.train(ctx.train_set, config, progress=opts["progress"])
        return pruner.finish()


__all__ = ["DEFAULT_SOFT_EPOCHS", "DEFAULT_SOFT_LR", "SoftPruner", "SoftPruningMethod"]
