"""Simplify a model for deployment: drop channels that are provably dead, fold BatchNorm.

Pruning methods that only *zero* filters (soft filter pruning, masks, sparsity penalties) leave a
model exactly as large as before. :func:`remove_zero_channels` finds the channels whose value is
zero everywhere because every layer producing them has zero weights, and removes them physically
through the channel graph, so the model shrinks without any change of its outputs.
:func:`fold_batchnorm` merges eval-mode BatchNorm layers into the conv or Linear before them, the
usual export step. :func:`simplify` does both and reports the sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_leaves

from prunekit.graph import Graph, build
from prunekit.graph.core import Site
from prunekit.graph.handlers import PassThroughHandler
from prunekit.graph.trace import SHAPE, trace
from prunekit.measure import count_flops, count_params
from prunekit.measure._inputs import Inputs, as_args, inference

_CONV = nn.modules.conv._ConvNd
_TRANSPOSED = nn.modules.conv._ConvTransposeNd
_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class ZeroChannelReport:
    """What :func:`remove_zero_channels` removed, and what it found zero but had to keep.

    ``constant`` lists units whose producing filters are zero but whose value is a non-zero
    constant (a BatchNorm shift after a zeroed conv, a sigmoid of a zero channel): removing
    them would change the outputs, so they stay.
    """

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    removed: dict[str, list[int]] = field(default_factory=dict)
    constant: dict[str, list[int]] = field(default_factory=dict)

    @property
    def channels_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())


@dataclass
class SimplifyReport:
    """What :func:`simplify` did, with measured sizes before and after."""

    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    removed: dict[str, list[int]] = field(default_factory=dict)
    constant: dict[str, list[int]] = field(default_factory=dict)
    folded: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
            "channels_removed": sum(len(v) for v in self.removed.values()),
            "batchnorms_folded": len(self.folded),
        }


# ------------------------------------------------------------------------ zero channels


def _is_zero(t: torch.Tensor | None, atol: float) -> bool:
    return t is None or bool((t.detach().abs() <= atol).all())


def _weight_slice_zero(module: nn.Module, pos: int, atol: float) -> bool | None:
    """Whether the weights producing output position ``pos`` are all zero; None when this
    layer type's weight layout is not known here (the caller then treats it as live)."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(module, _TRANSPOSED):
        ipg, opg = module.in_channels // module.groups, module.out_channels // module.groups
        g = pos // opg
        return _is_zero(w[g * ipg : (g + 1) * ipg, pos % opg], atol)
    if isinstance(module, (_CONV, nn.Linear)):
        return _is_zero(w[pos], atol)
    if isinstance(module, nn.Embedding):
        return _is_zero(w[:, pos], atol)
    return None


def _bn_shift(m: nn.Module) -> torch.Tensor:
    """What a BatchNorm outputs, per channel, for an all-zero input channel (eval mode).

    Without running statistics the batch statistics of a zero channel are 0, so the output is
    ``beta``; with them it is ``beta - gamma * mean / sqrt(var + eps)``.
    """
    n = m.num_features
    ref = m.running_mean if m.running_mean is not None else m.weight
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    gamma = m.weight.detach() if m.weight is not None else torch.ones(n, dtype=dtype)
    beta = m.bias.detach() if m.bias is not None else torch.zeros(n, dtype=dtype)
    if m.running_mean is None or m.running_var is None:
        return beta
    return beta - gamma * m.running_mean / torch.sqrt(m.running_var + m.eps)


