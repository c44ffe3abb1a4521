"""Bayesian optimisation of the per-layer pruning rates — Kim, Choi, Choe, "Automated Filter
Pruning Based on High-Dimensional Bayesian Optimization" (IEEE Access 10, 2022).

Algorithm (the paper's outline, as its abstract and Fig. 1 state it): the pruning rate of every
convolutional layer is one coordinate of a vector ``x``; a Gaussian-process surrogate of the
pruned network's accuracy as a function of ``x`` is fitted to the evaluations so far, an
acquisition function picks the next ``x``, and the pruned network is scored *without*
retraining, so each evaluation is cheap. Here:

1. ``x`` holds one rate in [0, 1] per channel group; :func:`prunekit.methods.search.allocate`
   turns it into a selection that meets the target (each group loses a share of its channels
   proportional to its rate, one common factor fixing the total; the lowest-L1 filters go
   first inside a group).
2. The first ``initial`` evaluations are the uniform vector (every layer the same rate) and
   random vectors; then, each step, a GP (scikit-learn ``GaussianProcessRegressor``, a constant
   times an ARD Matern-5/2 kernel plus a white-noise term, targets normalised) is fitted to
   every feasible ``(x, accuracy)`` and the next ``x`` maximises the expected improvement
   :func:`expected_improvement` over ``candidates`` random vectors and as many Gaussian
   perturbations of the best one (:func:`propose`).
3. The best ``x`` found is applied to the model (the runner fine-tunes it).

The optimiser: scikit-learn's Gaussian process (already a dependency) with the expected-
improvement loop written here; neither Optuna, scikit-optimize nor hyperopt is a dependency of
the project.

Defaults and their sources: ``xi`` 0.01 (scikit-optimize's ``gp_minimize`` default for EI);
Matern nu 2.5 with one length scale per layer (scikit-optimize's default GP); ``initial`` 10
(scikit-optimize's ``n_initial_points``); ``candidates`` 2000 (prunekit: the acquisition is
maximised by sampling); ``search_budget`` 40 evaluations (prunekit; the paper's count is not
stated in the text available to us).

Deviations a reader should know: the paper's high-dimensional technique (how it keeps BO
efficient with one dimension per layer) is not described in the text available to us; this
is plain GP-EI with automatic relevance determination over all groups. Accuracy is measured
on ``val_batches`` of the validation set.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from prunekit.errors import ConfigError
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import option
from prunekit.methods.search import (
    SearchOptions,
    Trial,
    allocate,
    search_setup,
    verified,
)
from prunekit.prune import PruneReport


def expected_improvement(
    mu: np.ndarray, sigma: np.ndarray, best: float, xi: float = 0.01
) -> np.ndarray:
    """``E[max(f - best - xi, 0)]`` for ``f ~ N(mu, sigma^2)``:
    ``(mu - best - xi) Phi(z) + sigma phi(z)``, ``z = (mu - best - xi) / sigma``; where
    ``sigma == 0`` it is ``max(mu - best - xi, 0)``."""
    mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
    gain = mu - best - xi
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sigma > 0, gain / np.where(sigma > 0, sigma, 1.0), 0.0)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return np.where(sigma > 0, gain * cdf + sigma * pdf, np.maximum(gain, 0.0))


def surrogate(x: np.ndarray, y: np.ndarray, seed: int):  # type: ignore[no-untyped-def]
    """A GP fitted to ``(x, y)``: constant x ARD Matern-5/2 + white noise, targets normalised."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    dims = x.shape[1]
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=np.ones(dims), length_scale_bounds=(1e-2, 1e2), nu=2.5
    ) + WhiteKernel(1e-2, (1e-6, 1.0))
    gp = GaussianProcessRegressor(
        kernel=kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the kernel fit
        gp.fit(x, y)
    return gp


def propose(
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    candidates: int,
    xi: float,
    seed: int,
) -> np.ndarray:
    """The next rate vector: the maximiser of the expected improvement of a GP fitted to
    ``(x, y)`` among ``candidates`` uniform vectors and ``candidates`` Gaussian perturbations
    (std 0.1, clipped to [0, 1]) of the best ``x`` so far."""
    gp = surrogate(x, y, seed)
    dims = x.shape[1]
    best = x[int(np.argmax(y))]
    pool = np.vstack(
        [
            rng.uniform(0.0, 1.0, (candidates, dims)),
            np.clip(best + rng.normal(0.0, 0.1, (candidates, dims)), 0.0, 1.0),
        ]
    )
    mu, sigma = gp.predict(pool, return_std=True)
    ei = expected_improvement(mu, sigma, float(np.max(y)), xi)
    return pool[int(np.argmax(ei))]


@dataclass(frozen=True)
class BORatesOptions(SearchOptions):
    initial: int = option(
        10,
        help="evaluations before the first GP fit (the uniform vector, then random vectors)",
        source="scikit-optimize gp_minimize: n_initial_points 10",
        low=1,
    )
    candidates: int = option(
        2000,
        help="random vectors (and as many perturbations of the best) the acquisition is "
        "maximised over",
        source="prunekit",
        low=1,
    )
    xi: float = option(
        0.01,
        help="exploration margin of the expected improvement (in accuracy points)",
        source="scikit-optimize gp_minimize: xi 0.01",
        low=0,
    )
    within: str = option(
        "l1",
        help="criterion ordering the channels inside a group",
        source="paper: filter pruning by norm inside each layer",
        choices=("l1", "l2", "fpgm"),
    )


@register_method("bo_rates")
class BORates(Method):
    """Bayesian optimisation of the per-layer rates (Kim et al., 2022): a GP surrogate of the
    accuracy of the pruned, not retrained, model over the vector of per-group rates, the next
    vector by expected improvement, the best one applied.

    After :meth:`prune`: ``rates`` (every evaluated vector, ``{group: rate}``), ``trials``
    (their :class:`~prunekit.methods.search.Trial`) and ``best`` (the index applied)."""

    Options = BORatesOptions

    def __init__(self) -> None:
        self.rates: list[dict[str, float]] = []
        self.trials: list[Trial] = []
        self.best: int | None = None

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        with search_setup(self.id, ctx, opts) as setup:
            graph, names = setup.graph, setup.names
            rng = np.random.default_rng(ctx.seed)

            def picks_of(x: np.ndarray, keywords=setup.keywords) -> dict[str, list[int]] | None:  # type: ignore[no-untyped-def]
                try:
                    rates = dict(zip(names, x.tolist(), strict=True))
                    return allocate(graph, rates, keywords, opts.within)
                except ConfigError:
                    return None  # too coarse to meet the target

            xs: list[np.ndarray] = []
            with setup.search() as search:
                first = [np.full(len(names), 0.5)] + [
                    rng.uniform(0.0, 1.0, len(names)) for _ in range(opts.initial - 1)
                ]
                search.evaluate([picks_of(x) for x in first])
                xs += first[: len(search.trials)]
                while not search.exhausted:
                    ok = [i for i, t in enumerate(search.trials) if t.feasible]
                    if len(ok) < 2:
                        x = rng.uniform(0.0, 1.0, len(names))
                    else:
                        x = propose(
                            np.array([xs[i] for i in ok]),
                            np.array([search.trials[i].accuracy for i in ok]),
                            rng,
                            candidates=opts.candidates,
                            xi=opts.xi,
                            seed=ctx.seed,
                        )
                    search.evaluate([picks_of(x)])
                    xs.append(x)
                self.trials, self.best = list(search.trials), search.best
            self.rates = [dict(zip(names, x.tolist(), strict=True)) for x in xs]
            if self.best is None:
                raise ConfigError(
                    f"bo_rates: no rate vector met the target {setup.target} within 1% "
                    "(channels too coarse)"
                )
            picks = picks_of(xs[self.best], verified(setup.keywords))
            assert picks is not None
            return setup.remove(picks)


__all__ = ["BORates", "BORatesOptions", "expected_improvement", "propose", "surrogate"]
