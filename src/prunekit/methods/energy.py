"""Energy-constrained compression — Yang, Zhu and Liu, "Energy-Constrained Compression for Deep
Neural Networks via Weighted Sparse Projection and Layer Input Masking", ICLR 2019
(https://openreview.net/forum?id=BylBr3C9K7); official code
``hyang1990/model_based_energy_constrained_compression`` (``sa_energy_model.py``,
``proj_utils.py``, ``energy_proj_train.py``).

The energy model is the paper's (Sec. 3 and its appendix, ``sa_energy_model.py``): a systolic
array with the hardware parameters of Eyeriss (Chen et al., ISSCC 2016 / JSSC 2017): a
``m x n`` = 12 x 14 array, an input cache of ``s1`` and a kernel cache of ``s2`` 16-bit words
(100 KB and 8 KB), and unit energies ``e_MAC = 3`` (a MAC with its register-file read and
write), ``e_mem = 200`` (DRAM), ``e_cache = 6``, ``e_RF = 1``. For a layer with ``d`` output
channels, ``g`` groups and ``P`` output positions per channel, every non-zero weight costs

* conv: ``e_mem + ceil(P / m) e_cache + P e_RF`` (moving it) ``+ e_MAC P`` (its MACs); a weight
  that does not fit in the kernel cache (beyond the ``s2`` of highest score) pays
  ``(ceil(P / m) - 1) e_mem`` more;
* Linear: ``e_mem + e_cache + e_RF + e_MAC``;

(``get_knapsack_weight_W`` with ``crelax=True``, :func:`weight_costs`), and the input data
cost of each layer (``e_mem`` per input entry, ``ceil(d / g / n) e_cache + ceil(d / g) e_RF``
per unfolded input entry, ``e_mem`` per output entry) falls with the entries its input mask
zeroes (:func:`input_energy`). :func:`model_energy` adds them up.

Algorithm, as this method runs it (the paper's Algorithm 1, one round of its alternation):

1. **Layer input masking** (Sec. 3.3): each pruned layer's input is multiplied by a mask in
   ``[0, 1]`` (initialised to 1), trained alone for ``mask_epochs`` (clamped to ``[0, 1]``
   after every step) with the l0 projection keeping the ``x_budget`` largest entries every
   ``proj_interval`` steps and at the end (``l0proj``); the mask is then folded into the
   weights (a masked input's weights scale by its mask value, zero where it is dropped).
2. **Weighted sparse projection** (Sec. 3.2, ``energy_proj2``): the network is trained with
   SGD and every ``proj_interval`` steps projected onto the energy budget: the weights are
   ranked by ``w^2 / cost(w)`` over all pruned layers and the longest prefix whose costs sum
   to at most the budget is kept (the greedy solution of the knapsack that maximises the kept
   ``sum w^2`` within the energy), the rest set to zero. The budget falls linearly from the
   network's weight energy to the final budget over the phase (``energy_step``), and the
   weights zeroed by a projection may grow back before the next one.
3. The last projection keeps exactly the target count of weights in ``w^2 / cost`` order
   (:func:`energy_projection`): the greedy knapsack at the budget that count spends; masks
   then hold them at zero.

Defaults and their sources:

* ``proj_interval`` 10, ``x_budget`` 0.9, ``lr`` 0.001, ``momentum`` 0.9, ``weight_decay``
  1e-4, ``mask_weight_decay`` 1e-5: official ``energy_proj_train.py`` (``--proj_int``,
  ``Xbudget``, ``--lr``, ``--momentum``, ``--l2wd``, ``--xl2wd``).
* the hardware constants: official ``sa_energy_model.py`` (Eyeriss).
* ``input_mask`` True: the paper's method (the official script has it behind
  ``--input_mask``).
* ``epochs`` 1, ``mask_epochs`` 1: prunekit (the official script trains 30 epochs per step).
* ``mask_lr`` 0.01: prunekit (the official script trains the masks with Adam at 1e-4; here the
  run's SGD, at a rate that moves a mask within an epoch).

Deviations: the run's target is a sparsity, so the final projection keeps a weight count (in
the paper's ``w^2 / cost`` order) rather than meeting an energy fraction; the energy before and
after is reported (:attr:`EnergyConstrained.energy`); a conv's input mask is one value per
input channel (the paper masks every input entry, which a plain conv cannot hold once the mask
is folded into its weights); a Linear's is one per input feature, as in the paper; the mask
phase comes first so that the last weight projection meets the target exactly; the official
script's distillation loss is left out; one round of the W / mask alternation; the input
energy leaves out the cache-overlap refetch term (``conv_cache_overlap``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    covered_sparsity,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.options import SHARED, Options, option


@dataclass(frozen=True)
class Hardware:
    """The systolic-array energy model's constants (official ``sa_energy_model.py``)."""

    e_mac: float = 3.0
    e_mem: float = 200.0
    e_cache: float = 6.0
    e_rf: float = 1.0
    m: int = 12
    n: int = 14
    s1: int = 51200
    s2: int = 4096


