"""LeGR — Chin, Ding, Zhang, Marculescu, "Towards Efficient Model Compression via Learned Global
Ranking" (CVPR 2020).

Algorithm (paper Sec. 3, Algorithm 1):

1. Every filter ``i`` of layer ``l`` has a norm ``||theta_i||_2``. A per-layer affine transform
   ``(alpha_l, kappa_l)`` makes the norms comparable across layers:
   ``I_i = alpha_l * ||theta_i||_2 + kappa_l``. One global ranking of ``I`` then decides every
   layer's width at once: filters are removed lowest ``I`` first until the resource target is
   met (:func:`ranking_picks`).
2. The transforms are learned by regularised (aging) evolution: a population of ``P`` transform
   sets; each generation samples ``S`` of them, mutates the best of the sample (a fraction ``u``
   of the layers gets ``alpha_l *= exp(N(0, sigma * step))`` and ``kappa_l += N(0, std_l)``,
   ``std_l`` the spread of layer ``l``'s norms, ``step`` shrinking linearly over the search),
   and replaces the oldest member by the child. The first ``P - 1`` members are random
   transforms, the ``P``-th the identity ``(1, 0)`` (:func:`initial_transform`,
   :func:`mutate`).
3. Fitness of a transform set: prune the model with its ranking to the target, fine-tune
   ``tau`` minibatch steps, measure validation accuracy (loss breaks ties).
4. The best transform set is a ranking that serves every budget: pruning the trained model to
   another target only moves the global threshold (:func:`ranking_picks` with that target;
   after :meth:`LeGR.prune`, ``method.transform`` holds it).

Here a "layer" is a channel group of the graph (layers whose channels must go together, as a
residual stage); its norm is the L2 norm of all the filters producing the channel.

Defaults and their sources:

* ``population`` 16, ``sample`` 4, ``search_budget`` 40 generations, ``finetune_steps`` 20:
  the paper uses P = 64, S = 16, E = 400, tau = 200 steps (Sec. 4; the same in NNCF's port,
  ``global_ranking/evolutionary_optimization.py``); these are divided by four to ten so a search
  runs in minutes on a CPU. ``--option search_budget=400 population=64 sample=16
  finetune_steps=200`` is the paper's setting.
* ``mutate`` 0.1 (fraction of layers mutated per child) and ``sigma`` 1.0 (scale of the
  log-normal mutation of alpha): paper Sec. 4 / NNCF's port (``mutate_percent``,
  ``sigma_scale``); ``lr`` 0.01 with momentum 0.9 for the short fine-tune: NNCF's port.

Deviations: at least one layer is mutated per child (``int(0.1 * L)`` is 0 for fewer than ten
layers); the search state is checkpointed per evaluation (:mod:`prunekit.methods.search`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import option
from prunekit.methods.search import (
    SearchOptions,
    search_setup,
    verified,
)
from prunekit.prune import PruneReport, select_channels
from prunekit.targets import Target

Transform = dict[str, tuple[float, float]]  # group -> (alpha, kappa)


def transformed_importance(
    norms: Mapping[str, torch.Tensor], transform: Transform
) -> criteria.Criterion:
    """The importance ``alpha_g * norm + kappa_g`` of every unit of group ``g`` (a group without
    a transform keeps its raw norms)."""

    def importance(group: Group) -> torch.Tensor:
        alpha, kappa = transform.get(group.name, (1.0, 0.0))
        return alpha * norms[group.name].double() + kappa

    return importance


def ranking_picks(
    graph: Graph,
    norms: Mapping[str, torch.Tensor],
    transform: Transform,
    target: Target | Mapping[str, Any],
) -> dict[str, list[int]]:
    """The channels LeGR removes for ``target`` (a Target, or the keywords of
    :func:`prunekit.methods.search.target_keywords`): the lowest transformed norms over the
    whole network, until the target is met (raw scores compared across groups, one
    threshold)."""
    keywords = target.as_dict() if isinstance(target, Target) else dict(target)
    return select_channels(
        graph,
        scope="global",
        normalize=False,
        importance=transformed_importance(norms, transform),
        **keywords,
    )


def initial_transform(
    names: Sequence[str], spread: Mapping[str, float], rng: np.random.Generator, sigma: float
) -> Transform:
    """A random member of the first population: ``alpha = exp(N(0, sigma))``,
    ``kappa = N(0, std_l)``."""
    return {
        n: (float(math.exp(rng.normal(0.0, sigma))), float(rng.normal(0.0, spread[n])))
        for n in names
    }


def mutate(
    parent: Transform,
    spread: Mapping[str, float],
    rng: np.random.Generator,
    *,
    fraction: float,
    sigma: float,
    step: float,
) -> Transform:
    """A child of ``parent``: ``max(1, int(fraction * L))`` layers drawn (with replacement, as
    the reference implementation) get ``alpha *= exp(N(0, sigma * step))`` and
    ``kappa += N(0, std_l)``; the others are copied."""
    names = list(parent)
    count = max(1, int(fraction * len(names)))
    chosen = set(rng.choice(len(names), size=count, replace=True).tolist())
    child = dict(parent)
    for i in sorted(chosen):
        n = names[i]
        alpha, kappa = parent[n]
        child[n] = (
            alpha * float(math.exp(rng.normal(0.0, sigma * step))),
            kappa + float(rng.normal(0.0, spread[n])),
        )
    return child


@dataclass(frozen=True)
class LeGROptions(SearchOptions):
    population: int = option(
        16,
        help="transform sets in the population (P)",
        source="paper Sec. 4: 64; divided by 4 for CPU runs",
        low=1,
    )
    sample: int = option(
        4,
        help="members sampled per generation; the best is mutated (S)",
        source="paper Sec. 4: 16; divided by 4 with the population",
        low=1,
    )
    mutate: float = option(
        0.1,
        help="fraction of the layers mutated per child (u)",
        source="paper Sec. 4 / NNCF's port: mutate_percent 0.1",
        low=0,
        high=1,
    )
    sigma: float = option(
        1.0,
        help="scale of the log-normal mutation of alpha",
        source="NNCF's port of LeGR: sigma_scale 1",
        low=0,
        low_open=True,
    )
    finetune_steps: int = option(
        20,
        help="minibatch SGD steps fine-tuning each candidate before its fitness (tau)",
        source="paper Sec. 4: 200; divided by 10 for CPU runs",
        low=0,
    )
    lr: float = option(
        0.01,
        help="learning rate of the candidates' short fine-tune (momentum 0.9)",
        source="NNCF's port of LeGR: SGD lr 1e-2, momentum 0.9",
        low=0,
        low_open=True,
    )


@register_method("legr")
class LeGR(Method):
    """LeGR (Chin et al., CVPR 2020): per-layer affine transforms of the filter L2 norms, learned
    by regularised evolution with short fine-tuning as fitness, give one global ranking; the
    model is pruned to the target by thresholding it.

    After :meth:`prune`: ``transform`` (the best ``{group: (alpha, kappa)}``), ``norms`` (the
    groups' filter norms it applies to; :func:`ranking_picks` prunes another model copy to any
    target with them) and ``trials`` (every evaluation)."""

    Options = LeGROptions

    def __init__(self) -> None:
        self.transform: Transform = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.trials: list = []

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        with search_setup(self.id, ctx, opts) as setup:
            graph, names, budget_kw = setup.graph, setup.names, setup.keywords
            budget = setup.budget
            self.norms = {g.name: criteria.l2_norm(g).detach().double() for g in graph.groups}
            spread = {n: float(self.norms[n].std(unbiased=False)) for n in names}
            rng = np.random.default_rng(ctx.seed)

            def candidate(t: Transform) -> dict[str, list[int]] | None:
                try:
                    return ranking_picks(graph, self.norms, t, budget_kw)
                except ConfigError:
                    return None  # too coarse to meet the target: infeasible

            with setup.search(steps=opts.finetune_steps, lr=opts.lr) as search:
                # the first population: P - 1 random transforms and the identity, one batch
                first = [
                    initial_transform(names, spread, rng, opts.sigma)
                    for _ in range(opts.population - 1)
                ] + [dict.fromkeys(names, (1.0, 0.0))]
                trials = search.evaluate([candidate(t) for t in first])
                history = first[: len(trials)]
                population = deque(zip(history, trials, strict=True))
                while not search.exhausted and population:
                    # the mutation step shrinks linearly with the budget used
                    used = (
                        len(history) / budget.evaluations
                        if budget.evaluations
                        else search.elapsed() / float(budget.seconds or 1.0)
                    )
                    step = max(0.0, 1.0 - used / 1.25)
                    drawn = rng.choice(len(population), size=min(opts.sample, len(population)))
                    parent = max((population[i] for i in drawn), key=lambda m: m[1].key)[0]
                    child = mutate(
                        parent, spread, rng, fraction=opts.mutate, sigma=opts.sigma, step=step
                    )
                    (trial,) = search.evaluate([candidate(child)])
                    history.append(child)
                    population.append((child, trial))
                    if len(population) > opts.population:
                        population.popleft()  # the oldest dies (regularised evolution)
                self.trials = list(search.trials)
            feasible = [(t, tr) for t, tr in zip(history, self.trials, strict=True) if tr.feasible]
            if not feasible:
                raise ConfigError(
                    f"legr: no transform met the target {setup.target} within 1% "
                    "(channels too coarse)"
                )
            self.transform = max(feasible, key=lambda p: p[1].key)[0]
            picks = ranking_picks(graph, self.norms, self.transform, verified(budget_kw))
            return setup.remove(picks)


__all__ = ["LeGR", "LeGROptions", "initial_transform", "mutate", "ranking_picks"]