def _zero_preserving(
    site: Site, pos: int, root: int, in_roots: np.ndarray | None, atol: float
) -> tuple[bool, bool]:
    """Whether output position ``pos`` of ``site`` is zero wherever its inputs of the same unit
    are zero (the other producers of the unit are checked by the caller).

    Returns ``(zero, constant)``: ``constant`` marks a position that is not zero but would be
    constant if the unit's inputs are zero (a BatchNorm shift, a conv bias).
    """
    m = site.module
    fed = in_roots is not None and bool((in_roots == root).any())
    if isinstance(m, _BN):
        zero = _is_zero(_bn_shift(m)[pos : pos + 1], atol)
        return zero, not zero
    if isinstance(m, (_CONV, nn.Linear, nn.Embedding)):
        bias = getattr(m, "bias", None)
        bias_zero = _is_zero(None if bias is None else bias[pos : pos + 1], atol)
        w_zero = _weight_slice_zero(m, pos, atol)
        if w_zero is None:
            return False, False
        # a depthwise or grouped conv whose inputs in this unit are zero outputs its bias
        producing_zero = w_zero or (fed and isinstance(m, _CONV))
        return producing_zero and bias_zero, producing_zero and not bias_zero
    if isinstance(m, (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
        # the unit holds whole normalisation groups: all-zero input normalises to ``beta``
        bias = getattr(m, "bias", None)
        zero = fed and _is_zero(None if bias is None else bias[pos : pos + 1], atol)
        return zero, fed and not zero
    if isinstance(m, nn.PReLU) or isinstance(site.handler, PassThroughHandler):
        return fed, False
    return False, False  # a layer type not understood here: assumed live


def _dead_units(graph: Graph, atol: float) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """Per group, the units whose every producing position is zero, and those that are zero
    up to a constant (kept)."""
    dead: dict[str, list[int]] = {}
    constant: dict[str, list[int]] = {}
    # every output position of every layer, indexed by its unit: one pass over the layers
    producers: dict[int, list[tuple[Site, int, np.ndarray | None]]] = {}
    for site in graph.sites.values():
        if site.out_labels is None or not len(site.out_labels):
            continue
        out_roots = graph.labels.roots(site.out_labels)
        in_roots = None if site.in_labels is None else graph.labels.roots(site.in_labels)
        for pos, root in enumerate(out_roots.tolist()):
            producers.setdefault(root, []).append((site, pos, in_roots))
    for group in graph.groups:
        if not group.exact:  # a LayerNorm mixes the channel statistics: nothing is exact
            continue
        for i, root in enumerate(group.units):
            zero, const, live = True, False, False
            for site, pos, in_roots in producers.get(root, []):
                z, c = _zero_preserving(site, pos, root, in_roots, atol)
                zero, const, live = zero and z, const or c, not (z or c)
                if live:
                    break
            if live or root not in producers:
                continue
            if zero:
                dead.setdefault(group.name, []).append(i)
            elif const:
                constant.setdefault(group.name, []).append(i)
    # every group keeps at least one channel so the model stays connected
    groups = {g.name: g for g in graph.groups}
    for name, idx in list(dead.items()):
        if len(idx) >= groups[name].size:
            dead[name] = idx[1:]
            if not dead[name]:
                del dead[name]
    return dead, constant


def _outputs(model: nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
    with inference(model):
        out = model(*args)
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Outputs equal up to the rounding of summing fewer zero terms in another order."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            return False
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
            continue
        eps = torch.finfo(x.dtype).eps
        scale = float(x.detach().abs().max()) if x.numel() else 0.0
        if not torch.allclose(x, y, rtol=1e3 * eps, atol=1e3 * eps * max(scale, 1.0)):
            return False
    return True


def _roots_of(graph: Graph, picks: dict[str, list[int]]) -> list[int]:
    groups = {g.name: g for g in graph.groups}
    return [groups[n].units[i] for n, idx in picks.items() for i in idx]


def _passes(
    model: nn.Module,
    args: tuple[Any, ...],
    picks: dict[str, list[int]],
    ref: list[torch.Tensor],
    ignore: tuple[str, ...],
) -> bool:
    """Whether removing ``picks`` from a copy of ``model`` leaves its outputs unchanged."""
    trial = copy.deepcopy(model)
    graph = build(trial, args, ignore=ignore)
    graph.remove(_roots_of(graph, picks))
    return _same(ref, _outputs(trial, args))


def remove_zero_channels(
    model: nn.Module, example_inputs: Inputs, *, atol: float = 0.0, ignore: Iterable[str] = ()
) -> ZeroChannelReport:
    """Physically remove, in place, every channel unit whose value is exactly zero everywhere.

    A unit is dead when every layer producing it has zero weights (``|w| <= atol``) and zero bias
    for it, and every layer it passes through maps zero to zero (a BatchNorm's eval-mode shift
    ``beta - gamma * mean / sqrt(var + eps)`` is zero, a norm's ``beta`` is zero). Removing it
    then leaves the outputs unchanged. A zeroed filter followed by a BatchNorm with a non-zero
    shift is a *constant* channel, not a dead one: it is kept and listed in the report.

    The check reads layer parameters only, so element-wise ops between layers that turn zero
    into a constant (``sigmoid``, ``x + 1``) are invisible to it; a forward pass on
    ``example_inputs`` compares the outputs before and after, and groups whose removal changes
    them are kept. Exactness holds in eval mode (BatchNorm running statistics). ``ignore`` names
    layers the graph should leave alone, as in :func:`prunekit.prune_channels`.
    """
    args = as_args(example_inputs)
    params_before = count_params(model).total
    flops_before = count_flops(model, args).flops
    ignore = tuple(ignore)
    graph = build(model, args, ignore=ignore)
    dead, constant = _dead_units(graph, atol)
    if dead:
        ref = _outputs(model, args)
        if not _passes(model, args, dead, ref, ignore):
            dead = {
                n: idx for n, idx in dead.items() if _passes(model, args, {n: idx}, ref, ignore)
            }
            if dead and not _passes(model, args, dead, ref, ignore):  # interacting groups: keep all
                dead = {}
    if dead:
        graph.remove(_roots_of(graph, dead))
    return ZeroChannelReport(
        params_before=params_before,
        params_after=count_params(model).total,
        flops_before=flops_before,
        flops_after=count_flops(model, args).flops if dead else flops_before,
        removed=dead,
        constant=constant,
    )


# ------------------------------------------------------------------------ BatchNorm folding


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def _fold_one(layer: nn.Module, bn: nn.Module) -> None:
    """Scale ``layer``'s output channels by ``gamma / sqrt(var + eps)`` and absorb the shift."""
    w = layer.weight
    scale = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    scale = (scale / torch.sqrt(bn.running_var + bn.eps)).to(w.dtype)
    beta = bn.bias.detach().to(w.dtype) if bn.bias is not None else torch.zeros_like(scale)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        if isinstance(layer, _TRANSPOSED):
            # weight is (in, out / groups, *k): out channel o = g * opg + j sits at [g-block, j]
            g = layer.groups
            ipg, opg = layer.in_channels // g, layer.out_channels // g
            view = w.view(g, ipg, opg, *w.shape[2:])
            view.mul_(scale.view(g, 1, opg, *([1] * (w.dim() - 2))))
        else:
            w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
        new_bias = (bias - bn.running_mean.to(w.dtype)) * scale + beta
    if layer.bias is None:
        layer.bias = nn.Parameter(new_bias.clone(), requires_grad=w.requires_grad)
    else:
        with torch.no_grad():
            layer.bias.copy_(new_bias)


def _foldable(node: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]) -> str | None:
    """The layer ``node`` (a BatchNorm call) can be folded into, or None.

    The layer must feed only this BatchNorm (its output is not used elsewhere, a residual
    branch for instance) and both must be called once, so changing them changes nothing else.
    """
    bn = modules[str(node.target)]
    if not isinstance(bn, _BN) or bn.running_mean is None or calls[str(node.target)] != 1:
        return None
    src = node.args[0] if node.args else None
    if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
        return None
    name = str(src.target)
    layer = modules[name]
    if calls[name] != 1 or not isinstance(getattr(layer, "weight", None), torch.Tensor):
        return None
    if isinstance(layer, _CONV):
        if layer.out_channels != bn.num_features:
            return None
        return name
    if isinstance(layer, nn.Linear):
        shape = src.meta.get(SHAPE)
        # BatchNorm1d reads dim 1 as channels: only a (batch, features) output lines up
        if shape is None or len(shape) != 2 or layer.out_features != bn.num_features:
            return None
        return name
    return None


def fold_batchnorm(model: nn.Module, example_inputs: Inputs) -> list[tuple[str, str]]:
    """Fold, in place, every BatchNorm that directly follows a conv or Linear feeding only it.

    The layer's weight is scaled per output channel by ``gamma / sqrt(var + eps)`` and its bias
    becomes ``(b - mean) * gamma / sqrt(var + eps) + beta``; the BatchNorm is replaced by
    ``nn.Identity``. Eval-mode outputs are unchanged. This is an export step: a folded model
    trained further no longer normalises by batch statistics, so training it differs from
    training the original. Plain, grouped, depthwise and transposed convolutions (1d/2d/3d) and
    ``Linear`` + ``BatchNorm1d`` on ``(batch, features)`` are folded; the rest is left as is.
    Returns the ``(layer, batchnorm)`` names folded.
    """
    args = as_args(example_inputs)
    traced = trace(model, inputs=args)
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folded = []
    for node in traced.graph.nodes:
        if node.op != "call_module":
            continue
        layer = _foldable(node, modules, calls)
        if layer is None:
            continue
        bn_name = str(node.target)
        _fold_one(modules[layer], modules[bn_name])
        parent, attr = _parent(model, bn_name)
        setattr(parent, attr, nn.Identity())
        folded.append((layer, bn_name))
    return folded


# ------------------------------------------------------------------------ both


def simplify(
    model: nn.Module, example_inputs: Inputs, *, atol: float = 0.0, ignore: Iterable[str] = ()
) -> SimplifyReport:
    """Remove dead channels, then fold BatchNorm layers (in place); see the two steps.

    Removal runs first because it reads the BatchNorm shifts to tell dead channels from constant
    ones; after folding the shift sits in a bias, which the check reads just as well, but the
    report names stay those of the unfolded model.
    """
    args = as_args(example_inputs)
    params_before = count_params(model).total
    flops_before = count_flops(model, args).flops
    zero = remove_zero_channels(model, args, atol=atol, ignore=ignore)
    folded = fold_batchnorm(model, args)
    return SimplifyReport(
        params_before=params_before,
        params_after=count_params(model).total,
        flops_before=flops_before,
        flops_after=count_flops(model, args).flops,
        removed=zero.removed,
        constant=zero.constant,
        folded=folded,
    )
