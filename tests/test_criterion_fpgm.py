"""FPGM (He et al., CVPR 2019) on filters placed by hand: distance sums worked out exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.criteria.geometric_median import distance_sums, fpgm


class PointConv(nn.Module):
    """conv a (1->4, kernel 1x2): each filter is a point in the plane; then conv b, fc."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, (1, 2), bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 2, 1, bias=False)
        self.fc = nn.Linear(2 * 3 * 2, 3)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor(points).view(4, 1, 1, 2))
            self.bn.weight.copy_(torch.tensor([5.0, -3.0, 0.1, 7.0]))  # must not count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu(self.bn(self.a(x)))), 1))


class Residual(nn.Module):
    """relu(bn(a(x))) + b(x): a and b produce the same four units, c reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 2, 1)
        self.fc = nn.Linear(2 * 5 * 5, 3)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.a(x))) + self.b(x)
        return self.fc(torch.flatten(self.c(y), 1))


def _x() -> torch.Tensor:
    return torch.randn(1, 1, 3, 3)


def test_distance_sums_by_hand() -> None:
    # (0,0), (1,0), (0,1), (10,10): pairwise 1, 1, sqrt(200); sqrt(2), sqrt(181); sqrt(181)
    model = PointConv([(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (10.0, 10.0)])
    group = prunekit.graph.build(model, _x()).group("a")
    expected = [
        1 + 1 + math.sqrt(200),
        1 + math.sqrt(2) + math.sqrt(181),
        1 + math.sqrt(2) + math.sqrt(181),
        math.sqrt(200) + math.sqrt(181) + math.sqrt(181),
    ]
    scores = fpgm(group)
    assert scores.dtype == torch.float64
    assert scores.tolist() == pytest.approx(expected, rel=1e-15, abs=0)


def test_point_nearest_the_median_scores_lowest_and_is_pruned() -> None:
    # (1,1) is the geometric median of these four points: it is the replaceable one
    points = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (10.0, 10.0)]
    expected = [
        1 + math.sqrt(2) + math.sqrt(181),  # (1,0): to (0,1), (1,1), (10,10)
        math.sqrt(2) + 1 + math.sqrt(181),  # (0,1)
        1 + 1 + math.sqrt(162),  # (1,1)
        math.sqrt(181) + math.sqrt(181) + math.sqrt(162),  # (10,10)
    ]
    model = PointConv(points)
    scores = fpgm(prunekit.graph.build(model, _x()).group("a"))
    assert scores.tolist() == pytest.approx(expected, rel=1e-15, abs=0)
    assert int(scores.argmin()) == 2

    before = model.a.weight.detach().clone()
    report = prunekit.prune_channels(model, _x(), ratio=0.25, importance=fpgm)
    assert report.removed["a"] == [2]
    assert model.a.out_channels == 3
    assert torch.equal(model.a.weight.detach(), before[[0, 1, 3]])


def test_distance_sums_match_an_explicit_double_loop() -> None:
    w = torch.randn(6, 3, 2, 2)
    flat = w.reshape(6, -1).double()
    loop = [sum(float((flat[i] - flat[j]).norm()) for j in range(6)) for i in range(6)]
    assert distance_sums(w).tolist() == pytest.approx(loop, rel=1e-12)


def test_residual_group_adds_the_scores_of_each_layer() -> None:
    model = Residual()
    graph = prunekit.graph.build(model, torch.randn(1, 3, 5, 5))
    (group,) = [g for g in graph.groups if {"a", "b"} <= set(g.out_layers)]
    assert group.size == 4
    # each layer compares only its own filters; BatchNorm's scales are skipped
    a_only = distance_sums(model.a.weight)
    b_only = distance_sums(model.b.weight)
    assert torch.allclose(fpgm(group), a_only + b_only, rtol=1e-12, atol=0)
    assert not torch.allclose(fpgm(group), a_only)
