"""Low-complexity modified ThiNet — Tofigh, Ahmad, Swamy, "A Low-Complexity Modified ThiNet
Algorithm for Pruning Convolutional Neural Networks" (IEEE Signal Processing Letters 29, 2022;
listed among the ICIP 2022 papers).

ThiNet (:mod:`prunekit.methods.thinet`) removes, greedily, the input channel ``c`` of the
consumer that minimises ``f_T(c) = sum_i (r_i + x̂_ic)^2`` over the sampled outputs ``i``, where
``r_i = sum_{j in T} x̂_ij`` is the running sum of the channels removed so far. Evaluating it
costs ``O(n)`` per candidate (``n`` samples, 10 per image), ``O(n C)`` per step and ``O(n C R)``
for ``R`` removals out of ``C`` channels. The modified algorithm evaluates the same objective
through a cheaper, equivalent criterion:

1. Sample the contributions ``x̂`` exactly as ThiNet (same locations, same output channels)
   and form once the ``C x C`` Gram matrix ``G = x̂ᵀ x̂`` (``O(n C²)``).
2. Since ``f_T(c) = sum_i r_i² + 2 sum_{j in T} G_jc + G_cc`` and the first term is the same
   for every candidate, each greedy step adds the channel minimising
   ``g_T(c) = 2 s_c + G_cc`` with ``s = sum_{j in T} G_j·`` kept up to date (``O(C)`` per
   step): the same selection as ThiNet at ``O(C)`` instead of ``O(n C)`` per step, without
   touching the samples again.
3. The kept channels are rescaled by ThiNet's least squares, unchanged (solved on the samples,
   not through ``G``: normal equations would square the condition number).

Everything else (chains, one uniform rate over the chains meeting the target, forward order,
zeroing then one removal, sampling from ``ctx.calibration()``) is ThiNet's driver in
:mod:`prunekit.methods.reconstruct`, with its deviations.

Defaults: ``samples_per_image=10`` (ThiNet, experiments); ``rescale=True`` (ThiNet's scales).

Deviation to know: the letter's text was not available while writing this module; the
computation follows the catalogue's description (ThiNet's greedy selection with a cheaper
criterion) as the equivalent Gram-matrix form above, and the tests check that it selects what
ThiNet selects.
"""

from __future__ import annotations

import math

import torch

from prunekit.errors import ConfigError
from prunekit.methods.base import register_method
from prunekit.methods.thinet import ThiNet


def gram_greedy(gram: torch.Tensor, n_remove: int) -> list[int]:
    """ThiNet's greedy removal from the Gram matrix ``G = x̂ᵀ x̂`` of the contributions
    (``C x C``): each step adds the channel minimising ``2 sum_{j in T} G_jc + G_cc``; ties go
    to the lower index. Returns the removed channels in the order chosen."""
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ConfigError(f"the Gram matrix must be square, got {tuple(gram.shape)}")
    channels = gram.shape[0]
    if not 0 <= n_remove <= channels:
        raise ConfigError(f"n_remove must be in [0, {channels}], got {n_remove}")
    gram = gram.double()
    cross = torch.zeros(channels, dtype=torch.float64, device=gram.device)
    diag = gram.diagonal()
    free = torch.ones(channels, dtype=torch.bool, device=gram.device)
    removed: list[int] = []
    for _ in range(n_remove):
        cost = 2 * cross + diag
        cost[~free] = math.inf
        c = int(torch.argmin(cost))
        removed.append(c)
        free[c] = False
        cross += gram[c]
    return removed


def lc_greedy(contrib: torch.Tensor, n_remove: int) -> list[int]:
    """The greedy removal on ``samples x channels`` contributions through their Gram matrix."""
    if contrib.dim() != 2:
        raise ConfigError(f"contributions must be samples x channels, got {tuple(contrib.shape)}")
    c = contrib.double()
    return gram_greedy(c.T @ c, n_remove)


@register_method("thinet_lc")
class ThiNetLC(ThiNet):
    """Low-complexity modified ThiNet (Tofigh, Ahmad, Swamy, 2022): ThiNet's greedy channel
    selection and least-squares rescale, with the greedy criterion evaluated from the Gram
    matrix of the sampled contributions (``O(C)`` per step instead of ``O(n C)``); same
    options and driver as ThiNet. See the module docstring."""

    greedy = staticmethod(lc_greedy)


__all__ = ["ThiNetLC", "gram_greedy", "lc_greedy"]
