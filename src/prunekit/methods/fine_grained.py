"""Fine-grained (unstructured and semi-structured) pruning methods: the weights of conv and Linear
layers are zeroed by masks, shapes stay. Every method leaves :mod:`prunekit.masks` masks attached
(the runner fine-tunes with them and bakes them in afterwards) and returns a
:class:`~prunekit.methods.base.SparsityReport`.

Common ground
-------------
* **Which layers.** The conv / Linear layers :func:`prunekit.masks.select_targets` picks by
  default: all of them except the model's protected layers (its classifier, for the model zoo).
* **The target.** ``ctx.target == {"target_sparsity": s}`` is the fraction of *all* conv /
  Linear weights to zero, protected layers included (that is what the report measures). Since
  protected layers stay dense, the layers that are pruned get the slightly higher sparsity
  ``(s * all - zeros already outside them) / their size`` so that the overall figure is ``s``
  (``nm_sparsity`` excepted: its pattern fixes every layer's sparsity).
* **Training with masks.** Several methods train between or while pruning; they all go through
  one routine (:func:`train_with_masks`: :func:`prunekit.train.fit`, SGD with momentum 0.9,
  weight decay 5e-4, cosine learning rate, the run's batch size and seed). Attached masks keep
  pruned weights at exactly zero throughout.

The methods
-----------
``magnitude`` — Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015.
    Iterative: prune every weight whose magnitude is below ``q * std`` of its layer's weights,
    retrain with the masks, repeat. The paper tunes the quality parameter ``q`` by hand; here one
    ``q`` shared by all layers is solved for in each round so that the overall sparsity after
    the round equals the round's target. The set pruned by a threshold ``q`` is
    ``{w : |w| / std(layer) < q}``, so the ``q`` meeting an exact count is read off the sorted
    normalised magnitudes (the value a bisection over ``q`` converges to, found exactly; ties at
    the threshold are broken by position so the count is exact). ``std`` is the population
    standard deviation of the layer's weights still kept when the round starts. Round targets
    follow :class:`prunekit.masks.Iterative` (the same fraction of the remaining weights each
    round, ``s_r = 1 - (1 - s)^(r / rounds)``). Options: ``rounds`` (3), ``retrain_epochs`` per
    round (1), ``lr`` (0.01: the paper retrains at 1/10 to 1/100 of the original rate). The
    paper's dropout-ratio adjustment and its L1/L2 choice for retraining are not reproduced
    (retraining uses weight decay 5e-4). Retraining follows every round, the last one included.

``dns`` — Guo, Yao, Chen, "Dynamic Network Surgery for Efficient DNNs", NIPS 2016.
    Each targeted layer carries a 0/1 mask ``T`` and keeps its dense weight ``W``. The forward
    pass uses ``W * T``; the backward pass hands the gradient of ``W * T`` to *all* of ``W``
    (straight-through), so pruned weights keep learning and can come back. At a mask update,
    with two thresholds ``a < b`` per layer: ``|w| < a -> T = 0`` (pruned), ``|w| > b -> T = 1``
    (spliced back), in between ``T`` is unchanged. Thresholds: from the mean ``mu`` and standard
    deviation ``sigma`` of the layer's ``|W|`` (measured once, before training) we set
    ``r = mu + c * sigma``, ``a = (1 - margin) r``, ``b = (1 + margin) r``; ``c`` plays the
    role of the paper's per-layer compression rate and is one number for all layers, solved so
    that the fraction of weights below ``r`` is the target; ``margin`` (option ``dns_margin``,
    0.1) widens the band. Masks are checked every ``dns_update_every`` steps (1) and updated
    with probability ``sigma(iter) = (1 + gamma * iter)^(-power)`` (paper: ``gamma = 1e-4``,
    ``power = 1``; options ``dns_gamma``, ``dns_power``), over ``dns_epochs`` (3) of training at
    ``dns_lr`` (0.01). One update is made before training starts (the paper starts from an
    all-ones ``T``). At the end the surgery masks are replaced by regular masks equal to the
    final ``T``; if ``T``'s sparsity is not exactly the target, the final adjustment keeps
    ``T``'s decisions as far as possible: more weights are pruned among the kept ones, smallest
    ``(|w| - mu) / sigma`` first, or, if ``T`` is too sparse, the pruned ones largest first are
    spliced back. Masks already on the model stay in force (ANDed into the final ``T``).

``gmp`` — Zhu, Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop.
    Gradual magnitude pruning while training: at steps ``t0, t0 + dt, ..., t0 + n dt`` the
    smallest-magnitude weights are masked so that the sparsity is
    ``s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3`` (:class:`prunekit.masks.GradualCubic`),
    with ``s_i = 0``. Options: ``gmp_epochs`` (3), ``gmp_lr`` (0.01), ``gmp_frequency`` (``dt``
    in steps, 100: the paper suggests 100 to 1000), ``gmp_begin`` / ``gmp_end`` (fractions of
    the training steps where pruning starts / reaches ``s_f``: 0 and 0.75, leaving the last
    quarter to recover, as the paper's runs leave time after the last update),
    ``gmp_scope`` (``"layer"``: the paper prunes every layer to the same sparsity; or
    ``"global"``). Whatever the step count, the final sparsity is ``s_f``.

``snip`` — Lee, Ajanthan, Torr, "SNIP: Single-shot Network Pruning based on Connection
Sensitivity", ICLR 2019.
    On ``snip_batches`` (1, the paper's one batch) calibration batches: connection sensitivity
    ``s_j = |g_j w_j| / sum_k |g_k w_k|`` with ``g = dL/dw`` of the cross-entropy loss (``dL/dc``
    at ``c = 1`` is ``g * w``); the global top ``1 - s`` fraction is kept. The paper scores the
    network at initialisation; prunekit usually gets a trained model, so scoring uses the given
    weights unless ``reinit`` (False) is set, in which case every module's ``reset_parameters``
    re-initialises the model first (seeded by the run's seed). The forward pass runs in eval
    mode so scoring leaves BatchNorm running statistics untouched.

``nm_sparsity`` — N:M semi-structured sparsity (catalogue entry "N:M semi-structured
sparsity"; the 2:4 pattern sparse tensor cores accelerate).
    In every group of ``m`` consecutive input weights (along the input-channel axis, at each
    kernel position) the ``n`` largest magnitudes are kept (options ``n`` 2, ``m`` 4). The
    sparsity is then ``1 - n/m`` in every pruned layer; a different ``target_sparsity`` is refused.
    Layers whose input size is not divisible by ``m`` are left dense, logged, and listed in the
    method's ``skipped`` attribute; the overall sparsity is then below ``1 - n/m``.

``one_by_n`` — Lin et al. (Mingbao Lin, Rongrong Ji and co-authors), "1xN Pattern for Pruning Convolutional Neural
Networks", IEEE TPAMI 2022.
    Output channels are ordered by L1 norm (descending) and consecutive runs of ``block``
    (``N``, option, 4) of that order form blocks; a block shares one input-kernel pattern: for
    each (block, input channel) the ``N`` kernels are pruned or kept together, the groups with the
    smallest L1 first, per layer (:mod:`prunekit.masks` granularity ``"1xn"``; a Linear layer
    counts as a conv with 1x1 kernels). The paper
    physically permutes the filters (and the next layer's input channels) so blocks are
    contiguous in memory; here the rearrangement only decides which channels form blocks — the
    same pruning decision, with the permutation recorded in the masks' metadata. A layer whose
    output count is not a multiple of ``N`` has one shorter last block. The per-layer count of
    pruned groups is rounded, so the overall sparsity is met to within one group per layer.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.engine import weight_name
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.train import Callback

log = logging.getLogger(__name__)

Weights = dict[str, torch.Tensor]

# ----------------------------------------------------------------------------- shared pieces


def target_sparsity(ctx: Context, method_id: str) -> float:
    """``ctx.target["target_sparsity"]``, checked to be a number in [0, 1)."""
    if set(ctx.target) != {"target_sparsity"}:
        raise ConfigError(
            f"method {method_id!r} is unstructured: it expects target "
            f"{{'target_sparsity': s}}, got {ctx.target!r}"
        )
    s = ctx.target["target_sparsity"]
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 <= s < 1.0:
        raise ConfigError(f"target_sparsity must be a number in [0, 1), got {s!r}")
    return float(s)


def targets(model: nn.Module, method_id: str) -> dict[str, nn.Module]:
    """The layers to prune, by weight name (``"layer.weight"``): the masks engine's default."""
    chosen = masks.select_targets(model, None, ())
    if not chosen:
        raise ConfigError(
            f"method {method_id!r} found no conv or Linear layer to prune "
            "(all are protected or the model has none)"
        )
    return {weight_name(n): m for n, m in chosen.items()}


