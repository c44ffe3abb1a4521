"""AMC — He, Lin, Liu, Wang, Li, Han, "AMC: AutoML for Model Compression and Acceleration on
Mobile Devices" (ECCV 2018).

Algorithm (paper Sec. 3, resource-constrained compression; the official ``amc_search.py`` and
``env/channel_pruning_env.py``):

1. The agent walks the layers ``t = 1 .. T`` (here: the channel groups of the graph, in order).
   Its state is the layer embedding ``(t, type, c_in, n, stride, k, params, reduced, rest,
   a_{t-1})``: the static part min-max normalised over the layers, ``reduced`` the FLOPs removed
   by the earlier choices and ``rest`` the FLOPs of the layers still to come, both as fractions
   of the dense model (:func:`embeddings`).
2. A DDPG agent (actor and critic with two hidden layers of 300) emits a continuous action
   ``a_t`` in ``(0, 1]``: the fraction of the layer's channels to *keep*. During exploration
   the action is drawn from a normal around the actor's output, truncated to
   ``[lbound, rbound]``, whose width decays per episode; the first ``warmup`` episodes are
   uniform random.
3. The action is clipped so the FLOPs budget is always met (:func:`clip_keep`): assuming every
   later layer is pruned to ``lbound``, ``a_t`` is lowered to the largest width whose model can
   still reach the target, and never below ``lbound``.
4. When the last layer is chosen the model is pruned with the strategy (the lowest-L1 filters of
   each layer go) and its validation accuracy, *without fine-tuning*, is the reward (official
   ``acc_reward``: ``0.01 * accuracy``), given to every transition of the episode.
   The replay buffer is sampled for one DDPG update per step after the warm-up, with the
   rewards centred by a moving average.
5. The best strategy found is applied (the runner fine-tunes it).

Defaults and their sources (official ``amc_search.py`` unless said): ``lbound`` 0.2,
``rbound`` 1.0, ``hidden`` 300, ``lr_actor`` 1e-4, ``lr_critic`` 1e-3, ``discount`` 1.0,
``batch`` 64, ``memory`` 100 transitions per layer, ``tau`` 0.01, ``init_delta`` 0.5,
``delta_decay`` 0.95, ``moving_alpha`` 0.5 (official ``lib/agent.py``); ``warmup`` 10 and
``search_budget`` 40 episodes: the official code runs 100 warm-up episodes of 800, scaled here so
a search runs in minutes on a CPU (``--option search_budget=800 warmup=100`` is the official
setting).

Deviations a reader should know:

* Layers are channel groups: coupled layers (a residual stage) take one action together, as the
  official code's shared indices for MobileNetV2.
* FLOPs are the graph's exact plan of the pruned model, not the official per-layer
  ``flops * c_in * c_out`` product.
* The clipped strategy meets the budget; to land within 1% of the target, as every method in
  prunekit does, its per-layer removals are scaled down by one common factor
  (:func:`prunekit.methods.search.allocate`) before it is evaluated (and the strategy is kept
  as clipped when no scaling lands within 1%).
* Channels inside a layer go by the L1 norm of their filters; the official code ranks input
  channels by weight magnitude and reconstructs the next layer by least squares (no
  reconstruction here: the runner fine-tunes).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from prunekit import criteria
from prunekit.errors import ConfigError
from prunekit.graph import Graph
from prunekit.graph.core import out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import option
from prunekit.methods.search import (
    SearchOptions,
    Trial,
    allocate,
    search_setup,
    verified,
)
from prunekit.prune import PruneReport, selection_roots

STATIC = 7  # static features of the embedding; then reduced, rest, a_{t-1}


# ---------------------------------------------------------------------- the environment
def clip_keep(wanted: int, low: int, value: Callable[[int], float], goal: float) -> int:
    """The width the layer keeps: the largest ``k`` in ``[low, wanted]`` with
    ``value(k) <= goal`` (``value``: the resource of the model when this layer keeps ``k``, the
    earlier layers keep what they chose and the later ones are pruned to their lower bound;
    non-decreasing in ``k``); ``low`` when even that misses the goal (the official
    ``_action_wall`` keeps the lower bound then)."""
    if wanted <= low or value(low) > goal:
        return low
    lo, hi = low, wanted  # value(lo) <= goal
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if value(mid) <= goal else (lo, mid - 1)
    return lo


class Accounting:
    """The resource of the model when each group keeps a given number of channels, its
    lowest-``within`` ones going first: FLOPs or params from the graph's plan, or a latency
    table's prediction (``predict(roots)``, a
    :class:`~prunekit.measure.latency_table.LatencyPredictor`'s)."""

    def __init__(
        self,
        graph: Graph,
        metric: str,
        within: criteria.Criterion,
        predict: Callable[[Sequence[int]], float] | None = None,
    ) -> None:
        self.graph, self.metric, self.predict = graph, metric, predict
        self.groups = {g.name: g for g in graph.groups}
        self.order = {
            g.name: torch.argsort(within(g).double(), stable=True).tolist() for g in graph.groups
        }
        self.dense = self._cost([])

    def _cost(self, roots: Sequence[int]) -> float:
        if self.predict is not None:
            return float(self.predict(roots))
        return float(getattr(self.graph.plan(list(roots)), self.metric))

    def picks(self, keep: dict[str, int]) -> dict[str, list[int]]:
        return {
            n: sorted(self.order[n][: self.groups[n].size - k])
            for n, k in keep.items()
            if k < self.groups[n].size
        }

    def value(self, keep: dict[str, int]) -> float:
        return self._cost(selection_roots(self.graph, self.picks(keep)))


