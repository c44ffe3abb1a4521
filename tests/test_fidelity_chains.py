"""Chains (one layer's channels read by one conv or Linear layer, through the nonlinearity) in
1-D and flattened nets, and L1-filter skipping a layer its sensitivity analysis finds fragile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
import prunekit.methods
from prunekit import models
from prunekit.graph import build

CHAIN_METHODS = ["l1_filter", "thinet", "lasso_channel"]


def context(
    model: nn.Module, data: TensorDataset, target: dict, **options
) -> prunekit.methods.Context:  # type: ignore[no-untyped-def]
    return prunekit.methods.Context(
        model,
        data.tensors[0][:1],
        data,
        data,
        target,
        calib_batches=2,
        batch_size=32,
        seed=0,
        options=options,
    )


@pytest.mark.parametrize("method_id", CHAIN_METHODS)
def test_mnist1d_cnn_prunes_its_conv_relu_conv_chains(method_id: str) -> None:
    torch.manual_seed(0)
    model = models.create("mnist1d_cnn", num_classes=10, in_channels=1, input_size=(40,)).eval()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.randn(64, 1, 40, generator=g), torch.randint(0, 10, (64,), generator=g)
    )
    options = {"val_batches": 1} if method_id == "l1_filter" else {}
    if method_id == "l1_filter":
        options["max_drop"] = 100.0  # an untrained net: every layer counts as robust
    report = prunekit.methods.get(method_id).prune(
        context(model, data, {"target_flops": 0.3}, **options)
    )
    assert abs(report.flops_reduction - 0.3) <= 0.01
    # the three convs are chains (conv3 is read by the classifier through a flatten)
    assert set(report.removed) == {"conv1", "conv2", "conv3"}
    assert model.conv2.in_channels == model.conv1.out_channels < 25
    assert model.classifier.in_features == model.conv3.out_channels * 5
    assert model(data.tensors[0]).shape == (64, 10)


class Chain1d(nn.Module):
    """conv1 (1->8, k3) -> F.relu -> conv2 (8->8, k3) -> F.relu -> flatten -> fc. conv2 ignores
    input channels 0 and 5, whose conv1 filters are the largest."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 12, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.conv2.weight[:, [0, 5]] = 0.0
            self.conv1.weight[[0, 5]] *= 20.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


@pytest.mark.parametrize("method_id", ["thinet", "lasso_channel"])
def test_reconstruction_on_a_conv1d_chain_removes_the_unused_channels(method_id: str) -> None:
    torch.manual_seed(2)
    model = Chain1d().eval()
    data = TensorDataset(torch.randn(64, 1, 12), torch.randint(0, 4, (64,)))
    graph = build(model, data.tensors[0][:1])
    dense = graph.plan([]).flops
    two_each = [u for g in graph.groups for u in g.units[:2]]
    target = 1 - graph.plan(two_each).flops / dense  # a uniform 2-of-8 over both chains
    x = data.tensors[0]
    report = prunekit.methods.get(method_id).prune(context(model, data, {"target_flops": target}))
    assert report.removed["conv1"] == [0, 5]  # they contribute nothing: not a magnitude rule
    assert len(report.removed["conv2"]) == 2
    assert model(x).shape == (64, 4)


class Fragile(nn.Module):
    """Gaussian 5-vectors; the label is the sign of ``sum_i (1 + 0.01 i) x_i``.

    ``a`` (5->10, 1x1): channels ``2i`` and ``2i+1`` are ``+x_i`` and ``-x_i``, so after the ReLU
    each carries half of one input: every channel is needed (fragile). ``b`` (10->20): channels
    0-9 copy a's; channels 10-19 have tiny filters that fc ignores (robust). ``fc`` computes the
    label's logit exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(5, 10, 1, bias=False)
        self.b = nn.Conv2d(10, 20, 1, bias=False)
        self.fc = nn.Linear(20, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.zero_()
            self.b.weight.zero_()
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            for i in range(5):
                self.a.weight[2 * i, i] = 1 + 0.01 * i
                self.a.weight[2 * i + 1, i] = -(1 + 0.01 * i)
                self.fc.weight[1, 2 * i] = 1.0
                self.fc.weight[1, 2 * i + 1] = -1.0
            for c in range(10):
                self.b.weight[c, c] = 1.0
            self.b.weight[10:, 0] = 0.001

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b(F.relu(self.a(x))))
        return self.fc(x.mean((2, 3)))


def fragile_data(n: int = 400) -> TensorDataset:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(n, 5, 1, 1, generator=g)
    y = ((x[:, :, 0, 0] * (1 + 0.01 * torch.arange(5))).sum(1) > 0).long()
    return TensorDataset(x, y)


def test_l1_filter_skips_the_layer_its_sensitivity_analysis_finds_fragile() -> None:
    model = Fragile().eval()
    data = fragile_data()
    graph = build(model, data.tensors[0][:1])
    b = graph.group("b")
    target = 1 - graph.plan(b.units[10:16]).flops / graph.plan([]).flops  # six of b's channels
    method = prunekit.methods.get("l1_filter")
    report = method.prune(context(model, data, {"target_flops": target}))
    assert method.baseline_accuracy == 100.0
    # pruning a alone at 10% (one channel) already costs more than max_drop: a is skipped
    assert method.sensitivity["a"][0][1] < 98.0
    assert method.tolerances["a"] == 0.0
    assert "a" not in report.removed and model.a.out_channels == 10
    # b's tiny filters go first, and b alone meets the target
    assert len(report.removed["b"]) == 6 and set(report.removed["b"]) <= set(range(10, 20))
    assert abs(report.flops_reduction - target) <= 0.01


def test_l1_filter_raises_max_drop_when_the_robust_layers_cannot_meet_the_target() -> None:
    model = Fragile().eval()
    data = fragile_data()
    graph = build(model, data.tensors[0][:1])
    b_alone = 1 - graph.plan(graph.group("b").units[1:]).flops / graph.plan([]).flops
    method = prunekit.methods.get("l1_filter")
    report = method.prune(context(model, data, {"target_flops": b_alone + 0.05}))
    assert method.max_drop_used > 2.0 and method.tolerances["a"] > 0
    assert report.removed["a"] and abs(report.flops_reduction - (b_alone + 0.05)) <= 0.01
    # no group loses more than its tolerance: past it, the analysis saw the layer fail
    for name, size in (("a", 10), ("b", 20)):
        assert len(report.removed.get(name, [])) <= method.tolerances[name] * size + 1e-9
