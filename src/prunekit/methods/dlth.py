"""Bai, Wang, Tao, Li, Fu, "Dual Lottery Ticket Hypothesis", ICLR 2022: Random Sparse Network
Transformation (RST) (official code: yueb17/DLTH, ``pruner/reg_pruner.py``, ``option.py``,
``README.md``).

The hypothesis (the dual of the lottery ticket's): a *randomly selected* sub-network of a
randomly initialised dense network can be turned into a trainable one. RST, top to bottom:

1. **A random dense network** (``from_init``): the model is drawn afresh from its
   architecture's initialisation; the given trained weights are discarded (the official run
   starts from the saved initial model of a plain training run).
2. **A random sparse sub-network.** In every pruned layer, a uniformly random set of entries is
   chosen for removal, the same fraction in each layer (official ``--stage_pr`` gives every
   stage one ratio; protected layers stay dense here, the others get the share that meets the
   overall target). Nothing about the weights' values enters the choice (``pick="random"``,
   paper Sec. 3); ``pick="init_min"`` takes the smallest entries of the random initialisation
   (the official ``--pick_pruned min`` default, applied there to the initial weights).
3. **Growing regularisation.** The dense network trains while the weights chosen for removal
   ``P`` carry an L2 penalty whose coefficient grows: every ``update_every`` steps ``lambda``
   on ``P`` rises by ``eta`` until it reaches ``reg_upper``; the penalty's gradient
   ``lambda * w`` is added to the loss gradient of those entries only (official ``_greg_1``
   and ``_apply_reg``: ``m.weight.grad += reg * m.weight``, schedule ``'x'``). The growth
   takes ``grow_fraction`` of the phase; ``lambda`` then stays at ``reg_upper`` while the
   network stabilises (official ``stabilize_reg_interval``). Information is pushed out of
   ``P`` into the kept weights while the whole network still trains.
4. **Remove and train.** ``P`` is masked (its weights zeroed) and the sparse network is trained
   (official fine-tuning: lr 0.1, divided by 10 at 50% and 75%).

Here phase 3 is :meth:`Context.train` phase ``dlth_regularise`` with a gradient hook on every
pruned layer's weight and :class:`GrowingPenalty` as its (checkpointed) callback; phase 4 is
phase ``dlth_train`` with the masks attached.

Defaults: ``lr`` 0.001 (official ``--lr_prune``), ``reg_upper`` 1.0 (``--reg_upper_limit``),
``update_every`` 5 (``--update_reg_interval``), weight decay 5e-4 and momentum 0.9 (README's
CIFAR runs), ``grow_fraction`` 5/9: the official run grows ``lambda`` for ``reg_upper_limit /
reg_granularity_prune * update_reg_interval`` = 1 / 1e-4 * 5 = 50,000 iterations, then
stabilises 40,000; ``train_lr`` 0.1 with the step schedule (README ``--lr_ft
0:0.1,100:0.01,150:0.001`` of 200 epochs). ``eta`` follows from the phase's length:
``reg_upper * update_every / (grow_fraction * steps)``.

``epochs`` and ``train_epochs``: the run's baseline epochs each
(:func:`~prunekit.methods.base.scratch_epochs`, 3 outside a run): the official phases are each
about a full training (90,000 iterations; 200 epochs), so each gets the budget the run's dense
network gets.

Deviations: the official first and last stages
(stem and classifier) are left dense there by ``stage_pr``, here the protected layers are. The
method needs a model without masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.granularity import prune_count
from prunekit.methods.base import (
    Context,
    SparsityReport,
    count_nonzero,
    register_method,
    scratch_epochs,
)
from prunekit.methods.fine_grained import share_of_targets, target_sparsity, targets
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining
from prunekit.train.config import SCHEDULES

_OFFICIAL = "official option.py"


def random_removal(shape: torch.Size, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A bool tensor of ``shape`` marking ``prune_count(numel, fraction)`` entries drawn
    uniformly at random (True: to be removed)."""
    n = math.prod(shape)
    out = torch.zeros(n, dtype=torch.bool)
    out[torch.randperm(n, generator=generator)[: prune_count(n, fraction)]] = True
    return out.reshape(shape)


