"""Lottery tickets — Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
Neural Networks", ICLR 2019; rewinding from Frankle, Dziugaite, Roy & Carbin, "Stabilizing the
Lottery Ticket Hypothesis" (2019) and "Linear Mode Connectivity and the Lottery Ticket
Hypothesis" (ICML 2020); official code facebookresearch/open_lth.

The algorithm, top to bottom:

1. **theta_0.** The method needs the network at initialisation, which a trained model no longer
   has, so it draws one: the model is re-initialised the way its architecture initialises it
   (:func:`prunekit.methods.initialisation.reinitialise`: a zoo model is built afresh; a model
   with its own ``init_weights`` / ``reset_parameters`` reruns it) under the run's seed. The
   given trained weights are discarded.
2. **Round 0.** Train the dense network ``epochs`` from ``theta_0``; with ``reset="rewind"``,
   keep its state after ``k`` optimizer steps (``k = rewind_steps``, or ``rewind_fraction`` of
   the round's steps when ``rewind_steps`` is 0).
3. **Rounds 1, 2, ...** Mask the smallest-magnitude weights so that the overall sparsity is
   ``1 - (1 - rate_per_round) ** r`` (``rate_per_round`` of the weights still there), the last
   round exactly at the target; reset the surviving weights, and every other parameter and
   buffer, to ``theta_0`` (``reset="init"``, the ICLR 2019 paper) or to the state at step ``k``
   (``reset="rewind"``); train ``epochs`` again with the mask attached.
4. **The random re-initialisation control** (``random_control=True``): the ticket's masks, found
   as above, each trained from a *new* initialisation (drawn the same way under seed ``seed +
   1``) instead of the ticket's own values: for every round ``r`` the control is the mask of the
   ticket's round ``r`` on fresh weights, trained ``epochs``. The masks are the ticket's in every
   round (the control never prunes a network of its own); the method returns the last control.
   Training callbacks (:attr:`callbacks`) then see round 0 and the control rounds.

With ``train_final=False`` the last round's training is skipped: the network is returned at its
reset values, and the runner's fine-tuning is its training. ``self.rounds`` keeps, per round, its
number, overall ``sparsity``, ``target``, ``val_top1`` after its training (the control's, under
``random_control``; None when skipped) and the ``masks`` (bool tensors by weight name);
:meth:`LotteryTicket.save_rounds` writes them as JSON.

Defaults: open_lth's ``cifar_resnet`` hyperparameters (``models/cifar_resnet.py``
``default_hparams``): SGD lr 0.1, momentum 0.9, weight decay 1e-4, lr / 10 at 50% and 75% of
training (its 80 and 120 of 160 epochs), global magnitude pruning (``sparse_global``) of 20% per
round. In that setting the papers find no tickets by resetting to ``theta_0`` (ICLR 2019 Sec. 4:
ResNet-18 and VGG-19 at lr 0.1 without warm-up; ICML 2020 Sec. 5: ResNet-20 at its standard
rate), but do find them by rewinding to an early iteration, after which training is stable to SGD
noise: about iteration 2000 of ResNet-20's 63,000 (ICML 2020 Fig. 5), 3% of training; hence
``reset="rewind"`` and ``rewind_fraction`` 0.03 of a round.

Deviations: ``epochs`` per round is 2 where the papers train to convergence each round; the
ICLR paper's per-layer rates for its small networks (output layer at half the rate) are not
reproduced; the learning-rate warm-up the ICLR paper uses as the alternative to rewinding is not
offered; protected layers stay dense (the others are pruned a little further to meet the overall
target). The method needs a model without masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.io import PathLike, atomic_write_json
from prunekit.methods.base import Context, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    covered_sparsity,
    magnitude_prune,
    target_sparsity,
)
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import Retraining, restore, snapshot, val_top1
from prunekit.train import Callback, TrainResult


def lth_schedule(target: float, rate: float) -> list[float]:
    """Overall sparsity after each round: ``1 - (1 - rate) ** r`` while below ``target``, then
    exactly ``target`` (the last round prunes only what is left to reach it)."""
    out: list[float] = []
    if target <= 0.0:
        return out
    r = 1
    while 1.0 - (1.0 - rate) ** r < target - 1e-12:
        out.append(1.0 - (1.0 - rate) ** r)
        r += 1
    out.append(target)
    return out


_OPEN_LTH = "open_lth models/cifar_resnet.py default_hparams"


@dataclass(frozen=True)
class LTHOptions(Options):
    renamed: ClassVar[dict[str, str]] = {"round_epochs": "epochs"}

    rate_per_round: float = option(
        0.2,
        help="fraction of the remaining weights pruned each round",
        source=f"{_OPEN_LTH} (pruning_fraction 0.2); ICLR 2019 Sec. 4 (ResNet-18, VGG-19)",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"],
        source=f"{_OPEN_LTH} (sparse_global); ICLR 2019 Sec. 4 prunes deep nets globally",
        choices=SCOPES,
    )
    reset: str = option(
        "rewind",
        help="after each round, reset the kept weights to theta_0 (init) or to step k (rewind)",
        source="ICML 2020 Sec. 5: at lr 0.1, ResNet-20 tickets appear only with rewinding",
        choices=("init", "rewind"),
    )
    rewind_fraction: float = option(
        0.03,
        help="the rewind point k as a fraction of round 0's optimizer steps",
        source="ICML 2020 Fig. 5: ResNet-20 is stable from about iteration 2000 of 63,000",
        low=0,
        high=1,
    )
    rewind_steps: int = option(
        0,
        help="the rewind point k in optimizer steps; 0: use rewind_fraction",
        source="prunekit",
        low=0,
    )
    random_control: bool = option(
        False,
        help="train the ticket's masks from a new random initialisation (the papers' control)",
        source="ICLR 2019 Sec. 2: randomly reinitialised tickets as the control",
    )
    epochs: int = option(
        2,
        help="training epochs of each round (round 0 included)",
        source="prunekit (the papers train to convergence each round)",
        low=1,
    )
    lr: float = option(0.1, help=SHARED["lr"], source=f"{_OPEN_LTH} (lr 0.1)", low=0, low_open=True)
    momentum: float = option(
        0.9, help=SHARED["momentum"], source=f"{_OPEN_LTH} (momentum 0.9)", low=0, high=1
    )
    weight_decay: float = option(
        1e-4, help=SHARED["weight_decay"], source=f"{_OPEN_LTH} (weight_decay 1e-4)", low=0
    )
    schedule: str = option(
        "step",
        help=SHARED["schedule"],
        source=f"{_OPEN_LTH} (lr / 10 at 80 and 120 of 160 epochs: 50% and 75%)",
    )
    train_final: bool = option(
        True,
        help="train the last round; False returns it at its reset values",
        source="prunekit",
    )


class RewindPoint:
    """A training callback keeping every weight and buffer after optimizer step ``k`` (the
    rewinding point, ``theta_k``). It is stateful, so :meth:`Context.train` saves the point with
    the round's checkpoint: a round killed after step ``k`` and resumed still has it."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.weights: dict[str, torch.Tensor] = {}

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event == "step_end" and state["step"] == self.k:
            self.weights = snapshot(state["model"])

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = dict(state["weights"])


