"""Global & Dynamic Filter Pruning (Lin, Ji, Li, Wu, Huang, Zhang, "Accelerating Convolutional
Networks via Global & Dynamic Filter Pruning", IJCAI 2018,
https://www.ijcai.org/proceedings/2018/0336.pdf). No official code was released.

The paper's computation:

* **One global mask.** A binary mask ``m`` covers every filter of the network; the network is
  trained as ``L(W * m)``. The mask is the output of the *global discriminative function*
  ``h``: ``m = 1`` for the filters whose saliency is among the top ones *across all layers*
  (one threshold for the whole network, the budget of filters kept), ``0`` otherwise.
* **Saliency.** The first-order Taylor estimate of the loss change from dropping a filter:
  ``Theta(W_l^k) = |sum (dL/dW_l^k) * W_l^k|``, the sum over the filter's ``d^2 C_{l-1}``
  weights, compared raw across layers (no per-layer normalisation).
* **Dynamic update, greedy alternative updating.** SGD updates the weights with the mask fixed,
  the gradient of a masked filter taken at the masked point and applied to the filter straight
  through the mask (``W <- W - lr * dL/d(W * m)``), so a masked filter keeps learning; every
  few iterations the saliency is recomputed from the current weights and gradients and the
  mask chosen anew, so a filter masked by mistake comes back. A retraining phase follows (the
  runner's fine-tuning).

Here:

* Channels are the graph's units (:class:`prunekit.graph.Group`): a residual stream is one
  group. The mask is applied where the channel leaves its producer: at the output of the
  BatchNorm that reads the filter's output, or at the filter layer's output when no BatchNorm
  follows (a forward hook multiplies the output by the mask, :func:`prunekit.masks.straight_through`:
  masked channels output zero; the gradient passes to the unmasked output unchanged). Without
  BatchNorm this is exactly ``L(W * m)`` with the straight-through update (``W x * m`` =
  ``(W * m) x``). Masking the weights in front of a BatchNorm instead (as ``W * m`` literally
  would) makes the masked channel constant over the batch; training-mode BatchNorm then divides
  its gradient by ``sqrt(0 + eps)`` (about 316 times the usual scale) and the masked filters blow
  up. Masking after the BatchNorm keeps their straight-through gradient on its normal scale.
* The saliency of a unit is ``|sum over batch and positions of y * dL/dy|`` at the mask point,
  ``y`` the unmasked output and ``dL/dy`` its straight-through gradient
  (:func:`output_saliency`). For a filter layer without BatchNorm, ``y = W x + b`` and by the
  chain rule this equals the paper's ``sum (dL/dW) * W`` (plus the bias's term) exactly. Behind
  a training-mode BatchNorm the filter's own term ``sum (dL/dW) * W`` is identically zero (the
  output does not depend on the filter's scale), and the sum is the same Taylor term taken over
  the channel's last parameters, BatchNorm's scale and shift (``y = gamma * x_hat + beta``), i.e.
  the first-order loss change of removing the channel. A unit carried by several layers (a
  residual stream) sums the terms of all its mask points before the absolute value.
* The saliency is gathered on every training step by hooks, ``|.|`` per step, averaged over the
  ``mask_interval`` steps since the last update; under DDP the sums are added across ranks
  before each update, so every rank chooses the same mask. The first mask comes from one pass
  over the calibration batches (``ctx.calibration()``, BatchNorm in eval mode, no mask).
* The mask is :func:`prunekit.prune.select_channels` with ``scope="global"``,
  ``normalize=False`` on the raw saliency, meeting the run's FLOPs or params target on the dense
  graph (the paper's budget counts filters kept; a FLOPs budget is what prunekit runs take).
  Every group keeps at least one unit; units with no mask point are never masked.

Options (:class:`GDPOptions`): ``epochs`` (3) epochs of SGD at ``lr`` (0.01; momentum 0.9,
weight decay and the cosine schedule are :class:`~prunekit.train.TrainConfig`'s defaults), the
mask recomputed every ``mask_interval`` (10) steps. The paper alternates over its whole
fine-tuning schedule (ImageNet: tens of epochs, the interval not stated); here the phase is a
few epochs, then the runner fine-tunes the pruned model. ``epochs=0`` reduces to one-shot
global pruning by the calibration saliency.

Deviations a reader should know:

* After training the hooks are removed, the units of the final mask (the one in force at the end
  of training) are zeroed whole, BatchNorm terms included, and removed through the structural
  core: the pruned model computes exactly what the masked model computes in eval mode.
* Under mixed precision the hooks see scaled gradients; one loss scale over an interval scales
  every saliency alike and does not change the mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.graph.core import out_weight
from prunekit.masks import straight_through
from prunekit.measure._inputs import Inputs
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import TrainConfig, fit
from prunekit.train import distributed as dist_
from prunekit.train.device import resolve_device

DEFAULT_EPOCHS = 3
DEFAULT_LR = 0.01
DEFAULT_MASK_INTERVAL = 10


@dataclass(frozen=True)
class GDPOptions(Options):
    """GDP's dynamic-mask training phase."""

    renamed: ClassVar[dict[str, str]] = {"gdp_epochs": "epochs"}

    epochs: int = option(
        DEFAULT_EPOCHS,
        help=SHARED["epochs"] + " with the dynamic mask (0: one-shot by the calibration saliency)",
        source="prunekit: a short phase (the paper alternates over its whole fine-tuning)",
        low=0,
    )
    lr: float = option(
        DEFAULT_LR,
        help=SHARED["lr"],
        source="prunekit: a fine-tuning lr for a trained model (no official code)",
        low=0,
        low_open=True,
    )
    mask_interval: int = option(
        DEFAULT_MASK_INTERVAL,
        help="optimiser steps between two mask updates",
        source="prunekit: the paper updates the mask every few iterations (no number given)",
        low=1,
    )


