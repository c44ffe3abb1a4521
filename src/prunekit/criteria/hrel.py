"""HRel: Sarvani, Ghorai, Dubey, Basha, "HRel: Filter pruning based on High Relevance between
activation maps and class labels" (Neural Networks 147, 2022).

A channel is relevant when its activation maps tell the classes apart. Relevance is the mutual
information between the channel's maps ``T`` and the labels ``Y`` over a batch of ``N`` images,
estimated with the matrix-based Rényi entropy of Gram matrices (Giraldo et al.; the estimator
of the official code, ``sarvanichinthapalli/HRel``, ``*/resnet_network.py``, taken from
Wickstrøm's information-plane code):

* ``K_T[n, m] = exp(-||t_n - t_m||^2 / sigma^2)``: the Gaussian Gram matrix of the channel's
  flattened maps of images ``n`` and ``m`` (``kernel_mat``);
* ``K_Y[n, m] = exp(-||y_n - y_m||^2 / 0.1^2)`` over one-hot labels: 1 for two images of the
  same class, ``exp(-200)`` otherwise (``k_y = kernel_mat(y, sigma=0.1)``);
* ``S(K) = -sum_i l_i log2 l_i`` over the eigenvalues ``l_i`` of ``K / tr(K)`` (``entropy``;
  α → 1), and the joint entropy is that of the Hadamard product ``K_T ∘ K_Y``;
* ``I(T; Y) = S(K_T) + S(K_Y) - S(K_T ∘ K_Y)`` (``compute_bounds``), averaged over batches.

The kernel width ``sigma`` is the layer's: the official code picks, for the whole layer output
(every channel's maps flattened together), the ``sigma`` of ``linspace(0.3, 10 * mean(d), 100)``
(``d``: the pairwise distances) that maximises the kernel alignment ``2 log2(tr(K K_Y) /
(||K||_F ||K_Y||_F))`` with ``K = exp(-d^2 / sigma^2) / N`` (``kernel_mat`` / ``kernel_loss``),
and uses it for every channel of that layer. Here the same search runs on every calibration
batch; the official code smooths the chosen width over its training iterations (an exponential
average, 0.9 / 0.1) and prunes with the last one.

The maps are those the next layer reads (:mod:`prunekit.criteria.activations`: after BatchNorm,
the nonlinearity and any pooling or residual addition); the official code hooks the conv
outputs themselves. A channel carried by several maps (a residual stage) scores the mean of
their relevances. Per-batch relevances are summed with their batch sizes and reduced over DDP
ranks, so every rank scores the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, Recorder, Tap, split_batch
from prunekit.errors import DataError

__all__ = [
    "HRel",
    "alignment_sigma",
    "gaussian_kernel",
    "label_kernel",
    "matrix_entropy",
    "mutual_information",
    "relevance",
]

LABEL_SIGMA = 0.1  # official */resnet_ex.py: kernel_mat(y, sigma=th.tensor(0.1))
SIGMA_GRID = (
    100  # official kernel_mat: linspace(0.3, 10 * d.mean(), 100) once training is past epoch 20
)
SIGMA_LOW = 0.3  # official kernel_mat: the grid starts at 0.3


def _sq_dists(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances of the rows of ``x`` (``... x N x P``)."""
    return torch.cdist(x, x).pow(2)


