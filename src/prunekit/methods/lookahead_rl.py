"""Lookahead-guided RL filter selection — Zi Wang, Chengcheng Li, "Channel Pruning via Lookahead
Search Guided Reinforcement Learning" (WACV 2022, pp. 2029-2040).

**A reconstruction from the abstract.** Only the paper's abstract could be read, and no official
code was found. Everything below the first list is prunekit's reading of that abstract, built
AlphaZero-style (Silver et al., Science 2018) on prunekit's search machinery; the paper's method
section (its state, action, features, network, tree search and reward, and all its settings) was
not available and this module should be checked against it.

What the abstract states:

* channel pruning looks for the set of filters whose removal degrades the slimmed network least;
  the space of filter combinations is too large to search, so criteria-based methods trade
  precision for tractability;
* here the filter selection is optimised by reinforcement learning: a neural network that takes
  filter-related features as input is trained, by RL, to prune the best *sequence* of filters,
  maximising the performance of the remaining network;
* Monte Carlo tree search (MCTS) gives a lookahead search for the filter selection, which makes
  the RL training more sample-efficient;
* experiments on MNIST, CIFAR-10 and ImageNet.

Algorithm, as computed here
---------------------------
Input: a trained network, a FLOPs / params (or latency) target, the search budget.

1. **The game** (:class:`FilterGame`). A state is the sequence of filters removed so far, per
   channel group of the graph (coupled channels, such as a residual stream, are one filter
   here, as in every prunekit method). An action removes **one** filter, any filter still left
   in a group that keeps more than ``lbound`` of its channels. An episode starts at the unpruned
   model and ends when the model meets the budget (its FLOPs, params or predicted latency at or
   below the target; a state where no group can lose a filter before that is a dead end worth
   0). The sequence of actions decides both the per-layer widths and which filters go.
2. **Filter features** (:meth:`FilterGame.features`): per candidate filter, ``FEATURES`` numbers:
   its L1 and L2 norm divided by the mean of its layer's; its summed Euclidean distance to the
   filters of its layer still kept (FPGM's redundancy, recomputed over the kept filters as
   filters go) divided by that sum's mean over the kept filters; the layer's static
   embedding (AMC's ``(t, type, c_in, n, stride, k, params)``, min-max normalised,
   :func:`prunekit.methods.amc.embeddings`); the fraction of the layer already removed; the
   share of the model's cost that depends on the layer; the fraction of the budget still to go.
3. **The network** (:class:`PolicyValueNet`): a shared MLP embeds every candidate's features;
   a linear head gives each candidate a logit (the policy is their softmax: the prior of the
   tree search) and a head on the mean and max of the embeddings gives the value of the state
   (a sigmoid: the expected reward).
4. **Lookahead** (:class:`Lookahead`): before every move, ``simulations`` MCTS simulations from
   the current state. Each descends by PUCT, ``argmax_a Q(s, a) + c_puct P(s, a)
   sqrt(N(s)) / (1 + N(s, a))`` (:func:`puct`), with ``Q`` min-max normalised over the
   values seen in this move's tree (MuZero, since rewards are accuracies on no fixed scale;
   :class:`Bounds`) and an unvisited action valued at its node's mean; Dirichlet noise is mixed
   into the priors at the root. A new non-terminal leaf is expanded and valued by the network;
   a terminal leaf is valued by its **reward**: the top-1 accuracy (as a fraction) of the
   pruned model, *without fine-tuning*, on the validation batches (AMC's reward, scored by
   :func:`prunekit.methods.search.score_picks`). Values are backed up along the path
   (:func:`backup`). With ``evaluate_lookahead`` False, a terminal the lookahead reaches whose
   selection was not scored yet is valued by the network instead, and only the terminal an
   episode ends at is scored (fewer evaluations per episode, so more episodes to learn from).
5. **Acting**: the move is drawn in proportion to the root's visit counts for the first
   ``temperature_moves`` moves of an episode, then the most visited; the subtree below it is
   kept for the next move.
6. **Learning** (:class:`Agent`): every position of an episode is stored with its visit
   distribution ``pi`` and the episode's reward ``z``; after each episode the network takes
   ``train_steps`` Adam steps on batches of positions of the last ``window`` episodes, loss
   ``(v - z)^2 - pi . log p`` with L2 weight decay (AlphaZero's loss).
7. The search runs episodes until the budget is spent (or ``patience`` episodes in a row reach
   no selection that was not evaluated before); every terminal selection evaluated is a
   candidate, and the best (highest accuracy, lower loss breaking ties) is removed through the
   structural core.

Meeting the target and the budget: a terminal state's removal order is turned into the
selection evaluated by :func:`prunekit.methods.search.allocate`: every group keeps a prefix of
its removal order, all scaled by one common factor, so the model lands within 1% of the target
(the last filter of an episode may pass it); where no scaling lands within 1%, the state's own
filters are taken (they meet the budget). Each evaluation counts against ``search_budget`` (a
count or a time, :class:`~prunekit.methods.search.SearchBudget`); a selection reached again,
by any path, is served from a cache at no cost; the search state is checkpointed after every
evaluation and a killed search resumes by replaying them
(:class:`~prunekit.methods.search.Search`: the algorithm is deterministic given the seed and
the rewards).

Sources of the choices, and what could not be checked
-----------------------------------------------------
From the abstract: RL over the sequence of filters to remove; a network reading filter-related
features; MCTS as lookahead; reward = the performance of the remaining network.
prunekit's choices, all to be checked against the paper: the AlphaZero scheme itself (policy
and value heads trained on visit counts and outcomes, PUCT); one filter per action (the
abstract speaks of a sequence of filters; a coarser action would fix part of the selection by
a rule the search cannot revise); the feature set; the network; the reward measured without
fine-tuning, as AMC; the end of an episode at the budget; the per-group floor ``lbound``.

Defaults and their sources (the paper's values could not be read; each is a prunekit choice
unless an AlphaZero / MuZero source is given):

* ``c_puct`` 1.25: AlphaZero's published pseudocode (``pb_c_init``); its slowly growing
  ``log((N + 19653) / 19652)`` term is left out, since it matters only after tens of
  thousands of visits, far more than a search here makes.
* ``dirichlet_alpha`` 0.3, ``noise_fraction`` 0.25: AlphaZero (chess).
* ``temperature_moves`` 30: AlphaGo Zero (moves drawn by visit counts for the first 30 moves of
  a game, then the most visited).
* ``l2`` 1e-4: AlphaZero's weight-regularisation constant ``c``.
* ``simulations`` 16: prunekit, for a CPU (AlphaZero 800, MuZero 50 on Atari); with hundreds of
  candidate filters the tree is then shallow except near the end of an episode.
* ``search_budget`` 40 evaluations: prunekit's default for every search method, so methods
  compare at equal evaluations.
* ``hidden`` 64, ``net_lr`` 1e-3 (Adam's usual rate), ``train_steps`` 10, ``batch`` 32
  positions, ``window`` 10 episodes (AlphaZero trains on a window of recent games),
  ``patience`` 3 episodes: prunekit, sized for a small network trained on a few episodes.
* ``lbound`` 0.2: prunekit, the same floor as AMC (official ``amc_search.py``), so no layer is
  emptied.
* ``evaluate_lookahead`` True: prunekit; the abstract credits the lookahead with the sample
  efficiency, so the terminals it reaches are scored. With the default budget most evaluations
  then go to the last moves of the first episodes (on the MNIST-1D CNN at 30% fewer FLOPs, all
  40 to the first episode, on the untrained net and random data of the method tests); False
  gives at most one evaluation per episode (40 episodes there).
* Policy and value output layers initialised uniformly in +-0.003 (as the official AMC
  actor), so the first priors are near uniform and the first values near 0.5.

Deviations a reader should know (beyond the reconstruction):

* the reward is read on ``val_batches`` of the validation split (the held-out split the other
  searches read), not the test split; ``workers`` has no effect: the tree asks for one
  evaluation at a time;
* the network starts untrained (tabula rasa); with the default budget it sees a few episodes,
  so on a large network the search is close to its priors and the lookahead near the end of an
  episode; raise ``search_budget`` and ``simulations`` for more.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import criteria
from prunekit.criteria.filter_similarity import unit_filters
from prunekit.errors import ConfigError
from prunekit.graph import Graph
from prunekit.methods.amc import STATIC, Accounting, embeddings
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import option
from prunekit.methods.search import (
    SearchOptions,
    Setup,
    Trial,
    allocate,
    search_setup,
    verified,
)
from prunekit.prune import PruneReport

State = tuple[tuple[int, ...], ...]  # per group (in ``names`` order): filters removed, in order
Picks = dict[str, list[int]]

FEATURES = 3 + STATIC + 3  # filter (l1, l2, distance), layer embedding, dynamic (3)


# ---------------------------------------------------------------------- the tree search
class Game(Protocol):
    """What :class:`Lookahead` searches: states, legal actions, transitions, terminal states,
    the network's ``predict(state) -> (actions, priors, value)``, the terminal ``reward`` (an
    evaluation) and ``known(state)``: the reward when it costs nothing (already evaluated, or a
    dead end), else None."""

    def step(self, state: Any, action: Any) -> Any: ...

    def terminal(self, state: Any) -> bool: ...

    def predict(self, state: Any) -> tuple[np.ndarray, np.ndarray, float]: ...

    def reward(self, state: Any) -> float: ...

    def known(self, state: Any) -> float | None: ...


class Node:
    """One state of the tree. Once expanded: its legal ``actions``, their ``prior`` (the
    network's, ``base``; with root noise mixed in, ``prior``), visit counts ``N`` and value sums
    ``W`` per action; ``n`` and ``total``: visits of the node and the sum of their values."""

    __slots__ = (
        "N",
        "W",
        "actions",
        "base",
        "children",
        "n",
        "prior",
        "reward",
        "state",
        "terminal",
        "total",
    )

    def __init__(self, state: Any, terminal: bool) -> None:
        self.state, self.terminal = state, terminal
        self.actions: np.ndarray | None = None
        self.base: np.ndarray | None = None
        self.prior: np.ndarray | None = None
        self.N: np.ndarray | None = None
        self.W: np.ndarray | None = None
        self.n, self.total = 0, 0.0
        self.children: dict[int, Node] = {}
        self.reward: float | None = None

    @property
    def expanded(self) -> bool:
        return self.actions is not None


class Bounds:
    """The smallest and largest value seen in a tree; ``normalize`` maps them to 0 and 1
    (values pass unchanged while they are equal), as MuZero's ``MinMaxStats``."""

    def __init__(self) -> None:
        self.low, self.high = math.inf, -math.inf

    def update(self, value: float) -> None:
        self.low, self.high = min(self.low, value), max(self.high, value)

    def normalize(self, q: np.ndarray) -> np.ndarray:
        if self.high > self.low:
            return (q - self.low) / (self.high - self.low)
        return q


def puct(node: Node, c_puct: float, bounds: Bounds) -> np.ndarray:
    """The PUCT score of every action of an expanded ``node``:
    ``norm(Q(s, a)) + c_puct P(s, a) sqrt(n(s)) / (1 + N(s, a))``, where ``Q = W / N`` and an
    unvisited action takes the node's mean value ``total / n``."""
    assert node.N is not None and node.W is not None and node.prior is not None
    fpu = node.total / node.n if node.n else 0.0
    q = np.where(node.N > 0, node.W / np.maximum(node.N, 1), fpu)
    return bounds.normalize(q) + c_puct * node.prior * math.sqrt(node.n) / (1.0 + node.N)


def backup(path: Sequence[tuple[Node, int]], leaf: Node, value: float, bounds: Bounds) -> None:
    """Add one visit of ``value`` to ``leaf`` and to every ``(node, action)`` of ``path``,
    widening ``bounds`` by the value and by each updated ``Q(s, a)``."""
    leaf.n += 1
    leaf.total += value
    bounds.update(value)
    for node, a in reversed(path):
        assert node.N is not None and node.W is not None
        node.N[a] += 1
        node.W[a] += value
        node.n += 1
        node.total += value
        bounds.update(float(node.W[a] / node.N[a]))


class Lookahead:
    """MCTS on a :class:`Game`: :meth:`search` runs simulations from a root (see the module
    docstring, step 4). With ``evaluate`` False, a terminal leaf whose reward is not known yet
    is valued by the network, and only the terminal an episode ends at is evaluated."""

    def __init__(self, game: Game, c_puct: float, evaluate: bool = True) -> None:
        self.game, self.c_puct, self.evaluate = game, c_puct, evaluate

    def expand(self, node: Node) -> float:
        """Set the node's actions and priors from the network; the network's value of it."""
        actions, prior, value = self.game.predict(node.state)
        node.actions, node.base, node.prior = actions, prior, prior.copy()
        node.N = np.zeros(len(actions), dtype=np.int64)
        node.W = np.zeros(len(actions), dtype=np.float64)
        return value

    def leaf_value(self, node: Node, final: bool = False) -> float:
        """A leaf's value: a terminal's reward (``final``: the episode ends there, so it is
        evaluated whatever ``evaluate`` says), else the network's value of it."""
        if node.terminal:
            if node.reward is None:
                if self.evaluate or final:
                    node.reward = float(self.game.reward(node.state))
                else:
                    known = self.game.known(node.state)
                    if known is None:
                        return self.game.predict(node.state)[2]
                    node.reward = float(known)
            return node.reward
        return self.expand(node)

    def child(self, node: Node, a: int) -> Node:
        found = node.children.get(a)
        if found is None:
            assert node.actions is not None
            state = self.game.step(node.state, node.actions[a])
            found = node.children[a] = Node(state, self.game.terminal(state))
        return found

    def simulate(self, root: Node, bounds: Bounds) -> None:
        """One simulation: descend by PUCT to a leaf, value it, back the value up."""
        node, path = root, []
        while node.expanded and not node.terminal:
            a = int(np.argmax(puct(node, self.c_puct, bounds)))
            path.append((node, a))
            node = self.child(node, a)
        backup(path, node, self.leaf_value(node), bounds)

    def search(
        self,
        root: Node,
        simulations: int,
        rng: np.random.Generator | None = None,
        alpha: float = 0.0,
        fraction: float = 0.0,
    ) -> np.ndarray:
        """Run ``simulations`` simulations from ``root`` (expanded first if need be), with
        Dirichlet(``alpha``) noise mixed into its priors at ``fraction``; its visit counts."""
        bounds = Bounds()
        if not root.expanded:
            backup([], root, self.expand(root), bounds)
        assert root.base is not None and root.N is not None
        if rng is not None and fraction > 0 and len(root.base) > 1:
            noise = rng.dirichlet(np.full(len(root.base), alpha))
            root.prior = (1.0 - fraction) * root.base + fraction * noise
        for _ in range(simulations):
            self.simulate(root, bounds)
        return root.N.copy()


@dataclass
class Episode:
    """One episode: the positions played (state, visit distribution over its actions), the
    actions taken, the terminal state and its reward."""

    positions: list[tuple[Any, np.ndarray]] = field(default_factory=list)
    moves: list[Any] = field(default_factory=list)
    terminal: Any = None
    reward: float = 0.0


def play(
    tree: Lookahead,
    start: Any,
    rng: np.random.Generator,
    *,
    simulations: int,
    temperature_moves: int,
    alpha: float,
    fraction: float,
) -> Episode:
    """Play one episode from ``start``: a search before every move, the move drawn by the visit
    counts for the first ``temperature_moves`` moves and the most visited afterwards."""
    root = Node(start, tree.game.terminal(start))
    episode = Episode()
    while not root.terminal:
        visits = tree.search(root, simulations, rng, alpha, fraction)
        pi = visits / visits.sum()
        episode.positions.append((root.state, pi))
        if len(episode.moves) < temperature_moves:
            a = int(rng.choice(len(pi), p=pi))
        else:
            a = int(np.argmax(visits))
        assert root.actions is not None
        episode.moves.append(root.actions[a])
        root = tree.child(root, a)
    episode.terminal = root.state
    episode.reward = tree.leaf_value(root, final=True)
    return episode


# ---------------------------------------------------------------------- the network
class PolicyValueNet(nn.Module):
    """Candidate features ``(A, FEATURES)`` -> one logit per candidate and the state's value."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.policy = nn.Linear(hidden, 1)
        self.value = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        with torch.no_grad():  # near-uniform priors and values near 0.5 at the start
            for layer in (self.policy, self.value[2]):
                layer.weight.uniform_(-0.003, 0.003)
                layer.bias.uniform_(-0.003, 0.003)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (logits,), value = self.many([x])
        return logits, value[0]

    def many(self, xs: Sequence[torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Several states at once: the logits of each, and their values stacked."""
        sizes = [len(x) for x in xs]
        h = self.trunk(torch.cat(list(xs)))
        logits = self.policy(h).squeeze(-1)
        empty = h.new_zeros(2 * h.shape[1])  # a state with no candidates pools to zeros
        pooled = torch.stack(
            [torch.cat([p.mean(0), p.amax(0)]) if len(p) else empty for p in torch.split(h, sizes)]
        )
        return torch.split(logits, sizes), torch.sigmoid(self.value(pooled)).squeeze(-1)


class Agent:
    """The network, its Adam optimiser and AlphaZero's update."""

    def __init__(self, net: PolicyValueNet, lr: float, l2: float) -> None:
        self.net = net
        self.opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=l2)

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        logits, value = self.net(torch.as_tensor(x, dtype=torch.float32))
        prior = torch.softmax(logits.double(), 0).numpy()
        return prior, float(value)

    def update(self, batch: Sequence[tuple[np.ndarray, np.ndarray, float]]) -> float:
        """One step on ``(features, pi, z)`` positions: mean of ``(v - z)^2 - pi . log p``."""
        xs = [torch.as_tensor(x, dtype=torch.float32) for x, _, _ in batch]
        logits, values = self.net.many(xs)
        z = torch.tensor([float(z) for _, _, z in batch])
        policy = torch.stack(
            [
                (torch.as_tensor(pi, dtype=torch.float32) * F.log_softmax(lg, 0)).sum()
                for (_, pi, _), lg in zip(batch, logits, strict=True)
            ]
        )
        loss = ((values - z) ** 2 - policy).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