def output_saliency(y: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per channel, ``sum over every other dimension of y * grad`` (signed): the first-order
    Taylor term of the channel's parameters, see the module docstring."""
    prod = (y.detach() * grad).movedim(channel_dim, 0)
    return prod.reshape(prod.shape[0], -1).sum(1).double()


@dataclass
class _MaskPoint:
    """A module whose output carries units of one or more groups and where they are masked:
    for each group, the output positions carrying its units and the units' indices."""

    name: str
    module: nn.Module
    size: int
    channel_dim: int
    parts: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    mask: torch.Tensor | None = None


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _fed_by_filter(model: nn.Module, example_input: Inputs, names: set[str]) -> set[str]:
    """Which modules among ``names`` are BatchNorms reading a filter layer's output directly,
    and which filter layers feed one (both returned), from one eval-mode forward."""
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # tensors kept alive: ids stay unique
    fed: set[str] = set()
    handles = []
    modules = dict(model.named_modules())
    for name in names:
        m = modules[name]
        if _is_norm(m):

            def pre(mod: nn.Module, args: Any, name: str = name) -> None:
                src = produced.get(id(args[0])) if args else None
                if src is not None and src[1] is args[0]:
                    fed.update((name, src[0]))

            handles.append(m.register_forward_pre_hook(pre))
        else:

            def post(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    produced[id(out)] = (name, out)

            handles.append(m.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            else:
                model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return fed


class GlobalDynamicPruner:
    """The global, dynamic channel mask of GDP on ``model`` for a FLOPs / params ``target``.

    On creation it builds the channel graph, moves the model to ``device`` (if given) and hooks
    the mask points of every group with an all-ones mask. :meth:`calibrate` sets the first mask;
    :meth:`callback` (a :func:`prunekit.train.fit` callback) gathers the saliency and updates the
    mask every ``mask_interval`` steps; :meth:`finish` removes the hooks, zeroes the final
    mask's units whole and removes them. ``picks`` is the current mask as
    ``{group name: masked indices}``; ``history`` every mask chosen, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Inputs,
        target: Target | Mapping[str, float],
        *,
        mask_interval: int = DEFAULT_MASK_INTERVAL,
        device: torch.device | str | None = None,
    ) -> None:
        if mask_interval < 1:
            raise ConfigError(
                f"mask_interval must be a number of steps >= 1, got {mask_interval!r}"
            )
        self.model = model
        self.target = Target.of(target).require("flops", "params", "latency")
        self.mask_interval = mask_interval
        was_training = model.training
        model.eval()  # tracing must not update BatchNorm running statistics
        try:
            self.graph: Graph = build(model, example_input)
        finally:
            model.train(was_training)
        self.dense = self.graph.plan([])
        self.points = self._mask_points(example_input)
        if device is not None:
            model.to(device)
        self.maskable = {name for p in self.points for name, _, _ in p.parts}
        self.picks: dict[str, list[int]] = {}
        self.history: list[dict[str, list[int]]] = []
        self.last_saliency: dict[str, torch.Tensor] | None = None
        self._handles: list[RemovableHandle] = []
        self._step: dict[str, torch.Tensor] = {}  # this step's signed sums, per group
        self._sum: dict[str, torch.Tensor] = {}  # |.| of each step's sums, added up
        self._count = 0
        self._attach()

    # ------------------------------------------------------------------ set-up
    def _mask_points(self, example_input: Inputs) -> list[_MaskPoint]:
        """Every output-side module of a group that is a filter layer not read directly by a
        BatchNorm, or a BatchNorm reading a filter layer: where its channels are masked."""
        candidates: dict[str, nn.Module] = {}
        for group in self.graph.groups:
            for name in group.out_layers:
                m = self.graph.sites[name].module
                w = out_weight(m)
                if _is_norm(m) or (w is not None and w.dim() >= 2):
                    candidates[name] = m
        fed = _fed_by_filter(self.model, example_input, set(candidates))
        chosen = {
            n: m for n, m in candidates.items() if (n in fed) == _is_norm(m)
        }  # a BatchNorm fed by a filter, or a filter feeding no BatchNorm
        points: dict[str, _MaskPoint] = {}
        for group in self.graph.groups:
            index = {u: i for i, u in enumerate(group.units)}
            for name in group.out_layers:
                if name not in chosen:
                    continue
                site = self.graph.sites[name]
                if site.out_labels is None:
                    continue
                if name not in points:
                    dim = -1 if isinstance(site.module, nn.Linear) else 1
                    points[name] = _MaskPoint(name, site.module, len(site.out_labels), dim)
                roots = self.graph.labels.roots(site.out_labels).tolist()
                pos = [p for p, r in enumerate(roots) if r in index]
                if pos:
                    slots = [index[roots[p]] for p in pos]
                    points[name].parts.append((group.name, torch.tensor(pos), torch.tensor(slots)))
        return [p for p in points.values() if p.parts]

    def _attach(self) -> None:
        for point in self.points:
            point.mask = torch.ones(point.size)
            self._handles.append(point.module.register_forward_hook(self._forward_hook(point)))

    def detach(self) -> None:
        """Remove the mask hooks (the model computes unmasked again)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _forward_hook(self, point: _MaskPoint) -> Any:
        def hook(module: nn.Module, args: Any, y: Any) -> Any:
            if not isinstance(y, torch.Tensor):
                return y
            if y.requires_grad and torch.is_grad_enabled():
                y.register_hook(self._saliency_hook(point, y))
            assert point.mask is not None
            if bool((point.mask == 1).all()):
                return y
            shape = [1] * y.dim()
            shape[point.channel_dim] = -1
            m = point.mask.to(device=y.device, dtype=y.dtype).view(shape)
            return straight_through(y, m)

        return hook

    def _saliency_hook(self, point: _MaskPoint, y: torch.Tensor) -> Any:
        def hook(grad: torch.Tensor) -> None:
            per_pos = output_saliency(y, grad, point.channel_dim)
            for name, pos, slots in point.parts:
                acc = self._step.get(name)
                if acc is None:
                    size = self.graph.group(name).size
                    acc = self._step[name] = torch.zeros(
                        size, dtype=per_pos.dtype, device=per_pos.device
                    )
                acc.index_add_(0, slots.to(acc.device), per_pos[pos.to(acc.device)])

        return hook

    # ------------------------------------------------------------------ saliency
    def end_step(self) -> None:
        """Close one step of the saliency: add ``|sum y * dL/dy|`` per unit."""
        for name, acc in self._step.items():
            prev = self._sum.get(name)
            self._sum[name] = acc.abs() if prev is None else prev + acc.abs()
            acc.zero_()
        self._count += 1

    def saliency(self) -> dict[str, torch.Tensor] | None:
        """Per group, the raw saliency of each unit averaged over the steps since the last mask
        update (``+inf`` for units that cannot be masked); after an update, the saliency that
        chose it. None before any step."""
        if self._count == 0:
            return self.last_saliency
        names = sorted(self._sum)
        flat = torch.cat([self._sum[n] for n in names]) if names else torch.zeros(0)
        dist_.all_reduce_sum(flat)  # one mask on every rank: the sums over all ranks' data
        flat = flat.cpu() / self._count
        sizes = [len(self._sum[n]) for n in names]
        raw = dict(zip(names, torch.split(flat, sizes), strict=True))
        out = {}
        for g in self.graph.groups:
            v = raw.get(g.name)
            if g.name not in self.maskable or v is None:
                out[g.name] = torch.full((g.size,), math.inf, dtype=torch.float64)
            else:
                out[g.name] = v
        return out

    # ------------------------------------------------------------------ the mask
    def update_mask(self) -> dict[str, list[int]]:
        """Choose the mask anew from the current saliency (the lowest raw saliencies across all
        layers, meeting the target on the dense graph), apply it and start a new interval."""
        sal = self.saliency() if self._count else None
        if sal is None:
            return self.picks
        picks = select_channels(
            self.graph,
            scope="global",
            normalize=False,  # one threshold on the raw saliency across layers, as h(.)
            importance=lambda g: sal[g.name],
            **self.target.as_dict(),
        )
        self.set_mask(picks)
        self.last_saliency = sal
        self._sum, self._count = {}, 0
        return picks

    def set_mask(self, picks: dict[str, list[int]]) -> None:
        """Mask exactly the units ``picks`` (``{group name: indices}``); unmask the rest."""
        self._apply({k: sorted(v) for k, v in picks.items() if v})
        self.history.append(self.picks)

    def _apply(self, picks: dict[str, list[int]]) -> None:
        self.picks = picks
        off = {name: set(idx) for name, idx in self.picks.items()}
        for point in self.points:
            mask = torch.ones(point.size)
            for name, pos, slots in point.parts:
                hit = torch.tensor([int(s) in off.get(name, ()) for s in slots], dtype=torch.bool)
                mask[pos[hit]] = 0.0
            point.mask = mask

    def calibrate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[int]]:
        """The first mask: the saliency of one gradient pass per batch (eval mode,
        cross-entropy) of the current network, unmasked."""
        if not batches:
            raise ConfigError(
                "gdp needs calibration batches for its first mask (calib_batches >= 1), got none"
            )
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        try:
            for x, y in batches:
                loss = F.cross_entropy(self.model(x.to(device)), y.to(device))
                loss.backward()
                self.end_step()
        finally:
            self.model.train(was_training)
            self.model.zero_grad(set_to_none=True)
        return self.update_mask()

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        """The pruner itself is the fit callback (:meth:`callback`), so that
        :meth:`prunekit.methods.Context.train` saves its state with every epoch."""
        self.callback(event, state)

    def callback(self, event: str, state: dict[str, Any]) -> None:
        """A :func:`prunekit.train.fit` callback: closes each step's saliency and updates the
        mask every ``mask_interval`` steps."""
        if event != "step_end":
            return
        self.end_step()
        if state["step"] % self.mask_interval == 0:
            self.update_mask()

    def train(self, train_set: Dataset[Any], config: TrainConfig, *, progress: bool = True) -> None:
        """Train the masked model in place by ``config``, updating the mask as it goes."""
        fit(self.model, train_set, config, progress=progress, callbacks=[self.callback])

    def state_dict(self) -> dict[str, Any]:
        """The masks chosen so far and the saliency gathered since the last update (saved with
        every epoch of a checkpointed phase)."""
        return {
            "history": [dict(p) for p in self.history],
            "picks": dict(self.picks),
            "sum": {k: v.detach().cpu().clone() for k, v in self._sum.items()},
            "count": self._count,
            "last_saliency": self.last_saliency,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved :meth:`state_dict`: the same mask on the model, the same
        saliency sums toward the next update."""
        self.history = [{k: list(v) for k, v in p.items()} for p in state["history"]]
        self._apply({k: list(v) for k, v in state["picks"].items()})
        device = next(self.model.parameters()).device
        self._sum = {k: v.to(device) for k, v in state["sum"].items()}
        self._count = int(state["count"])
        self.last_saliency = state["last_saliency"]

    def finish(self) -> PruneReport:
        """Remove the hooks, zero the final mask's units whole (BatchNorm terms included) and
        remove them."""
        self.detach()
        groups = {g.name: g for g in self.graph.groups}
        for name, idx in self.picks.items():
            groups[name].zero(idx)
        return remove_selected(self.graph, self.picks, self.dense)


@register_method("gdp")
class GDP(Method):
    """GDP (Lin et al., IJCAI 2018): one global channel mask chosen by the raw first-order
    Taylor saliency ``|sum W * dL/dW|`` compared across layers to meet the target, masked
    channels output zero while their filters are updated straight through the mask, the mask
    recomputed every ``mask_interval`` (10) steps during ``epochs`` (3) epochs at ``lr``
    (0.01); then the final mask's units are removed. See the module docstring for the details
    and deviations.

    After :meth:`prune`, ``history`` holds every mask chosen (``{group name: masked indices}``),
    the first from calibration, the last the one removed."""

    Options = GDPOptions

    def __init__(self) -> None:
        self.history: list[dict[str, list[int]]] = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        epochs = opts["epochs"]
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        model = ctx.model
        first = next(model.parameters(), None)
        home = first.device if first is not None else torch.device("cpu")
        pruner = GlobalDynamicPruner(
            model,
            ctx.example_input,
            target,
            mask_interval=opts["mask_interval"],
            device=resolve_device("auto") if epochs > 0 else None,  # where ctx.train trains
        )
        try:
            pruner.calibrate(ctx.calibration())
            # TrainConfig's SGD defaults (momentum 0.9, weight decay 5e-4, cosine) as before;
            # the masks resume with the phase
            ctx.train(
                model,
                epochs,
                opts["lr"],
                name="gdp",
                callbacks=[pruner],
                progress=opts["progress"],
            )
            report = pruner.finish()
        finally:
            pruner.detach()
            model.to(home)
            self.history = pruner.history
        return report


__all__ = [
    "GDP",
    "GDPOptions",
    "GlobalDynamicPruner",
    "output_saliency",
]