def share_of_targets(model: nn.Module, names: Iterable[str], sparsity: float) -> float:
    """The sparsity the layers ``names`` must reach for all conv / Linear weights of ``model``
    to be at ``sparsity`` overall, the other layers staying as they are."""
    rows = masks.report(model)
    names = set(names)
    total = rows["overall"]["params"]
    inside = sum(r["params"] for n, r in rows["layers"].items() if n in names)
    zeros_outside = sum(
        r["params"] - r["nonzero"] for n, r in rows["layers"].items() if n not in names
    )
    share = (sparsity * total - zeros_outside) / inside
    if share >= 1.0:
        raise ConfigError(
            f"target_sparsity {sparsity:g} cannot be met: the layers left dense hold "
            f"{total - inside} of {total} weights; expected a smaller target"
        )
    return min(max(share, 0.0), 1.0)


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def train_with_masks(
    model: nn.Module,
    ctx: Context,
    epochs: int,
    lr: float,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = False,
) -> None:
    """Train ``model`` in place on ``ctx.train_set`` for ``epochs`` with whatever masks it
    carries (SGD, momentum 0.9, weight decay 5e-4, cosine schedule, the run's batch size and
    seed), then put it back on its device. ``epochs == 0`` does nothing."""
    if epochs < 0:
        raise ConfigError(f"training epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return
    if not lr > 0 or not math.isfinite(lr):
        raise ConfigError(f"learning rate must be a finite number > 0, got {lr!r}")
    from prunekit.methods.lottery import train_with_masks as train

    train(
        model,
        ctx.train_set,
        epochs=epochs,
        lr=lr,
        schedule="cosine",
        batch_size=ctx.batch_size,
        seed=ctx.seed,
        callbacks=callbacks,
        progress=progress,
    )


def _check_nonnegative(name: str, value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ConfigError(f"option {name!r} must be a finite number >= 0, got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"option {name!r} must be an integer >= 1, got {value!r}")


def _finish(model: nn.Module, before: int) -> SparsityReport:
    return SparsityReport.measure(model, before)


# ----------------------------------------------------------------------------- magnitude (Han)


def layer_std(weight: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """Population standard deviation of the kept entries of ``weight`` (all when ``keep`` is
    None); 1.0 for a layer with fewer than two kept entries or no spread, so scores stay finite."""
    values = weight.detach().reshape(-1).double()
    if keep is not None:
        values = values[keep.reshape(-1)]
    if values.numel() < 2:
        return 1.0
    std = float(values.std(correction=0))
    return std if std > 0 else 1.0


def threshold_keep(weights: Weights, quality: float, stds: dict[str, float]) -> Weights:
    """Han et al.'s rule: keep ``|w| >= quality * std`` of its layer, prune the rest."""
    return {n: w.detach().abs() >= quality * stds[n] for n, w in weights.items()}


def quality_for(
    weights: Weights, keep: Weights, stds: dict[str, float], sparsity: float
) -> tuple[float, Weights]:
    """The one quality ``q`` whose threshold ``q * std`` prunes exactly ``sparsity`` of all the
    entries of ``weights`` (entries already pruned by ``keep`` count and stay pruned), and the
    resulting keep-masks. Ties at the threshold are broken by position."""
    scores = {
        n: torch.where(keep[n], w.detach().abs().double() / stds[n], -1.0)
        for n, w in weights.items()
    }
    new_keep = global_keep(scores, sparsity)
    kept = torch.cat([s[new_keep[n] & keep[n]] for n, s in scores.items()])
    quality = float(kept.min()) if kept.numel() else math.inf
    return quality, new_keep


@register_method("magnitude")
class MagnitudePruning(Method):
    """Han et al. (NIPS 2015): iterative magnitude pruning with per-layer thresholds
    ``q * std(layer)``, one ``q`` solved per round to meet that round's target, retraining with
    the masks after each round (options ``rounds`` 3, ``retrain_epochs`` 1, ``lr`` 0.01). See the
    module docstring."""

    defaults: ClassVar[dict[str, Any]] = {"rounds": 3, "retrain_epochs": 1, "lr": 0.01}

    def __init__(self) -> None:
        self.qualities: list[float] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        _check_positive_int("rounds", opts["rounds"])
        _check_nonnegative("retrain_epochs", opts["retrain_epochs"])
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        final = share_of_targets(model, layers, s)
        schedule = masks.Iterative(final, opts["rounds"], 1) if final > 0 else None
        self.qualities = []
        for r in range(1, opts["rounds"] + 1):
            goal = schedule.sparsity(r) if schedule is not None else 0.0
            weights = {n: m.weight.detach() for n, m in layers.items()}
            keep = {n: w != 0 for n, w in weights.items()}
            stds = {n: layer_std(w, keep[n]) for n, w in weights.items()}
            quality, new_keep = quality_for(weights, keep, stds, goal)
            self.qualities.append(quality)
            masks.apply_masks(model, {n: masks.Mask(k) for n, k in new_keep.items()})
            train_with_masks(
                model, ctx, opts["retrain_epochs"], opts["lr"], progress=opts["progress"]
            )
        return _finish(model, before)


# ----------------------------------------------------------------------------- DNS (Guo et al.)


class _StraightThrough(torch.autograd.Function):
    """``w * t`` forward; the gradient reaches every entry of ``w`` unchanged."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class SurgeryMask(nn.Module):
    """Parametrization ``w -> w * T`` whose backward is the identity (Dynamic Network Surgery):
    pruned weights keep receiving the gradient of the masked weight. ``T`` is a float 0/1
    buffer; ``low`` / ``high`` are the thresholds ``a`` / ``b``."""

    def __init__(self, shape: torch.Size, low: float, high: float) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape))
        self.low, self.high = float(low), float(high)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.mask.to(weight.dtype))

    @torch.no_grad()
    def update(self, weight: torch.Tensor) -> None:
        """One surgery step on the dense ``weight``: below ``a`` -> 0, above ``b`` -> 1."""
        self.mask.copy_(surgery_update(weight, self.mask, self.low, self.high))


def surgery_update(
    weight: torch.Tensor, mask: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """The new mask: 0 where ``|w| < low``, 1 where ``|w| > high``, else the old value."""
    magnitude = weight.detach().abs()
    out = mask.detach().clone()
    out[magnitude < low] = 0
    out[magnitude > high] = 1
    return out


def update_probability(iteration: int, gamma: float, power: float) -> float:
    """``(1 + gamma * iteration)^(-power)``: the chance a mask update happens at ``iteration``."""
    return (1.0 + gamma * iteration) ** (-power)


def dns_thresholds(weights: Weights, sparsity: float, margin: float) -> dict[str, tuple]:
    """Per layer ``(a, b, mu, sigma)``: ``r = mu + c sigma`` over ``|w|`` with one ``c`` for all
    layers such that ``sparsity`` of all entries lie below their layer's ``r``;
    ``a = (1 - margin) r``, ``b = (1 + margin) r``."""
    stats = {}
    for n, w in weights.items():
        mag = w.detach().abs().double().reshape(-1)
        mu = float(mag.mean())
        sigma = float(mag.std(correction=0)) if mag.numel() > 1 else 0.0
        stats[n] = (mu, sigma if sigma > 0 else 1.0)
    z = {n: (w.detach().abs().double() - stats[n][0]) / stats[n][1] for n, w in weights.items()}
    flat = torch.sort(torch.cat([v.reshape(-1) for v in z.values()])).values
    k = min(flat.numel(), round(sparsity * flat.numel()))
    if k == 0:
        c = float(flat[0]) - 1.0  # below every weight: nothing pruned
    elif k == flat.numel():
        c = float(flat[-1]) + 1.0
    else:
        c = 0.5 * (float(flat[k - 1]) + float(flat[k]))
    out = {}
    for n, (mu, sigma) in stats.items():
        r = max(mu + c * sigma, 0.0)
        out[n] = ((1.0 - margin) * r, (1.0 + margin) * r, mu, sigma)
    return out


def attach_surgery(module: nn.Module, low: float, high: float) -> SurgeryMask:
    """Put a :class:`SurgeryMask` on ``module.weight`` (after any mask already there)."""
    surgery = SurgeryMask(module.weight.shape, low, high).to(module.weight.device)
    parametrize.register_parametrization(module, "weight", surgery)
    return surgery


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight under the parametrizations of ``module.weight``."""
    return module.parametrizations.weight.original


@register_method("dns")
class DynamicNetworkSurgery(Method):
    """Guo et al. (NIPS 2016): masks from two thresholds ``a < b`` per layer (prune below,
    splice back above), updated while the dense weights keep training through a straight-through
    mask; options ``dns_epochs`` 3, ``dns_lr`` 0.01, ``dns_update_every`` 1, ``dns_gamma`` 1e-4,
    ``dns_power`` 1, ``dns_margin`` 0.1. See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {
        "dns_epochs": 3,
        "dns_lr": 0.01,
        "dns_update_every": 1,
        "dns_gamma": 1e-4,
        "dns_power": 1.0,
        "dns_margin": 0.1,
    }

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        _check_nonnegative("dns_epochs", opts["dns_epochs"])
        _check_positive_int("dns_update_every", opts["dns_update_every"])
        _check_nonnegative("dns_gamma", opts["dns_gamma"])
        _check_nonnegative("dns_power", opts["dns_power"])
        if not 0.0 <= opts["dns_margin"] < 1.0:
            raise ConfigError(f"option 'dns_margin' must be in [0, 1), got {opts['dns_margin']}")
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        existing = masks.get_masks(model)
        weights = {n: m.weight.detach().clone() for n, m in layers.items()}
        thresholds = dns_thresholds(weights, share, opts["dns_margin"])
        surgery = {}
        for n, m in layers.items():
            a, b, _, _ = thresholds[n]
            surgery[n] = attach_surgery(m, a, b)
            surgery[n].update(dense_weight(m))
        generator = torch.Generator().manual_seed(ctx.seed)

        def callback(event: str, state: dict[str, Any]) -> None:
            step = state.get("step", 0)
            if event != "step_end" or step % opts["dns_update_every"]:
                return
            chance = update_probability(step, opts["dns_gamma"], opts["dns_power"])
            if float(torch.rand((), generator=generator)) < chance:
                for n, m in layers.items():
                    surgery[n].update(dense_weight(m))

        try:
            train_with_masks(
                model,
                ctx,
                opts["dns_epochs"],
                opts["dns_lr"],
                callbacks=[callback],
                progress=opts["progress"],
            )
        finally:
            final_t = {n: surgery[n].mask.detach().bool() for n in layers}
            for m in layers.values():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        # the dense weights after surgery; earlier masks (if any) were zeroed into them
        weights = {n: m.weight.detach() for n, m in layers.items()}
        for n, mask in existing.items():
            if n in final_t:
                final_t[n] &= mask.data.to(final_t[n].device)
        keep = _adjust(weights, final_t, thresholds, share)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return _finish(model, before)


def _adjust(
    weights: Weights, keep: Weights, thresholds: dict[str, tuple], sparsity: float
) -> Weights:
    """Keep-masks at exactly ``sparsity`` that follow ``keep`` as far as possible: every kept
    entry ranks above every pruned one, and within each side entries rank by
    ``(|w| - mu) / sigma`` of their layer."""
    scores = {}
    for n, w in weights.items():
        _, _, mu, sigma = thresholds[n]
        z = (w.abs().double() - mu) / sigma
        scores[n] = z
    span = max(float(s.max() - s.min()) for s in scores.values()) + 1.0
    ranked = {n: torch.where(keep[n], z + span, z) for n, z in scores.items()}
    return global_keep(ranked, sparsity)


# ----------------------------------------------------------------------------- GMP (Zhu & Gupta)


class GradualPruner:
    """A :func:`prunekit.train.fit` callback pruning by magnitude on ``schedule``'s steps;
    ``history`` records ``(step, target, sparsity measured over the pruned layers)``."""

    def __init__(
        self,
        schedule: masks.SparsitySchedule,
        names: Sequence[str],
        scope: str,
    ) -> None:
        self.schedule, self.names, self.scope = schedule, list(names), scope
        self.history: list[tuple[int, float, float]] = []

    def prune_to(self, model: nn.Module, step: int, sparsity: float) -> None:
        masks.prune(model, sparsity, scope=self.scope, include=self.names)
        rows = masks.report(model)["layers"]
        params = sum(rows[n]["params"] for n in self.names)
        zeros = sum(rows[n]["params"] - rows[n]["nonzero"] for n in self.names)
        self.history.append((step, sparsity, zeros / params))

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event != "step_end":
            return
        step = state["step"]
        if self.schedule.is_pruning_step(step):
            self.prune_to(state["model"], step, self.schedule.get_sparsity(step))


@register_method("gmp")
class GradualMagnitudePruning(Method):
    """Zhu & Gupta (ICLR 2018 workshop): magnitude pruning during training along the cubic
    schedule of :class:`prunekit.masks.GradualCubic` (``s_i = 0``); options ``gmp_epochs`` 3,
    ``gmp_lr`` 0.01, ``gmp_frequency`` 100 steps, ``gmp_begin`` 0.0, ``gmp_end`` 0.75,
    ``gmp_scope`` "layer". See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {
        "gmp_epochs": 3,
        "gmp_lr": 0.01,
        "gmp_frequency": 100,
        "gmp_begin": 0.0,
        "gmp_end": 0.75,
        "gmp_scope": "layer",
    }

    def __init__(self) -> None:
        self.history: list[tuple[int, float, float]] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        _check_nonnegative("gmp_epochs", opts["gmp_epochs"])
        _check_positive_int("gmp_frequency", opts["gmp_frequency"])
        if opts["gmp_scope"] not in ("layer", "global"):
            raise ConfigError(
                f"option 'gmp_scope' must be 'layer' or 'global', got {opts['gmp_scope']!r}"
            )
        begin, end = opts["gmp_begin"], opts["gmp_end"]
        if not 0.0 <= begin < end <= 1.0:
            raise ConfigError(
                f"options 'gmp_begin' and 'gmp_end' must satisfy 0 <= begin < end <= 1, "
                f"got {begin} and {end}"
            )
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        steps = opts["gmp_epochs"] * math.ceil(len(ctx.train_set) / ctx.batch_size)
        t0 = math.floor(begin * steps)
        t1 = max(t0 + 1, round(end * steps))
        schedule = masks.GradualCubic(0.0, share, t0, t1, opts["gmp_frequency"])
        pruner = GradualPruner(schedule, list(layers), opts["gmp_scope"])
        # all-ones masks first, so pruning inside training changes mask buffers only, never
        # the parameters the optimizer holds
        masks.apply_masks(
            model,
            {n: masks.Mask(torch.ones_like(m.weight, dtype=torch.bool)) for n, m in layers.items()},
        )
        train_with_masks(
            model,
            ctx,
            opts["gmp_epochs"],
            opts["gmp_lr"],
            callbacks=[pruner],
            progress=opts["progress"],
        )
        if not pruner.history or pruner.history[-1][1] != share:
            pruner.prune_to(model, steps, share)  # no training, or too few steps to reach s_f
        self.history = pruner.history
        return _finish(model, before)


# ----------------------------------------------------------------------------- SNIP (Lee et al.)


def sensitivity(grads: Weights, weights: Weights) -> Weights:
    """Connection sensitivity ``|g w| / sum over all layers of |g w|`` (zeros if the sum is 0)."""
    raw = {n: (grads[n].detach() * weights[n].detach()).abs().double() for n in weights}
    total = sum(float(r.sum()) for r in raw.values())
    return {n: r / total if total > 0 else r for n, r in raw.items()}


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight parameter of ``module`` (under its parametrizations, if any)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def weight_gradients(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> Weights:
    """``dL/dw`` of every layer's stored weight, summed over ``batches``, in eval mode; no
    ``.grad`` is left behind. Under a mask the gradient is that of the masked weight, times the
    mask."""
    device = model_device(model)
    params = {n: stored_weight(m) for n, m in layers.items()}
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            with torch.enable_grad():
                loss = loss_fn(model(x.to(device)), y.to(device))
                found = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, found, strict=True):
                if g is not None:
                    grads[n] += g.detach()
    finally:
        model.train(was_training)
    return grads


def reinitialise(model: nn.Module, seed: int) -> None:
    """Every submodule's ``reset_parameters`` (the model's own first, when it has one), under
    ``seed``; masks already on the model are re-applied to the new weights."""
    current = masks.get_masks(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        own = getattr(model, "reset_parameters", None)
        if callable(own):
            own()
        else:
            for module in model.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset) and module is not model:
                    reset()
    if current:
        masks.apply_masks(model, current)


@register_method("snip")
class SNIP(Method):
    """Lee et al. (ICLR 2019): single-shot pruning by connection sensitivity
    ``|g w| / sum |g w|`` on ``snip_batches`` (1) batches, the global top ``1 - s`` kept;
    ``reinit`` (False) re-initialises first, as the paper prunes at initialisation. See the
    module docstring."""

    defaults: ClassVar[dict[str, Any]] = {"snip_batches": 1, "reinit": False}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        _check_positive_int("snip_batches", opts["snip_batches"])
        model = ctx.model
        before = count_nonzero(model)
        if opts["reinit"]:
            reinitialise(model, ctx.seed)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        batches = dataclasses.replace(ctx, calib_batches=opts["snip_batches"]).calibration()
        if not batches:
            raise ConfigError("snip needs at least one training batch, the training set is empty")
        grads = weight_gradients(model, layers, batches)
        weights = {n: stored_weight(m).detach() for n, m in layers.items()}
        scores = sensitivity(grads, weights)
        keep = global_keep(scores, share)
        masks.apply_masks(model, {n: masks.Mask(k) for n, k in keep.items()})
        return _finish(model, before)


# ----------------------------------------------------------------------------- N:M and 1xN


@register_method("nm_sparsity")
class NMSparsity(Method):
    """N:M semi-structured sparsity: keep the ``n`` largest of every ``m`` consecutive input
    weights (options ``n`` 2, ``m`` 4; the target must be ``1 - n/m``); layers whose input size
    is not a multiple of ``m`` stay dense and are listed in ``skipped``."""

    defaults: ClassVar[dict[str, Any]] = {"n": 2, "m": 4}

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        n, m = opts["n"], opts["m"]
        if not 1 <= n < m:
            raise ConfigError(f"options n and m must satisfy 1 <= n < m, got n={n}, m={m}")
        s = target_sparsity(ctx, self.id)
        implied = 1.0 - n / m
        if abs(s - implied) > 1e-6:
            raise ConfigError(
                f"nm_sparsity with n={n}, m={m} zeros {implied:g} of each layer; "
                f"target_sparsity is {s:g}: expected target_sparsity={implied:g} "
                "(or options n, m that give the target)"
            )
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        eligible = [name for name, mod in layers.items() if mod.weight.shape[1] % m == 0]
        self.skipped = [name for name in layers if name not in eligible]
        if self.skipped:
            log.warning(
                "nm_sparsity: input size not divisible by m=%d, left dense: %s",
                m,
                ", ".join(self.skipped),
            )
        if not eligible:
            raise ConfigError(
                f"nm_sparsity: no layer has an input size divisible by m={m} (input sizes: "
                f"{', '.join(map(str, sorted({mod.weight.shape[1] for mod in layers.values()})))})"
            )
        masks.prune(model, implied, granularity="n:m", n=n, m=m, include=eligible)
        return _finish(model, before)


@register_method("one_by_n")
class OneByN(Method):
    """Lin et al. (TPAMI 2022): 1xN block pruning — output channels ordered by L1 norm form
    blocks of ``block`` (N, 4), each block shares one input-kernel pattern, the smallest-L1
    (block, input channel) groups pruned first in each layer. See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {"block": 4}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        _check_positive_int("block", opts["block"])
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        masks.prune(model, share, granularity="1xn", block=opts["block"], include=list(layers))
        return _finish(model, before)


__all__ = [
    "SNIP",
    "DynamicNetworkSurgery",
    "GradualMagnitudePruning",
    "GradualPruner",
    "MagnitudePruning",
    "NMSparsity",
    "OneByN",
    "SurgeryMask",
    "attach_surgery",
    "dns_thresholds",
    "layer_std",
    "quality_for",
    "sensitivity",
    "share_of_targets",
    "stored_weight",
    "surgery_update",
    "threshold_keep",
    "train_with_masks",
    "update_probability",
    "weight_gradients",
]
