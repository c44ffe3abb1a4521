"""Network Slimming: the L1 gradient hook, sparsity training, the global raw |gamma| threshold
and the method end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit.methods.slimming as slimming
from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.models import create
from prunekit.workflow import PruneConfig, run_pruning

GAMMA_A = [0.5, 0.1, 0.9, 0.3]  # mean 0.45
GAMMA_B = [0.2, 2.0, 0.4, 3.0]  # mean 1.4


class TwoBN(nn.Module):
    """conv(3->4)-bn-relu -> conv(4->4)-bn-relu -> pool -> fc, with BN scales set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.bn_a.weight.copy_(torch.tensor(GAMMA_A))
            self.bn_b.weight.copy_(torch.tensor(GAMMA_B))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.a(x)))
        x = torch.relu(self.bn_b(self.b(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _data(n: int = 64) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def _group_of(graph, layer: str) -> str:
    return next(g.name for g in graph.groups if layer in g.out_layers)


def test_scores_are_raw_abs_gamma() -> None:
    model = TwoBN().eval()
    with torch.no_grad():
        model.bn_a.weight.neg_()  # |gamma| is what counts, not its sign
    graph = build(model, torch.randn(1, 3, 8, 8))
    scores = slimming.gamma_scores(graph)
    assert torch.allclose(scores[_group_of(graph, "bn_a")].float(), torch.tensor(GAMMA_A))
    assert torch.allclose(scores[_group_of(graph, "bn_b")].float(), torch.tensor(GAMMA_B))


def test_global_threshold_removes_smallest_raw_gamma_across_layers() -> None:
    model = TwoBN().eval()
    x = torch.randn(1, 3, 8, 8)
    graph = build(model, x)
    ga, gb = _group_of(graph, "bn_a"), _group_of(graph, "bn_b")
    units = {g.name: g.units for g in graph.groups}
    # raw order: a1 (0.1), b0 (0.2), a3 (0.3), b2 (0.4), ...; divided by each layer's mean the
    # order would be b0, a1, b2, a3: the first three differ, so this tells the two apart
    three = [units[ga][1], units[gb][0], units[ga][3]]
    target = 1 - graph.plan(three).flops / graph.plan([]).flops
    picks = slimming.global_threshold(graph, slimming.gamma_scores(graph), target_flops=target)
    assert picks == {ga: [1, 3], gb: [0]}

    report = slimming.prune_by_gamma(model, x, target_flops=target)
    assert report.removed == picks
    assert model.bn_a.weight.tolist() == pytest.approx([0.5, 0.9])
    assert model.bn_b.weight.tolist() == pytest.approx([2.0, 0.4, 3.0])
    assert measure.count_flops(model, x).flops == report.flops_after
    assert model(x).shape == (1, 3)


def test_unreachable_target_is_refused() -> None:
    model = TwoBN().eval()
    with pytest.raises(ConfigError, match="cannot reach target_flops"):
        slimming.prune_by_gamma(model, torch.randn(1, 3, 8, 8), target_flops=0.99)


def test_hook_adds_lambda_sign_gamma_exactly_and_is_removed() -> None:
    model = TwoBN().train()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.tensor([0.5, -0.1, 0.9, -0.3]))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        return [model.bn_a.weight.grad.clone(), model.bn_b.weight.grad.clone()]

    plain = grads()
    lam = 1e-2
    handles = slimming.add_l1_penalty(model, lam)
    hooked = grads()
    for h in handles:
        h.remove()
    for g0, g1, bn in zip(plain, hooked, (model.bn_a, model.bn_b), strict=True):
        assert torch.allclose(g1, g0 + lam * torch.sign(bn.weight.detach()), atol=0, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(plain, grads(), strict=True))


def test_sparsity_training_drives_gamma_down() -> None:
    def trained(lam: float) -> float:
        torch.manual_seed(0)
        model = TwoBN()
        ctx = Context(
            model,
            torch.randn(1, 3, 8, 8),
            _data(),
            _data(16),
            {"target_flops": 0.5},
            batch_size=16,
            options={"slimming_lambda": lam, "sparsity_epochs": 2, "sparsity_lr": 0.05},
        )
        slimming.sparsity_train(model, ctx, slimming.NetworkSlimming().options(ctx))
        assert not model.bn_a.weight._backward_hooks  # hooks are gone after training
        return sum(float(w.detach().abs().sum()) for w in slimming.batchnorm_scales(model))

    assert trained(0.05) < trained(0.0) - 0.1


def test_method_is_registered_and_needs_batchnorm() -> None:
    assert isinstance(methods.get("slimming"), slimming.NetworkSlimming)
    lenet = create("lenet5")
    ctx = Context(lenet, torch.randn(1, 1, 32, 32), _data(), _data(), {"target_flops": 0.5})
    with pytest.raises(ConfigError, match="BatchNorm"):
        slimming.NetworkSlimming().prune(ctx)


def test_method_meets_flops_target_on_resnet20() -> None:
    model = create("resnet20")
    x = torch.randn(1, 3, 32, 32)
    dense = measure.count_flops(model, x).flops
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,)))
    ctx = Context(
        model, x, data, data, {"target_flops": 0.5}, batch_size=16, options={"sparsity_epochs": 1}
    )
    report = slimming.NetworkSlimming().prune(ctx)
    model.eval()
    measured = measure.count_flops(model, x).flops
    assert measured == report.flops_after
    assert abs(measured / dense - 0.5) <= 0.02
    assert model(x).shape == (1, 10)


@pytest.mark.slow
def test_run_pruning_with_slimming() -> None:
    config = PruneConfig(model="resnet20", method="slimming", epochs=1, finetune_epochs=1)
    metrics = run_pruning(config, progress=False)
    assert abs(metrics["flops_after"] / metrics["flops_before"] - 0.5) <= 0.02
