"""Iterative Taylor pruning: the first step removes the lowest hand-computed Taylor scores of the
whole network, every step removes maps_per_step channels until the target, the FLOPs regulariser
moves the pick to the costly layer, and the method end to end."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nets import ConvBNNet, random_data
from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.methods.taylor import flops_savings, taylor_scores


def _ctx(model: nn.Module, data: TensorDataset, target: dict[str, float], **options) -> Context:  # type: ignore[no-untyped-def]
    return Context(
        model,
        data.tensors[0][:1].clone(),
        data,
        data,
        target,
        calib_batches=2,
        batch_size=8,
        options={"progress": False, **options},
    )


class TwoOneByOne(nn.Module):
    """1x1 convs a (2->4) -relu- b (4->3) -> pool -> fc (protected); a's channel 2 has a zero
    filter, so its activation, hence activation * gradient, is zero: Taylor score 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(2, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 3, 1, bias=False)
        self.fc = nn.Linear(3, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight[2] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(torch.relu(self.a(x))).mean((2, 3)))


def _hand_scores(model: TwoOneByOne, batches) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Per layer: mean over examples of |mean over positions of z * dL/dz|, L2-normalised."""
    terms: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    for x, y in batches:
        za = model.a(x).detach().requires_grad_(True)
        zb = model.b(torch.relu(za))
        zb.retain_grad()
        out = model.fc(zb.mean((2, 3)))
        F.cross_entropy(out, y, reduction="sum").backward()
        terms["a"].append((za * za.grad).double().mean((2, 3)).abs())
        terms["b"].append((zb * zb.grad).double().mean((2, 3)).abs())
    out = {}
    for name, t in terms.items():
        s = torch.cat(t).mean(0)
        out[name] = (s / s.norm()).detach()
    return out


def _flops(wa: int, wb: int) -> int:
    """TwoOneByOne on a 3x3 input: a 2*2*wa*9, b 2*wa*wb*9, fc 2*wb*2."""
    return 36 * wa + 18 * wa * wb + 4 * wb


def test_first_step_removes_the_lowest_hand_computed_scores_globally() -> None:
    model = TwoOneByOne()
    data = random_data(32, (2, 3, 3), 2)
    calibration = _ctx(model, data, {"target_flops": 0.5}).calibration()
    hand = _hand_scores(copy.deepcopy(model), calibration)
    assert float(hand["a"][2]) == 0.0  # the zero filter
    flat = sorted((float(s), name, i) for name, v in hand.items() for i, s in enumerate(v))
    expected: dict[str, list[int]] = {}
    for _, name, i in flat[:2]:  # the two lowest of the whole network
        expected.setdefault(name, []).append(i)
    assert 2 in expected["a"]
    # a target met exactly by those two channels: the first step is also the last
    na, nb = len(expected.get("a", [])), len(expected.get("b", []))
    target = 1 - _flops(4 - na, 3 - nb) / _flops(4, 3)
    ctx = _ctx(model, data, {"target_flops": target}, maps_per_step=2, finetune_steps=0)
    method = methods.get("taylor")
    report = method.prune(ctx)
    assert [{n: sorted(v) for n, v in step.items()} for step in method.history] == [expected]
    assert report.flops_before == _flops(4, 3) == 372
    assert report.flops_after == _flops(4 - na, 3 - nb)


class OneGroup(nn.Module):
    """a (1->16, 1x1) -relu- pool -> fc (protected). On a 2x2 input the FLOPs are
    2*16*4 (a) + 2*16*2 (fc) = 12 per channel of a: linear in its width."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 16, 1, bias=False)
        self.fc = nn.Linear(16, 2)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.a(x)).mean((2, 3)))


def test_each_step_removes_maps_per_step_until_the_target() -> None:
    torch.manual_seed(0)
    model = OneGroup()
    original = copy.deepcopy(model)
    ctx = _ctx(model, random_data(32, (1, 2, 2), 2), {"target_flops": 0.5}, maps_per_step=3)
    ctx.options["finetune_steps"] = 0
    method = methods.get("taylor")
    report = method.prune(ctx)
    # 192 FLOPs, goal 96 (+-1.92): 16 -> 13 (156) -> 10 (120); removing 3 more would give 84,
    # past the goal, so the last step removes 20% of the current 120 FLOPs: 2 channels -> 8
    assert [sum(len(v) for v in step.values()) for step in method.history] == [3, 3, 2]
    assert (report.flops_before, report.flops_after) == (192, 96)
    assert (report.params_before, report.params_after) == (16 + 34, 8 + 18)
    assert report.flops_reduction == 0.5
    assert [(g.name, g.before, g.after) for g in report.groups] == [("a", 16, 8)]
    # removed indices refer to the original layer: the kept filters are the original ones
    kept = [i for i in range(16) if i not in report.removed["a"]]
    assert len(kept) == 8
    assert torch.equal(model.a.weight, original.a.weight[kept])


