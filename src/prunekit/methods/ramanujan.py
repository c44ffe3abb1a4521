"""Hoang, Liu, Marculescu, Wang, "Revisiting Pruning at Initialization Through the Lens of
Ramanujan Graph", ICLR 2023 (official code: ``VITA-Group/ramanujan-on-pai``).

Each conv / Linear layer's mask is read as a bipartite graph: its left nodes are the layer's
inputs (``c_in/groups * kh * kw`` for a conv: the weight reshaped to ``(c_out, -1)``, as the
official ``lib/graphs/generate_unstructured_bipartie_graphs.py``), its right nodes its outputs,
and every kept weight an edge. A sparse graph that is still well connected is an expander; a
Ramanujan graph is the extreme one. The algorithm, top to bottom:

1. **Initialise.** Pruning at initialisation: the given (trained) weights are discarded and the
   model is re-initialised as its architecture initialises it
   (:func:`prunekit.methods.initialisation.reinitialise`, under the run's seed); the pruned
   network is then trained from there: the report says ``at_initialisation``, and the runner
   trains it with the baseline's schedule, then gives it the common fine-tuning. Results say so
   (``at_initialisation``, ``scratch_epochs``, ``acc_scratch``).
2. **Layer densities.** Erdős–Rényi-Kernel densities over the pruned layers
   (:func:`prunekit.masks.erk_densities`; the official ``main.py`` defaults to ``--prune ERK``) or
   one density for all (``allocation="uniform"``), meeting the overall target.
3. **Candidates.** For every layer, ``candidates`` random masks at its density (exactly
   ``round(density * size)`` edges each, seeded by the run's seed).
4. **Judge.** For each candidate graph (nodes without an edge dropped,
   ``scores.py: filter_zero_degree``), with ``d_l``, ``d_r`` the mean left / right degrees and
   ``lambda_1 >= mu`` the two largest singular values of its biadjacency matrix (the adjacency
   matrix of a bipartite graph has eigenvalues ``+-sigma_i``, so ``mu`` is the largest
   non-trivial eigenvalue, ``scores.py``'s third largest ``|eig|``):

   * the Ramanujan gap ``Delta_r = sqrt(d_l - 1) + sqrt(d_r - 1) - mu`` (``delta_r``); the graph
     has the Ramanujan property when ``Delta_r >= 0``;
   * the spectral gap ``Delta_s = 2 sqrt(lambda_1 - 1) - mu`` (``delta_s``);
   * IMDB, the paper's Iterative Mean Difference of Bound: ``Delta_r`` averaged over the
     ``d``-left-regular subgraphs (the left nodes of one degree ``d`` with every right node),
     for each degree shared by at least 3 left nodes (``iterative_mean_spectral_gap``,
     ``find_d_left_regular``).

   A graph whose mean left or right degree is below 3 is not scored (``ramanujan_score``).
5. **Choose.** Per layer, the candidate with the largest ``criterion`` is kept
   (``lib/graphs/sample_ramnujan_masks.py`` ranks each layer's masks by its score, largest
   first); unscored candidates rank last, ties go to the first drawn.
6. **Report.** :attr:`RamanujanPruning.layers` holds, per layer, the chosen mask's ``d_l``,
   ``d_r``, ``lambda_1``, ``mu``, the bound, both gaps, IMDB, whether it is Ramanujan and every
   candidate's score; :func:`judge` gives the same figures for the masks on any model (those of
   another pruning-at-init method, say).

Defaults and their sources: ``criterion = "ramanujan_gap"``: ``sample_ramnujan_masks.py`` ranks
by ``rm`` (``Delta_r``) and ``sm`` (``Delta_s``); ``allocation = "erk"``: official ``main.py``
(``--prune ERK``); ``candidates = 8``: prunekit (the official script ranks a pool of saved masks).

Deviations: the weighted variants (edge weights ``|w|``) are not offered; a grouped conv's graph
joins each output to its own group's inputs only by position, as the official reshape does;
protected layers stay dense (the others are pruned a little further to meet the overall target).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.io import PathLike, atomic_write_json
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    share_of_targets,
    stored_weight,
    target_sparsity,
    targets,
)
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import Options, option

MIN_DEGREE = 3  # scores.py ramanujan_score / find_d_left_regular
CRITERIA = ("ramanujan_gap", "spectral_gap", "imdb")


@dataclass(frozen=True)
class GraphScore:
    """The spectral figures of one bipartite graph (see the module docstring, step 4)."""

    d_left: float
    d_right: float
    lambda_1: float
    mu: float

    @property
    def bound(self) -> float:
        """``sqrt(d_l - 1) + sqrt(d_r - 1)``: the Ramanujan bound on ``mu``."""
        return math.sqrt(self.d_left - 1) + math.sqrt(self.d_right - 1)

    @property
    def ramanujan_gap(self) -> float:
        return self.bound - self.mu

    @property
    def spectral_gap(self) -> float:
        return 2 * math.sqrt(self.lambda_1 - 1) - self.mu

    @property
    def ramanujan(self) -> bool:
        return self.ramanujan_gap >= 0


def biadjacency(mask: torch.Tensor) -> torch.Tensor:
    """The layer's graph as a float64 ``(outputs, inputs)`` 0/1 matrix (a conv mask reshaped
    to ``(c_out, -1)``)."""
    return (mask.reshape(mask.shape[0], -1) != 0).double().cpu()


def graph_score(b: torch.Tensor) -> GraphScore | None:
    """:class:`GraphScore` of the bipartite graph with biadjacency ``b`` (outputs x inputs),
    nodes without an edge dropped; None when the mean left or right degree is below 3."""
    b = b[b.sum(1) > 0][:, b.sum(0) > 0]
    if b.numel() == 0:
        return None
    d_left, d_right = float(b.sum(0).mean()), float(b.sum(1).mean())
    if d_left < MIN_DEGREE or d_right < MIN_DEGREE:
        return None
    sigma = torch.linalg.svdvals(b)
    mu = float(sigma[1]) if sigma.numel() > 1 else 0.0
    return GraphScore(d_left, d_right, float(sigma[0]), mu)


def imdb(b: torch.Tensor) -> float | None:
    """Iterative Mean Difference of Bound: the mean Ramanujan gap of the ``d``-left-regular
    subgraphs of ``b`` (left nodes of one degree ``d``, shared by at least 3 of them, with all
    right nodes); None when none of them can be scored."""
    degrees = b.sum(0)
    gaps = []
    for d, count in Counter(degrees.tolist()).items():
        if d == 0 or count < MIN_DEGREE:
            continue
        score = graph_score(b[:, degrees == d])
        if score is not None:
            gaps.append(score.ramanujan_gap)
    return sum(gaps) / len(gaps) if gaps else None


def criterion_value(b: torch.Tensor, criterion: str) -> float | None:
    """The score ``criterion`` (one of :data:`CRITERIA`) of the graph ``b``; None if unscored."""
    if criterion == "imdb":
        return imdb(b)
    score = graph_score(b)
    return None if score is None else getattr(score, criterion)


def choose(candidates: list[torch.Tensor], criterion: str) -> tuple[int, list[float | None]]:
    """The index of the candidate mask with the largest ``criterion`` (unscored ones last, the
    first of equals) and every candidate's score."""
    scores = [criterion_value(biadjacency(c), criterion) for c in candidates]
    best = max(range(len(candidates)), key=lambda i: (scores[i] is not None, scores[i] or 0, -i))
    return best, scores


