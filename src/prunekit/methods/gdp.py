"""Global & Dynamic Filter Pruning (Lin, Ji, Li, Wu, Huang, Zhang, "Accelerating Convolutional
Networks via Global & Dynamic Filter Pruning", IJCAI 2018,
https://www.ijcai.org/proceedings/2018/0336.pdf).

The paper's defining computation:

* **One global mask.** A binary mask ``m`` covers every prunable filter of the network at once.
  Which filters it keeps is decided by a saliency compared *across* layers, so the network
  finds its own layer widths, under one budget for the whole model.
* **Masked forward, dense update.** The network is trained as ``L(W * m)``: masked filters
  output zero. Their weights are still updated, with the gradient taken at the masked point
  (straight through the mask: ``W <- W - lr * dL/d(W * m)``), so a filter masked by mistake
  keeps learning and can win its place back.
* **Dynamic mask.** Every ``mask_interval`` optimiser steps the saliency of every filter is
  recomputed from the current weights and gradients and the mask chosen anew: wrongly masked
  filters come back, others drop out.

Here:

* Channels are the graph's units (:class:`prunekit.graph.Group`): a residual stream is one
  group, and a unit's "filter" is every conv / Linear filter that produces it (its positions in
  all output-side filter layers of its group). The mask is applied by
  :class:`MaskParametrization`, registered with :mod:`torch.nn.utils.parametrize` on the weight
  and bias of each of those layers; its autograd function (:class:`StraightThroughMask`)
  forwards ``w * m`` and passes the incoming gradient to ``w`` unchanged.
* The mask at each update is :func:`prunekit.prune.select_channels` with ``scope="global"``,
  ``normalize=False`` on the saliency below, searched on the dense graph so that the units it
  masks meet the run's FLOPs or params target (within 1%). Every group keeps at least one unit.
* The saliency is pluggable (option ``saliency``); the exact form of the paper's global
  discriminative function is not reproduced from the paper's text here.

  - ``"taylor"`` (default): per unit, ``|sum over its filter weights and biases of
    W * dL/d(W * m)|`` per step, averaged over the steps since the last update and divided by
    its group's L2 norm so layers compare. It is the first-order estimate of the loss change
    from dropping the filter (for a kept filter) or from restoring it (for a masked one, since
    the gradient is taken at the masked point). Gradients are those of the training loss, read
    by hooks on the raw weights; under DDP the sums are added across ranks before each update.
    The first mask comes from one such pass over the calibration batches (``ctx.calibration()``,
    model in eval mode, no mask).
  - ``"l1"``: per unit, the L1 norm of its raw filter weights (masked or not), divided by its
    group's mean.

Options (``ctx.options``): ``gdp_epochs`` (3) epochs of SGD at ``lr`` (0.01; momentum, weight
decay and the cosine schedule are :class:`~prunekit.train.TrainConfig`'s defaults),
``mask_interval`` (10 steps), ``saliency`` (``"taylor"``). The paper trains with the dynamic mask
over a fine-tuning schedule; here the phase is short. ``gdp_epochs=0`` reduces to one-shot
global pruning by the saliency of the first mask.

Deviations a reader should know:

* Only filters are masked (conv / Linear weights and biases), as in the paper; BatchNorm
  parameters are not, so a masked channel after BatchNorm carries its shift ``beta`` during
  training. After training the parametrizations are removed (the raw weights stay), the units
  of the final mask (the one in force at the end of training) are zeroed whole, BatchNorm terms
  included, and removed through the structural core: the pruned model computes exactly what
  that fully zeroed model computes.
* Units whose group has no filter layer on its output side cannot be masked and are never
  selected.
* A grouped transposed convolution producing a prunable group is refused
  (:class:`~prunekit.errors.ConfigError`): its filters do not lie along one weight dimension.
* Under mixed precision the gradient hooks see scaled gradients; the per-group normalisation
  cancels a loss scale that stays constant between two updates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import Dataset
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.graph.core import out_weight
from prunekit.measure._inputs import Inputs
from prunekit.methods.base import Context, Method, register_method
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import TrainConfig, fit
from prunekit.train import distributed as dist_
from prunekit.train.device import resolve_device

DEFAULT_EPOCHS = 3
DEFAULT_LR = 0.01
DEFAULT_MASK_INTERVAL = 10
SALIENCIES = ("taylor", "l1")


class StraightThroughMask(torch.autograd.Function):
    """``forward(w, m) = w * m``; ``backward`` hands the gradient wrt ``w * m`` to ``w``
    unchanged (the straight-through update of masked filters), and none to ``m``."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return w * m

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class MaskParametrization(nn.Module):
    """A :mod:`torch.nn.utils.parametrize` parametrization: the tensor times the 0/1 ``mask``
    (a buffer with one entry per filter) broadcast along dimension ``dim``, gradient passed
    straight through (:class:`StraightThroughMask`)."""

    def __init__(self, mask: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mask", mask.detach().clone().float())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shape = [1] * w.dim()
        shape[self.dim] = -1
        return StraightThroughMask.apply(w, self.mask.view(shape).to(w.dtype))


def register_mask(module: nn.Module, mask: torch.Tensor, dim: int = 0) -> list[MaskParametrization]:
    """Mask the filters of ``module`` (conv / Linear): its weight along ``dim`` and its bias,
    if any, by ``mask``. Returns the parametrizations (write ``p.mask`` to change the mask);
    ``parametrize.remove_parametrizations(module, name, leave_parametrized=False)`` undoes it
    and keeps the raw weights."""
    out = [MaskParametrization(mask, dim)]
    parametrize.register_parametrization(module, "weight", out[0])
    if isinstance(getattr(module, "bias", None), torch.Tensor):
        out.append(MaskParametrization(mask, 0))
        parametrize.register_parametrization(module, "bias", out[1])
    return out


def _raw(module: nn.Module, name: str) -> torch.Tensor | None:
    """The unmasked parameter ``name`` of ``module`` (the parametrization's original)."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original  # type: ignore[union-attr,index]
    t = getattr(module, name, None)
    return t if isinstance(t, torch.Tensor) else None


@dataclass
class _MaskedLayer:
    """A filter layer on the output side of one or more groups: for each group, the output
    positions carrying its units and the units' indices."""

    name: str
    module: nn.Module
    dim: int  # the weight dimension of the filters (1 for a transposed conv)
    size: int
    parts: list[tuple[str, torch.Tensor, torch.Tensor]] = field(default_factory=list)
    params: list[MaskParametrization] = field(default_factory=list)


def _filter_dim(name: str, module: nn.Module) -> int:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if module.groups != 1:
            raise ConfigError(
                f"gdp cannot mask the grouped transposed convolution {name!r}: expected filters "
                "along one weight dimension (groups=1)"
            )
        return 1
    return 0


class GlobalDynamicPruner:
    """The global, dynamic filter mask of GDP on ``model`` for a FLOPs / params ``target``.

    On creation it builds the channel graph, moves the model to ``device`` (if given: the
    training device, so that the hooks stay on the weights) and masks the filters of every group
    with an all-ones mask. :meth:`calibrate` sets the first mask, :meth:`callback` (a
    :func:`prunekit.train.fit` callback) gathers the saliency and updates the mask every
    ``mask_interval`` steps, :meth:`finish` unmasks, zeroes the final mask's units whole and
    removes them. ``picks`` is the current mask as ``{group name: masked indices}``;
    ``history`` every mask chosen, in order.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Inputs,
        target: Target | Mapping[str, float],
        *,
        saliency: str = "taylor",
        mask_interval: int = DEFAULT_MASK_INTERVAL,
        device: torch.device | str | None = None,
    ) -> None:
        if saliency not in SALIENCIES:
            raise ConfigError(f"saliency must be one of {', '.join(SALIENCIES)}, got {saliency!r}")
        if mask_interval < 1:
            raise ConfigError(
                f"mask_interval must be a number of steps >= 1, got {mask_interval!r}"
            )
        self.model = model
        self.target = Target.of(target).require("flops", "params")
        self.saliency_name = saliency
        self.mask_interval = mask_interval
        was_training = model.training
        model.eval()  # tracing must not update BatchNorm running statistics
        try:
            self.graph: Graph = build(model, example_input)
        finally:
            model.train(was_training)
        self.dense = self.graph.plan([])
        if device is not None:  # before the masks and hooks are attached to the weights
            model.to(device)
        self.layers = self._masked_layers()
        self.maskable = {name for layer in self.layers for name, _, _ in layer.parts}
        self.picks: dict[str, list[int]] = {}
        self.history: list[dict[str, list[int]]] = []
        self._handles: list[RemovableHandle] = []
        self._step: dict[str, torch.Tensor] = {}  # this step's signed sums, per group
        self._sum: dict[str, torch.Tensor] = {}  # |.| of each step's sums, added up
        self._count = 0
        self._attached = False
        self._attach()

    # ------------------------------------------------------------------ set-up
    def _masked_layers(self) -> list[_MaskedLayer]:
        layers: dict[str, _MaskedLayer] = {}
        for group in self.graph.groups:
            index = {u: i for i, u in enumerate(group.units)}
            for name in group.out_layers:
                site = self.graph.sites[name]
                w = out_weight(site.module)
                if w is None or w.dim() < 2 or site.out_labels is None:
                    continue
                if name not in layers:
                    dim = _filter_dim(name, site.module)
                    layers[name] = _MaskedLayer(name, site.module, dim, len(site.out_labels))
                roots = self.graph.labels.roots(site.out_labels).tolist()
                pos = [p for p, r in enumerate(roots) if r in index]
                if pos:
                    slots = [index[roots[p]] for p in pos]
                    layers[name].parts.append((group.name, torch.tensor(pos), torch.tensor(slots)))
        return list(layers.values())

    def _attach(self) -> None:
        for layer in self.layers:
            device = next(layer.module.parameters()).device
            layer.params = register_mask(
                layer.module, torch.ones(layer.size, device=device), layer.dim
            )
            if self.saliency_name == "taylor":
                for pname, dim in (("weight", layer.dim), ("bias", 0)):
                    p = _raw(layer.module, pname)
                    if p is not None:
                        self._handles.append(p.register_hook(self._taylor_hook(layer, p, dim)))
        self._attached = True

    def detach(self) -> None:
        """Remove the masks' parametrizations (the raw weights stay) and the gradient hooks."""
        if not self._attached:
            return
        for h in self._handles:
            h.remove()
        self._handles = []
        for layer in self.layers:
            for pname in ("weight", "bias"):
                if parametrize.is_parametrized(layer.module, pname):
                    parametrize.remove_parametrizations(
                        layer.module, pname, leave_parametrized=False
                    )
            layer.params = []
        self._attached = False

    # ------------------------------------------------------------------ saliency
    def _taylor_hook(self, layer: _MaskedLayer, param: torch.Tensor, dim: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            prod = param.detach() * grad  # grad = dL/d(W * m): the straight-through gradient
            per_pos = prod.movedim(dim, 0).reshape(prod.shape[dim], -1).sum(1).double()
            for name, pos, slots in layer.parts:
                acc = self._step.get(name)
                if acc is None:
                    size = self.graph.group(name).size
                    acc = self._step[name] = torch.zeros(
                        size, dtype=per_pos.dtype, device=per_pos.device
                    )
                acc.index_add_(0, slots.to(acc.device), per_pos[pos.to(acc.device)])

        return hook

    def end_step(self) -> None:
        """Close one step of the Taylor saliency: add ``|sum W * dL/d(W m)|`` per unit."""
        for name, acc in self._step.items():
            prev = self._sum.get(name)
            self._sum[name] = acc.abs() if prev is None else prev + acc.abs()
            acc.zero_()
        self._count += 1

    def saliency(self) -> dict[str, torch.Tensor] | None:
        """Per group, the current saliency of each unit (normalised per group; ``+inf`` for
        units that cannot be masked), or None if the Taylor saliency has no steps yet."""
        if self.saliency_name == "taylor":
            raw = self._taylor_means()
            if raw is None:
                return None
        else:
            raw = self._l1()
        out = {}
        for g in self.graph.groups:
            v = raw.get(g.name)
            if g.name not in self.maskable or v is None:
                out[g.name] = torch.full((g.size,), math.inf, dtype=torch.float64)
                continue
            scale = float(v.norm()) if self.saliency_name == "taylor" else float(v.mean())
            out[g.name] = v / scale if scale > 0 else v
        return out

    def _taylor_means(self) -> dict[str, torch.Tensor] | None:
        if self._count == 0:
            return None
        names = sorted(self._sum)
        if not names:
            return {}
        flat = torch.cat([self._sum[n] for n in names])
        dist_.all_reduce_sum(flat)  # one mask on every rank: the sums over all ranks' data
        flat = flat.cpu() / self._count
        sizes = [len(self._sum[n]) for n in names]
        return dict(zip(names, torch.split(flat, sizes), strict=True))

    def _l1(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            w = _raw(layer.module, "weight")
            assert w is not None
            per_pos = w.detach().abs().movedim(layer.dim, 0).flatten(1).sum(1).double().cpu()
            for name, pos, slots in layer.parts:
                acc = out.setdefault(
                    name, torch.zeros(self.graph.group(name).size, dtype=torch.float64)
                )
                acc.index_add_(0, slots, per_pos[pos])
        return out

    # ------------------------------------------------------------------ the mask
    def update_mask(self) -> dict[str, list[int]]:
        """Choose the mask anew from the current saliency (meeting the target on the dense
        graph), write it into every masked layer and start a new saliency interval."""
        sal = self.saliency()
        if sal is None:
            return self.picks
        picks = select_channels(
            self.graph,
            scope="global",
            normalize=False,  # saliencies are already comparable across groups
            importance=lambda g: sal[g.name],
            **self.target.as_dict(),
        )
        self.set_mask(picks)
        self._sum, self._count = {}, 0
        return picks

    def set_mask(self, picks: dict[str, list[int]]) -> None:
        """Mask exactly the units ``picks`` (``{group name: indices}``); unmask the rest."""
        self.picks = {k: sorted(v) for k, v in picks.items() if v}
        self.history.append(self.picks)
        off = {name: set(idx) for name, idx in self.picks.items()}
        for layer in self.layers:
            mask = torch.ones(layer.size)
            for name, pos, slots in layer.parts:
                hit = torch.tensor([int(s) in off.get(name, ()) for s in slots], dtype=torch.bool)
                mask[pos[hit]] = 0.0
            for p in layer.params:
                p.mask.copy_(mask.to(p.mask.device))

    def calibrate(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[int]]:
        """The first mask: with the Taylor saliency, from one gradient pass per batch (eval
        mode, cross-entropy) on the current network; with L1, from the weights."""
        if self.saliency_name == "taylor":
            if not batches:
                raise ConfigError(
                    "gdp with saliency='taylor' needs calibration batches for its first mask "
                    "(calib_batches >= 1), got none"
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

    def callback(self, event: str, state: dict[str, Any]) -> None:
        """A :func:`prunekit.train.fit` callback: closes each step's saliency and updates the
        mask every ``mask_interval`` steps."""
        if event != "step_end":
            return
        if self.saliency_name == "taylor":
            self.end_step()
        if state["step"] % self.mask_interval == 0:
            self.update_mask()

    def train(self, train_set: Dataset[Any], config: TrainConfig, *, progress: bool = True) -> None:
        """Train the masked model in place by ``config``, updating the mask as it goes."""
        fit(self.model, train_set, config, progress=progress, callbacks=[self.callback])

    def finish(self) -> PruneReport:
        """Unmask, zero the final mask's units whole (BatchNorm terms included) and remove them."""
        self.detach()
        groups = {g.name: g for g in self.graph.groups}
        for name, idx in self.picks.items():
            groups[name].zero(idx)
        return remove_selected(self.graph, self.picks, self.dense)


@register_method("gdp")
class GDP(Method):
    """GDP (Lin et al., IJCAI 2018): one global filter mask chosen by a saliency compared across
    layers (``saliency``, default ``"taylor"``) to meet the target, applied in the forward pass,
    with masked filters updated straight through the mask and the mask recomputed every
    ``mask_interval`` (10) steps during ``gdp_epochs`` (3) epochs at ``lr`` (0.01); then the
    final mask's units are removed. See the module docstring for the details and deviations.

    After :meth:`prune`, ``history`` holds every mask chosen (``{group name: masked indices}``),
    the first from calibration, the last the one removed."""

    defaults: ClassVar[dict[str, Any]] = {
        "gdp_epochs": DEFAULT_EPOCHS,
        "lr": DEFAULT_LR,
        "mask_interval": DEFAULT_MASK_INTERVAL,
        "saliency": "taylor",
    }

    def __init__(self) -> None:
        self.history: list[dict[str, list[int]]] = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        epochs = opts["gdp_epochs"]
        if epochs < 0:
            raise ConfigError(f"option 'gdp_epochs' of method 'gdp' must be >= 0, got {epochs!r}")
        if not (math.isfinite(opts["lr"]) and opts["lr"] > 0):
            raise ConfigError(
                f"option 'lr' of method 'gdp' must be a number > 0, got {opts['lr']!r}"
            )
        config = None
        if epochs > 0:
            config = TrainConfig(
                epochs=epochs, lr=opts["lr"], batch_size=ctx.batch_size, seed=ctx.seed
            )
        model = ctx.model
        first = next(model.parameters(), None)
        home = first.device if first is not None else torch.device("cpu")
        pruner = GlobalDynamicPruner(
            model,
            ctx.example_input,
            ctx.target,
            saliency=opts["saliency"],
            mask_interval=opts["mask_interval"],
            device=None if config is None else resolve_device(config.device),
        )
        try:
            pruner.calibrate(ctx.calibration() if opts["saliency"] == "taylor" else [])
            if config is not None:
                pruner.train(ctx.train_set, config, progress=opts["progress"])
            report = pruner.finish()
        finally:
            pruner.detach()
            model.to(home)
            self.history = pruner.history
        return report


__all__ = [
    "GDP",
    "GlobalDynamicPruner",
    "MaskParametrization",
    "StraightThroughMask",
    "register_mask",
]