def _producer(graph: Graph, name: str) -> nn.Module | None:
    group = next(g for g in graph.groups if g.name == name)
    ins = {m.layer for m in group.members if m.side == "in"}
    for m in group.members:
        if m.side == "out" and m.layer not in ins:
            module = graph.sites[m.layer].module
            w = out_weight(module)
            if w is not None and w.dim() >= 2:
                return module
    return None


def embeddings(graph: Graph, names: Sequence[str]) -> np.ndarray:
    """The static layer embedding ``(t, type, c_in, n, stride, k, params)`` of each group, min-max
    normalised per column over the groups (official ``_build_state_embedding``), followed by the
    three dynamic columns (``reduced`` 0, ``rest`` 0, ``a_{t-1}`` 1)."""
    sizes = {g.name: g.size for g in graph.groups}
    rows = []
    for t, name in enumerate(names):
        m = _producer(graph, name)
        if isinstance(m, nn.modules.conv._ConvNd):
            kind, c_in = 0.0, float(m.in_channels)
            stride, k = float(m.stride[0]), float(m.kernel_size[0])
        else:
            w = out_weight(m) if m is not None else None
            kind, c_in = 1.0, float(w.shape[1]) if w is not None and w.dim() >= 2 else 0.0
            stride, k = 0.0, 1.0
        params = float(m.weight.numel()) if m is not None else 0.0
        rows.append([float(t), kind, c_in, float(sizes[name]), stride, k, params])
    emb = np.array(rows, dtype=np.float64)
    lo, hi = emb.min(0), emb.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    emb = np.where(hi > lo, (emb - lo) / span, emb)
    dynamic = np.tile(np.array([0.0, 0.0, 1.0]), (len(names), 1))
    return np.hstack([emb, dynamic])


# ---------------------------------------------------------------------- the agent
class _Actor(nn.Module):
    def __init__(self, states: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(states, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
            nn.Sigmoid(),
        )
        with torch.no_grad():  # official init_w 0.003 for the output layer
            self.net[4].weight.uniform_(-0.003, 0.003)
            self.net[4].bias.uniform_(-0.003, 0.003)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.net(s)


class _Critic(nn.Module):
    def __init__(self, states: int, hidden: int) -> None:
        super().__init__()
        self.fs, self.fa = nn.Linear(states, hidden), nn.Linear(1, hidden)
        self.net = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )
        with torch.no_grad():
            self.net[3].weight.uniform_(-0.003, 0.003)
            self.net[3].bias.uniform_(-0.003, 0.003)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(self.fs(s) + self.fa(a))


