"""FSM — Duan, Zhou, He, Liu, Duan, Hu, "Network Pruning via Feature Shift Minimization"
(ACCV 2022). Official code: github.com/lscgx/FSM (``main.py``).

Removing channel ``k`` of a layer shifts the distribution of the next layer's features: every
output ``o`` of the next conv loses ``W[o, k] * x_k``, whose expectation is ``S[o, k] · E[x_k]``
(``S[o, k]``: the next layer's weights from ``k`` to ``o`` summed over the kernel window). FSM
estimates ``E[x_k]`` from the BatchNorm that makes the channel, without data: its output is
``N(β_k, γ_k²)``, and after the ReLU ``E[x_k] = β Φ(β/|γ|) + |γ| φ(β/|γ|)``
(:mod:`prunekit.criteria.feature_shift`; the official ``get_relu_expect`` uses
``scipy.stats.norm(β, γ).expect(lb=0)``). The feature shift of channel ``k`` is the mean over
the next layer's outputs (official ``get_effect_for_dstr(type='mean')``)

    ``shift(k) = 1/O sum_o |S[o, k] · E[x_k]|``

and the channels of least shift are removed. Then the *distribution optimisation* compensates
the next BatchNorm for the mean the removed channels took away (official ``iter_*`` loops): for
each output ``o`` of the next conv, with ``e_all`` and ``e_kept`` its estimated mean from all
and from the kept channels and ``μ_o`` the BatchNorm's running mean, ``r = e_all / μ_o``; if
``r > 0`` the running mean becomes ``e_kept / r`` and the running variance is multiplied by the
fraction of channels kept. The compensation is rolled back when it does not help (official:
when the accuracy drops; here when the calibration loss rises).

1. Estimate ``E[x]`` at the input of every layer that reads pruned channels
   (:func:`~prunekit.criteria.feature_shift.input_expectations`); where no BatchNorm estimate
   exists (another nonlinearity, no BatchNorm: the plain MNIST-1D CNN), measure the mean of
   that input on the calibration batches instead (summed over DDP ranks).
2. ``shift(k)`` per channel and consumer; a channel read by several layers (a residual stream,
   the official GoogLeNet branches) gets the mean over them. A channel no conv or Linear layer
   reads gets ``|E[x_k]|`` (the official last VGG layer).
3. Select the channels of least shift to the FLOPs or params target: ``scope="layer"`` (one
   rate in every group, the default) or ``"global"``; zero them.
4. Distribution optimisation of every consumer followed by a BatchNorm, in forward order, each
   kept only if the calibration loss does not rise (``compensate``).
5. Remove the zeroed channels through the structural core; the runner fine-tunes.

Defaults and their sources:

* ``compensate = True``: the distribution optimisation is part of the paper's method (its
  abstract) and of every official ``iter_*`` loop.
* ``min_ratio = 0.0``: the official VGG-16 / ResNet-56 loops compensate when ``est_error > 0``
  (the ResNet-50 loop uses 0.5).
* ``scope = "layer"``: the paper prunes each layer by its own rate (``--compress_rate``); a
  single rate meeting the target stands in for the hand-set rates.
* ``layer_epochs = 0`` (prunekit, for cost; official: 1), ``lr = 0.001``, ``momentum = 0.9``,
  ``weight_decay = 0``, ``schedule = "constant"``: official ``README.md`` and ``main.py``.

Deviations a reader should know:

* The official code prunes one layer at a time with one epoch of fine-tuning between layers
  (``--epochs 1 --lr 0.001``, no weight decay). By default (``layer_epochs = 0``) every layer is
  scored and pruned in one pass and the runner's fine-tuning follows: the per-layer fine-tuning
  multiplies the cost by the number of layers. ``layer_epochs = n`` runs the official schedule:
  the per-group widths of the one-pass selection (so the target is still met), then group by
  group in forward order: rescore the model pruned so far, remove, compensate, fine-tune ``n``
  epochs (``lr``, ``momentum``, ``weight_decay``, ``schedule``; each phase checkpointed as
  ``fsm_layer<i>``). ``docs/fidelity.md`` gives the measured effect.
* A negative ``γ`` is taken as the standard deviation ``|γ|`` (the distribution of ``γ x̂ + β``
  is ``N(β, γ²)``); the official code replaces it by ``1e-5``.
* The rollback compares the cross-entropy on the calibration batches, not the test accuracy
  the official loop reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.activations import Tap, collect, per_group, readers, split_batch
from prunekit.criteria.feature_shift import Expectation, input_expectations, next_layer_sums
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.explain import pinned_sets
from prunekit.graph.trace import trace
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import (
    GroupChange,
    PruneReport,
    remove_selected,
    select_channels,
    selection_roots,
)
from prunekit.train.distributed import all_reduce_sum


@dataclass(frozen=True)
class FSMOptions(Options):
    compensate: bool = option(
        True,
        help="distribution optimisation: correct the next BatchNorm's running statistics for "
        "the removed channels (rolled back where the calibration loss rises)",
        source="paper: the distribution-optimization algorithm (abstract); official main.py, every iter_* loop",
    )
    min_ratio: float = option(
        0.0,
        help="compensate an output only if estimated / running mean exceeds this",
        source="official main.py, iter_vgg16bn and iter_resnet_56: est_error > 0",
    )
    scope: str = option(
        "layer",
        help=SHARED["scope"],
        source="paper: per-layer rates (--compress_rate); one rate meets the target here",
        choices=("layer", "global"),
    )
    layer_epochs: int = option(
        0,
        help="0: score and prune every layer in one pass; n > 0: prune layer by layer in "
        "forward order, rescoring the pruned model and fine-tuning n epochs after each layer",
        source="prunekit (cost); official main.py and README: one layer at a time, --epochs 1",
        low=0,
    )
    lr: float = option(
        0.001,
        help=SHARED["lr"] + " (between layers)",
        source="official README: --lr 0.001 for the pruning stage",
        low=0,
        low_open=True,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="official main.py: --momentum 0.9", low=0, high=1
    )
    weight_decay: float = option(
        0.0,
        help=SHARED["weight_decay"],
        source="official README: --weight_decay 0. for the pruning stage",
        low=0,
    )
    schedule: str = option(
        "constant",
        help=SHARED["schedule"],
        source="official README: --lr_decay_step 1 over one epoch (a constant rate)",
        choices=("constant", "step", "cosine", "linear"),
    )


def _mean_stat(maps: torch.Tensor, _: Any) -> torch.Tensor:
    return maps.reshape(maps.shape[0], maps.shape[1], -1).mean(-1)


def tap_expectations(
    model: nn.Module, inputs: tuple[Any, ...], taps: list[Tap], batches: list[Any]
) -> tuple[dict[str, torch.Tensor], dict[nn.Module, Expectation]]:
    """Per tap, ``E[x]`` of each of its units (``{tap.key: (U,)}``): from BatchNorm statistics
    where the traced graph gives an estimate, else measured on ``batches``; and the BatchNorm
    estimates of every tapped layer's whole input."""
    estimates = input_expectations(model, inputs, [t.module for t in taps if t.side == "in"])
    values: dict[str, torch.Tensor] = {}
    missing = []
    for tap in taps:
        e = estimates.get(tap.module) if tap.side == "in" else None
        if e is None or e.mean.numel() != tap.width:
            missing.append(tap)
            continue
        values[tap.key] = e.mean[tap.index].mean(1)
    if missing:
        values.update(collect(model, missing, batches, _mean_stat))
    return values, estimates


