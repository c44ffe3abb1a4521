"""prune_channels and the magnitude criteria, on cases worked out by hand and on zoo models."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import prunekit
from prunekit import criteria, measure, workflow
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.models import create


class TwoConv(nn.Module):
    """conv(1->4) -> relu -> conv(4->2) -> flatten -> fc; filter norms set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 2, 1, bias=False)
        self.fc = nn.Linear(2 * 3 * 3, 3)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            # L1 norms of a's filters: 3, 1, 4, 2 (single weight each)
            self.a.weight.copy_(torch.tensor([3.0, -1.0, 4.0, -2.0]).view(4, 1, 1, 1))
            self.b.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu(self.a(x))), 1))


def test_l1_scores_by_hand_and_lowest_go_first() -> None:
    model = TwoConv()
    g = prunekit.graph.build(model, torch.randn(1, 1, 3, 3))
    group = g.group("a")
    assert criteria.l1_norm(group).tolist() == [3.0, 1.0, 4.0, 2.0]
    assert criteria.l2_norm(group).tolist() == [3.0, 1.0, 4.0, 2.0]
    report = prunekit.prune_channels(model, torch.randn(1, 1, 3, 3), ratio=0.5, importance="l1")
    assert report.removed["a"] == [1, 3]  # norms 1 and 2
    assert model.a.weight.flatten().tolist() == [3.0, 4.0]
    assert model.b.in_channels == 2 and model.a.out_channels == 2
    assert model.fc.out_features == 3  # protected


