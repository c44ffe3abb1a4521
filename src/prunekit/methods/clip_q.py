"""CLIP-Q — Tung and Mori, "CLIP-Q: Deep Network Compression Learning by In-Parallel
Pruning-Quantization", CVPR 2018 (no official code was released).

Algorithm, as this method runs it:

1. **Per-layer hyper-parameters by Bayesian optimisation** (paper Sec. 3.2). For each layer
   ``i`` a Gaussian process models the objective ``eps(theta) - lambda * c_i(theta)`` over
   ``theta_i = (p_i, b_i)``, the clipping rate and the bit width: ``eps`` is the top-1 error on
   a subset of the training data (``ctx.calibration()``) with layer ``i`` clipped and quantised
   by ``theta`` and the other layers as they are, ``c_i`` the compression benefit: the bits
   saved in layer ``i``, ``n_i (32 - (1 - p) b)``, over the network's ``32 N`` bits. The
   process (scikit-learn's ``GaussianProcessRegressor``, Matern 5/2 kernel plus noise) is fitted
   to ``bo_init`` random points and then to one point per iteration chosen by expected
   improvement over a grid of ``(p, b)`` (:func:`bayes_opt`).
2. **Clipping** (Sec. 3.1, :func:`clip_mask`): thresholds ``c-`` and ``c+`` such that a fraction
   ``p`` of the layer's positive weights lies below ``c+`` and ``p`` of its negative weights
   above ``c-``; the weights in ``[c-, c+]`` are set to zero for the forward pass.
3. **Partitioning**: the non-clipped part of the weight axis, ``[min w, c-] U [c+, max w]``, is
   cut into ``2^b - 1`` intervals, linearly (equal lengths) on each side, the sides sharing
   the intervals in proportion to their lengths (:func:`partition`).
4. **Quantising**: each non-clipped weight takes the mean of the full-precision weights in its
   interval (:func:`clip_quantize`), so a layer holds zero plus at most ``2^b - 1`` values.
5. **In-parallel fine-tuning** (Sec. 3.1): steps 2-4 run in every forward pass on the current
   full-precision weights (the thresholds and levels move as the weights do, and a clipped
   weight may come back); the gradient of the compressed weights updates the full-precision
   ones (straight through). At the end the layer keeps its final compressed weights, whose
   values become its codebook (:func:`prunekit.compress.deep_compression.share_values`); the
   run's result is a Deep Compression file with one bit width per layer (``result_file``).

Defaults and their sources:

* ``bits_low`` 2 .. ``bits_high`` 8: prunekit (the paper's search reaches 3 to 8 bits per
  layer on AlexNet / GoogLeNet / ResNet-50).
* ``p_high`` 0.99: prunekit (a layer can lose at most this fraction).
* ``lambda_`` 1.0: prunekit (the paper trades error against the compression benefit with a
  ``lambda`` set per network; 1 weighs one point of error against the whole network's bits).
* ``bo_init`` 3, ``bo_iterations`` 10: prunekit (short searches; the paper does not list its
  iteration count).
* ``epochs`` 1, ``lr`` 0.01, ``momentum`` 0.9, ``weight_decay`` 5e-4, ``schedule`` constant:
  prunekit (the paper fine-tunes with the network's usual training settings).

Deviations: the paper's searched rates decide the sparsity; here they are moved so that the
overall sparsity meets the run's target while keeping their order (:func:`scale_rates`: all
shrunk by one factor, or all moved the same fraction of the way to ``p_high``); protected layers are not clipped
(``p = 0``) but their bit width is searched and they are quantised; the search for each layer
is independent of the others' choices, as in the paper; the search result is kept in the run's
method folder, so a resumed run does not search again.

The layers are left under :class:`~prunekit.compress.deep_compression.SharedWeights`, so a
runner fine-tune after ``prune`` trains each layer's codebook values (Deep Compression's trained
quantisation) and keeps its bit width.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.compress.deep_compression import save_deep_compressed, share_values
from prunekit.errors import ConfigError
from prunekit.io import atomic_write_json
from prunekit.masks.engine import prunable_layers, weight_name
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import covered_sparsity, target_sparsity, targets
from prunekit.methods.options import SHARED, Options, option


def clip_mask(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Keep-mask after clipping: the ``round(p * n+)`` smallest positive weights and the
    ``round(p * n-)`` negative weights nearest zero are clipped (and exact zeros)."""
    flat = weight.detach().reshape(-1)
    keep = flat != 0
    for side in (flat > 0, flat < 0):
        idx = side.nonzero().reshape(-1)
        n = round(p * idx.numel())
        if n:
            order = torch.argsort(flat[idx].abs(), stable=True)[:n]
            keep[idx[order]] = False
    return keep.reshape(weight.shape)


