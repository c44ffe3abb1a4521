"""The soft filter pruning mechanism shared by SFP and FPGM (and MFP, ``neighbor_switch``, which
chooses its criterion anew at every step): zero the weakest filters before the first epoch and
after every epoch, keep them in the model, remove them physically at the end.

What the official code does (``he-y/soft-filter-pruning``, ``pruning_cifar10_resnet.py`` and
``pruning_train.py``; ``he-y/filter-pruning-geometric-median``, ``pruning_cifar10.py``), and
what is done here:

* **When.** ``Mask.init_mask`` + ``do_mask`` run once on the loaded model *before* the first
  epoch, then after every ``epoch_prune`` (default 1) epochs and after the last one. Here: the
  first selection is zeroed before training starts (:meth:`SoftPruner.begin`), then one after
  every epoch (:meth:`SoftPruner.callback`); the selection made after the last epoch is the one
  removed.
* **What is zeroed.** ``mask_index = range(0, last_index, 3)``: in the authors' CIFAR ResNets
  (conv without bias, BatchNorm weight, BatchNorm bias per layer) that is every convolution
  weight and nothing else; BatchNorm keeps its scale and shift. Here the same: the filters of
  the selection (conv / Linear weights and biases, ``Group.zero(..., filters_only=True)``).
* **Gradients of the zeroed filters.** The two codes differ. SFP's ``train()`` is
  ``zero_grad(); backward(); step()``: a zeroed filter is updated like every other weight and
  can grow back, which is the paper's point ("soft"). FPGM's ``train()`` calls
  ``m.do_grad_mask()`` between ``backward()`` and ``step()``: the gradient of every zeroed
  filter is multiplied by the mask at every iteration, so zeroed filters stay at zero for the
  epoch. Option ``mask_gradients`` (SFP: False, FPGM: True, as their codes) chooses; with it,
  the gradients of the zeroed filters (weights and biases) are masked by a gradient hook, and
  the filters are set back to zero after every optimiser step as well, because SGD momentum
  accumulated before a filter was selected would otherwise still move it.

  Why it matters behind BatchNorm: a zeroed filter makes its channel constant over the batch, so
  BatchNorm (training mode) divides its gradient by ``sqrt(0 + eps)`` (about 316 times the usual
  scale). Without the mask the filter regrows at once to a large norm; with a short soft phase
  the criterion then keeps these regrown filters and zeroes trained ones, and the selection
  changes almost completely from epoch to epoch. With the mask (FPGM) the selection is stable.
* **Rates and schedule.** The official scripts prune every conv layer at one rate (SFP
  ``--rate 0.7``, i.e. 30% of the filters of each layer; FPGM ``--rate_norm 1 --rate_dist 0.3``
  or ``0.4`` for ResNet-20..110) for 200 epochs, SGD (Nesterov, momentum 0.9, weight decay
  5e-4, batch 128), lr 0.01 from a pretrained model (FPGM ``pruning_pretrain_*``) and 0.1 from
  scratch, multiplied by 0.2 at epochs 60, 120 and 160. Here the model arrives trained and the
  soft phase is short: ``epochs`` (default 3) epochs at the pretrained-model lr ``lr``
  (default 0.01) held constant, as the first 60 epochs of the official schedule,
  Nesterov momentum 0.9 and weight decay 5e-4; the runner fine-tunes afterwards. The paper's
  own setting, 200 epochs of soft training, costs about 200 / 3 = 67 times this phase.
  ``epochs=0`` reduces to one-shot pruning with the method's criterion.

Differences from the official code, on purpose:

* The per-layer rate comes from the run's FLOPs or params target: :func:`prunekit.prune.
  select_channels` with ``scope="layer"`` finds the uniform rate that meets it (and closes the
  last gap with single filters in score order). Coupled channels (a residual stage) form one
  group and are scored and zeroed together; the official CIFAR code zeroes the filters of the
  convolutions that feed a residual addition independently and reports FLOPs without removing
  them.
* At the end the final selection is zeroed whole (BatchNorm terms included) and removed, so the
  removed model computes exactly what that fully zeroed model computes; it differs from the
  soft-trained model by the BatchNorm shifts of the removed channels. (The official CIFAR code
  evaluates the soft-pruned model with those shifts in place.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.hooks import RemovableHandle

from prunekit import criteria
from prunekit.graph import Graph, build
from prunekit.graph.core import out_weight
from prunekit.measure._inputs import Inputs
from prunekit.methods.base import Context, Method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import TrainConfig, TrainResult, fit

DEFAULT_SOFT_EPOCHS = 3  # short phase on a trained model (the papers: 200 epochs)
DEFAULT_SOFT_LR = 0.01  # FPGM scripts/pruning_cifar10.sh, pruning_pretrain_*: --learning_rate 0.01
WEIGHT_DECAY = 5e-4  # both official codes: --decay 0.0005
NESTEROV = True  # both official codes: torch.optim.SGD(..., nesterov=True)


@dataclass(frozen=True)
class SoftPruningOptions(Options):
    """The soft phase of SFP and FPGM."""

    renamed: ClassVar[dict[str, str]] = {"soft_epochs": "epochs", "soft_lr": "lr"}

    epochs: int = option(
        DEFAULT_SOFT_EPOCHS,
        help=SHARED["epochs"] + ", a soft step after each (0: one-shot pruning)",
        source="prunekit: a short phase on a trained model (official scripts: --epochs 200)",
        low=0,
    )
    lr: float = option(
        DEFAULT_SOFT_LR,
        help=SHARED["lr"] + ", held constant",
        source="official FPGM scripts/pruning_cifar10.sh, pruning_pretrain_*: --learning_rate 0.01",
        low=0,
        low_open=True,
    )
    mask_gradients: bool = option(
        False,
        help="mask the gradients of zeroed filters at every iteration and hold them at zero",
        source="official SFP pruning_cifar10_resnet.py: train() masks no gradient",
    )


def _filter_layers(model: nn.Module) -> list[nn.Module]:
    """Modules with filters: a weight of two or more dimensions with outputs on one axis."""
    out = []
    for m in model.modules():
        w = out_weight(m)
        conv_or_linear = isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
        if w is not None and w.dim() >= 2 and conv_or_linear:
            out.append(m)
    return out


def _filter_dim(module: nn.Module) -> int:
    """The weight dimension indexing the filters (output channels)."""
    return 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0


class SoftPruner:
    """The soft filter pruning mechanism shared by SFP and FPGM.

    Builds the channel graph of ``model`` once. :meth:`step` selects, for the ``target`` (FLOPs
    or params), the lowest-scored channels of every group under ``criterion`` and zeroes their
    filters in place; :meth:`begin` makes the first step before training, :meth:`callback` one
    at every ``"epoch_end"`` of :func:`prunekit.train.fit`; :meth:`finish` zeroes the last
    selection whole and removes it physically. With ``mask_gradients`` the zeroed filters get no
    gradient and are held at zero through each epoch (the official FPGM code's
    ``do_grad_mask``). ``history`` holds every selection, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Inputs,
        target: Target | Mapping[str, float],
        criterion: str | criteria.Criterion = "l2",
        *,
        mask_gradients: bool = False,
    ) -> None:
        self.model = model
        self.target = Target.of(target).require("flops", "params", "latency")
        self.criterion = criteria.get(criterion)
        self.mask_gradients = mask_gradients
        self.graph: Graph = build(model, example_input)
        self.dense = self.graph.plan([])
        self.history: list[dict[str, list[int]]] = []  # the selection of every step, in order
        self.picks: dict[str, list[int]] = {}
        self._rows: dict[nn.Module, torch.Tensor] = {}  # zeroed filters per layer (True = zeroed)
        self._handles: list[RemovableHandle] = []

    def select(self) -> dict[str, list[int]]:
        """``{group name: indices}`` to zero now: the same rate in every group (``scope="layer"``)
        meeting the target, lowest scores first."""
        return select_channels(
            self.graph, scope="layer", importance=self.criterion, **self.target.as_dict()
        )

    def step(self) -> dict[str, list[int]]:
        """Zero the filters of the current selection (they stay in the model)."""
        picks = self.select()
        if self.mask_gradients:
            self._rows = self._selected_rows(picks)
        groups = {g.name: g for g in self.graph.groups}
        for name, indices in picks.items():
            groups[name].zero(indices, filters_only=True)  # BatchNorm keeps scale and shift
        self.picks = picks
        self.history.append(picks)
        return picks

    def _selected_rows(self, picks: dict[str, list[int]]) -> dict[nn.Module, torch.Tensor]:
        """For each filter layer, which of its filters ``picks`` zeroes: found by zeroing the
        selection in all-ones weights (the graph maps units to positions in every layer)."""
        layers = _filter_layers(self.model)
        saved = [(m, m.weight.detach().clone(), _bias(m)) for m in layers]
        groups = {g.name: g for g in self.graph.groups}
        try:
            with torch.no_grad():
                for m in layers:
                    m.weight.fill_(1.0)
                for name, indices in picks.items():
                    groups[name].zero(indices, filters_only=True)
                rows = {}
                for m in layers:
                    dim = _filter_dim(m)
                    hit = (m.weight.movedim(dim, 0).flatten(1) == 0).all(1)
                    if bool(hit.any()):
                        rows[m] = hit
        finally:
            with torch.no_grad():
                for m, w, b in saved:
                    m.weight.copy_(w)
                    if b is not None:
                        m.bias.copy_(b)  # type: ignore[union-attr]
        return rows

    # ------------------------------------------------------------------ gradient masking
    def _attach(self) -> None:
        for m in _filter_layers(self.model):
            self._handles.append(m.weight.register_hook(self._grad_mask(m, "weight")))
            if _bias(m) is not None:
                self._handles.append(m.bias.register_hook(self._grad_mask(m, "bias")))

    def _keep(self, m: nn.Module, name: str, like: torch.Tensor) -> torch.Tensor | None:
        rows = self._rows.get(m)
        if rows is None:
            return None
        shape = [1] * like.dim()
        dim = _filter_dim(m) if name == "weight" else 0
        shape[dim] = -1
        return (~rows).to(device=like.device, dtype=like.dtype).view(shape)

    def _grad_mask(self, m: nn.Module, name: str) -> Any:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            keep = self._keep(m, name, grad)
            return grad if keep is None else grad * keep

        return hook

    def detach(self) -> None:
        """Remove the gradient hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hold_zero(self) -> None:
        with torch.no_grad():
            for m in self._rows:
                for name in ("weight", "bias"):
                    t = getattr(m, name, None)
                    if isinstance(t, torch.Tensor):
                        keep = self._keep(m, name, t)
                        if keep is not None:
                            t.mul_(keep)

    # ------------------------------------------------------------------ schedule
    def begin(self) -> dict[str, list[int]]:
        """The first selection, zeroed before training (as both official codes do)."""
        if self.mask_gradients and not self._handles:
            self._attach()
        return self.step()

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        """The pruner itself is the fit callback (:meth:`callback`), so that
        :meth:`prunekit.methods.Context.train` saves its state with every epoch."""
        self.callback(event, state)

    def callback(self, event: str, state: dict[str, Any]) -> None:
        """A :func:`prunekit.train.fit` callback: :meth:`step` after every epoch; with
        ``mask_gradients``, the zeroed filters are also set back to zero after every step."""
        if event == "epoch_end":
            self.step()
        elif event == "step_end" and self.mask_gradients:
            self._hold_zero()

    def train(
        self, train_set: Dataset[Any], config: TrainConfig, *, progress: bool = True
    ) -> TrainResult:
        """Zero the first selection, then train the model in place by ``config``, soft-pruning
        after every epoch."""
        self.begin()
        try:
            return fit(self.model, train_set, config, progress=progress, callbacks=[self.callback])
        finally:
            self.detach()

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """The selections made so far (saved with every epoch of a checkpointed phase)."""
        return {"history": [dict(p) for p in self.history], "picks": dict(self.picks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict`: the current selection (and, with
        ``mask_gradients``, which filters get no gradient) is the saved one."""
        self.history = [{k: list(v) for k, v in p.items()} for p in state["history"]]
        self.picks = {k: list(v) for k, v in state["picks"].items()}
        if self.mask_gradients:
            self._rows = self._selected_rows(self.picks)

    def finish(self) -> PruneReport:
        """Zero the last selection whole (BatchNorm terms included) and remove it physically
        (a first selection is made if there was none).

        The removed channels output zero before removal, so the pruned model computes what the
        zeroed one did (exactly, up to floating point, unless a group is not
        :attr:`~prunekit.graph.Group.exact`)."""
        self.detach()
        picks = self.picks if self.history else self.step()
        groups = {g.name: g for g in self.graph.groups}
        for name, indices in picks.items():
            groups[name].zero(indices)
        return remove_selected(self.graph, picks, self.dense)


