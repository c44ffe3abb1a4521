"""Ramanujan-graph pruning at initialisation: the spectral figures of small bipartite graphs worked
out by hand, the choice of the better-connected graph where magnitude would keep the other, and
the method end to end (exact layer densities, the chosen candidate is the best scored, weights
re-drawn at initialisation, the per-layer report)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.methods.base import Context
from prunekit.methods.ramanujan import biadjacency, choose, graph_score, imdb, judge


def _circulant() -> torch.Tensor:
    """6 x 6, output i joined to inputs i, i+1, i+3 (mod 6): one connected 3-regular graph."""
    b = torch.zeros(6, 6)
    for i in range(6):
        for j in (0, 1, 3):
            b[i, (i + j) % 6] = 1
    return b


def _two_blocks() -> torch.Tensor:
    """6 x 6, two disjoint complete K(3,3): 3-regular too, but in two pieces."""
    b = torch.zeros(6, 6)
    b[:3, :3] = 1
    b[3:, 3:] = 1
    return b


def test_spectral_figures_by_hand() -> None:
    # circulant singular values |1 + w^k + w^3k|, w = e^(i pi / 3): 3, sqrt 3, sqrt 3, 1, 1, 1
    s = graph_score(_circulant())
    assert s is not None
    assert (s.d_left, s.d_right) == (3.0, 3.0)
    assert s.lambda_1 == pytest.approx(3.0)
    assert s.mu == pytest.approx(math.sqrt(3))
    assert s.bound == pytest.approx(2 * math.sqrt(2))
    assert s.ramanujan_gap == pytest.approx(2 * math.sqrt(2) - math.sqrt(3))  # 1.0964
    assert s.spectral_gap == pytest.approx(2 * math.sqrt(2) - math.sqrt(3))
    assert s.ramanujan
    # every input has degree 3: one 3-left-regular subgraph, the graph itself
    assert imdb(_circulant()) == pytest.approx(2 * math.sqrt(2) - math.sqrt(3))

    # two components: the second singular value equals the first, 3 > 2 sqrt 2
    t = graph_score(_two_blocks())
    assert t is not None
    assert t.mu == pytest.approx(3.0)
    assert t.ramanujan_gap == pytest.approx(2 * math.sqrt(2) - 3)  # -0.1716
    assert not t.ramanujan


def test_sparse_graphs_and_empty_nodes() -> None:
    two = torch.zeros(6, 6)
    for i in range(6):
        two[i, i] = two[i, (i + 1) % 6] = 1
    assert graph_score(two) is None  # mean degree 2 < 3: not scored, as the official code
    padded = torch.zeros(8, 9)
    padded[:6, :6] = _circulant()  # two outputs and three inputs without an edge are dropped
    s = graph_score(padded)
    assert s is not None and s.d_left == 3.0 and s.mu == pytest.approx(math.sqrt(3))


def test_imdb_averages_the_left_regular_subgraphs() -> None:
    # inputs 0-5 of degree 3 (the circulant), inputs 6-8 of degree 6 (joined to every output)
    b = torch.cat([_circulant(), torch.ones(6, 3)], dim=1)
    # the degree-6 subgraph is the complete K(3,6): singular values 3 sqrt 2, 0, 0 -> mu = 0,
    # d_l = 6, d_r = 3: gap sqrt 5 + sqrt 2
    want = ((2 * math.sqrt(2) - math.sqrt(3)) + (math.sqrt(5) + math.sqrt(2))) / 2
    assert imdb(b) == pytest.approx(want)


def test_choice_follows_the_graph_not_the_weights() -> None:
    weight = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    weight[_two_blocks().bool()] += 1.0  # the block edges are the large weights
    candidates = [_two_blocks().bool(), _circulant().bool()]
    best, scores = choose(candidates, "ramanujan_gap")
    assert best == 1
    assert scores[0] == pytest.approx(2 * math.sqrt(2) - 3)
    # magnitude, keeping the 18 largest of 36, would keep exactly the two blocks
    keep = weight.flatten().topk(18).indices
    magnitude = torch.zeros(36, dtype=torch.bool)
    magnitude[keep] = True
    assert torch.equal(magnitude.reshape(6, 6), candidates[0])
    assert choose(candidates, "imdb")[0] == 1
    assert choose(candidates, "spectral_gap")[0] == 1


def test_conv_graph_reads_inputs_times_kernel_positions() -> None:
    mask = torch.ones(4, 2, 3, 3)
    assert biadjacency(mask).shape == (4, 18)


class Conv(nn.Conv2d):
    pass


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = Conv(3, 16, 3, padding=1)
        self.c2 = Conv(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def test_method_keeps_the_best_scored_candidate_at_initialisation(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.3)  # a "trained" model the method must not score
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,)))
    ctx = Context(
        model,
        data[0][0].unsqueeze(0),
        data,
        data,
        {"target_sparsity": 0.6},
        options={"progress": False, "candidates": 4, "allocation": "uniform"},
    )
    method = methods.get("ramanujan")
    report = method.prune(ctx)
    assert method.at_initialisation
    assert abs(report.sparsity - 0.6) < 0.01
    chosen = masks.get_masks(model)
    for name, row in method.layers.items():
        scored = [s for s in row["candidate_scores"] if s is not None]
        assert row["ramanujan_gap"] == pytest.approx(max(scored))
        assert row["candidate_scores"][row["chosen"]] == pytest.approx(max(scored))
        assert row["ramanujan"] == (row["ramanujan_gap"] >= 0)
        # uniform allocation: weights 432 + 2304 + 64 (fc, dense); 0.6 * 2800 / 2736 per layer
        assert chosen[name].sparsity == pytest.approx(0.6 * 2800 / 2736, abs=1e-3)
    assert judge(model)["c2.weight"]["ramanujan_gap"] == pytest.approx(
        method.layers["c2.weight"]["ramanujan_gap"]
    )
    kept = masks.finalize(model).c2.weight
    assert kept[kept != 0].std() > 0.01  # re-drawn by the architecture's initialisation
    method.save_layers(tmp_path / "layers.json")
    saved = json.loads((tmp_path / "layers.json").read_text())
    assert set(saved["layers"]) == {"c1.weight", "c2.weight"}