def gaussian_kernel(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """``exp(-||x_n - x_m||^2 / sigma^2)`` for the rows of ``x`` (``... x N x P``)."""
    return torch.exp(-_sq_dists(x.double()) / sigma**2)


def label_kernel(labels: torch.Tensor, sigma: float = LABEL_SIGMA) -> torch.Tensor:
    """The Gram matrix of one-hot labels: 1 for equal labels, ``exp(-2 / sigma^2)`` otherwise."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    other = math.exp(-2.0 / sigma**2)
    return torch.where(same, 1.0, other).double()


def matrix_entropy(k: torch.Tensor) -> torch.Tensor:
    """``-sum l log2 l`` over the eigenvalues of ``k / tr(k)`` (batched over leading dims)."""
    a = k / k.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    eig = torch.linalg.eigvalsh(a).clamp(min=0.0)
    return -torch.special.xlogy(eig, eig).sum(-1) / math.log(2.0)


def mutual_information(k_t: torch.Tensor, k_y: torch.Tensor) -> torch.Tensor:
    """``S(K_T) + S(K_Y) - S(K_T ∘ K_Y)`` (``k_t`` may be batched over leading dims)."""
    return matrix_entropy(k_t) + matrix_entropy(k_y) - matrix_entropy(k_t * k_y)


def alignment_sigma(x: torch.Tensor, k_y: torch.Tensor, grid: int = SIGMA_GRID) -> float:
    """The kernel width of ``linspace(0.3, 10 * mean distance, grid)`` whose Gram matrix of the
    rows of ``x`` (``N x P``) aligns best with ``k_y`` (0.3 when every row is equal)."""
    d2 = _sq_dists(x.double())
    top = 10.0 * float(d2.sqrt().mean())
    if not top > SIGMA_LOW:
        return SIGMA_LOW
    sigmas = torch.linspace(SIGMA_LOW, top, grid, dtype=torch.float64)
    k = torch.exp(-d2[None] / sigmas[:, None, None] ** 2) / x.shape[0]
    align = (k * k_y).sum((1, 2)) / (k.flatten(1).norm(dim=1) * k_y.norm())
    return float(sigmas[int(torch.argmax(align))])


def relevance(maps: torch.Tensor, labels: torch.Tensor, grid: int = SIGMA_GRID) -> torch.Tensor:
    """``I(T_u; Y)`` for each unit ``u`` of ``maps`` (``N x U x ...``) over one batch, with the
    kernel width the whole tensor aligns best with the labels."""
    n, u = maps.shape[:2]
    flat = maps.reshape(n, u, -1).double()
    k_y = label_kernel(labels.to(flat.device)).to(flat.device)
    sigma = alignment_sigma(flat.reshape(n, -1), k_y, grid)
    k_t = gaussian_kernel(flat.transpose(0, 1), sigma)  # U x N x N
    return mutual_information(k_t, k_y)


class HRel(ActivationCriterion):
    """Mean relevance ``I(T; Y)`` per channel of the map the next layer reads, over labelled
    calibration batches (higher = keep). ``batches``: ``(x, y)`` pairs with class labels (at
    least one; two or more images each). ``model``: what they run through (default: the graph's
    model). ``grid``: kernel widths tried per batch."""

    name = "HRel"

    def __init__(
        self,
        batches: Iterable[Any],
        model: nn.Module | None = None,
        *,
        max_batches: int | None = None,
        grid: int = SIGMA_GRID,
    ) -> None:
        super().__init__(batches, model=model, max_batches=max_batches)
        self.grid = grid

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        """Relevance per unit of each tapped map, each batch weighted by its size."""
        current: dict[str, torch.Tensor] = {}

        def stat(maps: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
            rel = relevance(maps, current["y"], self.grid)
            return rel[None, :].expand(maps.shape[0], -1)

        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
        modes = {m: m.training for m in model.modules()}
        try:
            with Recorder(model, taps, stat, grad=False) as rec, torch.no_grad():
                model.eval()
                for batch in itertools.islice(self.batches, self.max_batches):
                    x, y = split_batch(batch)
                    if not isinstance(y, torch.Tensor) or y.is_floating_point():
                        raise DataError(
                            "HRel needs calibration batches of (inputs, class labels); "
                            f"got labels {type(y).__name__}"
                        )
                    if y.numel() < 2:
                        raise DataError("HRel needs batches of two or more labelled images")
                    current["y"] = y.reshape(-1)
                    model(x.to(device))
        finally:
            for m, mode in modes.items():
                m.train(mode)
        return rec.means()
