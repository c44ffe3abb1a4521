"""HAP: Hutchinson's estimate on losses whose Hessian is known, the sensitivity
``Tr(H_SS)/|S| · ||w_S||²`` of channels worked by hand (which a magnitude rule orders
differently), the per-group cap, and the end-to-end path on a residual and a depthwise net."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.criteria.hessian import hutchinson_diagonal
from prunekit.graph import build
from prunekit.methods.hap import capped, hap_scores
from test_every_method import TinyMobileNet, TinyResNet


class Params(nn.Module):
    """Returns its parameter whatever the input: the loss is then a function of it alone."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(value.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w


BATCH = [(torch.zeros(1, 1), torch.zeros(1))]


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    # L = ½ Σ a_ij w_ij² has H = diag(a): v ⊙ Hv = v² a = a for every Rademacher v
    a = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]])
    model = Params(torch.randn(2, 3))
    diag = hutchinson_diagonal(
        model,
        [model.w],
        BATCH,
        3,
        torch.Generator().manual_seed(0),
        lambda out, _: 0.5 * (a * out**2).sum(),
    )[0]
    assert torch.allclose(diag, a)
    assert torch.allclose(diag.sum(1), torch.tensor([6.0, 4.5]))  # the trace of each row


def test_hutchinson_trace_of_a_coupled_block() -> None:
    # L = ½ (w0 + w1)²: H = [[1, 1], [1, 1]], trace 2; each v ⊙ Hv is 1 + v0 v1 (noisy)
    model = Params(torch.zeros(2))
    diag = hutchinson_diagonal(
        model,
        [model.w],
        BATCH,
        2000,
        torch.Generator().manual_seed(0),
        lambda out, _: 0.5 * out.sum() ** 2,
    )[0]
    assert abs(float(diag.sum()) - 2.0) < 0.15


class Hidden(nn.Module):
    """Linear(2 -> 3) -> ReLU -> Linear(3 -> 1): the hidden units are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3, bias=False)
        self.fc = nn.Linear(3, 1)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 1.0], [3.0, 3.0], [0.5, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.a(x)))


def test_sensitivity_by_hand_differs_from_magnitude() -> None:
    model = Hidden()
    graph = build(model, torch.zeros(1, 2))
    (group,) = graph.groups
    # Hutchinson values per weight: rows' traces 2, 0.002, 4 over 2 weights each
    diag = {model.a.weight: torch.tensor([[1.0, 1.0], [0.001, 0.001], [2.0, 2.0]])}
    scores = hap_scores(graph, diag)[group.name]
    # Ω = Tr/|S| · ||w||²: 1 · 2, 0.001 · 18, 2 · 0.5
    assert torch.allclose(scores, torch.tensor([2.0, 0.018, 1.0], dtype=torch.float64))
    assert int(scores.argmin()) == 1  # the filter of largest norm is the least sensitive
    assert int(model.a.weight.norm(dim=1).argmin()) == 2  # a magnitude rule removes unit 2


def test_cap_keeps_the_most_sensitive_channels() -> None:
    scores = torch.tensor([3.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    out = capped(scores, 0.5)  # at most 2 of 4 removed: the two highest kept
    assert out[0] == float("inf") and out[2] == float("inf")
    assert out[1] == 1.0 and out[3] == 0.5


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_end_to_end_meets_the_flops_target(net) -> None:
    torch.manual_seed(0)
    model = net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,)))
    x = data.tensors[0][:2]
    ctx = methods.Context(
        model, x, data, data, {"target_flops": 0.3}, batch_size=8, options={"n_v": 2}
    )
    report = methods.get("hap").prune(ctx)
    assert abs(report.flops_reduction - 0.3) <= 0.01
    dense = measure.count_flops(net(), x).flops
    assert abs(1 - measure.count_flops(model, x).flops / dense - 0.3) <= 0.01
