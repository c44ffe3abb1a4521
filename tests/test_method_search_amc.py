"""AMC: the action clipping that guarantees the budget (by hand, then on a network for any
policy), the layer embedding, and a killed search that resumes to the same result."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nets import ConvBNNet
from prunekit import criteria
from prunekit.graph import build
from prunekit.methods.amc import AMC, AMCOptions, _Env, clip_keep, embeddings
from prunekit.methods.search import group_names
from test_method_search_core import check_resume


def test_clip_keep_by_hand() -> None:
    # the model costs 100 + 10 k when this layer keeps k channels; the budget is 150
    cost = lambda k: 100 + 10 * k  # noqa: E731
    assert clip_keep(8, 2, cost, 150) == 5  # wants 8, at most 5 fit: 100 + 50 = 150
    assert clip_keep(3, 2, cost, 150) == 3  # fits: kept as asked
    assert clip_keep(8, 2, cost, 110) == 2  # even the lower bound misses: the lower bound


@pytest.mark.parametrize("policy", ["keep_all", "random", "alternate"])
def test_every_episode_meets_the_budget_whatever_the_policy(policy: str) -> None:
    net = ConvBNNet(widths=(16, 32, 64)).eval()
    graph = build(net, torch.randn(1, 3, 8, 8))
    names = group_names(graph)
    env = _Env(graph, names, {"target_flops": 0.5}, 0.5, AMCOptions(), criteria.l1_norm)
    rng = np.random.default_rng(0)
    calls = iter(range(100))
    actions = {
        "keep_all": lambda s: 1.0,  # unclipped, this keeps the dense model
        "random": lambda s: float(rng.uniform(0.2, 1.0)),
        "alternate": lambda s: 1.0 if next(calls) % 2 == 0 else 0.2,
    }[policy]
    transitions, picks, keep = env.episode(actions)
    widths = {n: round(keep[n] * g.size) for n, g in zip(names, graph.groups, strict=True)}
    assert env.acc.value(widths) <= env.goal  # the clipped strategy meets the budget
    assert all(k >= 0.2 - 1e-9 for k in keep.values())  # never below lbound
    assert len(transitions) == len(names) and transitions[-1][3]  # one step per layer, last done
    # the model evaluated lands on the target (removals scaled by one factor)
    from prunekit.prune import selection_roots

    reached = 1 - graph.plan(selection_roots(graph, picks)).flops / env.acc.dense
    assert abs(reached - 0.5) <= 0.01
    if policy == "keep_all":
        # the first layers keep everything they can; the last ones pay for it
        assert keep[names[0]] == 1.0 and keep[names[-1]] < 0.5


def test_embedding_is_normalised_per_column() -> None:
    net = ConvBNNet(widths=(8, 16, 32)).eval()
    graph = build(net, torch.randn(1, 3, 8, 8))
    emb = embeddings(graph, group_names(graph))
    assert emb.shape == (3, 10)
    assert list(emb[:, 0]) == [0.0, 0.5, 1.0]  # t
    assert list(emb[:, 2]) == [0.0, pytest.approx(5 / 13), 1.0]  # c_in 3, 8, 16
    assert list(emb[:, 3]) == [0.0, pytest.approx(1 / 3), 1.0]  # n 8, 16, 32
    assert (emb[:, 7:] == [0.0, 0.0, 1.0]).all()  # reduced, rest, a_{t-1} before the walk


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch) -> None:
    options = {"search_budget": "6", "warmup": 2, "hidden": 16, "batch": 4}
    clean, resumed = check_resume(AMC, options, tmp_path, monkeypatch)
    assert clean.strategies == resumed.strategies
    assert clean.best == resumed.best
