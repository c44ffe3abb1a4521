"""Wimmer, Mehnert, Condurache, "Interspace Pruning: Using Adaptive Filter Representations to
Improve Training of Sparse CNNs", CVPR 2022 (no official code was published).

The algorithm, top to bottom:

1. **Filters in an adaptive basis.** Each layer ``l`` with ``k x k`` kernels gets a filter basis
   (FB) ``h_1 ... h_{k^2}``, shared by all of the layer's kernels; every kernel (one output
   channel, one input channel) is ``F = sum_j lambda_j h_j``. The coefficients ``lambda`` are
   the network's parameters in place of the spatial weights, and the FB is learned jointly
   with them: gradients reach both through ``F``. The spatial representation is the special
   case of the fixed standard basis. Here every pruned layer's weight is stored as
   coefficients under a :class:`prunekit.masks.basis.BasisKernel` with a learnable basis,
   whose columns are used normalised to unit length (so ``|lambda_j|`` is the size of ``h_j``
   in the filter and a pruning criterion on coefficients is not fooled by rescaling between
   ``lambda`` and ``h``).
2. **Prune coefficients, not weights.** A pruning method runs on the coefficients instead of the
   spatial weights (interspace pruning, IS): a pruned ``lambda_j`` removes the basis kernel
   ``h_j`` from that one filter, the others stay. Kept coefficients keep training, and so do
   the FBs; pruned coefficients get no gradient.
3. **The method paired with it.** The paper applies IS to several pruning methods; prunekit
   pairs it with gradual magnitude pruning (Zhu & Gupta, :mod:`prunekit.methods.gmp`):
   training with the coefficient magnitudes pruned along the cubic schedule
   (:class:`prunekit.masks.GradualCubic`), every layer to the same coefficient sparsity by
   default.
4. **The result.** The model computes with the kernels rebuilt from their kept coefficients in
   the learned bases; :func:`prunekit.masks.finalize` bakes them into plain weights (dense in
   space in general), and the bases go with them.

**Sparsity is counted in coefficients, as the paper counts it**: a kernel with ``m`` kept
coefficients counts ``m`` non-zeros whatever its spatial entries are. The FBs themselves
(``k^2 x k^2`` per layer) are not counted, as in the paper.

Layers without spatial extent (Linear, 1x1 convs) have the trivial basis; their coefficients are
their weights, pruned by the same rule (the paper notes IS reduces to ordinary pruning there).
1-D convs get a basis over their ``k`` taps.

Defaults: the FB starts as the orthonormal DCT basis (``basis_init="dct"``; ``"spatial"`` starts
from the standard basis, where the first pruning step equals magnitude pruning of the weights):
a prunekit choice, the paper's initialisation could not be checked here. The schedule's
``frequency``, ``begin``, ``end``, ``scope`` and the training phase (``epochs`` 3 at ``lr``
0.01, SGD with momentum 0.9, weight decay 5e-4, cosine) are gmp's (see
:mod:`prunekit.methods.gmp`).

Deviations: the unit-length normalisation of the FB columns is prunekit's way to make
coefficient magnitudes comparable; weight decay applies to the bases too (they are parameters
of the model); protected layers stay dense and the others are pruned a little further to meet
the overall target. The method needs a model without masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.basis import BasisKernel, attach_basis, basis_of, coefficients, kernel_shape
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import SCOPES, share_of_targets, target_sparsity, targets
from prunekit.methods.options import SHARED, Options, option

_GMP = "as gmp (Zhu & Gupta's schedule; see prunekit.methods.gmp)"


def coefficient_keep(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str
) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the smallest ``scores`` (coefficient magnitudes): one ranking over
    all layers (``"global"``) or each layer to ``sparsity`` (``"layer"``)."""
    if scope == "global":
        return global_keep(scores, sparsity)
    return {n: global_keep({n: s}, sparsity)[n] for n, s in scores.items()}


class CoefficientPruner(masks.Pruner):
    """Gradual magnitude pruning of the coefficients of basis layers (the :class:`masks.Pruner`
    protocol): at each of the schedule's pruning steps the smallest kept coefficients are
    masked (pruned ones score 0, so they stay pruned) and their stored values zeroed. The masks
    are buffers of the model, checkpointed with it."""

    def __init__(
        self,
        schedule: masks.SparsitySchedule,
        layers: dict[str, nn.Module],
        params: dict[str, BasisKernel],
        scope: str,
    ) -> None:
        super().__init__(schedule)
        self.layers, self.params, self.scope = layers, params, scope

    def step(self, t: int) -> None:
        assert self.schedule is not None
        self.prune_to(t, self.schedule.get_sparsity(t))

    @torch.no_grad()
    def prune_to(self, t: int, sparsity: float) -> None:
        scores = {n: coefficients(m).abs() for n, m in self.layers.items()}
        keep = coefficient_keep(scores, sparsity, self.scope)
        for n, m in self.layers.items():
            self.params[n].set_mask(keep[n])
            m.parametrizations["weight"].original.masked_fill_(~keep[n], 0.0)
        total = sum(k.numel() for k in keep.values())
        pruned = sum(int((~k).sum()) for k in keep.values())
        self.history.append((t, sparsity, pruned / total if total else 0.0))


