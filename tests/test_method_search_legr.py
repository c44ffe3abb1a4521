"""LeGR: the affine-transformed global ranking (worked by hand), its mutation, one ranking for
several budgets, and a killed search that resumes to the same result."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.graph import build
from prunekit.methods import search as search_mod
from prunekit.methods.base import Context
from prunekit.methods.legr import LeGR, mutate, ranking_picks, transformed_importance
from prunekit.prune import select_channels
from prunekit.targets import Target


def _net_with_norms(first: list[float], second: list[float]) -> ConvBNNet:
    """c1 and c2 with 4 filters each whose L2 norms are ``first`` and ``second``."""
    net = ConvBNNet(widths=(4, 4))
    with torch.no_grad():
        for conv, norms in ((net.c1, first), (net.c2, second)):
            per = conv.weight[0].numel()
            for i, v in enumerate(norms):
                conv.weight[i].fill_(v / math.sqrt(per))
    return net.eval()


def test_affine_transform_reorders_the_global_ranking_by_hand() -> None:
    # c1 norms 1, 2, 3, 4; c2 norms 10, 20, 30, 40. Raw global ranking: the three lowest are all
    # of c1 (1, 2, 3). With c1: (1, -0.5) -> 0.5, 1.5, 2.5, 3.5 and c2: (0.04, 0) -> 0.4, 0.8,
    # 1.2, 1.6, the three lowest are c2.0 (0.4), c1.0 (0.5), c2.1 (0.8).
    net = _net_with_norms([1, 2, 3, 4], [10, 20, 30, 40])
    graph = build(net, torch.randn(1, 3, 8, 8))
    from prunekit.criteria import l2_norm

    norms = {g.name: l2_norm(g).double() for g in graph.groups}
    assert torch.allclose(norms["c1"], torch.tensor([1.0, 2, 3, 4], dtype=torch.float64))
    kw = {"ratio": 3 / 8, "scope": "global", "normalize": False}
    identity = transformed_importance(norms, {"c1": (1.0, 0.0), "c2": (1.0, 0.0)})
    assert select_channels(graph, importance=identity, **kw) == {"c1": [0, 1, 2]}
    learned = transformed_importance(norms, {"c1": (1.0, -0.5), "c2": (0.04, 0.0)})
    assert select_channels(graph, importance=learned, **kw) == {"c1": [0], "c2": [0, 1]}


def test_one_ranking_serves_every_budget() -> None:
    net = ConvBNNet(widths=(16, 32, 64)).eval()
    graph = build(net, torch.randn(1, 3, 8, 8))
    from prunekit.criteria import l2_norm

    norms = {g.name: l2_norm(g).double() for g in graph.groups}
    transform = {"c1": (2.0, 0.1), "c2": (0.5, 0.0), "c3": (1.0, -0.05)}
    low = ranking_picks(graph, norms, transform, Target("flops", 0.2))
    high = ranking_picks(graph, norms, transform, Target("flops", 0.5))
    # one threshold moving along one ranking: the larger budget removes a superset
    for name, idx in low.items():
        assert set(idx) <= set(high.get(name, []))
    assert sum(map(len, high.values())) > sum(map(len, low.values()))


class _FixedRng:
    """choice -> the given indices; normal -> the given values, in order."""

    def __init__(self, picks: list[int], normals: list[float]) -> None:
        self.picks, self.normals = picks, list(normals)

    def choice(self, n: int, size: int, replace: bool = True) -> np.ndarray:
        return np.array(self.picks[:size])

    def normal(self, mean: float, std: float) -> float:
        return mean + std * self.normals.pop(0)


def test_mutation_changes_only_the_drawn_layers_by_hand() -> None:
    parent = {"a": (1.0, 0.0), "b": (2.0, 0.5), "c": (1.0, 1.0), "d": (0.5, 0.0)}
    spread = {"a": 1.0, "b": 0.2, "c": 1.0, "d": 1.0}
    # 0.5 * 4 layers = 2 draws: "b" twice (with replacement): one mutation of "b".
    # alpha: 2 * exp(sigma * step * z) with sigma 1, step 0.5, z = 1 -> 2 * e^0.5
    # kappa: 0.5 + spread_b * z' with z' = -1 -> 0.3
    rng = _FixedRng([1, 1], [1.0, -1.0])
    child = mutate(parent, spread, rng, fraction=0.5, sigma=1.0, step=0.5)  # type: ignore[arg-type]
    assert child["a"] == parent["a"] and child["c"] == parent["c"] and child["d"] == parent["d"]
    assert child["b"][0] == pytest.approx(2 * math.exp(0.5))
    assert child["b"][1] == pytest.approx(0.3)


def _ctx(model, work_dir, **options) -> Context:  # type: ignore[no-untyped-def]
    data = random_data(32)
    return Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": 0.4},
        batch_size=8,
        options={"progress": False, **options},
        work_dir=work_dir,
    )


SMALL = {"search_budget": "6", "population": 3, "sample": 2, "finetune_steps": 1}


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    base = ConvBNNet(widths=(8, 12, 16)).eval()
    real = search_mod.score_picks
    calls = {"n": 0, "die_after": 10**9}

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] >= calls["die_after"]:
            raise KeyboardInterrupt  # the process is killed here
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(search_mod, "score_picks", counting)
    clean = LeGR()
    clean_model = copy.deepcopy(base)
    clean_report = clean.prune(_ctx(clean_model, tmp_path / "clean", **SMALL))
    total = calls["n"]
    assert total >= 4

    calls.update(n=0, die_after=3)  # killed after 3 evaluations
    with pytest.raises(KeyboardInterrupt):
        LeGR().prune(_ctx(copy.deepcopy(base), tmp_path / "killed", **SMALL))
    state = torch.load(tmp_path / "killed" / "legr.search.pt", weights_only=True)
    assert sum(r["trial"]["feasible"] for r in state["records"]) == 3

    calls.update(n=0, die_after=10**9)
    resumed = LeGR()
    model = copy.deepcopy(base)
    report = resumed.prune(_ctx(model, tmp_path / "killed", **SMALL))
    assert calls["n"] == total - 3  # only the evaluations left were run
    assert resumed.transform == clean.transform
    assert report.removed == clean_report.removed
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), clean_model(x))


def test_registered_and_meets_target(tmp_path) -> None:
    model = ConvBNNet(widths=(8, 12, 16)).eval()
    report = methods.get("legr").prune(_ctx(model, tmp_path, **SMALL))
    assert abs(report.flops_reduction - 0.4) <= 0.01
