"""Second-order statistics of the loss for structured criteria: Hessian-vector products by double
back-propagation, Gauss-Newton-vector products, Hutchinson's trace estimator, and the reduction
of per-parameter values to the units of a channel group.

* :func:`hessian_vector_product`: ``H v`` of the mean loss over calibration batches (exact
  Hessian, two backward passes per batch).
* :func:`gauss_newton_product`: ``G v`` with the Gauss-Newton matrix of the cross-entropy,
  ``G = 1/N sum_n J_nᵀ (diag(p_n) - p_n p_nᵀ) J_n`` (``J_n`` the Jacobian of the logits of sample
  ``n``, ``p_n`` its softmax): ``J v`` by the double-backward trick, the softmax Hessian in
  closed form, then one backward pass for ``Jᵀ``.
* :func:`hutchinson_diagonal`: the mean over ``n_v`` Rademacher vectors ``v`` of ``v ⊙ (H v)``,
  whose sum over any set of parameters estimates the trace of that block of the Hessian
  (Hutchinson, 1990); exact for a diagonal Hessian.
* :func:`unit_sums`: per-parameter values (one tensor per parameter, its shape) summed over the
  output rows of each unit of a group, in every layer that produces it: the trace of a channel's
  block, its squared norm, its parameter count, a dot product restricted to it.
* :func:`unit_parameter_mask`: for every parameter, 1 on the rows that produce a unit of some
  group (what zeroing the units would set to zero), 0 elsewhere.

Sums over calibration batches are reduced over DDP ranks (:func:`~prunekit.train.distributed.
all_reduce_sum`), so every rank gets the same values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.activations import split_batch
from prunekit.graph import Graph, Group
from prunekit.train.distributed import all_reduce_sum

__all__ = [
    "LossFn",
    "gauss_newton_product",
    "hessian_vector_product",
    "hutchinson_diagonal",
    "loss_gradient",
    "output_rows",
    "unit_parameter_mask",
    "unit_sums",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _reduce(parts: list[torch.Tensor], count: float) -> list[torch.Tensor]:
    """Sums over ranks of ``parts`` divided by the summed ``count``."""
    flat = torch.cat(
        [p.reshape(-1) for p in parts]
        + [torch.tensor([count], device=parts[0].device, dtype=parts[0].dtype)]
    )
    flat = all_reduce_sum(flat)
    total = float(flat[-1]) or 1.0
    out, offset = [], 0
    for p in parts:
        out.append((flat[offset : offset + p.numel()] / total).reshape(p.shape))
        offset += p.numel()
    return out


def hessian_vector_product(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    batches: Iterable[Any],
    loss_fn: LossFn = F.cross_entropy,
) -> list[torch.Tensor]:
    """``H v`` of the loss (``loss_fn``, a batch mean) averaged over ``batches`` (weighted by
    their sizes, summed over DDP ranks): one tensor per parameter."""
    device = _device(model)
    total = [torch.zeros_like(p) for p in params]
    count = 0.0
    for batch in batches:
        x, y = split_batch(batch)
        x, y = x.to(device), y.to(device)
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            hv = torch.autograd.grad(grads, params, grad_outputs=list(vectors), allow_unused=True)
        n = x.shape[0]
        for t, h in zip(total, hv, strict=True):
            if h is not None:
                t += n * h.detach()
        count += n
    return _reduce(total, count)


def gauss_newton_product(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    vectors: Sequence[torch.Tensor],
    batches: Iterable[Any],
) -> list[torch.Tensor]:
    """``G v`` with the Gauss-Newton matrix of the mean cross-entropy over ``batches`` (summed
    over DDP ranks): ``1/N sum_n J_nᵀ H_n J_n v`` with ``H_n = diag(p_n) - p_n p_nᵀ`` the
    Hessian of the cross-entropy with respect to the logits. One tensor per parameter."""
    device = _device(model)
    total = [torch.zeros_like(p) for p in params]
    count = 0.0
    for batch in batches:
        x, _ = split_batch(batch)
        x = x.to(device)
        with torch.enable_grad():
            logits = model(x)
            # J v by the double-backward trick: d/dw <Jᵀ w, v> = J v
            w = torch.zeros_like(logits, requires_grad=True)
            jt_w = torch.autograd.grad(logits, params, grad_outputs=w, create_graph=True)
            dot = sum((a * b).sum() for a, b in zip(jt_w, vectors, strict=True))
            jv = torch.autograd.grad(dot, w)[0].detach()
            p = torch.softmax(logits.detach().double(), dim=-1)
            jv64 = jv.double()
            hjv = (p * jv64 - p * (p * jv64).sum(-1, keepdim=True)).to(logits.dtype)
            gv = torch.autograd.grad(logits, params, grad_outputs=hjv, allow_unused=True)
        for t, g in zip(total, gv, strict=True):
            if g is not None:
                t += g.detach()
        count += x.shape[0]
    return _reduce(total, count)


def loss_gradient(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Iterable[Any],
    loss_fn: LossFn = F.cross_entropy,
) -> list[torch.Tensor]:
    """The gradient of the loss (a batch mean) averaged over ``batches`` (weighted by their
    sizes, summed over DDP ranks): one tensor per parameter."""
    device = _device(model)
    total = [torch.zeros_like(p) for p in params]
    count = 0.0
    for batch in batches:
        x, y = split_batch(batch)
        x, y = x.to(device), y.to(device)
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t += x.shape[0] * g.detach()
        count += x.shape[0]
    return _reduce(total, count)


def hutchinson_diagonal(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    batches: Sequence[Any],
    n_v: int,
    generator: torch.Generator,
    loss_fn: LossFn = F.cross_entropy,
) -> list[torch.Tensor]:
    """Mean over ``n_v`` Rademacher vectors ``v`` (drawn from ``generator``, on the CPU, so
    every rank draws the same) of ``v ⊙ (H v)``: summed over a block of parameters, an unbiased
    estimate of that block's Hessian trace."""
    out = [torch.zeros_like(p) for p in params]
    for _ in range(n_v):
        vs = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p) for p in params]
        hv = hessian_vector_product(model, params, vs, batches, loss_fn)
        for o, v, h in zip(out, vs, hv, strict=True):
            o += v * h
    return [o / n_v for o in out]


