"""FilterSketch — Lin, Cao, Zhong, Wang, Zhang, Ji, Shao, "Filter Sketch for Network Pruning"
(IEEE TNNLS 2022).

Pruning should keep what the filters of a layer encode together, their second-order
information ``W^T W``, rather than pick survivors one by one. A pruned layer of ``l`` filters is
initialised with a *sketch* of the layer's ``n x d`` filter matrix ``W`` (one flattened filter
per row): an ``l x d`` matrix ``B`` with ``B^T B ≈ W^T W``, computed by Frequent Directions
(Liberty 2013; the official ``sketch.py``, ``sketch_matrix``):

1. ``B = 0`` (``l x d``). For every row ``w_i`` of ``W`` in order: if ``B`` has no zero row,
   take its SVD ``B = U S V^T``, shrink ``s_j <- sqrt(max(s_j^2 - s_{l/2}^2, 0))`` (the
   ``l/2``-th singular value, 0-based, as the official ``ind = int(l / 2)``) and set
   ``B = S V^T``, which zeroes the rows from ``l/2`` on; then put ``w_i`` in the first zero row.
   Guarantee: ``0 ≼ W^T W - B^T B`` and ``||W^T W - B^T B||_2 <= 2 ||W||_F^2 / l``.
2. The pruned layer's filters are the rows of ``B``. The next layer's weights are sketched the
   same way along their input-channel dimension (``n`` rows of ``out x k`` values each -> ``l``
   rows), after the filters (the official ``load_*_sketch_model``: ``sketch_matrix(...,
   dim=1)``).
3. The BatchNorm between keeps no statistics of the old channels: its affine parameters start
   from 1 and 0 (``--sketch_bn False``, the official default, leaves the new model's initial
   values there; with ``sketch_bn`` they are sketched together with the filters, as the
   official ``sketch_bn=True`` concatenates them to the filter rows).
4. Fine-tune (the runner's fine-tuning, shared by every method).

Layers and widths. The official code sketches the first conv of each residual block (its
output goes to one conv) and every conv of VGG, with a hand-set ``--sketch_rate`` (0.5 by
default, per stage in the paper's tables). Here the chains of the model
(:func:`prunekit.methods.common.chains`) are sketched with one uniform rate that meets the
run's FLOPs or params target (:func:`prunekit.methods.reconstruct.chain_budget`); the sketch
replaces the kept filters' weights (which channel positions survive is immaterial).

Deviations. (a) The official ``sketch_matrix`` stops once fewer than ``l/2`` rows are left
(``if n - i < l // 2: break``); here every row enters the sketch, as Frequent Directions does.
(b) The official channel sketch reshapes ``out x n x k x k`` to ``n x (out*k*k)`` with ``view``
(mixing output filters into rows); here each row is one input channel's weights. (c) A
depthwise conv between the two layers (an inverted residual) has per-channel filters too: they
are sketched jointly with the producer's (their columns concatenated), so new channel ``j``
gets the same combination of old channels in both; the official code has no such layer. (d)
The BatchNorm layers between are re-estimated on the calibration batches after the sketch
(``recalibrate_bn``; averaged over DDP ranks): the old running statistics describe channels that
no longer exist, and without them the pruned model's accuracy before fine-tuning means nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import Chain, chains, eval_modes, restore_modes
from prunekit.methods.options import Options, option
from prunekit.methods.reconstruct import ReconstructionMethod, chain_budget, unit_weight
from prunekit.methods.retraining import model_device
from prunekit.prune import PruneReport, remove_selected
from prunekit.train import distributed as dist_


@dataclass(frozen=True)
class SketchOptions(Options):
    sketch_bn: bool = option(
        False,
        help="sketch the BatchNorm scale and shift with the filters (False: reset them to 1, 0)",
        source="official utils/options.py: --sketch_bn False",
    )
    recalibrate_bn: bool = option(
        True,
        help="re-estimate the running statistics of the sketched BatchNorms on calibration data",
        source="prunekit (the official code leaves them at their initial 0 and 1)",
    )


def frequent_directions(a: torch.Tensor, l: int) -> torch.Tensor:  # noqa: E741
    """Frequent Directions sketch of the rows of ``a`` (``n x d``): ``l x d``, float64, with
    ``B^T B ≈ A^T A`` (shrink by the ``l // 2``-th squared singular value when full)."""
    if l < 1:
        raise ConfigError(f"a sketch needs at least one row, got {l}")
    a = a.double()
    d = a.shape[1]
    b = torch.zeros(l, d, dtype=torch.float64)
    filled = 0
    for row in a:
        if filled == l:
            _, s, vh = torch.linalg.svd(b, full_matrices=False)
            delta = s[l // 2] ** 2 if l // 2 < len(s) else 0.0
            shrunk = (s**2 - delta).clamp(min=0.0).sqrt()
            b = torch.zeros(l, d, dtype=torch.float64)
            b[: len(s)] = shrunk[:, None] * vh
            filled = int((shrunk > 0).sum())
        b[filled] = row
        filled += 1
    return b


def unit_positions(graph: Graph, site: Site, side: str, group: Group) -> torch.Tensor:
    """The position on ``side`` of ``site`` of each unit of ``group`` (one each)."""
    roots = graph.labels.roots(getattr(site, f"{side}_labels"))
    pos = []
    for u in group.units:
        hit = np.flatnonzero(roots == u)
        if len(hit) != 1:
            raise ConfigError(f"layer {site.name!r} holds unit {u} of {group.name!r} {len(hit)}x")
        pos.append(int(hit[0]))
    return torch.tensor(pos, dtype=torch.long)


def _is_norm(module: nn.Module) -> bool:
    return getattr(module, "running_mean", None) is not None


def passing(graph: Graph, chain: Chain) -> list[Site]:
    """The layers between producer and consumer that carry the chain's channels on both sides
    (BatchNorm, a depthwise conv), in graph order."""
    members = chain.group.members
    ins = {m.layer for m in members if m.side == "in"}
    outs = {m.layer for m in members if m.side == "out"}
    names = (ins & outs) - {chain.producer.name, chain.consumer.name}
    return [site for name, site in graph.sites.items() if name in names]


def _param_rows(module: nn.Module, pos: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``(attribute, rows)`` of the per-channel parameters of ``module`` at ``pos``."""
    out = []
    for attr in ("weight", "bias"):
        t = getattr(module, attr, None)
        if isinstance(t, torch.Tensor):
            w = out_weight(module) if attr == "weight" else t
            if w is not None:
                out.append((attr, w.detach()[pos.to(w.device)].reshape(len(pos), -1)))
    return out


def _write_rows(module: nn.Module, attr: str, pos: torch.Tensor, rows: torch.Tensor) -> None:
    t = out_weight(module) if attr == "weight" else getattr(module, attr)
    assert t is not None
    t.data[pos.to(t.device)] = rows.reshape(len(pos), *t.shape[1:]).to(t)


def sketch_producer(graph: Graph, chain: Chain, keep: int, sketch_bn: bool) -> list[nn.Module]:
    """Replace the first ``keep`` units' filters of the chain's producer (and of the per-channel
    layers between) by the Frequent Directions sketch of all of them; the BatchNorms between
    are reset to scale 1, shift 0 (or sketched too, ``sketch_bn``). Returns those BatchNorms."""
    blocks: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
    sites = [(chain.producer, chain.producer_index)] + [
        (s, unit_positions(graph, s, "out", chain.group)) for s in passing(graph, chain)
    ]
    norms = []
    for site, pos in sites:
        if _is_norm(site.module):
            norms.append(site.module)
            if not sketch_bn:
                continue
        for attr, rows in _param_rows(site.module, pos):
            blocks.append((site.module, attr, pos, rows))
    joint = torch.cat([rows.double().cpu() for *_, rows in blocks], dim=1)
    sketch = frequent_directions(joint, keep)
    col = 0
    with torch.no_grad():
        for module, attr, pos, rows in blocks:
            width = rows.shape[1]
            _write_rows(module, attr, pos[:keep], sketch[:, col : col + width])
            col += width
        if not sketch_bn:
            for site, pos in sites:
                if _is_norm(site.module):
                    for attr, value in (("weight", 1.0), ("bias", 0.0)):
                        t = getattr(site.module, attr, None)
                        if isinstance(t, torch.Tensor):
                            t.data[pos[:keep].to(t.device)] = value
    return norms


def sketch_consumer(chain: Chain, keep: int, dropped_rows: torch.Tensor | None = None) -> None:
    """Replace the consumer's weights on the chain's first ``keep`` units by the Frequent
    Directions sketch of its weights on all units (one row per input channel). Output rows in
    ``dropped_rows`` (filters of the consumer that its own pruning removes) stay out of the
    sketch, as the official code sketches the channels of the already sketched filters."""
    w = unit_weight(chain).double().cpu()  # out x units x k'
    live = torch.ones(w.shape[0], dtype=torch.bool)
    if dropped_rows is not None:
        live[dropped_rows] = False
    rows = w[live].transpose(0, 1).reshape(w.shape[1], -1)
    sketch = frequent_directions(rows, keep)  # keep x (live * k')
    new = torch.zeros(w.shape[0], keep, w.shape[2], dtype=torch.float64)
    new[live] = sketch.reshape(keep, int(live.sum()), w.shape[2]).transpose(0, 1)
    removed = list(range(keep, chain.group.size))
    with torch.no_grad():
        ReconstructionMethod.apply_choice(chain, removed, new)


def recalibrate(model: nn.Module, norms: list[nn.Module], batches: list) -> None:  # type: ignore[type-arg]
    """Re-estimate the running statistics of ``norms`` (cumulative mean over ``batches``, every
    other module in eval mode), averaged over DDP ranks so every rank holds the same."""
    if not norms or not batches:
        return
    device = model_device(model)
    modes = eval_modes(model)
    saved = {m: m.momentum for m in norms}
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for x, *_ in batches:
                model(x.to(device))
            ranks = dist_.world_size()
            if ranks > 1:
                for m in norms:
                    for name in ("running_mean", "running_var"):
                        t = getattr(m, name)
                        t.copy_(dist_.all_reduce_sum(t.clone()) / ranks)
    finally:
        for m, momentum in saved.items():
            m.momentum = momentum
        restore_modes(modes)


@register_method("sketch")
class SketchMethod(Method):
    """FilterSketch (Lin et al., TNNLS 2022): every chain keeps ``l`` channels whose filters are
    the Frequent Directions sketch of the layer's filter matrix (preserving ``W^T W``), and the
    next layer's input weights are sketched likewise; one uniform rate over the chains meets the
    target. See the module docstring for the deviations."""

    Options = SketchOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            found = chains(graph)
            if not found:
                raise ConfigError(
                    "method 'sketch' sketches layers read by one conv or Linear layer (chains); "
                    "this model has none"
                )
            counts = chain_budget(graph, found, target)
            todo = [(c, c.group.size - counts[c.group.name]) for c in found if counts[c.group.name]]
            norms: list[nn.Module] = []
            for chain, keep in todo:  # filters first, then channels (the official order)
                norms += sketch_producer(graph, chain, keep, opts.sketch_bn)
            dropped = {c.producer.name: c.producer_index[keep:] for c, keep in todo}
            for chain, keep in todo:
                sketch_consumer(chain, keep, dropped.get(chain.consumer.name))
            picks = {c.group.name: list(range(keep, c.group.size)) for c, keep in todo}
            report = remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)
        if opts.recalibrate_bn:
            recalibrate(ctx.model, norms, ctx.calibration())
        return report


__all__ = [
    "SketchMethod",
    "SketchOptions",
    "frequent_directions",
    "passing",
    "recalibrate",
    "sketch_consumer",
    "sketch_producer",
]