def _bias(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


class SoftPruningMethod(Method):
    """Soft pruning with the criterion named by ``criterion``; options ``epochs`` (default 3),
    ``lr`` (default 0.01), ``mask_gradients`` (as the method's official code) and ``progress``
    (default True). After :meth:`prune`, ``history`` holds every selection."""

    criterion = "l2"
    Options = SoftPruningOptions

    def __init__(self) -> None:
        self.history: list[dict[str, list[int]]] = []
        self.pruner: SoftPruner | None = None  # the last prune()'s, for its records

    def make_pruner(self, ctx: Context, target: Target, opts: Options) -> SoftPruner:
        """The pruner of the soft phase: a :class:`SoftPruner` with :attr:`criterion` (a method
        that chooses its criterion anew at every step returns its own subclass)."""
        return SoftPruner(
            ctx.model,
            ctx.example_input,
            target,
            self.criterion,
            mask_gradients=opts["mask_gradients"],
        )

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        pruner = self.make_pruner(ctx, target, opts)
        if opts["epochs"] > 0:
            pruner.begin()
            try:
                ctx.train(
                    ctx.model,
                    opts["epochs"],
                    opts["lr"],
                    name="soft",
                    callbacks=[pruner],  # its selections resume with the phase
                    schedule="constant",
                    nesterov=NESTEROV,
                    weight_decay=WEIGHT_DECAY,
                    progress=opts["progress"],
                )
            finally:
                pruner.detach()
        report = pruner.finish()
        self.history = pruner.history
        self.pruner = pruner
        return report


__all__ = [
    "DEFAULT_SOFT_EPOCHS",
    "DEFAULT_SOFT_LR",
    "SoftPruner",
    "SoftPruningMethod",
    "SoftPruningOptions",
]
