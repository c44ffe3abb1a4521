"""lookahead_rl (Wang & Li, WACV 2022, reconstructed from the abstract): PUCT and the backup by
hand; a lookahead that overrules a myopic value; a one-layer net where the best pair of filters
to remove is one that both the greedy one-step choice and the L1 rule miss, found by the method;
the filter features by hand; the target met within 1% on the residual and the depthwise net; a
killed search resumed to the same result; bad options refused by name."""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.lookahead_rl import (
    FEATURES,
    Bounds,
    FilterGame,
    Lookahead,
    LookaheadRL,
    Node,
    backup,
    play,
    puct,
)
from prunekit.methods.search import group_names, score_picks
from test_every_method import NETS
from test_method_search_core import check_resume


# ---------------------------------------------------------------------- the tree search
def test_puct_selection_and_backup_by_hand() -> None:
    node = Node("s", terminal=False)
    node.actions = np.array([10, 11, 12])
    node.prior = np.array([0.5, 0.3, 0.2])
    node.N = np.array([2, 1, 0])
    node.W = np.array([1.2, 0.9, 0.0])
    node.n, node.total = 4, 2.6  # its own expansion (0.5) and the three visits below it
    bounds = Bounds()
    bounds.update(0.3)
    bounds.update(0.9)
    # Q = 0.6, 0.9 and, unvisited, the node's mean 0.65; normalised over [0.3, 0.9]:
    # 0.5, 1.0, 0.5833. U = 1.25 P sqrt(4) / (1 + N) = 0.4167, 0.375, 0.5.
    assert puct(node, 1.25, bounds) == pytest.approx([0.5 + 1.25 / 3, 1.375, 0.35 / 0.6 + 0.5])
    assert int(np.argmax(puct(node, 1.25, bounds))) == 1
    # action 1 disappoints: a leaf worth 0.2 below it
    leaf = Node("t", terminal=True)
    backup([(node, 1)], leaf, 0.2, bounds)
    assert (leaf.n, leaf.total) == (1, 0.2)
    assert node.N.tolist() == [2, 2, 0] and node.W.tolist() == pytest.approx([1.2, 1.1, 0.0])
    assert (node.n, node.total) == (5, pytest.approx(2.8))
    assert (bounds.low, bounds.high) == (0.2, 0.9)
    # Q = 0.6, 0.55, mean 0.56 -> 4/7, 0.5, 0.36/0.7 over [0.2, 0.9];
    # U = 1.25 P sqrt(5) / (1 + N) = 0.4659, 0.2795, 0.5590: the unvisited action is next
    s5 = math.sqrt(5)
    expected = [0.4 / 0.7 + 1.25 * 0.5 * s5 / 3, 0.5 + 1.25 * 0.3 * s5 / 3, 0.36 / 0.7 + 0.25 * s5]
    assert puct(node, 1.25, bounds) == pytest.approx(expected)
    assert int(np.argmax(puct(node, 1.25, bounds))) == 2
    same = Bounds()
    same.update(0.4)
    assert same.normalize(np.array([0.4, 0.7])).tolist() == [0.4, 0.7]  # no spread: unchanged


class TwoSteps:
    """Two moves, two actions each. The network is myopic: it values the state after A (0) at
    0.8 and after B (1) at 0.3, as the accuracy right after one removal would (and every end
    state at 0.5); but the terminal rewards are AA 0.5, AB 0.4, BA 0.9, BB 0.1, so the best
    play starts with B."""

    rewards: ClassVar[dict[tuple[int, ...], float]] = {
        (0, 0): 0.5,
        (0, 1): 0.4,
        (1, 0): 0.9,
        (1, 1): 0.1,
    }
    values: ClassVar[dict[tuple[int, ...], float]] = {
        (): 0.5,
        (0,): 0.8,
        (1,): 0.3,
        **dict.fromkeys(rewards, 0.5),
    }

    def __init__(self) -> None:
        self.evaluated: list[tuple[int, ...]] = []

    def step(self, state: tuple[int, ...], action: int) -> tuple[int, ...]:
        return (*state, int(action))

    def terminal(self, state: tuple[int, ...]) -> bool:
        return len(state) == 2

    def predict(self, state: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, float]:
        return np.array([0, 1]), np.array([0.5, 0.5]), self.values[state]

    def reward(self, state: tuple[int, ...]) -> float:
        self.evaluated.append(state)
        return self.rewards[state]

    def known(self, state: tuple[int, ...]) -> float | None:
        return self.rewards[state] if state in self.evaluated else None


def test_the_lookahead_overrules_a_myopic_value() -> None:
    game = TwoSteps()
    greedy = max((0, 1), key=lambda a: game.values[(a,)])
    assert greedy == 0 and max(game.rewards[0, b] for b in (0, 1)) == 0.5  # greedy ends at 0.5
    short = Lookahead(game, 1.25).search(Node((), False), 6)
    assert short.tolist() == [5, 1]  # too short to reach B's terminals: as greedy
    game = TwoSteps()
    visits = Lookahead(game, 1.25).search(Node((), False), 16)
    assert visits[1] > visits[0]  # B, whose subtree holds the 0.9
    assert sorted(game.evaluated) == sorted(TwoSteps.rewards)  # each terminal evaluated once
    # an episode: the lookahead's move, then the best reply
    game = TwoSteps()
    rng = np.random.default_rng(0)
    episode = play(Lookahead(game, 1.25), (), rng, **PLAY)
    assert episode.moves == [1, 0] and episode.reward == 0.9