@dataclass
class LayerGeometry:
    """What the energy model reads of a layer: output channels ``d``, groups ``g``, output
    positions per channel ``positions``, input entries per sample ``inputs``, unfolded input
    entries (``inputs`` times the kernel reuse) ``unfolded``, and whether it is a conv."""

    d: int
    g: int
    positions: int
    inputs: int
    unfolded: int
    conv: bool
    channels: int = 0  # input channels (conv) / features (Linear)
    kernel: int = 1  # weights per input channel of one filter (conv: kernel positions)
    extra: dict[str, Any] = field(default_factory=dict)


def layer_geometry(model: nn.Module, layers: Mapping[str, nn.Module], example: torch.Tensor):
    """:class:`LayerGeometry` of each layer (by weight name) from one forward pass."""
    out: dict[str, LayerGeometry] = {}
    handles = []
    for name, module in layers.items():

        def hook(mod: nn.Module, args: Any, output: torch.Tensor, key: str = name) -> None:
            x = args[0]
            if isinstance(mod, nn.Linear):
                out[key] = LayerGeometry(
                    d=mod.out_features,
                    g=1,
                    positions=1,
                    inputs=mod.in_features,
                    unfolded=mod.in_features,
                    conv=False,
                    channels=mod.in_features,
                )
                return
            positions = output[0, 0].numel()
            kernel = math.prod(mod.weight.shape[2:])
            out[key] = LayerGeometry(
                d=mod.out_channels,
                g=mod.groups,
                positions=positions,
                inputs=x[0].numel(),
                unfolded=(mod.in_channels // mod.groups) * mod.groups * kernel * positions,
                conv=True,
                channels=mod.in_channels,
                kernel=kernel,
            )

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1].to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


def weight_costs(geo: LayerGeometry, hw: Hardware = Hardware()) -> tuple[float, float]:
    """``(cost, extra)``: the energy of one non-zero weight kept in the kernel cache, and what
    a weight beyond the cache pays more (official ``get_knapsack_weight_W(crelax=True)`` and
    ``get_beta``)."""
    if not geo.conv:
        return hw.e_mem + hw.e_cache + hw.e_rf + hw.e_mac, 0.0
    p = geo.positions
    beta = hw.e_mem + math.ceil(p / hw.m) * hw.e_cache + p * hw.e_rf
    return beta + hw.e_mac * p, (math.ceil(p / hw.m) - 1) * hw.e_mem


def input_energy(geo: LayerGeometry, kept: float = 1.0, hw: Hardware = Hardware()) -> float:
    """Energy of a layer's input data with a fraction ``kept`` of its input entries non-zero
    (official ``energy_eval2``'s ``X_energy`` without the cache-overlap term)."""
    x_nnz, unfolded = kept * geo.inputs, kept * geo.unfolded
    if geo.conv:
        per_group = geo.d / geo.g
        return (
            unfolded * math.ceil(per_group / hw.n) * hw.e_cache
            + unfolded * math.ceil(per_group) * hw.e_rf
            + x_nnz * hw.e_mem
            + geo.positions * geo.d * hw.e_mem
        )
    return (
        math.ceil(geo.d / hw.n) * hw.e_cache * x_nnz
        + geo.d * hw.e_rf * x_nnz
        + hw.e_mem * (math.ceil(geo.d / hw.n) * max(0.0, x_nnz - hw.s1) + min(x_nnz, hw.s1))
        + hw.e_mem * geo.d
    )


