"""Channel pruning by LASSO — He, Zhang, Sun, "Channel Pruning for Accelerating Very Deep
Neural Networks" (ICCV 2017). Sample ``N`` locations of the consumer (10 per image, option
``samples_per_image``): the input patches ``X`` (``N x C x k``), taken from the model as pruned
so far, and the full output vectors ``Y`` (``N x out``, bias removed), taken from the
*original* model before any pruning, which limits the accumulation of error over layers as in
the paper. With ``Z_c = X_c W_c^T`` (the contribution of channel ``c`` to every output), the
channel coefficients solve the LASSO ``beta = argmin ||Y - sum_c beta_c Z_c||_F^2 + alpha
||beta||_1`` (scikit-learn's :func:`~sklearn.linear_model.lasso_path` and
:class:`~sklearn.linear_model.Lasso`, no intercept). ``alpha`` grows until at most the kept
number of channels is non-zero; the rule used (see :func:`lasso_select`): the largest ``alpha``
whose solution still has at least ``keep`` non-zeros (a geometric grid of 60 values from the
smallest ``alpha`` that zeroes everything down to 1e-6 of it, refined by bisection between the
two grid points that bracket ``keep``), keeping its ``keep`` largest ``|beta_c|`` (ties: lower
index). Then the kept weights are refitted by least squares, ``W' = argmin ||Y - X_kept
W'^T||_F^2`` (:func:`torch.linalg.lstsq`), and written into the consumer. The paper folds
``beta`` into ``W``; the least-squares solution subsumes that scaling. The paper samples 10
locations per image from 5000 ImageNet images; here the calibration batches
(``calib_batches`` x ``batch_size`` images, 4 x 64 by default) with ``samples_per_image``
(10) each. The refit has ``K * k`` unknowns per output; the calibration set should give well
more samples than that.


Deviations of this method:

* **LASSO solved on the Gram matrix.** The stacked problem has ``N * out`` rows; it is replaced
  by an exactly equivalent one with at most ``C`` rows (``G = A^T A = V Λ V^T``, rows
  ``Λ^{1/2} V^T`` and target ``Λ^{-1/2} V^T A^T y``), whose residual differs from the stacked one
  by a constant. scikit-learn divides the squared error by the number of rows, so ``alpha`` is on
  that problem's scale; only the order of the non-zeros along the path matters for the rule.
  The paper's formulation alternates the LASSO and least-squares steps; one pass (LASSO to the
  target width, then one least-squares step) runs here.
* If the LASSO never reaches ``keep`` non-zeros (channels that are always zero), the remaining
  places go to the channels with the largest energy ``||Z_c||`` after the non-zero ones.

The chain budget, the order, the removal and the deviations shared with ThiNet are in
:mod:`prunekit.methods.reconstruct`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, lasso_path
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.base import register_method
from prunekit.methods.common import Chain
from prunekit.methods.reconstruct import (
    ReconstructionMethod,
    all_ranks,
    as_rows,
    draw_locations,
    forward_with_hooks,
    input_patches,
    least_squares_weights,
    pre_bias,
    rcond_for,
    unit_patches,
    unit_weight,
)

LASSO_GRID = 60  # geometric grid of alphas along the LASSO path
LASSO_RANGE = 1e-6  # smallest alpha on the grid, relative to the one that zeroes everything
LASSO_BISECTIONS = 30


def _design(
    x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix ``G = A^T A`` and ``A^T y`` of the stacked LASSO design whose
    column ``c`` is ``vec(Z_c)``, ``Z_c = X_c W_c^T`` (computed in chunks of samples)."""
    n, c, _ = x.shape
    out = weight.shape[0]
    gram = torch.zeros(c, c, dtype=torch.float64)
    cross = torch.zeros(c, dtype=torch.float64)
    step = max(1, 2**22 // max(1, c * out))
    for s in range(0, n, step):
        z = torch.einsum("nck,ock->nco", x[s : s + step], weight)
        gram += torch.einsum("nco,ndo->cd", z, z)
        cross += torch.einsum("nco,no->c", z, y[s : s + step])
    return gram, cross


def lasso_select(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` channels chosen by the LASSO on channel coefficients ``beta``, sorted.

    ``x``: sampled input patches, ``samples x C x k``; ``weight``: the consumer's weight as
    ``out x C x k``; ``y``: the target outputs, ``samples x out``. Minimises ``||y - sum_c beta_c
    X_c W_c^T||^2 + alpha |beta|_1``; the rule for ``alpha`` is in the module docstring.
    """
    x, weight, y = x.double().cpu(), weight.double().cpu(), y.double().cpu()
    channels = x.shape[1]
    if not 1 <= keep <= channels:
        raise ConfigError(f"keep must be in [1, {channels}], got {keep}")
    if keep == channels:
        return list(range(channels))
    gram, cross = _design(x, weight, y)
    energy = torch.diagonal(gram).clone()
    lam, vec = torch.linalg.eigh(gram)
    top = float(lam.max()) if lam.numel() else 0.0
    ok = lam > max(top, 0.0) * channels * torch.finfo(torch.float64).eps
    root = lam[ok].sqrt()
    rows = (vec[:, ok] * root).T.numpy()  # rows^T rows = gram
    target = ((vec[:, ok].T @ cross) / root).numpy()  # rows^T target = cross
    beta = np.zeros(channels)
    n_rows = max(1, rows.shape[0])
    alpha_max = float(np.abs(rows.T @ target).max()) / n_rows if rows.shape[0] else 0.0
    if alpha_max > 0:
        beta = _lasso_beta(rows, target, keep, alpha_max)
    mag = np.abs(beta)
    order = sorted(range(channels), key=lambda c: (-mag[c], -float(energy[c]), c))
    return sorted(order[:keep])


def _lasso_beta(rows: np.ndarray, target: np.ndarray, keep: int, alpha_max: float) -> np.ndarray:
    """``beta`` at the largest alpha with at least ``keep`` non-zeros (or the smallest alpha
    tried, if none reaches ``keep``)."""
    grid = alpha_max * np.logspace(0, math.log10(LASSO_RANGE), LASSO_GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = lasso_path(rows, target, alphas=grid, max_iter=10000, tol=1e-8)
        nnz = (coefs != 0).sum(0)
        hits = np.nonzero(nnz >= keep)[0]
        if not len(hits):
            return coefs[:, -1]
        i = int(hits[0])
        beta = coefs[:, i]
        if nnz[i] == keep or i == 0:
            return beta
        lo, hi = grid[i], grid[i - 1]  # lo: >= keep non-zeros; hi: fewer
        model = Lasso(fit_intercept=False, max_iter=10000, tol=1e-8, warm_start=True)
        model.coef_ = beta.copy()
        for _ in range(LASSO_BISECTIONS):
            mid = math.sqrt(lo * hi)
            model.set_params(alpha=mid)
            model.fit(rows, target)
            count = int((model.coef_ != 0).sum())
            if count >= keep:
                lo, beta = mid, model.coef_.copy()
                if count == keep:
                    break
            else:
                hi = mid
    return beta


@register_method("lasso_channel")
class ChannelPruningLasso(ReconstructionMethod):
    """Channel pruning (He, Zhang, Sun, ICCV 2017): per chain, a LASSO on per-channel
    coefficients selects the consumer's input channels that reconstruct the original model's
    sampled outputs, then least squares refits the kept weights. 10 sampled locations per
    calibration image (option ``samples_per_image``); inputs from the model pruned so far,
    targets from the original; one uniform rate over the chains meets the target. See the module
    docstring for the alpha rule, the details and deviations."""

    def refit_chains(
        self,
        model: nn.Module,
        found: list[Chain],
        counts: dict[str, int],
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        opts: dict[str, Any],
        picks: dict[str, list[int]],
    ) -> None:
        todo = [c for c in found if counts[c.group.name]]
        per_image = opts["samples_per_image"]
        positions: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(todo))}
        targets: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(todo))}

        def original(i: int, module: nn.Module) -> Callable[..., None]:
            def take(_: int, x: torch.Tensor, out: torch.Tensor) -> None:
                rows = as_rows(module, out)
                pos = draw_locations(g, rows.shape[0], rows.shape[1], per_image)
                positions[i].append(pos)
                picked = rows[
                    torch.arange(rows.shape[0], device=rows.device)[:, None], pos.to(rows.device)
                ]
                targets[i].append(pre_bias(module, picked).reshape(-1, rows.shape[2]).cpu())

            return take

        # the targets: every consumer's output in the original model, before any change
        forward_with_hooks(
            model,
            batches,
            {c.consumer.module: original(i, c.consumer.module) for i, c in enumerate(todo)},
        )
        for i, chain in enumerate(todo):
            module = chain.consumer.module
            patches = input_patches(model, module, batches, positions[i])
            x, y = all_ranks(unit_patches(chain, patches), torch.cat(targets[i]).double())
            weight = unit_weight(chain).double().cpu()
            keep = chain.group.size - counts[chain.group.name]
            kept = lasso_select(x, weight, y, keep)
            removed = [u for u in range(chain.group.size) if u not in set(kept)]
            new_weight = None
            if opts["rescale"]:
                rcond = rcond_for(module.weight.dtype)
                new_weight = least_squares_weights(x[:, kept], y, rcond)
            self.apply_choice(chain, removed, new_weight)
            picks[chain.group.name] = removed


__all__ = ["ChannelPruningLasso", "lasso_select"]