class CheapCostly(nn.Module):
    """a (1->16) -relu- b (16->4) -relu- c (4->64, protected) -> pool -> fc (protected), 1x1
    convs; a's channel 0 has a zero filter (Taylor score 0, the lowest)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(1, 16, 1, bias=False)
        self.b = nn.Conv2d(16, 4, 1, bias=False)
        self.c = nn.Conv2d(4, 64, 1)
        self.fc = nn.Linear(64, 2)
        self.protected_layers = ("c", "fc")
        with torch.no_grad():
            self.a.weight[0] = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b(torch.relu(self.a(x))))
        return self.fc(self.c(x).mean((2, 3)))


# FLOPs on a 2x2 input: a 2*16*4 = 128, b 2*16*4*4 = 512, c 2*4*64*4 = 2048, fc 2*64*2 = 256
DENSE = 128 + 512 + 2048 + 256
SAVE_A = 2 * 1 * 4 + 2 * 4 * 4  # a's filter and b's input slice
SAVE_B = 2 * 16 * 4 + 2 * 64 * 4  # b's filter and c's input slice


def test_flops_savings_by_hand() -> None:
    graph = build(CheapCostly().eval(), torch.randn(1, 1, 2, 2))
    assert flops_savings(graph, DENSE) == {"a": SAVE_A / DENSE, "b": SAVE_B / DENSE}


def test_flops_regulariser_moves_the_lowest_score_to_the_costly_layer() -> None:
    model = CheapCostly().eval()
    graph = build(model, torch.randn(1, 1, 2, 2))
    batches = _ctx(model, random_data(32, (1, 2, 2), 2), {"target_flops": 0.5}).calibration()

    def lowest(lam: float) -> tuple[str, int]:
        scores = taylor_scores(graph, batches, flops_lambda=lam, flops_unit=DENSE)
        return min(((float(s), n, i) for n, v in scores.items() for i, s in enumerate(v)))[1:]

    plain = taylor_scores(graph, batches)
    regularised = taylor_scores(graph, batches, flops_lambda=10.0, flops_unit=DENSE)
    for name, save in (("a", SAVE_A), ("b", SAVE_B)):
        torch.testing.assert_close(regularised[name], plain[name] - 10.0 * save / DENSE)
    assert lowest(0.0) == ("a", 0)  # the zero-score channel, cheap as it is
    # normalised Taylor scores lie in [0, 1]; with lambda 10 a channel of b loses
    # 10 * 640/2944 = 2.17 and one of a 10 * 40/2944 = 0.14: every b channel ranks first
    assert lowest(10.0) == ("b", int(plain["b"].argmin()))


def test_regularised_method_removes_the_costly_channel() -> None:
    ctx = _ctx(
        CheapCostly(),
        random_data(32, (1, 2, 2), 2),
        {"target_flops": SAVE_B / DENSE},
        flops_lambda=10.0,
        finetune_steps=0,
    )
    method = methods.get("taylor")
    report = method.prune(ctx)
    assert len(method.history) == 1 and list(method.history[0]) == ["b"]
    assert report.flops_after == DENSE - SAVE_B  # one costly channel meets the target


@pytest.mark.parametrize("target", [{"target_flops": 0.5}, {"target_params": 0.4}])
def test_taylor_end_to_end(target: dict[str, float]) -> None:
    torch.manual_seed(0)
    model = ConvBNNet((16, 32, 64))
    model.train()
    fc_before = model.fc.weight.detach().clone()
    ctx = _ctx(model, random_data(48, (3, 8, 8), 4), target, maps_per_step=8, finetune_steps=2)
    ctx.options["finetune_lr"] = 0.01
    method = methods.get("taylor")
    report = method.prune(ctx)
    key = next(iter(target))
    achieved = report.flops_reduction if key == "target_flops" else report.params_reduction
    assert abs(achieved - target[key]) <= 0.02
    assert len(method.history) > 1
    assert all(sum(len(v) for v in step.values()) == 8 for step in method.history[:-1])
    assert all(m.training for m in model.modules())  # mode restored
    assert not torch.equal(model.fc.weight, fc_before)  # fine-tuned between steps
    x = torch.randn(2, 3, 8, 8)
    model.eval()
    assert measure.count_flops(model, x[:1]).flops == report.flops_after
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    assert [g.after for g in report.groups] == [
        model.c1.out_channels,
        model.c2.out_channels,
        model.c3.out_channels,
    ]
    assert [g.before for g in report.groups] == [16, 32, 64]
    assert model(x).shape == (2, 4)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"maps_per_step": 0}, "maps_per_step"),
        ({"flops_lambda": -1.0}, "flops_lambda"),
        ({"finetune_lr": 0.0}, "'lr'"),  # the old name, reported under the new one
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_options(options, match: str) -> None:  # type: ignore[no-untyped-def]
    ctx = _ctx(OneGroup(), random_data(8, (1, 2, 2), 2), {"target_flops": 0.5}, **options)
    with pytest.raises(ConfigError, match=match):
        methods.get("taylor").prune(ctx)
