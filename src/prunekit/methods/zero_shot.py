"""Tartaglione, "The Rise of the Lottery Heroes: Why Zero-Shot Pruning is Hard", ICIP 2022
(arXiv 2202.12400); no official code.

The paper asks whether lottery tickets can be drawn without iterative pruning. Pruning the early
network to a trained ticket's mask and training what is left (one-shot ``1-LOT``, its Alg. 1-2)
projects the weights onto the ticket's subspace and, at high sparsity, lands in a flat, hard loss
landscape (Sec. 2). Its answer, RISE (Alg. 3, update rule (2)), keeps the loss landscape of the
early network: the weights outside the ticket are not zeroed but *locked* at their early values,
and only the ticket's weights (the "lottery heroes") train. The algorithm, top to bottom:

1. **Initialise.** ``W^0``: the model re-initialised the way its architecture initialises it
   (:func:`prunekit.methods.initialisation.reinitialise`, under the run's seed); the given trained
   weights are discarded.
2. **Warm-up** (Alg. 2, lines 2-8): train every weight ``warmup_epochs`` (``k``) epochs:
   ``W^k``, kept (every parameter and buffer).
3. **The ticket's statistics** (Alg. 3, line 2): train on from ``W^k`` for ``epochs``: ``W^f``.
4. **Mask** (Alg. 3, line 3): keep the ``1 - s`` largest ``|W^f|`` (``scope``), ``M``.
5. **Rise** (Alg. 3, line 4; update rule (2)): rewind every parameter and buffer to ``W^k`` and
   train ``epochs`` with ``w_i`` updated where ``m_i = 1`` and held at ``w_i^k`` where
   ``m_i = 0`` (a parametrization ``w -> where(M, w, W^k)``: the locked entries get no gradient
   and no weight decay reaches them).
6. **Result.** ``final = "zero"``: the locked weights are then removed (masked to zero), so the
   network has the target sparsity and the runner's fine-tuning trains the heroes without them.
   ``final = "keep"``: the network of the paper, heroes trained and the rest held at ``W^k``
   (nothing is zero: the report's sparsity is that of the dense model).

Each training (``phase1`` warm-up, ``phase2`` ticket, ``phase3`` rise) goes through
:meth:`Context.train`, checkpointed in the run folder, so an interrupted run resumes. The
network trains from the architecture's initialisation: results say so
(:attr:`LotteryHeroes.at_initialisation`).

Defaults and their sources: ``lr = 0.1``, ``momentum = 0.9``, ``weight_decay = 5e-5``: paper Sec.
2 (ResNet-32 on CIFAR-10: SGD, learning rate 0.1 decayed by 10 at epochs 80 and 120 of 180,
momentum 0.9, weight decay 5e-5); ``schedule = "step"`` (prunekit's step schedule: lr / 10 at
50% and 75% of each phase, for the paper's 44% and 67%); the warm-up runs at the constant ``lr``
(the paper's ``k`` epochs all lie before its first decay). ``warmup_epochs = 1``: prunekit (the
paper sweeps ``k`` from 0 to 20 of 180 epochs, Fig. 4); ``epochs = None``: the run's baseline
epochs for each of the two trainings (the paper trains each stage for the full 180 of its
baseline; :func:`~prunekit.methods.base.scratch_epochs`, 3 outside a run). ``scope = "global"``: prunekit (Alg. 3's MAGNITUDE PRUNE
does not say; open_lth's ``sparse_global``, as :mod:`prunekit.methods.lth`).

Deviations: short trainings; ``final = "zero"`` (the default, prunekit's sparsity contract)
removes the locked weights the paper keeps; the mask covers conv / Linear weights only (the
paper's covers every parameter): biases, normalisation layers and protected layers train freely.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.apply import split_name
from prunekit.methods.base import (
    Context,
    SparsityReport,
    count_nonzero,
    register_method,
    scratch_epochs,
)
from prunekit.methods.fine_grained import SCOPES, magnitude_prune, target_sparsity
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining, restore, snapshot

_PAPER = "paper Sec. 2 (ResNet-32 / CIFAR-10 training)"


class LockOutside(nn.Module):
    """Parametrization ``w -> where(mask, w, locked)``: entries outside ``mask`` read the fixed
    ``locked`` values (update rule (2)); they receive no gradient and no weight decay."""

    def __init__(self, mask: torch.Tensor, locked: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().bool().clone())
        self.register_buffer("locked", locked.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, self.locked)


def lock_outside(model: nn.Module, heroes: dict[str, torch.Tensor]) -> None:
    """Hold every weight of ``model`` outside ``heroes`` (bool masks by weight name) at its
    current value while the heroes train."""
    for name, mask in heroes.items():
        module, tensor_name = split_name(model, name)
        weight = getattr(module, tensor_name)
        lock = LockOutside(mask.to(weight.device), weight.detach()).to(weight.device)
        parametrize.register_parametrization(module, tensor_name, lock)


def unlock(model: nn.Module, names: list[str]) -> None:
    """Bake the locks of :func:`lock_outside` into the weights and remove them."""
    for name in names:
        module, tensor_name = split_name(model, name)
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)


@dataclass(frozen=True)
class ZeroShotOptions(Options):
    warmup_epochs: int = option(
        1,
        help="epochs every weight trains before the rewind point W^k (k)",
        source="prunekit (the paper sweeps k from 0 to 20 of 180 epochs, Fig. 4)",
        low=0,
    )
    epochs: int | None = option(
        None,
        help="epochs of the ticket's training from W^k and of the heroes' training (None: "
        "the run's baseline epochs, 3 outside a run)",
        source="paper Sec. 2: each stage trains the baseline's 180 epochs",
        low=1,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"],
        source="prunekit (Alg. 3 magnitude prune; global as open_lth sparse_global)",
        choices=SCOPES,
    )
    final: str = option(
        "zero",
        help="after the heroes train: zero the locked weights (the target sparsity) or keep them "
        "at W^k (the paper's network, not sparse)",
        source="prunekit (the paper keeps them; prunekit's target is a sparsity)",
        choices=("zero", "keep"),
    )
    lr: float = option(0.1, help=SHARED["lr"], source=f"{_PAPER}: lr 0.1", low=0, low_open=True)
    momentum: float = option(
        0.9, help=SHARED["momentum"], source=f"{_PAPER}: momentum 0.9", low=0, high=1
    )
    weight_decay: float = option(
        5e-5, help=SHARED["weight_decay"], source=f"{_PAPER}: weight decay 5e-5", low=0
    )
    schedule: str = option(
        "step",
        help=SHARED["schedule"],
        source=f"{_PAPER}: lr / 10 at epochs 80 and 120 of 180 (step: 50% and 75%)",
    )


@register_method("zero_shot")
class LotteryHeroes(Retraining):
    """Tartaglione (ICIP 2022), RISE: the mask of the ticket trained from the early network
    ``W^k``; from ``W^k`` only its weights (the heroes) train, the others locked at their
    ``W^k`` values. See the module docstring."""

    Options = ZeroShotOptions

    def __init__(self) -> None:
        super().__init__()
        self.at_initialisation = True
        self.record: dict[str, Any] = {}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError(
                "zero_shot starts from a dense model; this model already carries masks"
            )
        before = count_nonzero(model)
        self.phases = 0

        reinitialise(model, ctx.seed)  # W^0
        self._train(ctx, opts, epochs=opts.warmup_epochs, lr=opts.lr, schedule="constant")
        rewind = snapshot(model)  # W^k
        epochs = scratch_epochs(opts.epochs, ctx)
        self._train(ctx, opts, epochs=epochs, lr=opts.lr, schedule=opts.schedule)  # W^f
        heroes = {n: m.data.clone() for n, m in magnitude_prune(model, target, opts.scope).items()}
        self.record = {
            "ticket": {n: w.clone() for n, w in snapshot(model).items() if n in heroes},
            "rewind": {n: w.clone() for n, w in rewind.items() if n in heroes},
            "heroes": heroes,
        }
        masks.finalize(model)  # the ticket's masks come off: the rise starts from the dense W^k
        restore(model, rewind)
        lock_outside(model, heroes)
        self._train(ctx, opts, epochs=epochs, lr=opts.lr, schedule=opts.schedule)
        unlock(model, list(heroes))
        if opts.final == "zero":
            masks.apply_masks(model, {n: masks.Mask(m) for n, m in heroes.items()})
        report = SparsityReport.measure(model, before)
        report.from_init_epochs = opts.warmup_epochs + 2 * epochs
        return report


__all__ = ["LockOutside", "LotteryHeroes", "ZeroShotOptions", "lock_outside", "unlock"]
