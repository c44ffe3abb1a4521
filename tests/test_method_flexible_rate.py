"""flexible_rate (FlexPruner) on a case worked out by hand.

Two 1x1 convs and a classifier, on inputs x = (1, 1):

* conv ``a`` (no bias): a0 = x0 (filter norm 1), a1 = 0.5 x1 (norm 0.5);
* conv ``b`` (no bias): b0 = relu(a0) (norm 1), b1 = 4 relu(a1) = 2 x1 (norm 4);
* ``fc``: logits = (b1, -b1); every label is class 0.

Dense loss: -log softmax(2, -2)[0] = log(1 + e^-4) = 0.01815. Removing a1 silences b1: logits
(0, 0), loss log 2 = 0.6931; removing b0 changes nothing. Both remove 4 MACs (8 of 24 FLOPs).
The filter-norm ranking inside each group offers a1 (group a) and b0 (group b); FlexPruner's
greedy step takes the least loss per cost saved: b0. A magnitude rule (lowest norm anywhere)
would remove a1 and wreck the output.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import methods
from prunekit.graph import build
from prunekit.methods.flexible_rate import (
    Candidate,
    FlexibleRate,
    FlexibleRateOptions,
    greedy_step,
)
from prunekit.targets import Target


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.5]]).view(2, 2, 1, 1))
            self.b.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 4.0]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = F.relu(self.b(x))
        return self.fc(torch.flatten(x, 1))


X = torch.ones(4, 2, 1, 1)
Y = torch.zeros(4, dtype=torch.long)
BASE = math.log1p(math.exp(-4.0))


def test_candidates_cost_the_hand_computed_losses():
    model = Tiny().eval()
    graph = build(model, X[:1])  # FLOPs of one sample
    loop = FlexibleRate(
        graph,
        [(X, Y)],
        FlexibleRateOptions(step=0.5),
        lambda roots: float(graph.plan(roots).flops),
    )
    found = {c.group: c for c in loop.candidates()}
    a, b = graph.groups[0].name, graph.groups[1].name
    assert found[a].indices == [1] and found[b].indices == [0]  # lowest norm in each group
    assert found[a].loss == pytest.approx(math.log(2.0), abs=1e-6)
    assert found[b].loss == pytest.approx(BASE, abs=1e-6)
    assert found[a].saved == found[b].saved == 8  # 4 MACs each
    assert greedy_step(list(found.values()), BASE).group == b
    assert torch.equal(model.a.weight, Tiny().a.weight)  # candidates are put back


def test_flexible_rate_removes_the_harmless_filter_a_magnitude_rule_would_keep():
    model = Tiny()
    before = model.eval()(X)
    data = torch.utils.data.TensorDataset(X, Y)
    ctx = methods.Context(
        model,
        X[:1],
        data,
        data,
        Target("flops", 0.3),
        calib_batches=1,
        batch_size=4,
        options={"progress": False, "step": 0.5},
    )
    report = methods.get("flexible_rate").prune(ctx)
    assert (model.a.out_channels, model.b.out_channels) == (2, 1)
    assert report.flops_after == 16 and report.flops_before == 24
    assert torch.allclose(model(X), before)  # b0 never reached the output
    assert float(model.b.weight.detach().flatten()[-1]) == 4.0  # b1 kept, with its weights


def test_greedy_step_divides_loss_by_latency_saved():
    """Loss per millisecond, not loss alone: B costs more loss (0.15 against 0.10) but saves
    three times the latency (3 ms against 1 ms), so 0.05 per ms beats 0.10 per ms."""
    a = Candidate("a", [0], loss=1.10, saved=1.0)
    b = Candidate("b", [0], loss=1.15, saved=3.0)
    assert greedy_step([a, b], base_loss=1.0) is b
    assert greedy_step([a, Candidate("c", [0], loss=0.9, saved=0.0)], 1.0) is a  # saves nothing
    assert greedy_step([], 1.0) is None