def test_scores_sum_over_coupled_layers() -> None:
    """Two convs feeding a residual add: a unit's L1 is the sum of both filters' L1."""

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Conv2d(1, 2, 1, bias=False)
            self.q = nn.Conv2d(1, 2, 1, bias=False)
            self.head = nn.Conv2d(2, 1, 1)
            self.protected_layers = ("head",)
            with torch.no_grad():
                self.p.weight.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
                self.q.weight.copy_(torch.tensor([-5.0, 0.5]).view(2, 1, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.p(x) + self.q(x))

    g = prunekit.graph.build(Res(), torch.randn(1, 1, 2, 2))
    (group,) = g.groups
    assert criteria.l1_norm(group).tolist() == [6.0, 2.5]


def test_ratio_zero_is_a_no_op() -> None:
    model = create("resnet20").eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    report = prunekit.prune_channels(model, x, ratio=0.0)
    assert report.removed == {} and report.params_after == report.params_before
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not getattr(model, "_prunekit_structure", {})


def test_ratio_near_one_keeps_a_channel_per_group() -> None:
    model = create("vgg11").eval()
    x = torch.randn(1, 3, 32, 32)
    report = prunekit.prune_channels(model, x, ratio=0.999)
    assert all(g.after == 1 for g in report.groups)
    assert model(x).shape == (1, 10)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize(
    ("name", "size"), [("resnet20", 32), ("mobilenetv2", 16), ("densenet40", 16)]
)
def test_flops_target_met_within_one_percent(name: str, size: int, scope: str) -> None:
    model = create(name).eval()
    x = torch.randn(1, 3, size, size)
    dense = measure.count_flops(model, x).flops
    report = prunekit.prune_channels(model, x, target_flops=0.5, scope=scope)
    measured = measure.count_flops(model, x).flops
    assert measured == report.flops_after  # the report is what the flop counter says
    assert abs(measured / dense - 0.5) <= 0.01
    assert measure.count_params(model).total == report.params_after
    assert model(x).shape == (1, 10)


def test_params_target_and_round_to() -> None:
    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    dense = measure.count_params(model).total
    report = prunekit.prune_channels(model, x, target_params=0.3, round_to=8)
    assert abs(measure.count_params(model).total / dense - 0.7) <= 0.01
    assert all(g.after % 8 == 0 for g in report.groups)


def test_ignore_keeps_a_layers_outputs_and_callable_importance() -> None:
    model = create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    prunekit.prune_channels(
        model,
        x,
        ratio=0.5,
        ignore=["layer1.0.conv1"],
        importance=lambda g: torch.arange(g.size, dtype=torch.float64),
    )
    assert model.layer1[0].conv1.out_channels == 16
    assert model.layer1[1].conv1.out_channels == 8
    # the callable's scores decide: channels with the highest index (highest score) are kept
    assert model._prunekit_structure["layer1.1.conv1"]["out"] == list(range(8, 16))


def test_graph_build_leaves_the_model_untouched_in_train_mode() -> None:
    model = create("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prunekit.graph.build(model, torch.randn(4, 3, 32, 32))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({}, "exactly one of"),
        ({"ratio": 0.5, "target_flops": 0.5}, "exactly one of"),
        ({"ratio": 1.0}, "ratio must be a fraction in [0, 1)"),
        ({"target_flops": 0.0}, "target_flops must be a fraction in (0, 1)"),
        ({"target_params": 1.5}, "target_params"),
        ({"ratio": 0.5, "scope": "model"}, "scope"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "importance": lambda g: torch.zeros(3)}, "importance returned shape"),
        ({"ratio": 0.5, "ignore": ["no.such.layer"]}, "no.such.layer"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as exc:
        prunekit.prune_channels(TwoConv(), torch.randn(1, 1, 3, 3), **kwargs)
    assert needle in str(exc.value)


def test_unknown_criterion_lists_known() -> None:
    with pytest.raises(UnknownNameError, match="l1, l2, random"):
        prunekit.prune_channels(TwoConv(), torch.randn(1, 1, 3, 3), ratio=0.5, importance="taylor2")


def test_unreachable_target_fails_clearly() -> None:
    with pytest.raises(ConfigError, match="cannot reach target_params"):
        prunekit.prune_channels(TwoConv(), torch.randn(1, 1, 3, 3), target_params=0.95)


def test_max_ratio_caps_what_a_global_selection_takes_from_one_layer() -> None:
    # group a: 8 filters of norm 0.1..0.8; group b: 8 filters of norm 10..17. Global scope on
    # raw scores (normalize=False) takes a's eight first; with max_ratio 0.5 at most four go
    model = nn.Sequential(nn.Conv2d(1, 8, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False))
    model.append(nn.Conv2d(8, 2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 9.0).view(8, 1, 1, 1) / 10)
        model[2].weight.copy_(torch.diag(torch.arange(10.0, 18.0)).view(8, 8, 1, 1))
    graph = prunekit.graph.build(model.eval(), torch.randn(1, 1, 2, 2))
    a, b = (g.name for g in graph.groups)
    free = prunekit.prune.select_channels(
        graph, ratio=0.5, scope="global", importance="l1", normalize=False
    )
    assert len(free[a]) == 7 and len(free.get(b, [])) == 1  # a keeps its one last channel
    capped = prunekit.prune.select_channels(
        graph, ratio=0.5, scope="global", importance="l1", normalize=False, max_ratio=0.5
    )
    assert capped[a] == [0, 1, 2, 3] and capped[b] == [0, 1, 2, 3]  # the lowest of each
    with pytest.raises(ConfigError, match="max_ratio must be a fraction in"):
        prunekit.prune.select_channels(graph, ratio=0.5, max_ratio=0.0)
    with pytest.raises(ConfigError, match="max_ratio must be a fraction in"):
        workflow.PruneConfig(model="lenet5", max_ratio=1.5).validate()
    with pytest.raises(ConfigError, match="max_ratio applies to criterion runs"):
        workflow.PruneConfig(model="lenet5", method="fpgm", max_ratio=0.5).validate()


def test_a_global_selection_that_nearly_empties_a_layer_says_so() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 1, bias=False))
    model.append(nn.Conv2d(8, 2, 1, bias=False))
    with torch.no_grad():  # seven tiny filters and one large in the first layer: divided by
        # their layer's mean, the seven score far below every filter of the second layer
        model[0].weight.copy_(torch.tensor([0.01] * 7 + [10.0]).view(8, 1, 1, 1))
        model[2].weight.copy_(torch.diag(torch.arange(10.0, 18.0)).view(8, 8, 1, 1))
    x = torch.randn(1, 1, 2, 2)
    with pytest.warns(UserWarning, match=r"nearly emptied 1 layer\(s\): 0 \(1 of 8 left\)"):
        prunekit.prune_channels(copy.deepcopy(model), x, ratio=0.5, scope="global")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # capped: no warning
        prunekit.prune_channels(model, x, ratio=0.5, scope="global", max_ratio=0.5)