# ---------------------------------------------------------------------- the pruning game
class FilterGame:
    """The pruning game on a graph (module docstring, steps 1-2). ``reward(state)`` is set by
    the method (the evaluation of the state's selection); ``agent`` gives the network's
    predictions."""

    def __init__(
        self,
        graph: Graph,
        names: Sequence[str],
        keywords: Mapping[str, Any],
        fraction: float,
        lbound: float,
    ) -> None:
        self.graph, self.names, self.keywords = graph, list(names), dict(keywords)
        predictor = keywords.get("latency")
        metric = "latency" if predictor is not None else next(iter(keywords))[len("target_") :]
        self.acc = Accounting(
            graph, metric, criteria.l1_norm, predictor.predict if predictor is not None else None
        )
        by_name = {g.name: g for g in graph.groups}
        self.groups = [by_name[n] for n in self.names]
        self.sizes = [g.size for g in self.groups]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        # the most filters a group may lose: it keeps at least lbound of them, and one
        self.room = [s - max(1, math.ceil(lbound * s - 1e-9)) for s in self.sizes]
        self.dense = self.acc.dense
        self.goal = (1.0 - fraction) * self.dense
        self._slack = 1e-9 * self.dense  # a target met exactly counts as met
        full = dict(zip(self.names, self.sizes, strict=True))
        self.share = [(self.dense - self.acc.value({**full, n: 1})) / self.dense for n in names]
        self.layer = embeddings(graph, self.names)[:, :STATIC]
        self.l1 = [_relative(criteria.l1_norm(g)) for g in self.groups]
        self.l2 = [_relative(criteria.l2_norm(g)) for g in self.groups]
        self.distances = [filter_distances(g) for g in self.groups]
        self._costs: dict[tuple[int, ...], float] = {}
        self._selections: dict[State, Picks] = {}
        self.rewards: dict[tuple[Any, ...], float] = {}  # by selection: a repeat is free
        self.agent: Agent | None = None
        # the evaluation of a terminal state's selection (set by the method)
        self.score: Callable[[State, Picks], float] = lambda state, picks: 0.0

    # ------------------------------------------------------------------ states
    def start(self) -> State:
        return tuple(() for _ in self.names)

    def cost(self, state: State) -> float:
        """The model's FLOPs / params / predicted latency after the state's removals (it
        depends only on how many filters each group lost)."""
        counts = tuple(len(r) for r in state)
        if counts not in self._costs:
            keep = {n: s - c for n, s, c in zip(self.names, self.sizes, counts, strict=True)}
            self._costs[counts] = self.acc.value(keep)
        return self._costs[counts]

    def met(self, state: State) -> bool:
        return self.cost(state) <= self.goal + self._slack

    def terminal(self, state: State) -> bool:
        return self.met(state) or all(
            len(r) >= room for r, room in zip(state, self.room, strict=True)
        )

    def step(self, state: State, action: Any) -> State:
        g = int(np.searchsorted(self.offsets, action, side="right")) - 1
        i = int(action) - int(self.offsets[g])
        return (*state[:g], (*state[g], i), *state[g + 1 :])

    def action(self, group: str, index: int) -> int:
        """The action that removes filter ``index`` of ``group``."""
        return int(self.offsets[self.names.index(group)]) + index

    def removed(self, state: State) -> dict[str, list[int]]:
        """``{group: filters in the order removed}``."""
        return {n: list(r) for n, r in zip(self.names, state, strict=True) if r}

    # ------------------------------------------------------------------ features
    def features(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """The legal actions of ``state`` and their features ``(A, FEATURES)``."""
        left = (self.cost(state) - self.goal) / max(self.dense - self.goal, 1e-12)
        actions, rows = [], []
        for g, removed in enumerate(state):
            if len(removed) >= self.room[g]:
                continue
            kept = np.ones(self.sizes[g], dtype=bool)
            kept[list(removed)] = False
            idx = np.flatnonzero(kept)
            dist = self.distances[g][np.ix_(idx, idx)].sum(1)
            mean = dist.mean()
            block = np.empty((len(idx), FEATURES), dtype=np.float32)
            block[:, 0] = self.l1[g][idx]
            block[:, 1] = self.l2[g][idx]
            block[:, 2] = dist / mean if mean > 0 else 1.0
            block[:, 3 : 3 + STATIC] = self.layer[g]
            block[:, 3 + STATIC] = len(removed) / self.sizes[g]
            block[:, 4 + STATIC] = self.share[g]
            block[:, 5 + STATIC] = min(max(left, 0.0), 1.0)
            actions.append(self.offsets[g] + idx)
            rows.append(block)
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, FEATURES), dtype=np.float32)
        return np.concatenate(actions), np.concatenate(rows)

    def predict(self, state: State) -> tuple[np.ndarray, np.ndarray, float]:
        assert self.agent is not None
        actions, x = self.features(state)
        prior, value = self.agent.predict(x)
        return actions, prior, value

    def reward(self, state: State) -> float:
        """The reward of a terminal state: 0 for a dead end, else its selection's score
        (computed once per selection, whatever path reaches it)."""
        if not self.met(state):
            return 0.0
        picks = self.selection(state)
        key = _key(picks)
        if key not in self.rewards:
            self.rewards[key] = self.score(state, picks)
        return self.rewards[key]

    def known(self, state: State) -> float | None:
        if not self.met(state):
            return 0.0
        return self.rewards.get(_key(self.selection(state)))

    # ------------------------------------------------------------------ selections
    def selection(self, state: State, keywords: Mapping[str, Any] | None = None) -> Picks:
        """The selection evaluated for a terminal state: each group keeps a prefix of its
        removal order, scaled by one factor to land within 1% of the target
        (:func:`~prunekit.methods.search.allocate`); the state's own filters where no scaling
        does."""
        if keywords is None and state in self._selections:
            return self._selections[state]
        order = self.removed(state)
        rates = {n: len(r) / self.sizes[self.names.index(n)] for n, r in order.items()}
        l1 = {n: self.l1[i] for i, n in enumerate(self.names)}

        def within(group: Any) -> torch.Tensor:
            gone = order.get(group.name, [])
            scores = len(gone) + torch.as_tensor(l1[group.name], dtype=torch.float64)
            for position, i in enumerate(gone):
                scores[i] = position
            return scores

        try:
            picks = allocate(self.graph, rates, keywords or self.keywords, within)
        except ConfigError:
            picks = {n: sorted(r) for n, r in order.items()}
        if keywords is None:
            self._selections[state] = picks
        return picks