PLAY = {"simulations": 16, "temperature_moves": 0, "alpha": 0.3, "fraction": 0.0}


def test_without_lookahead_evaluations_the_network_stands_in() -> None:
    """``evaluate_lookahead=False``: unscored terminals inside the tree take the network's
    value, so this myopic network leads the play to A, and only the end it reaches is scored."""
    game = TwoSteps()
    episode = play(Lookahead(game, 1.25, evaluate=False), (), np.random.default_rng(0), **PLAY)
    assert episode.moves[0] == 0 and episode.reward <= 0.5
    assert game.evaluated == [episode.terminal]


# ---------------------------------------------------------------------- a net by hand
R0, P, Q, G, H = range(5)


class Cancel(nn.Module):
    """Three one-hot classes; conv ``a`` (3 -> 5, 1x1) then a protected head, no nonlinearity.

    Filters (weights on input channels 0, 1, 2) and head columns (class logits they add):

    * r0 (0.5, 0, 0) -> (2, 0, 0): class 0's evidence, 1 on a class-0 sample;
    * p (2, 0, 0) -> (0, 1, -1) and q (2, 0, 0) -> (0, -1, 1): on a class-0 sample they add
      (0, 2, -2) and (0, -2, 2), which cancel: without both, nothing changes; without one, the
      other hands the sample to class 1 or 2;
    * g (0, 0.4, 0) -> (0, 2.5, 0) and h (0, 0.6, 0) -> (0, 2, 0): class 1's evidence, 1.0 and
      1.2, either enough against the bias 0.5 of class 2 (the class with no evidence).

    Removing two of the five filters: only {p, q} keeps all three samples right. One removal
    alone keeps them right only for g or h, and g leaves the larger margin (the greedy first
    choice); every pair with g or h loses a class. The two lowest L1 norms are g (0.4) and r0
    (0.5): a magnitude rule loses class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 5, 1, bias=False)
        self.fc = nn.Linear(5, 3)
        self.protected_layers = ("fc",)
        filters = [[0.5, 0, 0], [2, 0, 0], [2, 0, 0], [0, 0.4, 0], [0, 0.6, 0]]
        head = [[2, 0, 0], [0, 1, -1], [0, -1, 1], [0, 2.5, 0], [0, 2, 0]]
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor(filters).view(5, 3, 1, 1))
            self.fc.weight.copy_(torch.tensor(head).T)
            self.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.a(x).flatten(1))


def _classes() -> TensorDataset:
    y = torch.arange(3)
    return TensorDataset(F.one_hot(y, 3).float()[:, :, None, None], y)


# conv 3 x 5 + head 5 x 3 + 3 = 33 params; one filter carries 3 + 3: two filters are 12 / 33
TWO_FILTERS = {"target_params": 12 / 33}


def _accuracy(removed: list[int]) -> float:
    data = _classes()
    picks = {"a": removed} if removed else {}
    return score_picks(
        Cancel().eval(), data.tensors[0][:1], picks, data, data, batch_size=3, seed=0
    )


def test_the_hand_case_is_as_described() -> None:
    assert _accuracy([]).accuracy == 100.0
    singles = {i: _accuracy([i]) for i in range(5)}
    assert [singles[i].accuracy for i in range(5)] == pytest.approx([200 / 3] * 3 + [100.0] * 2)
    greedy = max(range(5), key=lambda i: singles[i].key)
    assert greedy == G  # g's removal leaves the larger class-1 margin
    pairs = {(i, j): _accuracy([i, j]).accuracy for i in range(5) for j in range(i + 1, 5)}
    assert pairs[P, Q] == 100.0
    assert all(acc == pytest.approx(200 / 3) for pair, acc in pairs.items() if pair != (P, Q))
    l1 = Cancel().a.weight.abs().sum((1, 2, 3))
    assert sorted(torch.argsort(l1)[:2].tolist()) == [R0, G]  # the magnitude rule's pair


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_method_removes_the_pair_greedy_and_l1_miss(seed: int) -> None:
    model = Cancel()
    data = _classes()
    ctx = methods.Context(
        model,
        data.tensors[0][:1],
        data,
        data,
        TWO_FILTERS,
        batch_size=3,
        seed=seed,
        # fewer evaluations than the 10 pairs; moves by the most visited action
        options={"progress": False, "search_budget": "6", "temperature_moves": 0},
    )
    method = methods.get("lookahead_rl")
    assert isinstance(method, LookaheadRL)
    report = method.prune(ctx)
    assert report.removed == {"a": [P, Q]}
    assert report.params_after == 21 and model.a.out_channels == 3
    assert method.trials[method.best].accuracy == 100.0
    first = method.episodes[0]["removed"]["a"]
    assert first[0] in (P, Q) and sorted(first) == [P, Q]  # the lookahead's first move
    assert len(method.trials) <= 6
    with torch.no_grad():
        assert (model(data.tensors[0]).argmax(1) == data.tensors[1]).all()


def test_filter_features_by_hand() -> None:
    model = Cancel().eval()
    graph = build(model, _classes().tensors[0][:1])
    names = group_names(graph)
    assert names == ["a"]
    game = FilterGame(graph, names, TWO_FILTERS, 12 / 33, lbound=0.2)
    assert game.room == [4]  # keeps at least one of five
    actions, x = game.features(game.start())
    assert actions.tolist() == [0, 1, 2, 3, 4] and x.shape == (5, FEATURES)
    l1 = np.array([0.5, 2, 2, 0.4, 0.6])
    assert x[:, 0] == pytest.approx(l1 / l1.mean())
    assert x[:, 1] == pytest.approx(l1 / l1.mean())  # one weight per filter: L2 = L1
    pts = np.array([[0.5, 0], [2, 0], [2, 0], [0, 0.4], [0, 0.6]])
    dist = np.hypot(*(pts[:, None] - pts[None]).transpose(2, 0, 1))
    sums = dist.sum(1)
    assert x[:, 2] == pytest.approx(sums / sums.mean(), rel=1e-6)
    assert x[:, -3] == pytest.approx(0.0)  # nothing removed yet
    assert x[:, -2] == pytest.approx(24 / 33)  # keeping one filter saves 4 x 6 of 33 params
    assert x[:, -1] == pytest.approx(1.0)  # the whole budget to go
    # p goes: q is recomputed against the filters kept, the budget is half met
    state = game.step(game.start(), game.action("a", P))
    assert state == ((P,),) and not game.terminal(state)
    actions, x = game.features(state)
    assert actions.tolist() == [R0, Q, G, H]
    kept = [R0, Q, G, H]
    sums = dist[np.ix_(kept, kept)].sum(1)
    assert x[:, 2] == pytest.approx(sums / sums.mean(), rel=1e-6)
    assert x[:, -3] == pytest.approx(0.2) and x[:, -1] == pytest.approx(0.5)
    done = game.step(state, game.action("a", Q))
    assert game.terminal(done) and game.selection(done) == {"a": [P, Q]}


# ---------------------------------------------------------------------- through the core
FAST = {"search_budget": "5", "simulations": 4, "hidden": 16, "train_steps": 2}


@pytest.mark.parametrize("net", ["resnet", "depthwise"])
def test_flops_target_met_within_one_percent(net: str) -> None:
    build_net, shape, classes = NETS[net]
    torch.manual_seed(0)
    model = build_net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, *shape, generator=g), torch.randint(0, classes, (32,)))
    example = data.tensors[0][:2]
    ctx = methods.Context(
        model,
        example,
        data,
        data,
        {"target_flops": 0.3},
        batch_size=16,
        options={"progress": False, **FAST},
    )
    method = LookaheadRL()
    report = method.prune(ctx)
    dense = measure.count_flops(build_net(), example).flops
    measured = 1 - measure.count_flops(model, example).flops / dense
    assert abs(measured - 0.3) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9
    assert report.removed == method.selections[method.best]
    assert 1 <= len(method.trials) <= 5 and len(method.selections) == len(method.trials)
    for trial in method.trials:  # every selection evaluated lands on the target
        assert abs(trial.flops_reduction - 0.3) <= 0.01
    with torch.no_grad():
        assert torch.isfinite(model.eval()(example)).all()


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch) -> None:
    options = {"search_budget": "6", "simulations": 4, "hidden": 8, "train_steps": 2}
    clean, resumed = check_resume(LookaheadRL, options, tmp_path, monkeypatch)
    assert clean.episodes == resumed.episodes
    assert clean.selections == resumed.selections
    assert clean.best == resumed.best


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("simulations", 0),
        ("noise_fraction", 1.5),
        ("dirichlet_alpha", 0),
        ("lbound", 1.0),
        ("window", 0),
        ("net_lr", -1),
        ("search_budget", "ten"),
    ],
)
def test_bad_options_are_refused_by_name(option: str, value: object) -> None:
    data = _classes()
    ctx = methods.Context(
        Cancel(),
        data.tensors[0][:1],
        data,
        data,
        TWO_FILTERS,
        batch_size=3,
        options={"progress": False, option: value},
    )
    with pytest.raises(ConfigError, match=option):
        LookaheadRL().prune(ctx)


def test_the_model_is_left_alone_when_refused() -> None:
    model = Cancel()
    before = copy.deepcopy(model.state_dict())
    data = _classes()
    ctx = methods.Context(
        model, data.tensors[0][:1], data, data, {"target_sparsity": 0.5}, batch_size=3
    )
    with pytest.raises(ConfigError, match="target_flops or target_params"):
        LookaheadRL().prune(ctx)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