def random_mask(shape: torch.Size, keep: int, generator: torch.Generator) -> torch.Tensor:
    """A bool mask of ``shape`` with exactly ``keep`` True entries, uniformly placed."""
    flat = torch.zeros(math.prod(shape), dtype=torch.bool)
    flat[torch.randperm(flat.numel(), generator=generator)[:keep]] = True
    return flat.reshape(shape)


def layer_report(mask: torch.Tensor) -> dict[str, Any]:
    """The Ramanujan figures of one layer's mask (None where the graph cannot be scored)."""
    b = biadjacency(mask)
    score = graph_score(b)
    row: dict[str, Any] = {"density": float(b.mean()), "imdb": imdb(b)}
    if score is None:
        row.update(dict.fromkeys(("d_left", "d_right", "lambda_1", "mu", "bound"), None))
        row.update(ramanujan_gap=None, spectral_gap=None, ramanujan=None)
    else:
        row.update(asdict(score), bound=score.bound, ramanujan_gap=score.ramanujan_gap)
        row.update(spectral_gap=score.spectral_gap, ramanujan=score.ramanujan)
    return row


def judge(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per masked conv / Linear weight of ``model``: :func:`layer_report` of its mask (any
    method's masks, or a dense layer's all-ones graph where a layer has none)."""
    current = masks.get_masks(model)
    out = {}
    for name, module in targets(model, "ramanujan").items():
        mask = current[name].data if name in current else torch.ones_like(stored_weight(module))
        out[name] = layer_report(mask)
    return out


@dataclass(frozen=True)
class RamanujanOptions(Options):
    criterion: str = option(
        "ramanujan_gap",
        help="how a layer's candidate graphs are ranked (largest kept): ramanujan_gap "
        "(Delta_r), spectral_gap (Delta_s) or imdb (mean Delta_r of d-left-regular subgraphs)",
        source="official lib/graphs/sample_ramnujan_masks.py (ranks by rm and sm); IMDB: "
        "paper abstract and lib/graphs/scores.py iterative_mean_spectral_gap",
        choices=CRITERIA,
    )
    candidates: int = option(
        8,
        help="random masks drawn per layer, the best one kept",
        source="prunekit (the official script ranks a pool of saved masks)",
        low=1,
    )
    allocation: str = option(
        "erk",
        help="per-layer densities: erk (Erdős–Rényi-Kernel) or uniform",
        source="official main.py (--prune ERK)",
        choices=("erk", "uniform"),
    )


@register_method("ramanujan")
class RamanujanPruning(Method):
    """Hoang et al. (ICLR 2023): at the architecture's initialisation, per layer, the random
    mask whose bipartite graph has the largest Ramanujan gap among ``candidates``; the
    Ramanujan property of every layer is reported. See the module docstring."""

    Options = RamanujanOptions

    def __init__(self) -> None:
        self.at_initialisation = True
        self.layers: dict[str, dict[str, Any]] = {}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError("ramanujan prunes a dense model; this model already carries masks")
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        reinitialise(model, ctx.seed)
        shapes = {n: stored_weight(m).shape for n, m in layers.items()}
        if opts.allocation == "erk":
            densities = masks.erk_densities(shapes, share)
        else:
            densities = dict.fromkeys(shapes, 1.0 - share)
        g = torch.Generator().manual_seed(ctx.seed)
        chosen: dict[str, masks.Mask] = {}
        self.layers = {}
        for name, shape in shapes.items():
            keep = max(1, round(densities[name] * math.prod(shape)))
            drawn = [random_mask(shape, keep, g) for _ in range(opts.candidates)]
            best, scores = choose(drawn, opts.criterion)
            device = stored_weight(layers[name]).device
            chosen[name] = masks.Mask(drawn[best].to(device))
            self.layers[name] = {
                **layer_report(drawn[best]),
                "chosen": best,
                "candidate_scores": scores,
            }
        masks.apply_masks(model, chosen)
        report = SparsityReport.measure(model, before)
        report.at_initialisation = True  # the runner trains it with the baseline's schedule
        return report

    def save_layers(self, path: PathLike) -> None:
        """Write :attr:`layers` (the per-layer Ramanujan report) as JSON, atomically."""
        atomic_write_json({"method": self.id, "layers": self.layers}, path)


__all__ = [
    "CRITERIA",
    "GraphScore",
    "RamanujanOptions",
    "RamanujanPruning",
    "biadjacency",
    "choose",
    "graph_score",
    "imdb",
    "judge",
    "layer_report",
    "random_mask",
]
