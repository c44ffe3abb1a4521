"""ADMM-NN — Ren, Zhang, Ye, Li, Xu, Qian, Lin and Wang, "ADMM-NN: An Algorithm-Hardware
Co-Design Framework of DNNs Using Alternating Direction Method of Multipliers", ASPLOS 2019
(https://arxiv.org/abs/1812.11677). No official code was released; the ADMM machinery is
:mod:`prunekit.methods.admm` (Zhang et al., ECCV 2018, the paper's pruning half).

Algorithm, as this method runs it:

1. **Hardware-aware pruning rates** (paper Sec. 5: computation, not model size, is what the
   hardware pays for, and a sparse layer is only worth it beyond a *break-even pruning ratio*,
   below which the indices of the sparse format cost more than the zeros save). Each pruned
   layer's MACs per weight ``c_l`` (output positions of a conv, 1 for a Linear) are measured on
   the example input; the weights to remove go first to the layers with the most MACs per
   weight, each up to ``max_layer_sparsity`` (raised to the pruned layers' average sparsity
   when the target needs more: every layer equal) (:func:`hardware_rates`). A layer left with a
   sparsity below the break-even one is raised to it and the layers before it give the
   difference back, so no layer is pruned below break-even (when they cannot, the layer keeps
   its lower sparsity: the target wins). The break-even sparsity is where
   a sparse layer of ``b``-bit values and ``index_bits``-bit relative indices (EIE's 4) is as
   large as the dense one: ``index_bits / (b + index_bits)`` (:func:`break_even_sparsity`).
2. **ADMM pruning** (as :mod:`prunekit.methods.admm`): ``admm_iterations`` rounds of W-step
   (SGD on ``loss + rho/2 ||W - Z + U||^2``), Z-step (the ``k_l`` largest of ``W + U`` per
   layer, :func:`~prunekit.methods.admm.admm_project`) and U-step; then the hard prune to the
   ``k_l`` largest ``|W|`` with masks.
3. **ADMM quantisation** (paper Sec. 4.2): the constraint set of layer ``l`` is
   ``{0} U q_l {+-1, ..., +-(2^(b-1) - 1)}`` with pruned weights held at zero; the Z-step
   projects ``W + U`` of the kept weights onto the nearest non-zero level
   (:func:`project_levels`), with the interval ``q_l`` fitted to the weights by alternating
   rounding and least squares (:func:`fit_interval`, as Leng et al., AAAI 2018, whose ADMM
   quantisation the paper builds on); same W- and U-steps, ``rho`` growing.
4. **Hard quantisation**: the kept weights take their nearest level; the levels become the
   layer's codebook (:func:`prunekit.compress.deep_compression.share_layer`) and the run's
   result is a Deep Compression file with one bit width per layer (``result_file``).

Defaults and their sources:

* ``rho`` 1e-3, ``rho_growth`` 2, ``lr`` 0.01, ``momentum`` 0.9, ``weight_decay`` 5e-4,
  ``schedule`` constant: as :mod:`prunekit.methods.admm` (paper Sec. 4: rho from 1e-3 to 1e-2,
  raised over the iterations).
* ``admm_iterations`` 3 (pruning) and ``quant_iterations`` 3, ``epochs`` 1 per W-step:
  prunekit (the paper trains tens of epochs of ADMM).
* ``bits_conv`` 5, ``bits_fc`` 3: prunekit (the paper quantises conv layers to a few more bits
  than fully connected ones; Deep Compression's 8 / 5 scaled down to ADMM-NN's tighter range).
* ``index_bits`` 4: EIE (Han et al., ISCA 2016), the sparse format with 4-bit relative indices
  that the paper's hardware discussion compares against.
* ``max_layer_sparsity`` 0.9: prunekit (no layer loses more than 90% of its weights).

Deviations: the break-even ratio is derived from storage (values plus indices) rather than
measured on an accelerator; the per-layer rates come from the MAC ranking above rather than the
paper's per-network hand-set rates; protected layers are quantised (``bits_fc`` / ``bits_conv``)
but not pruned; a kept weight is projected onto the non-zero levels only, so quantisation never
prunes; the ADMM state (``Z``, ``U``, ``rho``) is replayed from the checkpointed weights when a
run resumes, as for ``admm``.

The layers are left under :class:`~prunekit.compress.deep_compression.SharedWeights`, so a
runner fine-tune after ``prune`` trains each layer's codebook values (Deep Compression's trained
quantisation) and keeps its bit width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit import masks
from prunekit.compress.deep_compression import save_deep_compressed, share_layer
from prunekit.errors import ConfigError
from prunekit.masks.engine import prunable_layers, weight_name
from prunekit.methods.admm import admm_dual_update, admm_penalty_hooks, admm_project
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import covered_sparsity, stored_weight, target_sparsity, targets
from prunekit.methods.options import SHARED, Options, option


def break_even_sparsity(value_bits: int, index_bits: int) -> float:
    """The sparsity at which ``value_bits + index_bits`` per kept weight equal ``value_bits``
    per weight dense: pruning less than this makes the sparse layer the larger one."""
    return index_bits / (value_bits + index_bits)


def macs_per_weight(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Multiply-accumulates per weight of every conv / Linear layer on ``example`` (the number
    of output positions per channel), by weight name."""
    out: dict[str, float] = {}
    handles = []
    for name, module in prunable_layers(model).items():

        def hook(mod: nn.Module, args: Any, output: torch.Tensor, key: str = name) -> None:
            per_sample = output.numel() / max(output.shape[0], 1)
            channels = output.shape[-1] if isinstance(mod, nn.Linear) else output.shape[1]
            out[weight_name(key)] = per_sample / channels

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(example[:1].to(device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return out


def hardware_rates(
    sizes: dict[str, int],
    macs: dict[str, float],
    count: int,
    cap: float,
    break_even: float,
) -> dict[str, float]:
    """Per-layer sparsities removing ``count`` weights, most MACs per weight first.

    Layers in decreasing ``macs`` (ties: larger first, then by name) are filled to ``cap``
    until ``count`` is met; if the last one is left below ``break_even`` it is raised to it
    and the layers filled before it give the difference back in proportion to their sizes
    (never below ``break_even``); when they cannot, it keeps its lower sparsity."""
    total = sum(sizes.values())
    if count > cap * total + 1e-9:
        raise ConfigError(
            f"admm_nn cannot remove {count} of {total} weights with max_layer_sparsity {cap}: "
            "expected a lower target or a higher max_layer_sparsity"
        )
    order = sorted(sizes, key=lambda n: (-macs[n], -sizes[n], n))
    removed = dict.fromkeys(sizes, 0.0)
    left = float(count)
    last = None
    for name in order:
        if left <= 0:
            break
        take = min(cap * sizes[name], left)
        removed[name], left, last = take, left - take, name
    if last is not None and removed[last] < break_even * sizes[last]:
        full = [n for n in order[: order.index(last)]]
        spare = sum((removed[n] / sizes[n] - break_even) * sizes[n] for n in full)
        excess = break_even * sizes[last] - removed[last]
        if full and spare >= excess:
            room = sum(sizes[n] for n in full)
            for n in full:
                removed[n] -= excess * sizes[n] / room
            removed[last] = break_even * sizes[last]
    return {n: removed[n] / sizes[n] for n in sizes}


def project_levels(values: torch.Tensor, q: float, bits: int) -> torch.Tensor:
    """Nearest level of ``q * {+-1, ..., +-(2^(bits-1) - 1)}`` of each value (never 0)."""
    top = 2 ** (bits - 1) - 1
    k = torch.round(values / q).clamp(-top, top)
    k = torch.where(k == 0, torch.where(values < 0, -1.0, 1.0).to(k.dtype), k)
    return k * q


def fit_interval(values: torch.Tensor, bits: int, rounds: int = 20) -> float:
    """The interval ``q`` of the levels for ``values``: alternate the nearest levels for ``q``
    and the least-squares ``q = sum(w k) / sum(k^2)`` for those levels, from
    ``q = max|w| / (2^(bits-1) - 1)``."""
    w = values.detach().double().reshape(-1)
    if w.numel() == 0 or float(w.abs().max()) == 0:
        return 1.0
    top = 2 ** (bits - 1) - 1
    q = float(w.abs().max()) / top
    for _ in range(rounds):
        k = project_levels(w, q, bits) / q
        new = float((w * k).sum() / (k * k).sum())
        if not math.isfinite(new) or new <= 0 or abs(new - q) <= 1e-12 * q:
            break
        q = new
    return q


@dataclass(frozen=True)
class ADMMNNOptions(Options):
    admm_iterations: int = option(
        3, help="ADMM pruning iterations", source="prunekit (the paper: tens of epochs)", low=1
    )
    quant_iterations: int = option(
        3, help="ADMM quantisation iterations", source="prunekit (the paper: tens of epochs)", low=1
    )
    epochs: int = option(1, help="epochs of SGD in each W-step", source="prunekit", low=1)
    rho: float = option(
        1e-3,
        help="penalty weight of ||W - Z + U||^2 at the first iteration of each stage",
        source="paper Sec. 4 (rho from 1e-3 to 1e-2), as admm",
        low=0,
        low_open=True,
    )
    rho_growth: float = option(
        2.0, help="rho is multiplied by this after each iteration", source="as admm", low=1
    )
    bits_conv: int = option(
        5,
        help="bits per conv weight (2^(b-1) - 1 levels a sign)",
        source="prunekit",
        low=2,
        high=16,
    )
    bits_fc: int = option(3, help="bits per Linear weight", source="prunekit", low=2, high=16)
    index_bits: int = option(
        4,
        help="bits of a relative index in the sparse format (sets the break-even sparsity)",
        source="EIE (Han et al., ISCA 2016): 4-bit relative indices",
        low=1,
    )
    max_layer_sparsity: float = option(
        0.9,
        help="largest sparsity of one layer",
        source="prunekit",
        low=0,
        high=1,
        high_open=True,
    )
    lr: float = option(0.01, help=SHARED["lr"], source="as admm", low=0, low_open=True)
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="prunekit (the usual SGD setting)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="prunekit (the usual CIFAR setting)", low=0
    )
    schedule: str = option("constant", help=SHARED["schedule"], source="as admm")


@register_method("admm_nn")
class ADMMNN(Method):
    """ADMM-NN (Ren et al., ASPLOS 2019): hardware-aware per-layer rates (MACs per weight first,
    none below the break-even sparsity), ADMM pruning, then ADMM quantisation onto per-layer
    equal-interval levels; the result is written as a Deep Compression file. See the module
    docstring."""

    Options = ADMMNNOptions
    result_file: ClassVar[str] = "model.deepc"

    def __init__(self) -> None:
        super().__init__()
        self.rates: dict[str, float] = {}
        self.levels: dict[str, dict[str, float]] = {}
        self.history: list[dict[str, Any]] = []

    def write_result(self, model: nn.Module, path: Any, options: dict[str, Any]) -> None:
        """The model, its levels exactly, in the Deep Compression format."""
        save_deep_compressed(model, path)

    def _admm(
        self,
        ctx: Context,
        opts: ADMMNNOptions,
        params: dict[str, torch.Tensor],
        project: Any,
        iterations: int,
        stage: str,
    ) -> None:
        """``iterations`` rounds of W-, Z- and U-steps with ``Z = project(W + U)``."""
        with torch.no_grad():
            z = project({n: p.detach().clone() for n, p in params.items()})
            u = {n: torch.zeros_like(t) for n, t in z.items()}
        rho = [opts.rho]
        for it in range(iterations):
            handles = admm_penalty_hooks(params, z, u, lambda: rho[0])
            try:
                ctx.train(
                    ctx.model,
                    opts.epochs,
                    opts.lr,
                    name=f"{stage}{it + 1}",
                    momentum=opts.momentum,
                    weight_decay=opts.weight_decay,
                    schedule=opts.schedule,
                    seed=ctx.seed + it,
                    progress=opts.progress,
                )
            finally:
                for h in handles:
                    h.remove()
            with torch.no_grad():
                w = {n: p.detach().to(u[n].device) for n, p in params.items()}
                z.update(project({n: w[n] + u[n] for n in w}))
                u.update(admm_dual_update(u, w, z))
                gap = math.sqrt(sum(float((w[n] - z[n]).pow(2).sum()) for n in w))
            self.history.append(
                {"stage": stage, "iteration": it + 1, "rho": rho[0], "primal_residual": gap}
            )
            rho[0] *= opts.rho_growth

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        pruned = targets(model, self.id)
        layers = {weight_name(n): m for n, m in prunable_layers(model).items()}
        bits = {
            n: opts.bits_fc if isinstance(m, nn.Linear) else opts.bits_conv
            for n, m in layers.items()
        }
        sizes = {n: pruned[n].weight.numel() for n in pruned}
        count = round(covered_sparsity(model, target) * sum(sizes.values()))
        macs = macs_per_weight(model, ctx.example_input)
        # a target above the cap on average raises the cap to that average (every layer equal)
        cap = max(opts.max_layer_sparsity, count / max(sum(sizes.values()), 1))
        self.rates = hardware_rates(
            sizes,
            macs,
            count,
            cap,
            break_even_sparsity(min(bits[n] for n in pruned), opts.index_bits),
        )
        self.history = []

        # stage 1: ADMM pruning with the hardware-aware k_l, then the hard prune
        params = {n: stored_weight(m) for n, m in pruned.items()}

        def sparse(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {
                n: admm_project({n: t}, self.rates[n], "layer")[0][n] for n, t in tensors.items()
            }

        self._admm(ctx, opts, params, sparse, opts.admm_iterations, "prune")
        keep = {
            n: admm_project({n: p.detach()}, self.rates[n], "layer")[1][n]
            for n, p in params.items()
        }
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})

        # stage 2: ADMM quantisation of the kept weights (pruned ones stay zero)
        all_keep = {
            n: keep.get(n, torch.ones_like(m.weight, dtype=torch.bool)).to(m.weight.device)
            for n, m in layers.items()
        }
        qparams = {n: stored_weight(m) for n, m in layers.items()}
        with torch.no_grad():
            intervals = {n: fit_interval(m.weight[all_keep[n]], bits[n]) for n, m in layers.items()}

        def quantised(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {
                n: torch.where(
                    all_keep[n], project_levels(t, intervals[n], bits[n]), torch.zeros_like(t)
                )
                for n, t in tensors.items()
            }

        self._admm(ctx, opts, qparams, quantised, opts.quant_iterations, "quant")

        # hard quantisation: the levels become each layer's codebook
        with torch.no_grad():
            for name, module in layers.items():
                w, kept = module.weight.detach(), all_keep[name]
                q = fit_interval(w[kept], bits[name])
                top = 2 ** (bits[name] - 1) - 1
                steps = torch.cat([torch.arange(-top, 0), torch.arange(1, top + 1)]).to(w)
                levels = steps * q
                k = (project_levels(w, q, bits[name]) / q).round().long()
                index = torch.where(k < 0, k + top, k + top - 1).clamp(0, 2 * top - 1)
                share_layer(module, levels, index, kept, meta={"bits": bits[name]})
                self.levels[name] = {"interval": q, "bits": bits[name]}
        return SparsityReport.measure(model, before)


__all__ = [
    "ADMMNN",
    "break_even_sparsity",
    "fit_interval",
    "hardware_rates",
    "macs_per_weight",
    "project_levels",
]
