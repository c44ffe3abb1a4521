"""EPruner — Lin, Ji, Li, Deng, Wang, Tian, "Network Pruning Using Adaptive Exemplar Filters"
(IEEE TNNLS 2022).

The paper's algorithm, per layer with filters ``F_1 .. F_n`` (each flattened to a row):

1. Similarity of two filters ``s(i, k) = -||F_i - F_k||^2``.
2. Preference (how much a filter wants to be an exemplar) ``s(k, k) = beta * median_i s(i, k)``
   (official ``utils/common.py``, ``cluster_weight``: ``np.median(affinity, axis=0) * beta``).
3. Affinity propagation exchanges responsibilities ``r(i, k)`` and availabilities ``a(i, k)``
   until the exemplars are stable; here scikit-learn's :class:`~sklearn.cluster.AffinityPropagation`
   with the official code's settings (its defaults: ``damping=0.5``, ``max_iter=200``,
   ``convergence_iter=15``).
4. The exemplars stay and every other filter goes: the number of exemplars *is* the layer's
   width. The next layer keeps the input channels of the exemplars (the official
   ``--init_method centroids`` with ``direct_project``); the kept filters keep their weights.
5. Fine-tune (the runner's fine-tuning, shared by every method).

Layers: the chains of the model (:func:`prunekit.methods.common.chains`): the official code
clusters the first conv of every residual block (``cluster_resnet``) and every conv of VGG, the
layers whose outputs one next layer reads.

Meeting a FLOPs or params target. The paper picks ``beta`` by hand (official default
``--preference_beta 0.45``) and reports whatever FLOPs result; a run here has a target, so
``beta`` is tuned: a geometric bisection over ``[beta_low, beta_high]``
(:func:`~prunekit.methods.common.tune_knob`; a larger ``beta`` lowers every preference, so fewer
exemplars survive) finds the ``beta`` whose exemplar widths come nearest the target. Its widths
rarely land within 1% of it (each ``beta`` gives whole clusters), so the last gap is closed at
the same proportions: every chain loses a share of its channels proportional to the fraction
affinity propagation removed from it (:func:`~prunekit.methods.common.select_at_proportions`),
the non-exemplars first (nearest their exemplar first), then, if the target needs more, the
exemplars of the smallest clusters. Chains where every filter is its own exemplar keep all,
unless the target cannot be met within 1% without them (then they lose channels last).

Deviations: if affinity propagation does not converge (scikit-learn then returns no exemplar),
it is run once more with ``damping=0.9`` and ten times the iterations; if it still fails, the
layer keeps every filter at that ``beta``. scikit-learn's tie-breaking noise is seeded by the
run's seed, so every run and every DDP rank (same weights, same seed) finds the same exemplars.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import AffinityPropagation
from sklearn.exceptions import ConvergenceWarning

from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.graph.core import out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import (
    Chain,
    chains,
    eval_modes,
    restore_modes,
    select_at_proportions,
    tune_knob,
)
from prunekit.methods.options import Options, option
from prunekit.prune import PruneReport, remove_selected


@dataclass(frozen=True)
class EPrunerOptions(Options):
    damping: float = option(
        0.5,
        help="affinity propagation's damping of the message updates",
        source="official utils/common.py: AffinityPropagation(preference=...) at sklearn's default",
        low=0.5,
        high=1.0,
        high_open=True,
    )
    max_iter: int = option(
        200,
        help="affinity propagation's maximum iterations",
        source="official utils/common.py: sklearn's default",
        low=1,
    )
    convergence_iter: int = option(
        15,
        help="iterations with unchanged exemplars that stop affinity propagation",
        source="official utils/common.py: sklearn's default",
        low=1,
    )
    beta_low: float = option(
        1e-3,
        help="smallest preference coefficient beta tried when tuning to the target",
        source="prunekit: wide around the official --preference_beta 0.45 (utils/options.py)",
        low=0.0,
        low_open=True,
    )
    beta_high: float = option(
        1e3,
        help="largest preference coefficient beta tried when tuning to the target",
        source="prunekit: wide around the official --preference_beta 0.45 (utils/options.py)",
        low=0.0,
        low_open=True,
    )
    tune_steps: int = option(
        24,
        help="bisection steps over beta (geometric) to come nearest the target",
        source="prunekit",
        low=1,
    )


def chain_filters(chain: Chain) -> np.ndarray:
    """The producer's filters of the chain's units, one flattened row per unit (float64)."""
    w = out_weight(chain.producer.module)
    if w is None:
        raise ConfigError(f"layer {chain.producer.name!r} has no filters to cluster")
    rows = w.detach().reshape(w.shape[0], -1)[chain.producer_index.to(w.device)]
    return rows.double().cpu().numpy()


def preference(filters: np.ndarray, beta: float) -> np.ndarray:
    """``beta * median_i s(i, k)`` per filter ``k``, with ``s(i, k) = -||F_i - F_k||^2``."""
    sq = ((filters[:, None, :] - filters[None, :, :]) ** 2).sum(-1)
    return np.median(-sq, axis=0) * beta


def exemplars(
    filters: np.ndarray,
    beta: float,
    *,
    damping: float = 0.5,
    max_iter: int = 200,
    convergence_iter: int = 15,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Affinity propagation over the filters (rows): ``(exemplar indices, label per filter)``.
    If it does not converge, once more with damping 0.9 and ten times the iterations; if that
    fails too, every filter is its own exemplar."""
    n = filters.shape[0]
    if n == 1:
        return np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64)
    pref = preference(filters, beta)
    for damp, iters in ((damping, max_iter), (max(damping, 0.9), 10 * max_iter)):
        ap = AffinityPropagation(
            damping=damp,
            max_iter=iters,
            convergence_iter=convergence_iter,
            preference=pref,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ap.fit(filters)
        centers = np.asarray(ap.cluster_centers_indices_, dtype=np.int64)
        if len(centers) and (np.asarray(ap.labels_) >= 0).all():
            return centers, np.asarray(ap.labels_, dtype=np.int64)
    return np.arange(n), np.arange(n)


def removal_order(filters: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> torch.Tensor:
    """Scores (lowest removed first) of one layer's filters: non-exemplars by their squared
    distance to their exemplar, then exemplars by the size of their cluster."""
    n = filters.shape[0]
    dist = ((filters - filters[centers[labels]]) ** 2).sum(-1)
    top = float(dist.max()) + 1.0
    sizes = np.bincount(labels, minlength=len(centers))
    scores = dist.astype(np.float64)
    scores[centers] = top + sizes
    return torch.from_numpy(scores).reshape(n)


@register_method("epruner")
class EPrunerMethod(Method):
    """EPruner (Lin et al., TNNLS 2022): affinity propagation over each chain's filters (scikit-
    learn, preference ``beta`` x the median similarity); the exemplars stay, the others go, so
    each layer's width is its number of exemplars. ``beta`` is tuned to meet the run's target
    and the last gap is closed at the same per-layer proportions (see the module docstring)."""

    Options = EPrunerOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        if opts.beta_low >= opts.beta_high:
            raise ConfigError(
                f"beta_low must be below beta_high, got {opts.beta_low} and {opts.beta_high}"
            )
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            found = chains(graph)
            if not found:
                raise ConfigError(
                    "method 'epruner' clusters the filters of layers read by one conv or Linear "
                    "layer (chains); this model has none"
                )
            filters = {c.group.name: chain_filters(c) for c in found}
            cache: dict[float, dict[str, tuple[np.ndarray, np.ndarray]]] = {}

            def cluster(beta: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
                if beta not in cache:
                    cache[beta] = {
                        name: exemplars(
                            f,
                            beta,
                            damping=opts.damping,
                            max_iter=opts.max_iter,
                            convergence_iter=opts.convergence_iter,
                            seed=ctx.seed,
                        )
                        for name, f in filters.items()
                    }
                return cache[beta]

            def counts_at(beta: float) -> dict[str, int]:
                return {n: len(filters[n]) - len(c) for n, (c, _) in cluster(beta).items()}

            beta, counts = tune_knob(
                graph,
                counts_at,
                target.kind,
                target.fraction,
                opts.beta_low,
                opts.beta_high,
                opts.tune_steps,
            )
            if not any(counts.values()):
                raise ConfigError(
                    f"epruner: affinity propagation keeps every filter for every beta in "
                    f"[{opts.beta_low:g}, {opts.beta_high:g}]; cannot reach {target}"
                )
            order = {n: removal_order(filters[n], *cluster(beta)[n]) for n in filters}
            picks = select_at_proportions(graph, lambda g: order[g.name], counts, target)
            self.beta = beta  # the tuned preference coefficient, for inspection
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = [
    "EPrunerMethod",
    "EPrunerOptions",
    "chain_filters",
    "exemplars",
    "preference",
    "removal_order",
]
