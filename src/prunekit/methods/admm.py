"""ADMM weight pruning — Zhang, Ye, Zhang, Tang, Wen, Fardad & Wang, "A Systematic DNN Weight
Pruning Framework using Alternating Direction Method of Multipliers", ECCV 2018. The class
docstring gives the computation, the defaults and the deviations.

Training goes through :class:`~prunekit.methods.retraining.Retraining` and pruning through
:func:`~prunekit.methods.fine_grained.magnitude_prune`; :mod:`prunekit.methods.fine_grained` says
how ``target_sparsity`` counts weights and why protected layers stay dense.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.utils.hooks import RemovableHandle

from prunekit import masks
from prunekit.masks.granularity import keep_top, prune_count
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    check_choice,
    covered_sparsity,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining


@torch.no_grad()
def admm_project(
    tensors: Mapping[str, torch.Tensor], sparsity: float, scope: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Euclidean projection onto the set with at most ``k`` non-zeros: keep the ``k`` entries of
    largest magnitude and zero the rest. ``scope="layer"``: per tensor, ``k = numel -
    round(sparsity * numel)``; ``"global"``: one ``k`` over all tensors together. Ties are broken
    by position (the earlier entry is dropped first). Returns ``(Z, keep)`` by name."""
    check_choice("scope", scope, SCOPES)
    if scope == "layer":
        keep = {n: keep_top(t.abs(), prune_count(t.numel(), sparsity)) for n, t in tensors.items()}
    else:
        keep = global_keep({n: t.abs() for n, t in tensors.items()}, sparsity)
    z = {n: t.masked_fill(~keep[n].to(t.device), 0.0) for n, t in tensors.items()}
    return z, keep


