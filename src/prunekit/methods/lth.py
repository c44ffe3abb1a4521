"""Lottery tickets — Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable
Neural Networks", ICLR 2019. Iterative magnitude pruning with the surviving weights reset to their
initial values after every round; rewinding to iteration ``k`` instead follows Frankle,
Dziugaite, Roy & Carbin, "Stabilizing the Lottery Ticket Hypothesis" (2019) / "Linear Mode
Connectivity and the Lottery Ticket Hypothesis" (ICML 2020); random re-initialisation is the
paper's control. The class docstring gives the computation, the defaults and the deviations.

Retraining goes through :class:`~prunekit.methods.retraining.Retraining` (SGD through
:func:`prunekit.train.fit` with the masks attached, so pruned weights stay exactly zero) and
pruning through :func:`~prunekit.methods.fine_grained.magnitude_prune`. ``target_sparsity`` is
the fraction of *all* conv / Linear weights to zero; protected layers stay dense, so the other
layers are pruned a little further to meet the overall target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.io import PathLike, atomic_write_json
from prunekit.methods.base import Context, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    SCOPES,
    check_choice,
    check_range,
    covered_sparsity,
    magnitude_prune,
    target_sparsity,
)
from prunekit.methods.initialisation import reinitialise
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


@register_method("lth")
class LotteryTicket(Retraining):
    """Lottery tickets by iterative magnitude pruning (Frankle & Carbin, ICLR 2019).

    The method needs the network's initialisation, which a trained model no longer has, so it
    makes one: every module with ``reset_parameters()`` is re-initialised under
    ``torch.manual_seed(ctx.seed)`` and that state (parameters and buffers) is ``theta_0``. The
    given trained weights are discarded. Then:

    1. round 0: train the dense network ``round_epochs`` from ``theta_0``;
    2. each round ``r``: mask the smallest-magnitude weights so that the overall sparsity is
       ``1 - (1 - rate_per_round) ** r`` (pruning ``rate_per_round`` of the weights still
       there), the last round going exactly to the target; reset the surviving weights (and every
       other parameter and buffer) to

       * ``reset="init"``: ``theta_0`` (the paper);
       * ``reset="rewind"``: their values after ``rewind_steps`` optimizer steps of round 0
         (rewinding, Frankle et al. 2019/2020; ``rewind_steps=0`` is ``theta_0``);
       * ``reset="random"``: a fresh initialisation drawn the same way under seed
         ``ctx.seed + 1`` (the paper's random re-initialisation control, keeping the mask);

       and train ``round_epochs`` again with the mask attached.

    The last round's training is skipped with ``train_final=False``: the ticket is then returned
    at its reset values, and the runner's fine-tuning is its training. ``self.rounds`` keeps, for
    every round, its number, overall ``sparsity``, the ``target`` sparsity of the round,
    ``val_top1`` after its training (None when skipped) and the ``masks`` (bool tensors by weight
    name); :meth:`save_rounds` writes them as JSON (mask kept / total counts).

    Defaults: ``rate_per_round`` 0.2 (the paper's rate for fully connected layers, and the global
    rate it uses for VGG-19 and ResNet-18), ``scope`` ``"global"`` (the paper prunes layer-wise
    for its small networks and globally for the deep ones; ``"layer"`` prunes each layer at the
    same rate), SGD ``lr`` 0.1 with momentum 0.9, weight decay 1e-4 and a ``step`` schedule
    (lr / 10 at 50% and 75%), as in the paper's VGG/ResNet runs; ``rewind_steps`` 500.

    Deviations: ``round_epochs`` is 2 by default where the paper trains to convergence each round
    (tens of thousands of iterations); the paper's per-layer rates (conv layers slower, output
    layer at half the rate) are not reproduced, one rate is used for all pruned layers; modules
    without ``reset_parameters()`` keep their values; protected layers stay dense. The method
    needs a model without masks.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "rate_per_round": 0.2,
        "scope": "global",
        "reset": "init",
        "rewind_steps": 500,
        "round_epochs": 2,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "train_final": True,
    }

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[dict[str, Any]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        check_range("rate_per_round", opts["rate_per_round"], 0.0, 1.0)
        check_choice("scope", opts["scope"], SCOPES)
        check_choice("reset", opts["reset"], ("init", "rewind", "random"))
        if opts["round_epochs"] < 1:
            raise ConfigError(f"option 'round_epochs' must be >= 1, got {opts['round_epochs']}")
        if opts["rewind_steps"] < 0:
            raise ConfigError(f"option 'rewind_steps' must be >= 0, got {opts['rewind_steps']}")
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError("lth starts from a dense model; this model already carries masks")
        covered_sparsity(model, target)  # fail early when the target cannot be met
        nonzero_before = count_nonzero(model)

        reinitialise(model, ctx.seed)
        theta_0 = snapshot(model)
        reset_state = theta_0
        if opts["reset"] == "random":
            reinitialise(model, ctx.seed + 1)
            reset_state = snapshot(model)
            restore(model, theta_0)

        rewind: dict[str, torch.Tensor] = {}
        k = opts["rewind_steps"]
        steps = [0]

        def keep_rewind_point(event: str, state: dict[str, Any]) -> None:
            if event == "step_end":
                steps[0] = state["step"]
                if state["step"] == k:
                    rewind.update(snapshot(state["model"]))

        capture = opts["reset"] == "rewind" and k > 0
        self._round_training(ctx, opts, [keep_rewind_point] if capture else [])
        if capture:
            if not rewind:
                raise ConfigError(
                    f"option 'rewind_steps' ({k}) must not exceed the optimizer steps of one "
                    f"round of training ({steps[0]})"
                )
            reset_state = rewind

        self.rounds = [self._record(0, 0.0, val_top1(ctx), model)]
        plan = lth_schedule(target, opts["rate_per_round"])
        for r, s in enumerate(plan, start=1):
            magnitude_prune(model, s, opts["scope"])
            restore(model, reset_state)
            val = None
            if r < len(plan) or opts["train_final"]:
                self._round_training(ctx, opts, [])
                val = val_top1(ctx)
            self.rounds.append(self._record(r, s, val, model))
        return SparsityReport.measure(model, nonzero_before)

    def _round_training(
        self, ctx: Context, opts: Mapping[str, Any], extra: list[Callback]
    ) -> TrainResult:
        return self._train(
            ctx,
            opts,
            epochs=opts["round_epochs"],
            lr=opts["lr"],
            schedule=opts["schedule"],
            callbacks=extra,
        )

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


__all__ = ["LotteryTicket", "lth_schedule"]
