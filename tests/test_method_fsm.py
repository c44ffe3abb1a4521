"""FSM: the rectified-Gaussian expectation from BatchNorm statistics, the feature shift of each
channel worked by hand on a net where the largest filters shift the next layer least (a
magnitude rule removes another channel), the measured expectation where there is no BatchNorm,
the distribution optimisation and its rollback, equivalence of the compensated zeroed model and
the pruned one, and the end-to-end path on a residual and a depthwise net."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.criteria.feature_shift import relu6_expectation, relu_expectation
from prunekit.graph import build
from prunekit.methods.fsm import (
    compensation,
    distribution_optimisation,
    feature_shifts,
)
from prunekit.prune import remove_selected, select_channels
from test_every_method import TinyMobileNet, TinyResNet

PHI0 = 1 / math.sqrt(2 * math.pi)  # E[max(0, z)], z ~ N(0, 1)


def test_rectified_gaussian_expectation() -> None:
    mu = torch.tensor([0.0, 2.0, 1.0, -1.0])
    sigma = torch.tensor([1.0, 1.0, 0.0, 0.0])
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    ndtr2 = 0.5 * (1 + math.erf(2 / math.sqrt(2)))
    want = torch.tensor([PHI0, 2 * ndtr2 + phi2, 1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(relu_expectation(mu, sigma), want)
    # ReLU6 of N(6, 0): 6; of N(0, 1): all but the (negligible) mass above 6
    assert torch.allclose(
        relu6_expectation(torch.tensor([9.0, 0.0]), torch.tensor([0.0, 1.0])),
        torch.tensor([6.0, PHI0], dtype=torch.float64),
        atol=1e-8,
    )


class Net(nn.Module):
    """conv1 (1 -> 3, 1x1) -> bn1 -> ReLU -> conv2 (3 -> 2, 1x1) -> bn2 -> ReLU -> mean -> fc.

    bn1: channel 0 is N(0, 1) (E = 1/sqrt(2 pi)), channel 1 N(-3, 0.1²) (E ~ 0), channel 2 the
    constant 1 (E = 1). conv2 reads them through [1, -1], [5, 5] and [0.1, 0.3]. conv1's filters
    are 2, 3 and 0.5: channel 1 has the largest weights on both sides but shifts nothing."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([2.0, 3.0, 0.5]).reshape(3, 1, 1, 1))
            self.conv2.weight.copy_(
                torch.tensor([[1.0, 5.0, 0.1], [-1.0, 5.0, 0.3]])[..., None, None]
            )
            if bn:
                self.bn1.bias.copy_(torch.tensor([0.0, -3.0, 1.0]))
                self.bn1.weight.copy_(torch.tensor([1.0, 0.1, 0.0]))
            self.bn2.running_mean.copy_(torch.tensor([0.5, 0.6]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _group_of(graph, layer: str):
    return next(g for g in graph.groups if layer in g.out_layers)


def test_feature_shift_by_hand_differs_from_magnitude() -> None:
    model = Net().eval()
    x = torch.randn(4, 1, 3, 3)
    graph = build(model, x[:1])
    shifts, estimates = feature_shifts(model, graph, [(x, torch.zeros(4, dtype=torch.long))])
    group = _group_of(graph, "conv1")
    # mean over conv2's two outputs of |S[o, k] E_k|: PHI0 · (1 + 1) / 2, ~0, (0.1 + 0.3) / 2
    want = torch.tensor([PHI0, 0.0, 0.2], dtype=torch.float64)
    assert torch.allclose(shifts[group.name], want, atol=1e-12)
    assert torch.allclose(estimates[model.conv2].mean, torch.tensor([PHI0, 0.0, 1.0]).double())
    # FSM removes channel 1; the smallest filter of conv1 (magnitude) is channel 2
    assert int(shifts[group.name].argmin()) == 1
    assert int(model.conv1.weight.flatten().abs().argmin()) == 2


def test_without_batchnorm_the_expectation_is_measured() -> None:
    model = Net(bn=False).eval()
    with torch.no_grad():
        model.conv1.bias.copy_(torch.tensor([0.0, -10.0, 1.0]))
    # a constant input 1: conv1 gives 2, -7, 1.5; after the ReLU 2, 0, 1.5 everywhere
    x = torch.ones(2, 1, 3, 3)
    graph = build(model, x[:1])
    shifts, estimates = feature_shifts(model, graph, [(x, torch.zeros(2, dtype=torch.long))])
    assert model.conv2 not in estimates  # no BatchNorm before conv2: nothing to estimate from
    want = torch.tensor([2.0, 0.0, 0.2 * 1.5], dtype=torch.float64)
    assert torch.allclose(shifts[_group_of(graph, "conv1").name], want, atol=1e-6)


def test_compensation_by_hand() -> None:
    model = Net().eval()
    x = torch.randn(1, 1, 3, 3)
    graph = build(model, x)
    _, estimates = feature_shifts(model, graph, [(x, torch.zeros(1, dtype=torch.long))])
    removed = torch.tensor([False, False, True])  # channel 2 goes
    comp = compensation(model.conv2, model.bn2, estimates[model.conv2], removed, 0.0)
    # e_all = S E = [PHI0 + 0.1, -PHI0 + 0.3]; r = e_all / [0.5, 0.6] = [0.998, -0.165]:
    # only output 0 is compensated, to e_kept / r = PHI0 / r_0, variance x 2/3
    r0 = (PHI0 + 0.1) / 0.5
    assert comp.rows.tolist() == [0]
    assert torch.allclose(comp.mean, torch.tensor([PHI0 / r0], dtype=torch.float64))
    assert comp.var_scale == pytest.approx(2 / 3)
    comp.apply()
    assert model.bn2.running_mean[0].item() == pytest.approx(PHI0 / r0, rel=1e-6)
    assert model.bn2.running_mean[1].item() == pytest.approx(0.6)
    assert model.bn2.running_var.tolist() == pytest.approx([2 / 3, 1.0])


def test_compensation_is_rolled_back_when_the_loss_rises() -> None:
    model = Net().eval()
    x = torch.randn(1, 1, 3, 3)
    graph = build(model, x)
    _, estimates = feature_shifts(model, graph, [(x, torch.zeros(1, dtype=torch.long))])
    picks = {_group_of(graph, "conv1").name: [2]}
    before = model.bn2.running_mean.clone()
    rising = iter(range(100))
    kept = distribution_optimisation(
        model, graph, picks, estimates, [], 0.0, loss=lambda m, b: float(next(rising))
    )
    assert kept == [] and torch.equal(model.bn2.running_mean, before)
    falling = iter(range(100, 0, -1))
    kept = distribution_optimisation(
        model, graph, picks, estimates, [], 0.0, loss=lambda m, b: float(next(falling))
    )
    assert kept == ["conv2"] and not torch.equal(model.bn2.running_mean, before)


def test_compensated_zeroed_model_equals_the_pruned_one() -> None:
    torch.manual_seed(0)
    model = TinyResNet().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.normal_()
                m.running_mean.normal_()
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    batches = [(x, torch.randint(0, 4, (8,)))]
    graph = build(model, x[:2])
    dense = graph.plan([])
    shifts, estimates = feature_shifts(model, graph, batches)
    picks = select_channels(graph, target_flops=0.3, importance=lambda g: shifts[g.name])
    for name, idx in picks.items():
        graph.group(name).zero(idx)
    kept = distribution_optimisation(
        model, graph, picks, estimates, batches, 0.0, loss=lambda m, b: 0.0
    )
    assert kept  # every compensation kept (the loss never rises)
    zeroed = copy.deepcopy(model)
    remove_selected(graph, picks, dense)
    with torch.no_grad():
        assert torch.allclose(model(x), zeroed(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_end_to_end_meets_the_flops_target(net) -> None:
    torch.manual_seed(0)
    model = net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,)))
    x = data.tensors[0][:2]
    ctx = methods.Context(model, x, data, data, {"target_flops": 0.3}, batch_size=8)
    report = methods.get("fsm").prune(ctx)
    assert abs(report.flops_reduction - 0.3) <= 0.01
    dense = measure.count_flops(net(), x).flops
    assert abs(1 - measure.count_flops(model, x).flops / dense - 0.3) <= 0.01


def test_layer_by_layer_meets_the_target_and_reports_original_indices(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,)))
    x = data.tensors[0][:2]
    ctx = methods.Context(
        model, x, data, data, {"target_flops": 0.3}, batch_size=8, work_dir=tmp_path,
        options={"layer_epochs": 1, "progress": False},
    )  # fmt: skip
    report = methods.get("fsm").prune(ctx)
    assert abs(report.flops_reduction - 0.3) <= 0.01
    dense = measure.count_flops(TinyResNet(), x).flops
    assert abs(1 - measure.count_flops(model, x).flops / dense - 0.3) <= 0.01
    for change in report.groups:  # removed indices count against the original widths
        assert change.before - change.after == len(report.removed.get(change.name, []))
    assert sorted(p.name for p in tmp_path.glob("fsm_layer*.pt"))  # one phase per layer
