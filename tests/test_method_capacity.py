"""Capacity: reconstruction residuals and the greedy elimination worked out by hand (a large
filter the others rebuild goes before a small filter no other covers; a magnitude rule does the
opposite), the method removing it, and the target met within 1%."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import methods
from prunekit.methods.capacity import elimination_order, reconstruction_residuals
from target_check import prune_net

# F2 = 2 F0 + F1 (the dependency 2 F0 + F1 - F2 = 0); F3 small, alone in its direction
FILTERS = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [2.0, 1.0, 0], [0, 0, 0.5]], dtype=torch.float64)


def test_residuals_by_hand() -> None:
    # F0, F1, F2 each lie in the span of the other two; F3 is 0.5 away from the others' span
    res = reconstruction_residuals(FILTERS)
    assert res.tolist() == pytest.approx([0, 0, 0, 0.5], abs=1e-5)
    # the rounding-noise ridge leaves lam |a|^2: F0 = (F2 - F1) / 2 has the smallest |a|
    assert res[0] < res[1] and res[0] < res[2]
    # without F0: F1 is sqrt(1 - 1/5) from span(F2), F2 is 2 from span(F1), F3 0.5
    res = reconstruction_residuals(FILTERS[[1, 2, 3]])
    assert res.tolist() == pytest.approx([math.sqrt(0.8), 2.0, 0.5], abs=1e-9)


def test_elimination_order_by_hand() -> None:
    # first the dependent filter with the smallest rebuild coefficients: F0 = (F2 - F1) / 2
    # (|a|^2 = 0.5, against 5 for F1 = F2 - 2 F0 and F2 = 2 F0 + F1); then the smallest residual
    # of the rest each time: F3 (0.5), then F1 (0.894 against 2)
    assert elimination_order(FILTERS) == [0, 3, 1, 2]
    l1_order = torch.argsort(FILTERS.abs().sum(1), stable=True).tolist()
    assert l1_order[0] == 3  # magnitude removes the small, independent filter first


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(FILTERS.float()[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_method_removes_the_reconstructible_filter() -> None:
    model = Chain()
    data = TensorDataset(torch.randn(8, 3, 4, 4), torch.zeros(8, dtype=torch.long))
    ctx = methods.Context(
        model, data.tensors[0][:1], data, data, {"target_flops": 0.25}, options={"progress": False}
    )  # one of a's four channels: (3 + 2) of (12 + 8) MACs per position
    report = methods.get("capacity").prune(ctx)
    assert report.removed == {"a": [0]}


@pytest.mark.parametrize(
    ("net", "target"),
    [
        ("resnet", 0.3),
        pytest.param("resnet", 0.5, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.3, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.5, marks=pytest.mark.slow),
    ],
)
def test_target_met_within_one_percent(net: str, target: float) -> None:
    report, measured = prune_net("capacity", net, target)
    assert abs(measured - target) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9
