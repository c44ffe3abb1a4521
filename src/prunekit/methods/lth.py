"""Unstructured methods built around (re)training with masks: lottery tickets, ADMM, budgeted
retraining and budgeted IMP with adaptive linear learning-rate restarts.

All four share :func:`train_with_masks` (SGD through :func:`prunekit.train.fit` with the masks
attached, so pruned weights stay exactly zero) and :func:`magnitude_prune` (the masks engine with
magnitude scores). ``target_sparsity`` is the fraction of *all* conv / Linear weights to zero;
layers the model protects (``protected_layers``) stay dense as the masks engine leaves them, so
the other layers are pruned a little further to meet the overall target (:func:`covered_sparsity`).

* ``lth`` - Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural
  Networks", ICLR 2019. Iterative magnitude pruning with the surviving weights reset to their
  initial values after every round; rewinding to iteration ``k`` instead follows Frankle, Dziugaite,
  Roy & Carbin, "Stabilizing the Lottery Ticket Hypothesis" (2019) / "Linear Mode Connectivity and
  the Lottery Ticket Hypothesis" (ICML 2020); random re-initialisation is the paper's control.
* ``admm`` - Zhang, Ye, Zhang, Tang, Wen, Fardad & Wang, "A Systematic DNN Weight Pruning
  Framework using Alternating Direction Method of Multipliers", ECCV 2018.
* ``budgeted`` - Li, Yumer & Ramanan, "Budgeted Training: Rethinking Deep Neural Network Training
  Under Resource Constraints", ICLR 2020: one-shot magnitude pruning, then retraining within a
  fixed epoch budget under the budget-aware linear learning-rate decay.
* ``bimp`` - Zimmer, Spiegel & Pokutta, "How I Learned to Stop Worrying and Love Retraining",
  ICLR 2023: budgeted IMP (prune-retrain cycles inside one budget), each cycle retrained with
  ALLR (adaptive linear learning-rate restarting).

Each class docstring gives the computation, the defaults and the deviations.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.io import PathLike, atomic_write_json
from prunekit.masks.engine import prunable_layers, select_targets, weight_name
from prunekit.masks.granularity import keep_top, prune_count
from prunekit.masks.scope import global_keep
from prunekit.methods.base import (
    Context,
    Method,
    SparsityReport,
    count_nonzero,
    register_method,
)
from prunekit.train import Callback, TrainConfig, TrainResult, evaluate, fit

SCOPES = ("global", "layer")

# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def target_sparsity(ctx: Context) -> float:
    """``ctx.target["target_sparsity"]``, checked to be a number in [0, 1)."""
    if set(ctx.target) != {"target_sparsity"}:
        raise ConfigError(
            f"this unstructured method needs target {{'target_sparsity': s}}, got {ctx.target!r}"
        )
    s = ctx.target["target_sparsity"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= float(s) < 1.0:
        raise ConfigError(f"target_sparsity must be a number in [0, 1), got {s!r}")
    return float(s)


def targets(model: nn.Module) -> dict[str, nn.Module]:
    """The layers pruned (the masks engine's default choice), by weight name."""
    chosen = select_targets(model, None, ())
    if not chosen:
        raise ConfigError("the model has no conv or Linear layer that may be pruned")
    return {weight_name(n): m for n, m in chosen.items()}


def covered_sparsity(model: nn.Module, overall: float) -> float:
    """The sparsity to ask of the pruned layers so that ``overall`` of all conv / Linear weights
    (protected layers included, as :class:`SparsityReport` counts them) are zero."""
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    covered = sum(m.weight.numel() for m in targets(model).values())
    s = overall * total / covered
    if s >= 1.0:
        raise ConfigError(
            f"target_sparsity {overall} cannot be met: the prunable layers hold {covered} of "
            f"{total} conv/Linear weights (the protected layers stay dense)"
        )
    return s


def stored(module: nn.Module) -> torch.Tensor:
    """The weight tensor the optimizer updates (``original`` under a mask)."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def magnitude_prune(model: nn.Module, sparsity: float, scope: str) -> dict[str, masks.Mask]:
    """Mask the smallest-magnitude weights so that ``sparsity`` of all conv / Linear weights are
    zero (``scope`` ``"global"``: one threshold over the pruned layers; ``"layer"``: each pruned
    layer to the same sparsity). Masks already there stay (entries they prune score 0)."""
    check_choice("scope", scope, SCOPES)
    return masks.prune(model, covered_sparsity(model, sparsity), scope=scope)


def train_with_masks(
    model: nn.Module,
    train_set: Any,
    *,
    epochs: int,
    lr: float,
    schedule: str,
    batch_size: int,
    seed: int,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` in place for ``epochs`` with SGD and the learning-rate ``schedule`` of
    :mod:`prunekit.train.schedules` (``"linear"``: step ``t`` of ``T`` uses ``lr * (1 - t / T)``).

    The masks on the model stay attached: the parametrizations recompute ``w * m`` on every
    forward, so pruned weights get zero gradient and stay exactly zero. The model goes back to the
    device it came from.
    """
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
        seed=seed,
    )
    device = _device(model)
    try:
        return fit(model, train_set, config, progress=progress, callbacks=list(callbacks))
    finally:
        model.to(device)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"option {name!r} must be one of {', '.join(choices)}; got {value!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """``low < value < high``, else ConfigError naming the option."""
    if not (low < value < high and math.isfinite(value)):
        raise ConfigError(f"option {name!r} must be in ({low}, {high}), got {value!r}")


class _Retraining(Method):
    """A method that trains inside :meth:`prune`. ``callbacks`` (``cb(event, state)``, as
    :func:`prunekit.train.fit` takes them) are passed to every training run it does."""

    def __init__(self) -> None:
        self.callbacks: list[Callback] = []

    def _train(
        self, ctx: Context, opts: Mapping[str, Any], *, epochs: int, lr: float, schedule: str, **kw
    ) -> TrainResult:
        return train_with_masks(
            ctx.model,
            ctx.train_set,
            epochs=epochs,
            lr=lr,
            schedule=schedule,
            batch_size=ctx.batch_size,
            seed=kw.pop("seed", ctx.seed),
            momentum=opts["momentum"],
            weight_decay=opts["weight_decay"],
            callbacks=[*self.callbacks, *kw.pop("callbacks", ())],
            progress=bool(opts["progress"]),
        )


def _val_top1(ctx: Context) -> float:
    return float(evaluate(ctx.model, ctx.val_set, batch_size=ctx.batch_size)["top1"])


# --------------------------------------------------------------------------------------------
# Lottery tickets
# --------------------------------------------------------------------------------------------

_ORIGINAL = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


def _plain_key(key: str) -> str | None:
    """State-dict key as the unmasked model names it; None for mask buffers."""
    key = _ORIGINAL.sub(r"\1\2", key)
    return None if "parametrizations." in key or key.startswith("parametrizations") else key


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, keyed as in the unmasked model's state_dict."""
    out = {}
    for key, value in model.state_dict().items():
        plain = _plain_key(key)
        if plain is not None:
            out[plain] = value.detach().clone().cpu()
    return out