def shift_of_tap(tap: Tap, expect: torch.Tensor) -> torch.Tensor:
    """Per unit of ``tap``: ``1/O sum_o |sum_{p in unit} S[o, p] · E_unit|`` for a conv or
    Linear consumer, ``|E_unit|`` otherwise."""
    sums = next_layer_sums(tap.module) if tap.side == "in" else None
    if sums is None or sums.shape[1] != tap.width:
        return expect.abs()
    per_unit = sums[:, tap.index].sum(-1)  # O x U: the unit's positions together
    return (per_unit * expect[None, :]).abs().mean(0)


def feature_shifts(
    model: nn.Module, graph: Graph, batches: list[Any]
) -> tuple[dict[str, torch.Tensor], dict[nn.Module, Expectation]]:
    """Per group of ``graph``, the feature shift of removing each unit (the mean over the
    layers that read it), and the BatchNorm estimates of the tapped layers' inputs."""
    taps = readers(graph)
    expect, estimates = tap_expectations(model, graph.inputs, taps, batches)
    shifts = {t.key: shift_of_tap(t, expect[t.key]) for t in taps if t.key in expect}
    return per_group(graph, taps, shifts), estimates


@dataclass
class Compensation:
    """New running statistics of one BatchNorm after the consumer before it lost inputs."""

    bn: nn.modules.batchnorm._BatchNorm
    rows: torch.Tensor  # outputs compensated
    mean: torch.Tensor
    var_scale: float

    def apply(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new statistics; returns the old ones (for :meth:`undo`)."""
        old = (self.bn.running_mean.clone(), self.bn.running_var.clone())
        rm, rv = self.bn.running_mean, self.bn.running_var
        rm[self.rows] = self.mean.to(rm)
        rv[self.rows] = rv[self.rows] * self.var_scale
        return old

    def undo(self, old: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.bn.running_mean.copy_(old[0])
        self.bn.running_var.copy_(old[1])


def compensation(
    consumer: nn.Module,
    bn: nn.modules.batchnorm._BatchNorm,
    expect: Expectation,
    removed: torch.Tensor,
    min_ratio: float,
) -> Compensation | None:
    """The distribution optimisation of ``bn`` after ``consumer``, whose input positions
    ``removed`` (a boolean mask) go: ``e_all``, ``e_kept`` the consumer's expected outputs from
    all and from the kept inputs (``S · E`` plus its bias), ``r = e_all / μ``; outputs with
    ``r > min_ratio`` get ``μ' = e_kept / r`` and ``σ'² = σ² · kept fraction``."""
    sums = next_layer_sums(consumer)
    e = expect.mean
    if sums is None or bn.running_mean is None or sums.shape[1] != e.numel():
        return None
    bias = getattr(consumer, "bias", None)
    b = bias.detach().double().cpu() if bias is not None else torch.zeros(sums.shape[0])
    e_all = sums @ e + b
    e_kept = sums @ torch.where(removed, torch.zeros_like(e), e) + b
    mu = bn.running_mean.detach().double().cpu()
    if mu.numel() != e_all.numel():
        return None
    ratio = e_all / mu
    rows = torch.nonzero(ratio > min_ratio).flatten()
    if not len(rows):
        return None
    kept_fraction = 1.0 - float(removed.double().mean())
    return Compensation(bn, rows, e_kept[rows] / ratio[rows], kept_fraction)


def next_batchnorms(model: nn.Module, inputs: tuple[Any, ...]) -> dict[nn.Module, nn.Module]:
    """``{layer: the BatchNorm applied directly to its output}`` (from the traced graph)."""
    named = dict(model.named_modules())
    out: dict[nn.Module, nn.Module] = {}
    for node in trace(model, inputs=inputs).graph.nodes:
        if node.op != "call_module":
            continue
        m = named.get(str(node.target))
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not node.args:
            continue
        src = node.args[0]
        if isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1:
            out.setdefault(named[str(src.target)], m)
    return out


def calibration_loss(model: nn.Module, batches: list[Any]) -> float:
    """Mean cross-entropy over ``batches`` (summed over DDP ranks)."""
    device = next(model.parameters()).device
    total = torch.zeros(2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for batch in batches:
            x, y = split_batch(batch)
            out = model(x.to(device))
            total[0] += F.cross_entropy(out, y.to(device), reduction="sum").double()
            total[1] += x.shape[0]
    total = all_reduce_sum(total)
    return float(total[0] / total[1].clamp(min=1))


def removed_positions(graph: Graph, module: nn.Module, picks: dict[str, list[int]]) -> Any:
    """A boolean mask over ``module``'s input positions: those that carry a picked unit."""
    site = next((s for s in graph.sites.values() if s.module is module), None)
    if site is None or site.in_labels is None:
        return None
    groups = {g.name: g for g in graph.groups}
    roots = {groups[n].units[i] for n, idx in picks.items() for i in idx}
    hit = np.isin(graph.labels.roots(site.in_labels), np.asarray(sorted(roots), dtype=np.int64))
    return torch.from_numpy(hit)


def distribution_optimisation(
    model: nn.Module,
    graph: Graph,
    picks: dict[str, list[int]],
    estimates: dict[nn.Module, Expectation],
    batches: list[Any],
    min_ratio: float,
    loss: Callable[[nn.Module, list[Any]], float] = calibration_loss,
) -> list[str]:
    """Compensate, in forward order, the BatchNorm after every consumer that loses inputs,
    keeping each change only if the calibration loss does not rise (the model's picked channels
    are already zeroed). Returns the names of the layers whose BatchNorm was kept compensated."""
    bns = next_batchnorms(model, graph.inputs)
    names = {m: n for n, m in model.named_modules()}
    kept: list[str] = []
    best = loss(model, batches)
    for site in graph.sites.values():
        m = site.module
        if m not in bns or m not in estimates:
            continue
        removed = removed_positions(graph, m, picks)
        if removed is None or not removed.any():
            continue
        comp = compensation(m, bns[m], estimates[m], removed, min_ratio)
        if comp is None:
            continue
        old = comp.apply()
        now = loss(model, batches)
        if now <= best:
            best = now
            kept.append(names[m])
        else:
            comp.undo(old)
    return kept


@register_method("fsm")
class FSM(Method):
    """Feature shift minimisation (Duan et al., ACCV 2022): each channel's removal shifts the
    next layer's expected outputs by ``S[o, k] · E[x_k]``, with ``E[x_k]`` the expectation of
    the rectified ``N(β, γ²)`` of its BatchNorm (measured where there is none); the channels of
    least mean shift are removed to the target, and the next BatchNorm's running statistics are
    corrected for the mean they took away. After :meth:`prune`: ``compensated``, the layers
    whose next BatchNorm was corrected. See the module docstring."""

    Options = FSMOptions

    def __init__(self) -> None:
        self.compensated: list[str] = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        batches = ctx.calibration()
        if not batches:
            raise ConfigError("method 'fsm' needs calibration data: the training set gave none")
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            shifts, estimates = feature_shifts(ctx.model, graph, batches)

            def importance(group: Group) -> torch.Tensor:
                s = shifts[group.name]
                if torch.isnan(s).any():
                    raise ConfigError(
                        f"fsm: channels of group {group.name!r} were never seen in the "
                        "calibration pass"
                    )
                return s

            picks = select_channels(
                graph, scope=opts.scope, importance=importance, **target.as_dict()
            )
            self.compensated = []
            if opts.layer_epochs > 0:
                counts = {name: len(idx) for name, idx in picks.items()}
                return self._layer_by_layer(ctx, opts, graph, dense, counts, batches)
            if opts.compensate and picks:
                for name, idx in picks.items():
                    graph.group(name).zero(idx)
                self.compensated = distribution_optimisation(
                    ctx.model, graph, picks, estimates, batches, opts.min_ratio
                )
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)

    def _layer_by_layer(
        self,
        ctx: Context,
        opts: FSMOptions,
        graph: Graph,
        dense: Any,
        counts: dict[str, int],
        batches: list[Any],
    ) -> PruneReport:
        """The official schedule: group by group in forward order, rescore on the model pruned
        so far, remove that group's share (``counts``, fixed by the one-pass selection, so the
        target is met), compensate, fine-tune ``layer_epochs``."""
        sizes = {g.name: g.size for g in graph.groups}
        alive = {n: list(range(k)) for n, k in sizes.items()}  # original indices left
        pinned = pinned_sets(graph)
        for step, name in enumerate(n for n in sizes if counts.get(n)):
            shifts, estimates = feature_shifts(ctx.model, graph, batches)
            order = torch.argsort(shifts[name], stable=True).tolist()
            pick = {name: sorted(order[: counts[name]])}
            graph.group(name).zero(pick[name])
            if opts.compensate:
                self.compensated += distribution_optimisation(
                    ctx.model, graph, pick, estimates, batches, opts.min_ratio
                )
            graph.remove(selection_roots(graph, pick))
            drop = set(pick[name])
            alive[name] = [a for j, a in enumerate(alive[name]) if j not in drop]
            ctx.train(
                ctx.model,
                opts.layer_epochs,
                opts.lr,
                name=f"fsm_layer{step}",
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
                schedule=opts.schedule,
                progress=bool(opts.progress),
            )
            ctx.model.eval()
        after = graph.plan([])
        return PruneReport(
            params_before=dense.params,
            params_after=after.params,
            flops_before=dense.flops,
            flops_after=after.flops,
            groups=[GroupChange(n, sizes[n], len(alive[n])) for n in sizes],
            removed={
                n: sorted(set(range(sizes[n])) - set(alive[n]))
                for n in sizes
                if len(alive[n]) < sizes[n]
            },
            pinned=pinned,
        )


__all__ = [
    "FSM",
    "Compensation",
    "FSMOptions",
    "compensation",
    "distribution_optimisation",
    "feature_shifts",
    "shift_of_tap",
]