def partition(weight: torch.Tensor, keep: torch.Tensor, bits: int) -> torch.Tensor:
    """Interval index (``0 .. 2^bits - 2``) of each kept weight, -1 where clipped.

    The non-clipped axis ``[min, c-] U [c+, max]`` is cut into ``2^bits - 1`` intervals of
    equal length on each side, the two sides sharing them in proportion to their lengths (at
    least one each when both hold weights), so no interval spans the clipped gap."""
    w = weight.detach()
    out = torch.full(w.shape, -1, dtype=torch.long, device=w.device)
    kept = w[keep]
    count = 2**bits - 1
    neg, pos = kept[kept < 0], kept[kept > 0]
    if neg.numel() and pos.numel():
        if count < 2:
            raise ConfigError(f"bits must be >= 2 to quantise both signs, got {bits}")
        neg_len = float(neg.max() - neg.min())
        pos_len = float(pos.max() - pos.min())
        share = neg_len / (neg_len + pos_len) if neg_len + pos_len > 0 else 0.5
        n_neg = min(max(round(count * share), 1), count - 1)
    else:
        n_neg = count if neg.numel() else 0
    n_pos = count - n_neg

    def side(values: torch.Tensor, n: int) -> torch.Tensor:
        span = float(values.max() - values.min()) if values.numel() else 0.0
        if span <= 0:
            return torch.zeros_like(values, dtype=torch.long)
        return torch.floor((values - values.min()) / (span / n)).long().clamp(0, n - 1)

    index = torch.empty_like(kept, dtype=torch.long)
    index[kept < 0] = side(neg, n_neg)
    index[kept > 0] = n_neg + side(pos, n_pos)
    out[keep] = index
    return out


def clip_quantize(weight: torch.Tensor, p: float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, keep)``: the layer clipped at rate ``p``, each kept weight replaced by the mean
    of the full-precision weights in its interval, zero where clipped."""
    w = weight.detach()
    keep = clip_mask(w, p)
    index = partition(w, keep, bits)
    count = 2**bits - 1
    flat_index, flat_w = index[keep], w[keep]
    sums = torch.zeros(count, dtype=w.dtype, device=w.device).index_add_(0, flat_index, flat_w)
    sizes = torch.zeros(count, dtype=w.dtype, device=w.device).index_add_(
        0, flat_index, torch.ones_like(flat_w)
    )
    means = sums / sizes.clamp_min(1)
    values = torch.zeros_like(w)
    values[keep] = means[flat_index]
    return values, keep


class ClipQuantize(nn.Module):
    """Parametrization: the forward pass sees :func:`clip_quantize` of the stored full-precision
    weight; its gradient reaches the stored weight unchanged (straight through)."""

    def __init__(self, p: float, bits: int) -> None:
        super().__init__()
        self.p, self.bits = float(p), int(bits)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values, _ = clip_quantize(weight, self.p, self.bits)
        return weight + (values - weight).detach()


def compression_benefit(n_layer: int, n_total: int, p: float, bits: int) -> float:
    """``c_i``: the bits layer ``i`` saves against fp32, over the network's fp32 bits."""
    return n_layer * (32.0 - (1.0 - p) * bits) / (32.0 * n_total)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float) -> np.ndarray:
    """Expected improvement below ``best`` of a Gaussian ``N(mean, std^2)`` (minimisation)."""
    from scipy.stats import norm

    std = np.maximum(std, 1e-12)
    z = (best - mean) / std
    return (best - mean) * norm.cdf(z) + std * norm.pdf(z)