@torch.no_grad()
def restore(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`snapshot`) into the model's tensors in place, then zero the
    stored weights again where a mask prunes them. Parameter objects are kept (an optimizer or a
    parametrization holding them stays valid)."""
    for key, tensor in model.state_dict().items():
        plain = _plain_key(key)
        if plain is not None and plain in state:
            tensor.copy_(state[plain])
    current = masks.get_masks(model)
    if current:
        masks.apply_masks(model, current)  # ANDs each mask with itself and re-zeroes `original`


def reinitialise(model: nn.Module, seed: int) -> None:
    """``reset_parameters()`` of every module that has one, in registration order, under
    ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


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
class LotteryTicket(_Retraining):
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
        target = target_sparsity(ctx)
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

        self.rounds = [self._record(0, 0.0, _val_top1(ctx), model)]
        plan = lth_schedule(target, opts["rate_per_round"])
        for r, s in enumerate(plan, start=1):
            magnitude_prune(model, s, opts["scope"])
            restore(model, reset_state)
            val = None
            if r < len(plan) or opts["train_final"]:
                self._round_training(ctx, opts, [])
                val = _val_top1(ctx)
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


# --------------------------------------------------------------------------------------------
# ADMM
# --------------------------------------------------------------------------------------------


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


@register_method("admm")
class ADMMPruning(_Retraining):
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
    after each iteration. Finally the weights are hard-pruned to the support of the last ``Z``
    (masks attached): the runner's fine-tuning with the masks in place is the paper's masked
    retraining.

    Defaults: ``rho`` 1e-3, within the 1e-3 to 1e-2 the paper works with, growing by
    ``rho_growth`` 2.0 per iteration (the paper raises ``rho`` over the iterations so ``W`` is
    pulled ever closer to ``Z``; this doubling is this implementation's choice); W-steps use SGD,
    ``lr`` 0.01, momentum 0.9, weight decay 5e-4, constant learning rate (``schedule``).

    Deviations: ``admm_iterations`` 5 x ``admm_epochs_per_iter`` 1 epoch is far shorter than the
    paper's tens of epochs of ADMM training; each W-step's data order is seeded with
    ``ctx.seed + iteration``; protected layers stay dense (the others are pruned a little
    further so the overall target holds).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "admm_iterations": 5,
        "admm_epochs_per_iter": 1,
        "rho": 1e-3,
        "rho_growth": 2.0,
        "scope": "layer",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "constant",
    }

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx)
        check_choice("scope", opts["scope"], SCOPES)
        for name in ("admm_iterations", "admm_epochs_per_iter"):
            if opts[name] < 1:
                raise ConfigError(f"option {name!r} must be >= 1, got {opts[name]}")
        if not (opts["rho"] > 0 and math.isfinite(opts["rho"])):
            raise ConfigError(f"option 'rho' must be a finite number > 0, got {opts['rho']!r}")
        if not (opts["rho_growth"] >= 1 and math.isfinite(opts["rho_growth"])):
            raise ConfigError(f"option 'rho_growth' must be >= 1, got {opts['rho_growth']!r}")
        model = ctx.model
        nonzero_before = count_nonzero(model)
        sparsity = covered_sparsity(model, target)
        params = {n: stored(m) for n, m in targets(model).items()}

        w0 = {n: p.detach().clone() for n, p in params.items()}
        z, keep = admm_project(w0, sparsity, opts["scope"])
        u = {n: torch.zeros_like(t) for n, t in w0.items()}
        rho = [opts["rho"]]
        self.history = []
        for it in range(opts["admm_iterations"]):
            handles = admm_penalty_hooks(params, z, u, lambda: rho[0])
            try:
                self._train(
                    ctx,
                    opts,
                    epochs=opts["admm_epochs_per_iter"],
                    lr=opts["lr"],
                    schedule=opts["schedule"],
                    seed=ctx.seed + it,
                )
            finally:
                for h in handles:
                    h.remove()
            with torch.no_grad():
                w = {n: p.detach().to(u[n].device) for n, p in params.items()}
                new_z, keep = admm_project({n: w[n] + u[n] for n in w}, sparsity, opts["scope"])
                z.update(new_z)
                u.update(admm_dual_update(u, w, z))
                gap = math.sqrt(sum(float((w[n] - z[n]).pow(2).sum()) for n in w))
            self.history.append({"iteration": it + 1, "rho": rho[0], "primal_residual": gap})
            rho[0] *= opts["rho_growth"]
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return SparsityReport.measure(model, nonzero_before)