def cost_tensor(
    weight: torch.Tensor, geo: LayerGeometry, hw: Hardware = Hardware()
) -> torch.Tensor:
    """Each weight's knapsack cost: :func:`weight_costs`, plus the out-of-cache extra for the
    ``numel - s2`` weights of lowest ``w^2`` when the layer does not fit in the kernel cache."""
    cost, extra = weight_costs(geo, hw)
    costs = torch.full(weight.shape, cost, dtype=torch.float64, device=weight.device)
    numel = weight.numel()
    if geo.conv and numel > hw.s2 and extra > 0:
        flat = costs.reshape(-1)
        low = torch.argsort(weight.detach().reshape(-1).double().pow(2), stable=True)
        flat[low[: numel - hw.s2]] += extra
    return costs


def energy_projection(
    weights: Mapping[str, torch.Tensor],
    costs: Mapping[str, torch.Tensor],
    *,
    budget: float | None = None,
    count: int | None = None,
    forced: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep-masks of the weighted sparse projection: weights ranked by ``w^2 / cost`` over all
    layers (ties by position), the longest prefix whose costs sum to at most ``budget`` kept
    (``energy_proj2``), or the first ``count`` of them. ``forced`` entries (True) are never
    kept."""
    names = list(weights)
    score = torch.cat(
        [
            (weights[n].detach().double().pow(2) / costs[n].to(weights[n].device)).reshape(-1)
            for n in names
        ]
    )
    cost = torch.cat([costs[n].reshape(-1).to(score.device) for n in names])
    if forced is not None:
        drop = torch.cat(
            [
                forced[n].reshape(-1).to(score.device)
                if n in forced
                else torch.zeros(weights[n].numel(), dtype=torch.bool, device=score.device)
                for n in names
            ]
        )
        score = score.masked_fill(drop, -math.inf)
    order = torch.argsort(score, descending=True, stable=True)
    if count is None:
        if budget is None:
            raise ValueError("energy_projection needs a budget or a count")
        count = int((torch.cumsum(cost[order], 0) <= budget).sum())
    if forced is not None:
        count = min(count, int(torch.isfinite(score).sum()))
    flat = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    flat[order[:count]] = True
    out, offset = {}, 0
    for n in names:
        k = weights[n].numel()
        out[n] = flat[offset : offset + k].reshape(weights[n].shape).to(weights[n].device)
        offset += k
    return out


def l0_keep(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """The entries of largest ``|value|`` (ties by position) but the ``floor((1 - fraction) *
    numel)`` smallest: official ``l0proj`` with a normalised budget, rounded toward keeping
    (a layer with fewer than ``1 / (1 - fraction)`` inputs keeps them all)."""
    flat = values.detach().reshape(-1).abs()
    k = max(1, flat.numel() - math.floor(flat.numel() * (1.0 - fraction) + 1e-9))
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.argsort(flat, descending=True, stable=True)[:k]] = True
    return keep.reshape(values.shape)


def fold_input_mask(module: nn.Module, mask: torch.Tensor) -> None:
    """Scale the weights reading each input channel (conv) or feature (Linear) by its mask
    value, so ``layer(x * mask) == folded_layer(x)``."""
    with torch.no_grad():
        w = stored_weight(module)
        if isinstance(module, nn.Linear):
            w.mul_(mask.to(w).reshape(1, -1))
            return
        groups = module.groups
        per_in, per_out = module.in_channels // groups, module.out_channels // groups
        grouped = w.reshape(groups, per_out, per_in, -1)
        grouped.mul_(mask.to(w).reshape(groups, 1, per_in, 1))
        w.copy_(grouped.reshape(w.shape))


def _input_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    m = module.input_mask
    shape = (1, -1) + (1,) * (x.dim() - 2) if not isinstance(module, nn.Linear) else (-1,)
    return (x * m.reshape(shape), *args[1:])


def model_energy(
    layers: Mapping[str, nn.Module],
    geometry: Mapping[str, LayerGeometry],
    input_kept: Mapping[str, float] | None = None,
    hw: Hardware = Hardware(),
) -> float:
    """The energy model's estimate for the layers as they are (non-zero weights) with the given
    fraction of each layer's input entries kept."""
    total = 0.0
    for name, module in layers.items():
        geo = geometry[name]
        w = module.weight.detach()
        costs = cost_tensor(w, geo, hw)
        total += float(costs[w != 0].sum())
        total += input_energy(geo, (input_kept or {}).get(name, 1.0), hw)
    return total


@dataclass(frozen=True)
class EnergyOptions(Options):
    epochs: int = option(
        1,
        help="epochs of training with the weighted sparse projection",
        source="prunekit (official energy_proj_train.py: 30)",
        low=0,
    )
    lr: float = option(
        0.001,
        help=SHARED["lr"],
        source="official energy_proj_train.py (--lr 0.001)",
        low=0,
        low_open=True,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="official energy_proj_train.py", low=0, high=1
    )
    weight_decay: float = option(
        1e-4, help=SHARED["weight_decay"], source="official energy_proj_train.py (--l2wd)", low=0
    )
    schedule: str = option(
        "constant", help=SHARED["schedule"], source="official energy_proj_train.py (fixed lr)"
    )
    proj_interval: int = option(
        10,
        help="training steps between projections",
        source="official energy_proj_train.py (--proj_int 10)",
        low=1,
    )
    input_mask: bool = option(
        True,
        help="train and apply layer input masks before the weight projection",
        source="paper Sec. 3.3 (official --input_mask)",
    )
    mask_epochs: int = option(1, help="epochs of input-mask training", source="prunekit", low=0)
    mask_lr: float = option(
        0.01,
        help="learning rate of the input masks",
        source="prunekit (official: Adam at 1e-4)",
        low=0,
        low_open=True,
    )
    mask_weight_decay: float = option(
        1e-5,
        help="weight decay of the input masks",
        source="official energy_proj_train.py (--xl2wd)",
        low=0,
    )
    x_budget: float = option(
        0.9,
        help="fraction of each layer's input-mask entries kept by the l0 projection",
        source="official energy_proj_train.py (Xbudget = 0.9)",
        low=0,
        high=1,
        low_open=True,
    )


class _Projector:
    """A fit callback: every ``interval`` steps, zero the weights outside the energy
    projection at the budget of that step (linear from ``start`` to ``final`` over ``steps``)."""

    def __init__(self, method: EnergyConstrained, steps: int, interval: int) -> None:
        self.method, self.steps, self.interval = method, max(steps, 1), interval

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event != "step_end" or state["step"] % self.interval:
            return
        self.method._project(min(state["step"] / self.steps, 1.0))


@register_method("energy")
class EnergyConstrained(Method):
    """Energy-constrained compression (Yang, Zhu and Liu, ICLR 2019): layer input masks, then
    training with the weighted sparse projection (``w^2 / energy cost`` under an energy budget
    that falls to the target) of the Eyeriss-based systolic-array energy model. See the module
    docstring."""

    Options = EnergyOptions

    def __init__(self) -> None:
        super().__init__()
        self.energy: dict[str, float] = {}
        self.input_kept: dict[str, float] = {}

    def _weights(self) -> dict[str, torch.Tensor]:
        return {n: stored_weight(m) for n, m in self._layers.items()}

    @torch.no_grad()
    def _project(self, progress: float) -> None:
        weights = self._weights()
        costs = {n: cost_tensor(w, self._geometry[n]) for n, w in weights.items()}
        budget = self._start + (self._final - self._start) * progress
        keep = energy_projection(weights, costs, budget=budget, forced=self._forced)
        for n, w in weights.items():
            w.mul_(keep[n].to(w.dtype))

    def _mask_phase(self, ctx: Context, opts: EnergyOptions) -> dict[str, torch.Tensor]:
        model = ctx.model
        frozen = [p for p in model.parameters() if p.requires_grad]
        handles = []
        for module in self._layers.values():
            channels = module.in_features if isinstance(module, nn.Linear) else module.in_channels
            w = module.weight
            module.register_parameter(
                "input_mask", nn.Parameter(torch.ones(channels, dtype=w.dtype, device=w.device))
            )
            handles.append(module.register_forward_pre_hook(_input_hook))
        for p in frozen:
            p.requires_grad_(False)
        fraction = opts.x_budget

        def project(event: str, state: dict[str, Any]) -> None:
            if event != "step_end":
                return
            with torch.no_grad():
                for module in self._layers.values():
                    module.input_mask.clamp_(0.0, 1.0)
                    if state["step"] % opts.proj_interval == 0:
                        module.input_mask.mul_(l0_keep(module.input_mask, fraction))

        try:
            ctx.train(
                model,
                opts.mask_epochs,
                opts.mask_lr,
                name="input_masks",
                callbacks=[project],
                momentum=opts.momentum,
                weight_decay=opts.mask_weight_decay,
                schedule=opts.schedule,
                progress=opts.progress,
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)
            for h in handles:
                h.remove()
        out = {}
        with torch.no_grad():
            for name, module in self._layers.items():
                m = module.input_mask.detach().clamp(0.0, 1.0)
                m = m * l0_keep(m, fraction)
                del module.input_mask
                fold_input_mask(module, m)
                out[name] = m
        return out

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        self._layers = targets(model, self.id)
        self._geometry = layer_geometry(model, self._layers, ctx.example_input)
        sizes = {n: m.weight.numel() for n, m in self._layers.items()}
        count = sum(sizes.values()) - round(covered_sparsity(model, target) * sum(sizes.values()))
        self.energy = {"before": model_energy(self._layers, self._geometry)}

        self._forced: dict[str, torch.Tensor] | None = None
        if opts.input_mask and opts.mask_epochs > 0:
            input_masks = self._mask_phase(ctx, opts)
            self._forced = {}
            for name, module in self._layers.items():
                dropped = input_masks[name] == 0
                self.input_kept[name] = 1.0 - float(dropped.float().mean())
                self._forced[name] = module.weight.detach() == 0
        with torch.no_grad():
            weights = self._weights()
            costs = {n: cost_tensor(w, self._geometry[n]) for n, w in weights.items()}
            keep = energy_projection(weights, costs, count=count, forced=self._forced)
            self._final = sum(float(costs[n][keep[n]].sum()) for n in weights)
            self._start = sum(float(costs[n][w != 0].sum()) for n, w in weights.items())
        steps_per_epoch = math.ceil(len(ctx.train_set) / ctx.batch_size)  # type: ignore[arg-type]
        ctx.train(
            model,
            opts.epochs,
            opts.lr,
            name="projected",
            callbacks=[_Projector(self, opts.epochs * steps_per_epoch, opts.proj_interval)],
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            schedule=opts.schedule,
            progress=opts.progress,
        )
        with torch.no_grad():
            weights = self._weights()
            costs = {n: cost_tensor(w, self._geometry[n]) for n, w in weights.items()}
            keep = energy_projection(weights, costs, count=count, forced=self._forced)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        self.energy["after"] = model_energy(self._layers, self._geometry, self.input_kept)
        return SparsityReport.measure(model, before)


__all__ = [
    "EnergyConstrained",
    "Hardware",
    "LayerGeometry",
    "cost_tensor",
    "energy_projection",
    "fold_input_mask",
    "input_energy",
    "l0_keep",
    "layer_geometry",
    "model_energy",
    "weight_costs",
]