def output_rows(module: nn.Module, name: str, values: torch.Tensor) -> torch.Tensor | None:
    """``values`` (shaped like parameter ``name`` of ``module``) with the layer's output
    positions on dim 0, or None if that parameter has no output dimension."""
    if name == "weight" and isinstance(module, nn.modules.conv._ConvTransposeNd):
        return values.transpose(0, 1) if module.groups == 1 else None
    if name == "weight" and isinstance(module, nn.Embedding):
        return values.t()
    return values


def _site_rows(site: Any, values: dict[nn.Parameter, torch.Tensor], width: int) -> Any:
    """Per output position of ``site``: the sum of ``values`` over the rows of its own
    parameters (None if none of them has values)."""
    total = None
    for name, p in site.module.named_parameters(recurse=False):
        v = values.get(p)
        if v is None:
            continue
        rows = output_rows(site.module, name, v)
        if rows is None or rows.dim() == 0 or rows.shape[0] != width:
            continue
        per = rows.reshape(width, -1).sum(1).double().cpu()
        total = per if total is None else total + per
    return total


def unit_sums(group: Group, values: dict[nn.Parameter, torch.Tensor]) -> torch.Tensor:
    """Per unit of ``group``: ``values`` (per parameter, shaped like it) summed over the rows
    that produce the unit, in every layer on the group's output side."""

    def per_site(site: Any) -> Any:
        width = len(site.out_labels) if site.out_labels is not None else 0
        return _site_rows(site, values, width) if width else None

    return group.values(per_site)


def unit_parameter_mask(graph: Graph) -> dict[nn.Parameter, torch.Tensor]:
    """For every parameter with an output dimension in a layer that produces units of the
    graph's groups: 1 on the rows of those units, 0 on the others (shaped like the parameter)."""
    units = np.asarray(sorted({u for g in graph.groups for u in g.units}), dtype=np.int64)
    masks: dict[nn.Parameter, torch.Tensor] = {}
    for site in graph.sites.values():
        if site.out_labels is None or not len(site.out_labels):
            continue
        hit = torch.from_numpy(np.isin(graph.labels.roots(site.out_labels), units))
        if not hit.any():
            continue
        for name, p in site.module.named_parameters(recurse=False):
            ones = torch.ones_like(p)
            rows = output_rows(site.module, name, ones)
            if rows is None or rows.dim() == 0 or rows.shape[0] != len(hit):
                continue
            shape = (-1,) + (1,) * (rows.dim() - 1)
            rows.mul_(hit.to(rows).reshape(shape))  # a view of ``ones``: masks it in place
            masks[p] = ones
    return masks