class DDPG:
    """The agent: actor, critic, their target copies, a replay buffer, and the update of the
    official ``lib/agent.py`` (rewards centred by a moving average of batch means)."""

    def __init__(self, states: int, opts: AMCOptions, capacity: int, rng: np.random.Generator):
        self.opts, self.rng = opts, rng
        self.actor, self.critic = _Actor(states, opts.hidden), _Critic(states, opts.hidden)
        self.actor_t, self.critic_t = copy.deepcopy(self.actor), copy.deepcopy(self.critic)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=opts.lr_actor)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=opts.lr_critic)
        self.capacity = capacity
        self.memory: list[tuple[np.ndarray, float, float, np.ndarray, float]] = []
        self.moving: float | None = None

    def act(self, state: np.ndarray, delta: float) -> float:
        """The actor's action with truncated-normal exploration of width ``delta``."""
        with torch.no_grad():
            mu = float(self.actor(torch.as_tensor(state, dtype=torch.float32)[None])[0, 0])
        return truncated_normal(mu, delta, self.opts.lbound, self.opts.rbound, self.rng)

    def observe(self, s: np.ndarray, a: float, r: float, s2: np.ndarray, done: bool) -> None:
        self.memory.append((s, a, r, s2, float(done)))
        if len(self.memory) > self.capacity:
            self.memory.pop(0)

    def update(self) -> None:
        o = self.opts
        idx = self.rng.integers(0, len(self.memory), size=min(o.batch, len(self.memory)))
        s, a, r, s2, d = (
            torch.as_tensor(np.array([self.memory[i][j] for i in idx]), dtype=torch.float32)
            for j in range(5)
        )
        a, r, d = a[:, None], r[:, None], d[:, None]
        mean = float(r.mean())
        self.moving = (
            mean if self.moving is None else self.moving + o.moving_alpha * (mean - self.moving)
        )
        r = r - self.moving
        with torch.no_grad():
            target = r + o.discount * (1 - d) * self.critic_t(s2, self.actor_t(s2))
        loss_c = nn.functional.mse_loss(self.critic(s, a), target)
        self.opt_c.zero_grad()
        loss_c.backward()
        self.opt_c.step()
        loss_a = -self.critic(s, self.actor(s)).mean()
        self.opt_a.zero_grad()
        loss_a.backward()
        self.opt_a.step()
        with torch.no_grad():
            for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                for p, q in zip(net.parameters(), tgt.parameters(), strict=True):
                    q.mul_(1 - o.tau).add_(o.tau * p)


def truncated_normal(
    mu: float, sigma: float, low: float, high: float, rng: np.random.Generator
) -> float:
    """A draw from ``N(mu, sigma^2)`` restricted to ``[low, high]`` (by rejection; after 100
    rejections, ``mu`` clipped to the bounds)."""
    for _ in range(100):
        x = float(rng.normal(mu, sigma)) if sigma > 0 else mu
        if low <= x <= high:
            return x
    return float(min(max(mu, low), high))