def smallest_removal(weight: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ``prune_count(numel, fraction)`` smallest-magnitude entries of ``weight``."""
    flat = weight.detach().abs().reshape(-1)
    out = torch.zeros(flat.numel(), dtype=torch.bool)
    out[torch.argsort(flat, stable=True)[: prune_count(flat.numel(), fraction)]] = True
    return out.reshape(weight.shape)


def penalty_at(step: int, eta: float, upper: float, every: int) -> float:
    """``lambda`` in force at training step ``step`` (0-based): raised by ``eta`` at steps 0,
    ``every``, ``2 every``, ... and capped at ``upper``."""
    return min(upper, eta * (step // every + 1))


def regularised_gradient(
    grad: torch.Tensor, weight: torch.Tensor, removed: torch.Tensor, lam: float
) -> torch.Tensor:
    """``grad + lam * w`` on the entries to be removed, ``grad`` elsewhere."""
    return grad + lam * removed.to(weight.dtype) * weight.detach()


@dataclass(frozen=True)
class DLTHOptions(Options):
    from_init: bool = option(
        True,
        help="start from the architecture's random initialisation (False: the given weights)",
        source="paper Sec. 3 (a random sub-network of a randomly initialised dense network)",
    )
    pick: str = option(
        "random",
        help="entries to remove: 'random' (uniform) or 'init_min' (smallest at initialisation)",
        source="paper Sec. 3 (random selection); official --pick_pruned min is 'init_min'",
        choices=("random", "init_min"),
    )
    epochs: int | None = option(
        None,
        help="epochs of the regularisation phase (None: the run's baseline epochs, 3 outside a "
        "run)",
        source="prunekit: the baseline's budget (official: 90,000 iterations, about 230 CIFAR "
        "epochs at batch 128)",
        low=0,
    )
    lr: float = option(
        0.001,
        help="learning rate of the regularisation phase (constant)",
        source=f"{_OFFICIAL} (--lr_prune 0.001)",
        low=0,
        low_open=True,
    )
    reg_upper: float = option(
        1.0,
        help="the penalty coefficient lambda grows to this value",
        source=f"{_OFFICIAL} (--reg_upper_limit 1.0)",
        low=0,
        low_open=True,
    )
    update_every: int = option(
        5,
        help="training steps between increases of lambda",
        source=f"{_OFFICIAL} (--update_reg_interval 5)",
        low=1,
    )
    grow_fraction: float = option(
        5 / 9,
        help="fraction of the regularisation phase over which lambda grows (then it stays)",
        source="official 50,000 growing then 40,000 stabilising iterations",
        low=0,
        high=1,
        low_open=True,
    )
    train_epochs: int | None = option(
        None,
        help="epochs training the sparse network after the removal (None: the run's baseline "
        "epochs, 3 outside a run)",
        source="prunekit: the baseline's budget (official: 200 epochs, as its dense baseline)",
        low=0,
    )
    train_lr: float = option(
        0.1,
        help="peak learning rate of that training",
        source="official README (--lr_ft 0:0.1,100:0.01,150:0.001)",
        low=0,
        low_open=True,
    )
    schedule: str = option(
        "step",
        help=SHARED["schedule"] + " of the sparse training (step: /10 at 50% and 75%)",
        source="official README (--lr_ft: /10 at epochs 100 and 150 of 200)",
        choices=SCHEDULES,
    )
    momentum: float = option(
        0.9, help=SHARED["momentum"], source=f"{_OFFICIAL} (--momentum 0.9)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="official README (--wd 0.0005)", low=0
    )


class GrowingPenalty:
    """Step 3's penalty: gradient hooks adding ``lambda * w`` on the entries to be removed, and
    a training callback counting steps (``lambda`` is :func:`penalty_at` of the count).
    ``state_dict`` keeps the count, so a resumed phase continues the same schedule."""

    def __init__(
        self, layers: dict[str, nn.Module], removed: dict[str, torch.Tensor], eta: float, opts: Any
    ) -> None:
        self.layers, self.removed, self.eta, self.opts = layers, removed, eta, opts
        self.steps = 0
        self._handles: list[Any] = []

    @property
    def lam(self) -> float:
        return penalty_at(self.steps, self.eta, self.opts.reg_upper, self.opts.update_every)

    def attach(self) -> None:
        for name, module in self.layers.items():
            weight = module.weight
            removed = self.removed[name].to(weight.device)
            self._handles.append(weight.register_hook(self._hook(weight, removed)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, weight: torch.Tensor, removed: torch.Tensor) -> Any:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return regularised_gradient(grad, weight, removed, self.lam)

        return hook

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event == "step_end":
            self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])


@register_method("dlth")
class DualLotteryTicket(Retraining):
    """Bai et al. (ICLR 2022), RST: a random sub-network of a random dense network, made
    trainable by a growing L2 penalty on the weights to be removed, which are then removed
    and the sparse network trained. See the module docstring."""

    Options = DLTHOptions

    def __init__(self) -> None:
        super().__init__()
        self.removed: dict[str, torch.Tensor] = {}
        self.final_lambda = 0.0

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError("dlth starts from a dense model; this model already carries masks")
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, target)
        before = count_nonzero(model)
        if opts.from_init:
            reinitialise(model, ctx.seed)
        g = torch.Generator().manual_seed(ctx.seed)
        self.removed = {
            n: random_removal(m.weight.shape, share, g)
            if opts.pick == "random"
            else smallest_removal(m.weight, share)
            for n, m in layers.items()
        }
        epochs = scratch_epochs(opts.epochs, ctx)
        steps = epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        grow = max(1, round(opts.grow_fraction * steps))
        eta = opts.reg_upper * opts.update_every / grow
        penalty = GrowingPenalty(layers, self.removed, eta, opts)
        penalty.attach()
        try:
            ctx.train(
                model,
                epochs,
                opts.lr,
                name="dlth_regularise",
                callbacks=[*self.callbacks, penalty],
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
                schedule="constant",
                progress=opts.progress,
            )
        finally:
            penalty.detach()
        last = penalty.steps - 1
        self.final_lambda = (
            penalty_at(last, eta, opts.reg_upper, opts.update_every) if last >= 0 else 0.0
        )
        masks.apply_masks(model, {n: masks.Mask(~r) for n, r in self.removed.items()})
        train_epochs = scratch_epochs(opts.train_epochs, ctx)
        ctx.train(
            model,
            train_epochs,
            opts.train_lr,
            name="dlth_train",
            callbacks=self.callbacks,
            momentum=opts.momentum,
            weight_decay=opts.weight_decay,
            schedule=opts.schedule,
            progress=opts.progress,
        )
        report = SparsityReport.measure(model, before)
        report.from_init_epochs = epochs + train_epochs if opts.from_init else 0
        return report


__all__ = [
    "DLTHOptions",
    "DualLotteryTicket",
    "GrowingPenalty",
    "penalty_at",
    "random_removal",
    "regularised_gradient",
    "smallest_removal",
]