def _key(picks: Picks) -> tuple[Any, ...]:
    return tuple(sorted((n, tuple(v)) for n, v in picks.items()))


def _relative(values: torch.Tensor) -> np.ndarray:
    v = values.double().numpy()
    mean = v.mean() if len(v) else 0.0
    return v / mean if mean > 0 else np.ones_like(v)


def filter_distances(group: Any) -> np.ndarray:
    """``D[i, j]``: the Euclidean distance between the filters of units ``i`` and ``j`` of
    ``group``, summed over its output-side layers with filters (zeros when it has none)."""
    total = np.zeros((group.size, group.size))
    for f in unit_filters(group):
        total += torch.cdist(f, f).numpy()
    return total


# ---------------------------------------------------------------------- options
@dataclass(frozen=True)
class LookaheadRLOptions(SearchOptions):
    simulations: int = option(
        16,
        help="MCTS simulations before every move",
        source="prunekit, for a CPU (AlphaZero 800; MuZero 50 on Atari); the paper's could "
        "not be read",
        low=1,
    )
    c_puct: float = option(
        1.25,
        help="weight of the prior term of PUCT",
        source="AlphaZero pseudocode pb_c_init 1.25 (the log term is left out)",
        low=0,
    )
    dirichlet_alpha: float = option(
        0.3,
        help="concentration of the Dirichlet noise mixed into the root priors",
        source="AlphaZero (chess)",
        low=0,
        low_open=True,
    )
    noise_fraction: float = option(
        0.25,
        help="weight of that noise in the root priors (0: none)",
        source="AlphaZero",
        low=0,
        high=1,
    )
    temperature_moves: int = option(
        30,
        help="moves of an episode drawn by visit counts; later moves take the most visited",
        source="AlphaGo Zero (the first 30 moves of a game)",
        low=0,
    )
    lbound: float = option(
        0.2,
        help="smallest fraction of a group's channels kept",
        source="prunekit: AMC's floor (official amc_search.py lbound 0.2)",
        low=0,
        high=1,
        high_open=True,
    )
    hidden: int = option(64, help="units of the network's hidden layers", source="prunekit", low=1)
    net_lr: float = option(
        1e-3,
        help="Adam learning rate of the network",
        source="prunekit (Adam's usual rate)",
        low=0,
        low_open=True,
    )
    l2: float = option(
        1e-4,
        help="L2 weight regularisation of the network (Adam weight decay)",
        source="AlphaZero: c = 1e-4",
        low=0,
    )
    train_steps: int = option(
        10, help="network updates after every episode", source="prunekit", low=0
    )
    batch: int = option(32, help="positions per network update", source="prunekit", low=1)
    window: int = option(
        10,
        help="episodes whose positions the network trains on (the most recent)",
        source="prunekit (AlphaZero trains on a window of recent games)",
        low=1,
    )
    evaluate_lookahead: bool = option(
        True,
        help="evaluate the terminal selections the lookahead reaches (False: the network "
        "values them until an episode ends there; more episodes for the same budget)",
        source="prunekit: the abstract credits the lookahead with the sample efficiency, so "
        "the terminals it reaches are scored; with False the network stands in for an unscored "
        "terminal as for any other leaf",
    )
    patience: int = option(
        3,
        help="episodes in a row that evaluate no new selection before the search stops",
        source="prunekit",
        low=1,
    )