@torch.no_grad()
def admm_dual_update(
    u: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], z: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The scaled dual step ``U <- U + W - Z``."""
    return {n: u[n] + w[n].detach().to(u[n].device) - z[n] for n in u}


def admm_penalty_hooks(
    params: Mapping[str, torch.Tensor],
    z: Mapping[str, torch.Tensor],
    u: Mapping[str, torch.Tensor],
    rho: Callable[[], float],
) -> list[RemovableHandle]:
    """Add ``rho * (W - Z + U)`` to each ``W``'s gradient: the gradient of the augmented term
    ``rho / 2 * ||W - Z + U||^2``. ``z`` and ``u`` are read when the gradient arrives, so updating
    them in place (or the dicts' entries) between W-steps needs no new hooks."""

    def hook_for(name: str, w: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            diff = w.detach() - z[name].to(w.device) + u[name].to(w.device)
            return grad + rho() * diff

        return hook

    return [w.register_hook(hook_for(n, w)) for n, w in params.items()]


@dataclass(frozen=True)
class ADMMOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"admm_epochs_per_iter": "epochs"}

    admm_iterations: int = option(
        5,
        help="ADMM iterations (W-step, Z-step, U-step)",
        source="prunekit (the paper runs tens of epochs of ADMM training)",
        low=1,
    )
    epochs: int = option(
        1,
        help="epochs of SGD in each W-step",
        source="prunekit (a budget near the other methods')",
        low=1,
    )
    rho: float = option(
        1e-3,
        help="penalty weight of ||W - Z + U||^2 at the first iteration",
        source="paper Sec. 4: rho between 1e-3 and 1e-2",
        low=0,
        low_open=True,
    )
    rho_growth: float = option(
        2.0,
        help="rho is multiplied by this after each iteration",
        source="prunekit (the paper raises rho over the iterations)",
        low=1,
    )
    scope: str = option(
        "layer",
        help=SHARED["scope"],
        source="paper Sec. 3: a sparsity k_i per layer",
        choices=SCOPES,
    )
    lr: float = option(
        0.01,
        help=SHARED["lr"],
        source="prunekit (a trained model is retrained at a tenth of a usual peak rate)",
        low=0,
        low_open=True,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="prunekit (the usual SGD setting)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="prunekit (the usual CIFAR setting)", low=0
    )
    schedule: str = option(
        "constant",
        help=SHARED["schedule"],
        source="prunekit (every W-step at the same rate, so the penalty alone pulls W to Z)",
    )


@register_method("admm")
class ADMMPruning(Retraining):
    """ADMM weight pruning (Zhang et al., ECCV 2018).

    Pruning as ``min loss(W)`` subject to ``W_i`` in ``S_i`` (at most ``k_i`` non-zeros), split
    with an auxiliary ``Z`` and a scaled dual ``U``, then ``admm_iterations`` rounds of:

    * **W-step**: ``admm_epochs_per_iter`` epochs of SGD on ``loss(W) + rho / 2 * sum_i ||W_i -
      Z_i + U_i||^2`` (the penalty's gradient ``rho * (W - Z + U)`` added by gradient hooks);
    * **Z-step**: ``Z = Pi_S(W + U)``, the projection keeping the ``k`` largest magnitudes
      (:func:`admm_project`; ``scope="layer"``: the same sparsity in every pruned layer, the
      paper's per-layer ``k_i``; ``"global"``: one ``k`` over all pruned layers);
    * **U-step**: ``U = U + W - Z``;

    with ``Z`` started at ``Pi_S(W)`` and ``U`` at 0, and ``rho`` multiplied by ``rho_growth``
    after each iteration. Finally the weights are hard-pruned by magnitude: the Euclidean
    projection of the final ``W`` (not of ``W + U``) onto ``S``, keeping the ``k`` largest
    ``|W|`` per layer (paper, Sec. 3.3 "Masked retraining": after ADMM the weights are projected
    onto the constraint set, the rest set to zero); the masks stay attached, so the runner's
    fine-tuning with them in place is the paper's masked retraining.

    Defaults: ``rho`` 1e-3, within the 1e-3 to 1e-2 the paper works with, growing by
    ``rho_growth`` 2.0 per iteration (the paper raises ``rho`` over the iterations so ``W`` is
    pulled ever closer to ``Z``; this doubling is this implementation's choice); W-steps use SGD,
    ``lr`` 0.01, momentum 0.9, weight decay 5e-4, constant learning rate (``schedule``).

    Deviations: ``admm_iterations`` 5 x ``epochs`` 1 epoch is far shorter than the
    paper's tens of epochs of ADMM training; each W-step's data order is seeded with
    ``ctx.seed + iteration``; protected layers stay dense (the others are pruned a little
    further so the overall target holds).
    """

    Options = ADMMOptions

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        nonzero_before = count_nonzero(model)
        sparsity = covered_sparsity(model, target)
        params = {n: stored_weight(m) for n, m in targets(model, "").items()}

        w0 = {n: p.detach().clone() for n, p in params.items()}
        z, _ = admm_project(w0, sparsity, opts["scope"])
        u = {n: torch.zeros_like(t) for n, t in w0.items()}
        rho = [opts["rho"]]
        self.history = []
        for it in range(opts["admm_iterations"]):
            handles = admm_penalty_hooks(params, z, u, lambda: rho[0])
            try:
                self._train(
                    ctx,
                    opts,
                    epochs=opts["epochs"],
                    lr=opts["lr"],
                    schedule=opts["schedule"],
                    seed=ctx.seed + it,
                )
            finally:
                for h in handles:
                    h.remove()
            with torch.no_grad():
                w = {n: p.detach().to(u[n].device) for n, p in params.items()}
                new_z, _ = admm_project({n: w[n] + u[n] for n in w}, sparsity, opts["scope"])
                z.update(new_z)
                u.update(admm_dual_update(u, w, z))
                gap = math.sqrt(sum(float((w[n] - z[n]).pow(2).sum()) for n in w))
            self.history.append({"iteration": it + 1, "rho": rho[0], "primal_residual": gap})
            rho[0] *= opts["rho_growth"]
        # the hard prune: the k largest |W| of the trained weights, not the last Z's support
        _, keep = admm_project({n: p.detach() for n, p in params.items()}, sparsity, opts["scope"])
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return SparsityReport.measure(model, nonzero_before)


__all__ = ["ADMMPruning", "admm_dual_update", "admm_penalty_hooks", "admm_project"]