# ---------------------------------------------------------------------- options
@dataclass(frozen=True)
class AMCOptions(SearchOptions):
    lbound: float = option(
        0.2,
        help="smallest fraction of a layer's channels kept",
        source="official amc_search.py: lbound 0.2",
        low=0,
        high=1,
        low_open=True,
    )
    rbound: float = option(
        1.0,
        help="largest fraction of a layer's channels kept",
        source="official amc_search.py: rbound 1.0",
        low=0,
        high=1,
        low_open=True,
    )
    warmup: int = option(
        10,
        help="episodes of uniform random actions before the agent learns",
        source="official amc_search.py: 100 of 800 episodes; scaled to the budget",
        low=0,
    )
    hidden: int = option(
        300,
        help="units of each of the two hidden layers of actor and critic",
        source="official amc_search.py: hidden1 = hidden2 = 300",
        low=1,
    )
    lr_actor: float = option(
        1e-4,
        help="Adam learning rate of the actor",
        source="official amc_search.py: lr_a",
        low=0,
        low_open=True,
    )
    lr_critic: float = option(
        1e-3,
        help="Adam learning rate of the critic",
        source="official amc_search.py: lr_c",
        low=0,
        low_open=True,
    )
    discount: float = option(
        1.0, help="discount of the critic's target", source="official amc_search.py", low=0, high=1
    )
    batch: int = option(
        64, help="transitions per DDPG update", source="official amc_search.py: bsize", low=1
    )
    memory: int = option(
        100, help="replay buffer size per layer", source="official amc_search.py: rmsize", low=1
    )
    tau: float = option(
        0.01,
        help="soft update rate of the target networks",
        source="official amc_search.py",
        low=0,
        high=1,
    )
    init_delta: float = option(
        0.5,
        help="initial width of the truncated-normal exploration",
        source="official amc_search.py",
        low=0,
    )
    delta_decay: float = option(
        0.95,
        help="decay of that width per episode after the warm-up",
        source="official amc_search.py",
        low=0,
        high=1,
    )
    moving_alpha: float = option(
        0.5,
        help="rate of the moving average centring the rewards",
        source="official lib/agent.py",
        low=0,
        high=1,
    )
    within: str = option(
        "l1",
        help="criterion ordering the channels inside a layer",
        source="prunekit (the official code ranks by weight magnitude)",
        choices=("l1", "l2", "fpgm"),
    )


# ---------------------------------------------------------------------- the method
@register_method("amc")
class AMC(Method):
    """AMC (He et al., ECCV 2018): a DDPG agent walks the layers and emits each one's kept
    fraction from its embedding, clipped so the FLOPs (or params) budget is always met; the
    reward is the accuracy of the pruned model without fine-tuning; the best strategy is applied.

    After :meth:`prune`: ``strategies`` (every episode's kept fractions, ``{group: keep}``, as
    clipped), ``trials`` and ``best``."""

    Options = AMCOptions

    def __init__(self) -> None:
        self.strategies: list[dict[str, float]] = []
        self.trials: list[Trial] = []
        self.best: int | None = None

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if opts.lbound > opts.rbound:
            raise ConfigError(f"amc: lbound {opts.lbound} must not exceed rbound {opts.rbound}")
        with search_setup(self.id, ctx, opts) as setup:
            names, keywords = setup.names, setup.keywords
            within = criteria.get(opts.within)
            env = _Env(setup.graph, names, keywords, setup.target.fraction, opts, within)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                rng = np.random.default_rng(ctx.seed)
                agent = DDPG(env.emb.shape[1], opts, opts.memory * len(names), rng)
                picks = self._search(setup, env, agent, rng)
            if setup.target.kind == "latency":  # the applied strategy is timed, not predicted
                picks = env.select(self.strategies[self.best], verified(keywords))  # type: ignore[index]
            return setup.remove(picks)

    def _search(self, setup, env, agent, rng):  # type: ignore[no-untyped-def]
        opts = setup.opts
        episodes: list[tuple[list, dict[str, list[int]]]] = []  # (transitions, picks)
        with setup.search() as search:
            # warm-up: random episodes, independent of the rewards: one batch
            warm = [
                env.episode(lambda s: float(rng.uniform(opts.lbound, opts.rbound)))
                for _ in range(opts.warmup)
            ]
            self._finish(search, agent, warm, episodes, learn=False)
            while not search.exhausted:
                delta = opts.init_delta * opts.delta_decay ** max(0, len(episodes) - opts.warmup)
                ep = env.episode(lambda s, d=delta: agent.act(s, d))
                self._finish(search, agent, [ep], episodes, learn=True)
            self.trials, self.best = list(search.trials), search.best
        if self.best is None:
            raise ConfigError("amc: no strategy could be evaluated (budget too small?)")
        return episodes[self.best][1]

    def _finish(self, search, agent, batch, episodes, *, learn: bool) -> None:  # type: ignore[no-untyped-def]
        trials = search.evaluate([picks for _, picks, _ in batch])
        for (transitions, picks, keep), trial in zip(batch, trials, strict=False):
            reward = 0.01 * trial.accuracy if trial.feasible else 0.0
            for s, a, s2, done in transitions:
                agent.observe(s, a, reward, s2, done)
                if learn:
                    agent.update()
            episodes.append((transitions, picks))
            self.strategies.append(keep)