def bayes_opt(
    objective: Callable[[float, int], float],
    p_grid: np.ndarray,
    bit_grid: np.ndarray,
    *,
    init: int,
    iterations: int,
    seed: int,
) -> tuple[float, int, list[tuple[float, int, float]]]:
    """Minimise ``objective(p, bits)`` over the grid by Gaussian-process Bayesian optimisation
    (expected improvement). Returns the best ``(p, bits)`` seen and every evaluation."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    cand = np.array([(p, b) for p in p_grid for b in bit_grid], dtype=float)
    scale = np.array([max(np.ptp(p_grid), 1e-12), max(np.ptp(bit_grid), 1e-12)])
    low = np.array([p_grid.min(), bit_grid.min()])
    x_all = (cand - low) / scale
    rng = np.random.default_rng(seed)
    evaluated: list[int] = []
    history: list[tuple[float, int, float]] = []

    def run(i: int) -> None:
        evaluated.append(i)
        p, b = float(cand[i, 0]), int(cand[i, 1])
        history.append((p, b, float(objective(p, b))))

    for i in rng.choice(len(cand), size=min(init, len(cand)), replace=False):
        run(int(i))
    for _ in range(iterations):
        if len(evaluated) == len(cand):
            break
        y = np.array([h[2] for h in history])
        kernel = ConstantKernel(1.0) * Matern(nu=2.5) + WhiteKernel(1e-3)
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=seed)
        with warnings.catch_warnings():  # a flat objective leaves the kernel at its bounds
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x_all[evaluated], y)
        mean, std = gp.predict(x_all, return_std=True)
        ei = expected_improvement(mean, std, float(y.min()))
        ei[evaluated] = -np.inf
        run(int(np.argmax(ei)))
    best = min(history, key=lambda h: h[2])
    return best[0], best[1], history


def scale_rates(
    rates: dict[str, float], sizes: dict[str, int], count: int, cap: float
) -> dict[str, float]:
    """Per-layer rates removing ``count`` weights (``sum(n_i * rate_i) == count``) that keep the
    order of the searched ``rates``: ``s * p_i`` when the searched rates remove more than
    ``count``, ``p_i + s * (cap - p_i)`` when they remove less (``s`` in ``[0, 1]``)."""
    total = sum(sizes.values())
    if count > cap * total + 1e-9:
        raise ConfigError(
            f"clip_q cannot remove {count} of {total} weights with p_high {cap}: expected a "
            "lower target or a higher p_high"
        )
    searched = sum(sizes[n] * p for n, p in rates.items())
    if count <= searched:
        s = count / searched if searched > 0 else 0.0
        return {n: s * p for n, p in rates.items()}
    room = sum(sizes[n] * (cap - p) for n, p in rates.items())
    s = (count - searched) / room if room > 0 else 0.0
    return {n: p + s * (cap - p) for n, p in rates.items()}


@dataclass(frozen=True)
class ClipQOptions(Options):
    lambda_: float = option(
        1.0,
        help="weight of the compression benefit c_i against the error in the search objective",
        source="prunekit (the paper sets lambda per network)",
        low=0,
    )
    bits_low: int = option(
        2,
        help="smallest bit width searched (2: zero and one value per sign)",
        source="prunekit",
        low=2,
        high=16,
    )
    bits_high: int = option(
        8,
        help="largest bit width searched",
        source="prunekit (paper's searched widths: 3 to 8 bits)",
        low=2,
        high=16,
    )
    p_high: float = option(
        0.99,
        help="largest clipping rate of a layer",
        source="prunekit",
        low=0,
        high=1,
        high_open=True,
    )
    bo_init: int = option(3, help="random points before the GP", source="prunekit", low=1)
    bo_iterations: int = option(
        10, help="expected-improvement steps per layer", source="prunekit", low=0
    )
    calib_batches: int = option(
        4, help=SHARED["calib_batches"], source="prunekit (the paper: a training subset)", low=1
    )
    epochs: int = option(
        1, help="epochs of in-parallel pruning-quantisation fine-tuning", source="prunekit", low=0
    )
    lr: float = option(0.01, help=SHARED["lr"], source="prunekit", low=0, low_open=True)
    momentum: float = option(
        0.9, help=SHARED["momentum"], source="prunekit (the usual SGD setting)", low=0, high=1
    )
    weight_decay: float = option(
        5e-4, help=SHARED["weight_decay"], source="prunekit (the usual CIFAR setting)", low=0
    )
    schedule: str = option("constant", help=SHARED["schedule"], source="prunekit")


@register_method("clip_q")
class ClipQ(Method):
    """CLIP-Q (Tung and Mori, CVPR 2018): per-layer clipping rate and bit width by Bayesian
    optimisation, then fine-tuning with clipping, linear partitioning and quantisation to the
    interval means in every forward pass; the result is written as a Deep Compression file.
    See the module docstring."""

    Options = ClipQOptions
    result_file: ClassVar[str] = "model.deepc"

    def __init__(self) -> None:
        super().__init__()
        self.theta: dict[str, dict[str, float]] = {}

    def write_result(self, model: nn.Module, path: Any, options: dict[str, Any]) -> None:
        """The model, its clipped and quantised values exactly, in the Deep Compression format."""
        save_deep_compressed(model, path)

    def _search(self, ctx: Context, opts: ClipQOptions, layers: dict[str, nn.Module]) -> dict:
        if opts.bits_low > opts.bits_high:
            raise ConfigError(
                f"bits_low ({opts.bits_low}) must not exceed bits_high ({opts.bits_high})"
            )
        cached = ctx.work_dir / "clip_q_search.json" if ctx.work_dir is not None else None
        if cached is not None and cached.exists():
            return json.loads(cached.read_text())
        model = ctx.model
        pruned = set(targets(model, self.id))
        batches = ctx.calibration()
        total = sum(m.weight.numel() for m in layers.values())
        bit_grid = np.arange(opts.bits_low, opts.bits_high + 1)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()

        @torch.no_grad()
        def error() -> float:
            wrong = seen = 0
            for x, y in batches:
                out = model(x.to(device))
                wrong += int((out.argmax(1) != y.to(device)).sum())
                seen += len(y)
            return wrong / max(seen, 1)

        result: dict[str, Any] = {}
        try:
            for k, (name, module) in enumerate(layers.items()):
                p_grid = (
                    np.round(np.linspace(0.0, opts.p_high, 21), 6)
                    if name in pruned
                    else np.zeros(1)
                )
                original = module.weight.detach().clone()

                def objective(
                    p: float, b: int, module: nn.Module = module, original: torch.Tensor = original
                ) -> float:
                    values, _ = clip_quantize(original, p, b)
                    with torch.no_grad():
                        module.weight.copy_(values)
                    try:
                        err = error()
                    finally:
                        with torch.no_grad():
                            module.weight.copy_(original)
                    benefit = compression_benefit(module.weight.numel(), total, p, b)
                    return err - opts.lambda_ * benefit

                p, b, history = bayes_opt(
                    objective,
                    p_grid,
                    bit_grid,
                    init=opts.bo_init,
                    iterations=opts.bo_iterations,
                    seed=ctx.seed + k,
                )
                result[name] = {"p": p, "bits": b, "evaluations": len(history)}
        finally:
            model.train(was_training)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(result, cached)
        return result

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        pruned = targets(model, self.id)
        layers = {weight_name(n): m for n, m in prunable_layers(model).items()}
        for name, module in layers.items():
            if parametrize.is_parametrized(module, "weight"):
                raise ConfigError(
                    f"clip_q expects plain weights; layer {name!r} already carries a "
                    "parametrization (masks of an earlier pruning): finalize it first"
                )
        searched = self._search(ctx, opts, layers)
        sizes = {n: layers[n].weight.numel() for n in pruned}
        count = round(covered_sparsity(model, target) * sum(sizes.values()))
        rates = scale_rates({n: searched[n]["p"] for n in pruned}, sizes, count, opts.p_high)
        self.theta = {
            n: {"p": rates.get(n, 0.0), "bits": int(searched[n]["bits"]), "searched_p": s["p"]}
            for n, s in searched.items()
        }
        for name, module in layers.items():
            theta = self.theta[name]
            parametrize.register_parametrization(
                module, "weight", ClipQuantize(theta["p"], int(theta["bits"]))
            )
        try:
            ctx.train(
                model,
                opts.epochs,
                opts.lr,
                name="clip_q",
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
                schedule=opts.schedule,
                progress=opts.progress,
            )
        finally:
            for module in layers.values():
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        with torch.no_grad():
            for name, module in layers.items():
                theta = self.theta[name]
                values, keep = clip_quantize(module.weight, theta["p"], int(theta["bits"]))
                share_values(module, values, keep, meta={"bits": int(theta["bits"])})
        return SparsityReport.measure(model, before)


__all__ = [
    "ClipQ",
    "ClipQuantize",
    "bayes_opt",
    "clip_mask",
    "clip_quantize",
    "compression_benefit",
    "expected_improvement",
    "partition",
    "scale_rates",
]
