"""How much a channel's feature maps carry: their entropy (FMI) or the share of their spectrum's
energy outside the low-frequency zone (EZCrop).

Both read the map the next layer reads (:mod:`prunekit.criteria.activations`: after the
nonlinearity, the pooling, the residual addition), average one number per image and channel over
calibration images (sums reduced over DDP ranks), and keep the channels that score high.

* :func:`map_entropy` ("Filter Pruning via Measuring Feature Map Information", Sensors 2021):
  the values of one channel's map for one image are put into ``bins`` equal-width bins between
  the map's minimum and maximum; with ``p_k`` the fraction of values in bin ``k`` the entropy is
  ``H = -sum_k p_k log2 p_k`` (0 for a constant map, ``log2 bins`` at most). A channel whose map
  is one number per image (a Linear layer's input after global pooling) has no spatial
  distribution: its entropy is taken over the batch's values instead.
  :class:`FeatureEntropy` averages ``H`` over images and, with ``normalize``, divides each
  layer's (group's) entropies by their maximum so layers compare (the paper's normalisation for
  a cross-layer ranking).
* :func:`energy_zone_ratio` (EZCrop, WACV 2022; official ``SelectedEnergyRatio.py``): the 2-D
  FFT of the map, its magnitude compressed as ``log(1 + |F|)``, shifted so the zero frequency
  sits at the centre ``c = n // 2`` of each dimension; the low-frequency zone is the square of
  half-width ``step = min_d ceil((n_d - c_d - 1) * alpha)`` around it (``step = 0``, the zero
  frequency alone, when a dimension has ``c_d = 1``: maps of side 2 or 3); the score is
  ``1 - E_zone / E_total`` (0 for an all-zero map). A 1-D map (a Conv1d's input, the positions a
  flatten gives a channel) uses the 1-D FFT and the same rule on its one dimension; a single
  number per image has only the zero frequency and scores 0.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, Tap, collect

__all__ = [
    "EnergyZone",
    "FeatureEntropy",
    "energy_zone_ratio",
    "entropy_of_rows",
    "map_entropy",
    "zone_step",
]


# ------------------------------------------------------------------------------ entropy
def entropy_of_rows(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Entropy in bits of the histogram of each row of ``x`` (``bins`` equal bins between the
    row's minimum and maximum): ``(rows, values)`` -> ``(rows,)``."""
    x = x.to(torch.float64)
    lo = x.min(dim=1, keepdim=True).values
    span = x.max(dim=1, keepdim=True).values - lo
    scaled = (x - lo) / span.clamp_min(torch.finfo(torch.float64).tiny)
    idx = (scaled * bins).floor().clamp(0, bins - 1).long()
    idx[(span == 0).expand_as(idx)] = 0  # a constant row: one bin
    counts = torch.zeros(x.shape[0], bins, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, idx, torch.ones_like(x))
    p = counts / x.shape[1]
    return -(p * torch.log2(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)


def map_entropy(
    maps: torch.Tensor, grad: torch.Tensor | None = None, *, bins: int = 16
) -> torch.Tensor:
    """``(N, U, ...)`` maps -> ``(N, U)`` entropies of each map's value histogram (a
    :data:`~prunekit.criteria.activations.Stat`); one value per map: the entropy over the batch,
    repeated for every image."""
    n, u = maps.shape[:2]
    flat = maps.reshape(n, u, -1)
    if flat.shape[2] == 1:
        return entropy_of_rows(flat[:, :, 0].T, bins).expand(n, u)
    return entropy_of_rows(flat.reshape(n * u, -1), bins).reshape(n, u)


class FeatureEntropy(ActivationCriterion):
    """Mean entropy of each channel's feature map (the one the next layer reads) over
    calibration images; with ``normalize`` divided by the group's largest (higher = keep)."""

    name = "feature-map entropy"

    def __init__(
        self,
        batches: Iterable[Any],
        model: nn.Module | None = None,
        *,
        bins: int = 16,
        normalize: bool = True,
        max_batches: int | None = None,
    ) -> None:
        if bins < 2:
            raise ValueError(f"bins must be at least 2, got {bins}")
        super().__init__(batches, model=model, max_batches=max_batches)
        self.bins = bins
        self.normalize = normalize

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        stat = functools.partial(map_entropy, bins=self.bins)
        return collect(model, taps, self.batches, stat, max_batches=self.max_batches)

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return values
        top = float(values.max()) if values.numel() else 0.0
        return values / top if top > 0 else values


# ------------------------------------------------------------------------------ energy zone
def zone_step(sizes: tuple[int, ...], alpha: float) -> int:
    """Half-width of the low-frequency zone of a shifted spectrum of ``sizes`` (official
    ``StepDecision``: 0 when a dimension's centre is 1, else the smallest
    ``ceil((n - c - 1) * alpha)``); dimensions of size 1 are ignored."""
    dims = [n for n in sizes if n > 1]
    if not dims or any(n // 2 == 1 for n in dims):
        return 0
    return min(math.ceil((n - n // 2 - 1) * alpha) for n in dims)


def energy_zone_ratio(
    maps: torch.Tensor, grad: torch.Tensor | None = None, *, alpha: float = 0.25
) -> torch.Tensor:
    """``(N, U, ...)`` maps -> ``(N, U)``: the share of ``log(1 + |FFT|)`` outside the
    low-frequency zone (a :data:`~prunekit.criteria.activations.Stat`). The FFT runs over the
    last two dimensions (the last one for a 1-D map); other dimensions are averaged."""
    n, u = maps.shape[:2]
    if maps.dim() == 2:
        return torch.zeros(n, u, dtype=torch.float64)
    x = maps.to(torch.float64)
    dims = (-2, -1) if x.dim() >= 4 else (-1,)
    mag = torch.log1p(torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims).abs())
    sizes = tuple(x.shape[d] for d in dims)
    step = zone_step(sizes, alpha)
    zone = mag
    for d, size in zip(dims, sizes, strict=True):
        if size > 1:
            c = size // 2
            zone = zone.narrow(d, c - step, 2 * step + 1)
    total = mag.sum(dim=dims)
    inner = zone.sum(dim=dims)
    ratio = torch.where(total > 0, 1.0 - inner / total.clamp_min(1e-300), torch.zeros_like(total))
    return ratio.reshape(n, u, -1).mean(dim=2)


class EnergyZone(ActivationCriterion):
    """EZCrop: mean over calibration images of each channel's spectral energy share outside the
    low-frequency zone, on the map the next layer reads (higher = keep)."""

    name = "EZCrop energy zone"

    def __init__(
        self,
        batches: Iterable[Any],
        model: nn.Module | None = None,
        *,
        alpha: float = 0.25,
        max_batches: int | None = None,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        super().__init__(batches, model=model, max_batches=max_batches)
        self.alpha = alpha

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        stat = functools.partial(energy_zone_ratio, alpha=self.alpha)
        return collect(model, taps, self.batches, stat, max_batches=self.max_batches)