class _Env:
    """One episode: walk the groups, clip each action, return the transitions, the selection
    evaluated (scaled to the target) and the clipped strategy."""

    def __init__(self, graph, names, keywords, fraction, opts, within) -> None:  # type: ignore[no-untyped-def]
        self.graph, self.names, self.opts = graph, names, opts
        predictor = keywords.get("latency")
        metric = "latency" if predictor is not None else next(iter(keywords))[len("target_") :]
        self.acc = Accounting(
            graph, metric, within, predictor.predict if predictor is not None else None
        )
        self.goal = (1.0 - fraction) * self.acc.dense
        self.sizes = {g.name: g.size for g in graph.groups}
        self.low = {n: max(1, math.ceil(opts.lbound * self.sizes[n] - 1e-9)) for n in names}
        self.emb = embeddings(graph, names)
        full = {n: self.sizes[n] for n in names}
        # the cost that depends on each layer: the dense figure less the model keeping one channel
        self.share = [self.acc.dense - self.acc.value({**full, n: 1}) for n in names]
        self.keywords = keywords
        self.within = within

    def select(self, keep: dict[str, float], keywords: dict | None = None) -> dict[str, list[int]]:  # type: ignore[type-arg]
        """The selection evaluated for a strategy (fractions kept): its removals scaled by one
        factor to land on the target, or the strategy as it is when no scaling lands within 1%."""
        rates = {n: 1.0 - keep[n] for n in self.names}
        try:
            return allocate(self.graph, rates, keywords or self.keywords, self.within)
        except ConfigError:
            counts = {n: round(keep[n] * self.sizes[n]) for n in self.names}
            return self.acc.picks(counts)  # meets the budget, not within 1% of it

    def episode(self, policy: Callable[[np.ndarray], float]):  # type: ignore[no-untyped-def]
        keep = {n: self.sizes[n] for n in self.names}
        transitions = []
        state = self._state(0, keep, 1.0)
        for t, n in enumerate(self.names):
            a = min(max(policy(state), 0.0), 1.0)
            wanted = max(self.low[n], min(self.sizes[n], round(a * self.sizes[n])))
            later = {m: self.low[m] for m in self.names[t + 1 :]}
            k = clip_keep(
                wanted,
                self.low[n],
                lambda k, n=n, later=later: self.acc.value({**keep, n: k, **later}),
                self.goal,
            )
            keep[n] = k
            action = k / self.sizes[n]
            done = t == len(self.names) - 1
            nxt = state if done else self._state(t + 1, keep, action)
            transitions.append((state, action, nxt, done))
            state = nxt
        kept = {n: keep[n] / self.sizes[n] for n in self.names}
        return transitions, self.select(kept), kept

    def _state(self, t: int, keep: dict[str, int], last: float) -> np.ndarray:
        s = self.emb[t].copy()
        s[STATIC] = (self.acc.dense - self.acc.value(keep)) / self.acc.dense  # reduced
        s[STATIC + 1] = sum(self.share[t + 1 :]) / self.acc.dense  # rest
        s[STATIC + 2] = last  # a_{t-1}
        return s.astype(np.float32)


__all__ = ["AMC", "DDPG", "AMCOptions", "Accounting", "clip_keep", "embeddings", "truncated_normal"]