@dataclass(frozen=True)
class InterspaceOptions(Options):
    epochs: int = option(3, help="epochs of training while pruning", source=_GMP, low=0)
    lr: float = option(
        0.01,
        help="learning rate of that training (SGD, momentum 0.9, weight decay 5e-4, cosine)",
        source=_GMP,
        low=0,
        low_open=True,
    )
    frequency: int = option(
        100, help="steps between pruning updates (dt)", source=f"{_GMP}: dt 100", low=1
    )
    begin: float = option(
        0.0,
        help="fraction of the training steps where pruning starts (t0)",
        source=_GMP,
        low=0,
        high=1,
        high_open=True,
    )
    end: float = option(
        0.75,
        help="fraction of the training steps where the sparsity reaches s_f (t0 + n dt)",
        source=_GMP,
        low=0,
        high=1,
        low_open=True,
    )
    scope: str = option(
        "layer",
        help=SHARED["scope"] + " (over coefficients)",
        source=f"{_GMP}: every layer to the same sparsity",
        choices=SCOPES,
    )
    basis_init: str = option(
        "dct",
        help="initial filter basis: the orthonormal DCT basis or the spatial (standard) basis",
        source="prunekit (the paper's initialisation could not be checked)",
        choices=("dct", "spatial"),
    )
    learn_basis: bool = option(
        True,
        help="learn each layer's filter basis jointly with the coefficients",
        source="paper Sec. 3 (adaptive filter bases, trained jointly)",
    )


@register_method("interspace")
class InterspacePruning(Method):
    """Wimmer et al. (CVPR 2022): kernels as coefficients in a learned per-layer filter basis,
    the coefficients pruned (gradual magnitude pruning here) while coefficients and bases train;
    sparsity counted in coefficients. See the module docstring."""

    Options = InterspaceOptions

    def __init__(self) -> None:
        self.history: list[tuple[int, float, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        if not opts.begin < opts.end:
            raise ConfigError(
                "options 'begin' and 'end' of interspace must satisfy begin < end, "
                f"got {opts.begin} and {opts.end}"
            )
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError(
                "interspace starts from a dense model; this model already carries masks"
            )
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, target)
        before = count_nonzero(model)
        params = {
            n: attach_basis(m, _initial_basis(m, opts.basis_init), learn_basis=opts.learn_basis)
            for n, m in layers.items()
        }
        steps = opts.epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        t0 = math.floor(opts.begin * steps)
        t1 = max(t0 + 1, round(opts.end * steps))
        schedule = masks.GradualCubic(0.0, share, t0, t1, opts.frequency)
        pruner = CoefficientPruner(schedule, layers, params, opts.scope)
        pruner.prepare(model)
        ctx.train(
            model,
            opts.epochs,
            opts.lr,
            name="interspace",
            callbacks=[pruner],
            progress=opts.progress,
        )
        if not pruner.history or pruner.history[-1][1] != share:
            pruner.prune_to(steps, share)  # no training, or too few steps to reach s_f
        self.history = pruner.history
        return SparsityReport.measure(model, before)


def _initial_basis(module: nn.Module, init: str) -> torch.Tensor | None:
    """None (the DCT basis of :func:`attach_basis`) or the standard basis."""
    if init == "dct":
        return None
    size = math.prod(kernel_shape(module.weight))
    return torch.eye(size, dtype=module.weight.dtype)


def basis_kernels(module: nn.Module) -> torch.Tensor:
    """The layer's current filter basis as kernels: ``(k^2, *kernel_shape)``, unit length."""
    param = basis_of(module)
    if param is None:
        raise ConfigError(f"{type(module).__name__} has no filter basis")
    return param.normalised_basis().detach().T.reshape(-1, *kernel_shape(module.weight))


__all__ = [
    "CoefficientPruner",
    "InterspaceOptions",
    "InterspacePruning",
    "basis_kernels",
    "coefficient_keep",
]
