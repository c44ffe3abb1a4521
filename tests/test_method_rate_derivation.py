"""Automatic pruning-rate derivation: the pruning error, the thresholds and the derived counts
worked out by hand; two layers with the same filters but a hundredfold different loss gradient
get different rates (the insensitive one loses its filters, a uniform or global magnitude rule
would split them evenly); the target met within 1%."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import methods
from prunekit.methods.rate_derivation import derived_count, loss_and_gradients, thresholds
from target_check import prune_net


def test_counts_and_thresholds_by_hand() -> None:
    # pruning errors (cumulative L1 of the smallest filters): 1, 3, 6, 10
    l1 = torch.tensor([3.0, 1.0, 4.0, 2.0])
    assert derived_count(l1, 3.5, 3) == 2
    assert derived_count(l1, 0.5, 3) == 0
    assert derived_count(l1, 100.0, 3) == 3  # every group keeps one channel
    # Th = eps * L / (G * max|g|): 0.1 * 2 / (2 * 0.5) and 0.1 * 2 / (2 * 2)
    th = thresholds(2.0, {"a": 0.5, "b": 2.0, "c": 0.0}, 0.1)
    assert th["a"] == pytest.approx(0.2 * 2 / 3)
    assert th["b"] == pytest.approx(0.05 * 2 / 3)
    assert th["c"] == float("inf")


FILTERS = torch.tensor([[1.0, 0], [0, 2.0], [3.0, 0], [0, 4.0]])


class TwoBranches(nn.Module):
    """a and b have the same filters; a's branch is read 100x more strongly than b's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1, bias=False)
        self.b = nn.Conv2d(2, 4, 1, bias=False)
        self.ca = nn.Conv2d(4, 2, 1, bias=False)
        self.cb = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_(FILTERS[:, :, None, None])
            w = torch.randn(2, 4, 1, 1)
            self.ca.weight.copy_(w)
            self.cb.weight.copy_(w / 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.ca(torch.relu(self.a(x))) + self.cb(torch.relu(self.b(x)))).mean((2, 3))


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.rand(16, 2, 2, 2, generator=g), torch.randint(0, 2, (16,), generator=g)
    )


def test_gradient_sets_the_rate_not_the_magnitude() -> None:
    model, data = TwoBranches(), _data()
    x, y = data.tensors
    loss, grads = loss_and_gradients(model, [(x[:8], y[:8]), (x[8:], y[8:])])
    with torch.no_grad():
        assert loss == pytest.approx(float(F.cross_entropy(model(x), y)))
    # b's weights move the loss 100x less: its threshold is 100x larger
    assert grads[model.b].abs().max() == pytest.approx(grads[model.a].abs().max() / 100, rel=1e-4)
    ctx = methods.Context(
        model, data.tensors[0][:1], data, data, {"target_flops": 0.25}, calib_batches=2,
        batch_size=8, options={"progress": False},
    )  # fmt: skip
    report = methods.get("rate_derivation").prune(ctx)
    # two of the eight channels (each 2 + 2 of 32 MACs per position), both from b, the two
    # smallest filters; L1 (uniform or global) would take filter 0 of each branch
    assert report.removed == {"b": [0, 1]}


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
    report, measured = prune_net("rate_derivation", net, target)
    assert abs(measured - target) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9