@register_method("lth")
class LotteryTicket(Retraining):
    """Lottery tickets by iterative magnitude pruning (Frankle & Carbin, ICLR 2019), rewinding
    to an early iteration by default (Frankle et al., ICML 2020), with the random
    re-initialisation control (``random_control``). See the module docstring."""

    Options = LTHOptions

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[dict[str, Any]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError("lth starts from a dense model; this model already carries masks")
        covered_sparsity(model, target)  # fail early when the target cannot be met
        nonzero_before = count_nonzero(model)

        reinitialise(model, ctx.seed)
        reset_state = snapshot(model)  # theta_0
        steps_per_round = opts.epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        k = opts.rewind_steps or max(1, round(opts.rewind_fraction * steps_per_round))
        point = RewindPoint(k)
        capture = opts.reset == "rewind"
        self._round(ctx, opts, [point] if capture else [])
        if capture:
            rewind = point.weights
            if not rewind:
                raise ConfigError(
                    f"option 'rewind_steps' ({k}) must not exceed the optimizer steps of one "
                    f"round of training ({steps_per_round})"
                )
            reset_state = rewind

        self.rounds = [self._record(0, 0.0, val_top1(ctx), model)]
        plan = lth_schedule(target, opts.rate_per_round)
        for r, s in enumerate(plan, start=1):
            magnitude_prune(model, s, opts.scope)
            restore(model, reset_state)
            val = None
            last = r == len(plan)
            if opts.random_control:
                if not last:  # the next round's masks come from the trained ticket
                    self._round(ctx, opts, [], user=False)
            elif not last or opts.train_final:
                self._round(ctx, opts, [])
                val = val_top1(ctx)
            self.rounds.append(self._record(r, s, val, model))
        if opts.random_control:
            self._control(ctx, opts)
        return SparsityReport.measure(model, nonzero_before)

    def _control(self, ctx: Context, opts: LTHOptions) -> None:
        """Step 4: each round's ticket mask on a new initialisation (seed + 1), trained."""
        model = ctx.model
        for row in self.rounds[1:]:
            masks.finalize(model)  # drop the masks; the new draw replaces every weight
            reinitialise(model, ctx.seed + 1)
            device = next(model.parameters()).device
            masks.apply_masks(model, {n: masks.Mask(m.to(device)) for n, m in row["masks"].items()})
            if row is not self.rounds[-1] or opts.train_final:
                self._round(ctx, opts, [])
                row["val_top1"] = val_top1(ctx)

    def _round(
        self,
        ctx: Context,
        opts: Mapping[str, Any],
        extra: list[Callback],
        *,
        user: bool = True,
    ) -> TrainResult:
        """One round's training; ``user=False`` leaves out :attr:`callbacks` (the ticket's
        rounds under ``random_control``, whose trainings the control replaces)."""
        saved = self.callbacks
        if not user:
            self.callbacks = []
        try:
            return self._train(
                ctx,
                opts,
                epochs=opts["epochs"],
                lr=opts["lr"],
                schedule=opts["schedule"],
                callbacks=extra,
            )
        finally:
            self.callbacks = saved

    @staticmethod
    def _record(r: int, target: float, val: float | None, model: nn.Module) -> dict[str, Any]:
        return {
            "round": r,
            "target": target,
            "sparsity": SparsityReport.measure(model, 0).sparsity,
            "val_top1": val,
            "masks": {n: m.data.cpu().clone() for n, m in masks.get_masks(model).items()},
        }

    def save_rounds(self, path: PathLike) -> None:
        """Write :attr:`rounds` as JSON (atomically); each mask as ``{"kept", "total"}``."""
        rows = [
            {
                **{k: v for k, v in row.items() if k != "masks"},
                "masks": {
                    n: {"kept": int(m.sum()), "total": m.numel()} for n, m in row["masks"].items()
                },
            }
            for row in self.rounds
        ]
        atomic_write_json({"method": self.id, "rounds": rows}, path)


__all__ = ["LTHOptions", "LotteryTicket", "lth_schedule"]