class _Exhausted(Exception):
    """The budget allows no further evaluation."""


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """torch on ``n`` threads inside the block. The agent's network is small: on one thread
    its many tiny operations do not wait on a thread pool (prunekit's choice, as the search's
    worker processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------- the method
@register_method("lookahead_rl")
class LookaheadRL(Method):
    """Lookahead-guided RL filter selection (Wang & Li, WACV 2022), *reconstructed from the
    paper's abstract*: its method section could not be read and no official code was found,
    so this should be checked against the paper. From the abstract: RL over the sequence of
    filters removed, a network reading filter-related features, MCTS as lookahead, reward =
    the remaining network's performance. prunekit's choices: the AlphaZero scheme; one filter
    per move until the budget is met; the features (norms, distance to the layer's kept
    filters, AMC's layer embedding, budget left); the network; PUCT with root noise, leaves
    valued by the network and terminal selections by their accuracy without fine-tuning; the
    network trained on the visit counts and episode rewards; the best selection evaluated is
    removed.

    After :meth:`prune`: ``episodes`` (each one's removal order and reward), ``selections``
    (every selection evaluated, aligned with ``trials``) and ``best`` (the index applied)."""

    Options = LookaheadRLOptions

    def __init__(self) -> None:
        self.episodes: list[dict[str, Any]] = []
        self.selections: list[Picks] = []
        self.trials: list[Trial] = []
        self.best: int | None = None

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        with search_setup(self.id, ctx, opts) as setup:
            keywords = setup.keywords
            game = FilterGame(
                setup.graph, setup.names, keywords, setup.target.fraction, opts.lbound
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                states = self._search(setup, game)
            if self.best is None:
                raise ConfigError(
                    "lookahead_rl: no selection could be evaluated (budget too small?)"
                )
            picks = self.selections[self.best]
            if setup.target.kind == "latency":  # the applied selection is timed, not predicted
                picks = game.selection(states[self.best], verified(keywords))
            return setup.remove(picks)

    def _search(self, setup: Setup, game: FilterGame) -> list[State]:
        ctx, opts = setup.ctx, setup.opts
        rng = np.random.default_rng(ctx.seed)
        agent = Agent(PolicyValueNet(FEATURES, opts.hidden), opts.net_lr, opts.l2)
        game.agent = agent
        states: list[State] = []  # the terminal state of each selection evaluated
        recent: deque[list[tuple[State, np.ndarray, float]]] = deque(maxlen=opts.window)
        with setup.search() as search:

            def score(state: State, picks: Picks) -> float:
                with _threads(outer):  # the model is evaluated as every search does
                    trials = search.evaluate([picks])
                if not trials:
                    raise _Exhausted
                self.selections.append(picks)
                states.append(state)
                return trials[0].accuracy / 100.0 if trials[0].feasible else 0.0

            outer = torch.get_num_threads()
            game.score = score
            tree = Lookahead(game, opts.c_puct, opts.evaluate_lookahead)
            stale = 0
            with _threads(1):
                try:
                    while not search.exhausted and stale < opts.patience:
                        before = len(self.selections)
                        episode = play(
                            tree,
                            game.start(),
                            rng,
                            simulations=opts.simulations,
                            temperature_moves=opts.temperature_moves,
                            alpha=opts.dirichlet_alpha,
                            fraction=opts.noise_fraction,
                        )
                        self.episodes.append(
                            {"removed": game.removed(episode.terminal), "reward": episode.reward}
                        )
                        recent.append([(s, pi, episode.reward) for s, pi in episode.positions])
                        self._learn(agent, game, list(recent), opts, rng)
                        stale = stale + 1 if len(self.selections) == before else 0
                except _Exhausted:
                    pass
            self.trials, self.best = list(search.trials), search.best
        return states

    @staticmethod
    def _learn(
        agent: Agent,
        game: FilterGame,
        episodes: list[list[tuple[State, np.ndarray, float]]],
        opts: LookaheadRLOptions,
        rng: np.random.Generator,
    ) -> None:
        positions = [p for ep in episodes for p in ep]
        if not positions:
            return
        for _ in range(opts.train_steps):
            idx = rng.choice(len(positions), size=min(opts.batch, len(positions)), replace=False)
            batch = []
            for i in idx:
                state, pi, z = positions[int(i)]
                batch.append((game.features(state)[1], pi, z))
            agent.update(batch)


__all__ = [
    "FEATURES",
    "Agent",
    "Bounds",
    "Episode",
    "FilterGame",
    "Game",
    "Lookahead",
    "LookaheadRL",
    "LookaheadRLOptions",
    "Node",
    "PolicyValueNet",
    "backup",
    "filter_distances",
    "play",
    "puct",
]
