"""SSL: the group-Lasso proximal step, unit norms over both sides of a channel, removal of the
zero groups, sparsity training and the method end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit.methods.ssl as ssl
from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context


class TwoConv(nn.Module):
    """conv a(3->4)-bn-relu -> conv b(4->4)-bn-relu -> 2x2 pool -> flatten -> fc(16->3)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 3)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # channel c -> features 4c..4c+3
        return self.fc(x)


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def _group_of(graph, layer: str) -> str:
    return next(g.name for g in graph.groups if layer in g.out_layers)


def _ctx(model: nn.Module, target: dict[str, float], **options) -> Context:
    return Context(
        model, torch.randn(1, 3, 8, 8), _data(), _data(16), target, batch_size=16, options=options
    )


def test_unit_norm_covers_filters_and_consumer_channels() -> None:
    torch.manual_seed(0)
    model = TwoConv().eval()
    graph = build(model, torch.randn(1, 3, 8, 8))
    norms = ssl.unit_norms(graph)
    a, b, fc = model.a.weight, model.b.weight, model.fc.weight
    # unit i of a: its filter a[i] and the input channel b[:, i] that reads it
    want_a = [(a[i].pow(2).sum() + b[:, i].pow(2).sum()).sqrt() for i in range(4)]
    # unit j of b: its filter b[j] and the four fc columns of its flattened 2x2 map
    want_b = [(b[j].pow(2).sum() + fc[:, 4 * j : 4 * j + 4].pow(2).sum()).sqrt() for j in range(4)]
    assert torch.allclose(norms[_group_of(graph, "a")].float(), torch.stack(want_a).detach())
    assert torch.allclose(norms[_group_of(graph, "b")].float(), torch.stack(want_b).detach())


def test_zero_groups_and_only_those_are_removed_at_their_share() -> None:
    torch.manual_seed(0)
    model = TwoConv()
    with torch.no_grad():
        model.a.weight[1] = 0  # unit a1: filter and ...
        model.b.weight[:, 1] = 0  # ... the channel that reads it
        model.b.weight[2] = 0  # unit b2: filter and ...
        model.fc.weight[:, 8:12] = 0  # ... its flattened features
    before_a, before_b = model.a.weight.detach().clone(), model.b.weight.detach().clone()
    x = torch.randn(1, 3, 8, 8)
    graph = build(model.eval(), x)
    ga, gb = _group_of(graph, "a"), _group_of(graph, "b")
    units = {g.name: g.units for g in graph.groups}
    target = 1 - graph.plan([units[ga][1], units[gb][2]]).flops / graph.plan([]).flops

    method = methods.get("ssl")
    report = method.prune(_ctx(model, {"target_flops": target}, ssl_epochs=0))
    assert method.zero_groups == {ga: [1], gb: [2]}
    assert report.removed == {ga: [1], gb: [2]}
    assert torch.equal(model.a.weight, before_a[[0, 2, 3]])
    assert torch.equal(model.b.weight, before_b[[0, 1, 3]][:, [0, 2, 3]])
    assert model.fc.weight.shape == (3, 12)
    assert model(x).shape == (1, 3)


def test_proximal_step_by_hand() -> None:
    # filters (rows) first: row 0 has norm 5, shrunk by 1 -> x 4/5; row 1 has norm 0.5 <= 1 -> 0.
    # then channels (columns) of [[2.4, 3.2], [0, 0]]: norms 2.4 and 3.2, shrunk by 0.8 ->
    # x 2/3 and x 3/4
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    ssl.group_lasso_prox(w, 0, step_filter=1.0, step_channel=0.8)
    torch.testing.assert_close(w, torch.tensor([[1.6, 2.4], [0.0, 0.0]]))
    ssl.group_lasso_prox(w, 0, step_filter=1.0, step_channel=None)  # a zero row stays zero
    assert torch.all(torch.isfinite(w)) and torch.equal(w[1], torch.zeros(2))


def test_proximal_callback_uses_each_steps_learning_rate() -> None:
    torch.manual_seed(0)
    model = TwoConv()
    prox = ssl.GroupLassoProx(model, 1.0, 0.0, lr=0.5)
    w = model.a.weight
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with torch.no_grad():
        w.copy_(torch.ones_like(w))  # every filter of a: 27 ones, norm sqrt(27)
    norm = 27**0.5
    prox("step_end", {"optimizer": opt})  # shrunk by 0.5 * 1.0
    assert torch.allclose(w[0].norm(), torch.tensor(norm - 0.5))
    opt.param_groups[0]["lr"] = 0.25
    opt.step()  # no gradients: the weights stay, the step's lr is recorded
    prox("step_end", {"optimizer": opt})
    assert torch.allclose(w[0].norm(), torch.tensor(norm - 0.75))


def test_penalty_training_drives_group_norms_down() -> None:
    def trained(lam: float) -> float:
        torch.manual_seed(0)
        model = TwoConv()
        ctx = _ctx(
            model,
            {"target_flops": 0.5},
            lambda_filter=lam,
            lambda_channel=lam,
            ssl_epochs=2,
            lr=0.05,
        )
        ssl.sparsity_train(model, ctx, ssl.SSL().options(ctx))
        graph = build(model.eval(), torch.randn(1, 3, 8, 8))
        return sum(float(v.sum()) for v in ssl.unit_norms(graph).values())

    assert trained(1.0) < 0.8 * trained(0.0)


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="lambda_filter"):
        methods.get("ssl").prune(_ctx(TwoConv(), {"target_flops": 0.3}, lambda_filter=-1.0))
    with pytest.raises(ConfigError, match="epsilon"):
        methods.get("ssl").prune(_ctx(TwoConv(), {"target_flops": 0.3}, epsilon=2.0))
    with pytest.raises(ConfigError, match="convolutions"):
        model = nn.Sequential(nn.Linear(3, 4))
        methods.get("ssl").prune(_ctx(model, {"target_flops": 0.3}))


def test_method_meets_flops_target_on_three_conv_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    x = torch.randn(1, 3, 8, 8)
    dense = measure.count_flops(model.eval(), x).flops
    method = methods.get("ssl")
    report = method.prune(_ctx(model, {"target_flops": 0.5}, ssl_epochs=1, lambda_filter=1e-3))
    model.eval()
    measured = measure.count_flops(model, x).flops
    assert measured == report.flops_after
    assert abs(report.flops_reduction - 0.5) <= 0.02
    assert abs(measured / dense - 0.5) <= 0.02
    assert isinstance(method.zero_groups, dict)
    assert model(x).shape == (1, 3)