# --------------------------------------------------------------------------------------------
# Budgeted training
# --------------------------------------------------------------------------------------------


@register_method("budgeted")
class BudgetedRetraining(_Retraining):
    """Budget-aware retraining (Li, Yumer & Ramanan, ICLR 2020).

    The paper's finding: under a fixed budget of ``B`` epochs, a learning rate that decays
    linearly to zero over exactly that budget, ``lr_t = lr_0 * (1 - t / T)`` with ``T`` the
    budget's optimizer steps, beats schedules made for full-length training. As a pruning method:
    magnitude pruning to the target in one shot (``scope`` ``"global"``: one threshold;
    ``"layer"``: the same sparsity in every pruned layer), then ``budget_epochs`` of SGD with the
    masks attached under that linear decay (:class:`prunekit.train.TrainConfig`
    ``schedule="linear"``, which gives step ``t`` (from 0) the rate ``lr * (1 - t / T)``: the
    first step uses ``lr_0`` and the rate reaches 0 at the end of the budget).

    Defaults: ``budget_epochs`` 3, ``lr`` 0.01 (retraining a trained model), momentum 0.9,
    weight decay 5e-4. Deviations: the paper studies training from scratch under a budget; here
    the budget is spent retraining the pruned model (the setting in which Zimmer et al., ICLR
    2023, apply it); no warm-up.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "budget_epochs": 3,
        "lr": 0.01,
        "scope": "global",
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx)
        check_choice("scope", opts["scope"], SCOPES)
        if opts["budget_epochs"] < 1:
            raise ConfigError(f"option 'budget_epochs' must be >= 1, got {opts['budget_epochs']}")
        if not (opts["lr"] > 0 and math.isfinite(opts["lr"])):
            raise ConfigError(f"option 'lr' must be a finite number > 0, got {opts['lr']!r}")
        nonzero_before = count_nonzero(ctx.model)
        magnitude_prune(ctx.model, target, opts["scope"])
        self._train(ctx, opts, epochs=opts["budget_epochs"], lr=opts["lr"], schedule="linear")
        return SparsityReport.measure(ctx.model, nonzero_before)


# --------------------------------------------------------------------------------------------
# BIMP with ALLR
# --------------------------------------------------------------------------------------------


def bimp_schedule(target: float, cycles: int) -> list[float]:
    """Overall sparsity after each of ``cycles`` prune-retrain cycles: the IMP geometric
    schedule ``1 - (1 - target) ** (j / cycles)``, ending exactly at ``target``."""
    out = [1.0 - (1.0 - target) ** (j / cycles) for j in range(1, cycles)]
    return [*out, target]


def relative_norm_drop(
    before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]
) -> float:
    """``||W - W_pruned||_2 / ||W||_2`` over all the given tensors together (0 for zero W)."""
    num = sum(float((before[n].double() - after[n].double()).pow(2).sum()) for n in before)
    den = sum(float(before[n].double().pow(2).sum()) for n in before)
    return math.sqrt(num / den) if den > 0 else 0.0


def allr_initial_lr(
    norm_drop: float, pruned_fraction: float, base_lr: float, budget_ratio: float
) -> float:
    """ALLR's starting learning rate: ``d = norm_drop / sqrt(pruned_fraction)`` (the relative
    norm removed by pruning, against the ``sqrt(pruned_fraction)`` it would be if all weights had
    the same magnitude), ``lr_0 = clip(d * base_lr, min(budget_ratio, 1) * base_lr, base_lr)``.
    ``budget_ratio`` is the retraining length over the original training length."""
    d = norm_drop / math.sqrt(pruned_fraction) if pruned_fraction > 0 else 0.0
    low = min(budget_ratio, 1.0) * base_lr
    return float(min(max(d * base_lr, low), base_lr))


def _effective_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in targets(model).items()}


@register_method("bimp")
class BudgetedIMP(_Retraining):
    """Budgeted IMP with ALLR retraining (Zimmer, Spiegel & Pokutta, ICLR 2023).

    ``cycles`` (J) prune-retrain cycles share one budget of ``budget_epochs`` epochs: cycle ``j``
    masks the smallest-magnitude weights up to the overall sparsity ``1 - (1 - s) ** (j / J)``
    (the IMP geometric schedule, the same fraction of the remaining weights each cycle, the last
    cycle exactly at the target ``s``), then retrains with ALLR: a learning rate decaying linearly
    from ``lr_0`` to 0 over the cycle's steps, where

    * ``n = ||W - W_pruned|| / ||W||`` is the relative L2 norm removed by this cycle's pruning
      (over the pruned layers' weights), ``p`` the fraction of the still-remaining weights this
      cycle pruned, and ``d = n / sqrt(p)`` (equal to 1 when all weights have the same
      magnitude, small when pruning removes little norm);
    * ``lr_0 = clip(d * base_lr, min(E_j / original_epochs, 1) * base_lr, base_lr)``, with
      ``base_lr`` the peak learning rate of the original training and ``E_j`` the cycle's
      epochs.

    This ALLR rule is from this implementation's reading of the paper and its public reference
    code. ``self.history`` lists, per cycle, ``sparsity``, ``pruned_fraction``,
    ``relative_norm_drop``, ``lr0`` and ``epochs``.

    Defaults: ``cycles`` 3, ``budget_epochs`` 3 (split as evenly as possible, later cycles taking
    the remainder), ``base_lr`` 0.1 (the usual peak rate of CIFAR training), ``original_epochs``
    200, momentum 0.9, weight decay 5e-4, ``scope`` ``"global"`` (the paper's global magnitude
    pruning). Deviations: the model arrives trained, so the budget covers only the prune-retrain
    cycles (the paper's BIMP also budgets the dense training before them); the 10% warm-up the
    reference code puts before the linear decay is left out; ``base_lr`` and
    ``original_epochs`` describe the original training, which prunekit does not see, so they
    are options.
    """

    defaults: ClassVar[dict[str, Any]] = {
        "cycles": 3,
        "budget_epochs": 3,
        "base_lr": 0.1,
        "original_epochs": 200,
        "scope": "global",
        "momentum": 0.9,
        "weight_decay": 5e-4,
    }

    def __init__(self) -> None:
        super().__init__()
        self.history: list[dict[str, float]] = []

    @staticmethod
    def cycle_epochs(budget: int, cycles: int) -> list[int]:
        """``budget`` epochs split over ``cycles``: ``budget // cycles`` each, the last
        ``budget % cycles`` cycles one more."""
        base, extra = divmod(budget, cycles)
        return [base + (1 if j >= cycles - extra else 0) for j in range(cycles)]

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx)
        check_choice("scope", opts["scope"], SCOPES)
        if opts["cycles"] < 1:
            raise ConfigError(f"option 'cycles' must be >= 1, got {opts['cycles']}")
        if opts["budget_epochs"] < opts["cycles"]:
            raise ConfigError(
                f"option 'budget_epochs' must be >= cycles ({opts['cycles']}) so every cycle "
                f"retrains at least one epoch, got {opts['budget_epochs']}"
            )
        if opts["original_epochs"] < 1:
            raise ConfigError(
                f"option 'original_epochs' must be >= 1, got {opts['original_epochs']}"
            )
        if not (opts["base_lr"] > 0 and math.isfinite(opts["base_lr"])):
            raise ConfigError(
                f"option 'base_lr' must be a finite number > 0, got {opts['base_lr']}"
            )
        model = ctx.model
        nonzero_before = count_nonzero(model)
        covered_sparsity(model, target)  # fail early when the target cannot be met
        epochs = self.cycle_epochs(opts["budget_epochs"], opts["cycles"])
        self.history = []
        for j, (s, e) in enumerate(zip(bimp_schedule(target, opts["cycles"]), epochs, strict=True)):
            before = _effective_weights(model)
            kept_before = sum(int(torch.count_nonzero(t)) for t in before.values())
            magnitude_prune(model, s, opts["scope"])
            after = _effective_weights(model)
            kept_after = sum(int(torch.count_nonzero(t)) for t in after.values())
            fraction = 1.0 - kept_after / kept_before if kept_before else 0.0
            drop = relative_norm_drop(before, after)
            lr0 = allr_initial_lr(drop, fraction, opts["base_lr"], e / opts["original_epochs"])
            self._train(ctx, opts, epochs=e, lr=lr0, schedule="linear", seed=ctx.seed + j)
            self.history.append(
                {
                    "cycle": j + 1,
                    "sparsity": SparsityReport.measure(model, 0).sparsity,
                    "pruned_fraction": fraction,
                    "relative_norm_drop": drop,
                    "lr0": lr0,
                    "epochs": e,
                }
            )
        return SparsityReport.measure(model, nonzero_before)


__all__ = [
    "ADMMPruning",
    "BudgetedIMP",
    "BudgetedRetraining",
    "LotteryTicket",
    "admm_dual_update",
    "admm_penalty_hooks",
    "admm_project",
    "allr_initial_lr",
    "bimp_schedule",
    "covered_sparsity",
    "lth_schedule",
    "magnitude_prune",
    "reinitialise",
    "relative_norm_drop",
    "restore",
    "snapshot",
    "target_sparsity",
    "train_with_masks",
]
