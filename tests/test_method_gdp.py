"""GDP: the straight-through mask, the raw Taylor saliency of kept and masked filters, dynamic
recovery of a masked filter, zero-then-remove equivalence and the method end to end."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit.methods.gdp as gdp
from nets import ConvBNNet, random_data
from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.targets import Target
from prunekit.train import TrainConfig


def _linear_pair(w1: list[list[float]]) -> nn.Sequential:
    """x (2) -> Linear a (2->3, no bias) -> Linear b (3->1, weights 1, no bias)."""
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w1))
        model[1].weight.fill_(1.0)
    return model


def test_straight_through_mask_forward_and_gradient_by_hand() -> None:
    # layer a's 3 outputs are the units (no BatchNorm: masked at a's output); mask unit 1
    model = _linear_pair([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    x = torch.tensor([[1.0, 2.0]])
    pruner = gdp.GlobalDynamicPruner(model, x, {"target_params": 0.3})
    (name,) = [g.name for g in pruner.graph.groups]
    pruner.set_mask({name: [1]})
    out = model(x)
    assert out.tolist() == [[5.0 + 0.0 + 17.0]]  # a's outputs (5, 11, 17), unit 1 masked
    out.sum().backward()
    # d/dW[n] of sum_n m_n W[n] x, taken at the masked point: 1 * x for every row, the masked
    # one included (straight through the mask)
    assert model[0].weight.grad.tolist() == [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]
    pruner.detach()
    assert model(x).tolist() == [[33.0]]  # unmasked again


def _one_unit_target(pruner: gdp.GlobalDynamicPruner) -> dict[str, float]:
    group = pruner.graph.groups[0]
    share = 1 - pruner.graph.plan([group.units[0]]).params / pruner.dense.params
    return Target("params", share)


def _step(model: nn.Module, pruner: gdp.GlobalDynamicPruner, x: torch.Tensor) -> float:
    model.zero_grad()
    out = model(x).sum()
    out.backward()
    pruner.end_step()
    return float(out.detach())


def test_taylor_saliency_and_dynamic_recovery_by_hand() -> None:
    # unit i of layer a: loss = sum_i W1[i].x, so W1[i] . dL/dW1[i] = W1[i].x = [1, 2, 3], raw
    model = _linear_pair([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = torch.tensor([[1.0, 2.0]])
    pruner = gdp.GlobalDynamicPruner(model, x, {"target_params": 0.3}, mask_interval=1)
    pruner.target = _one_unit_target(pruner)  # exactly one unit's worth of parameters
    (name,) = [g.name for g in pruner.graph.groups]
    assert _step(model, pruner, x) == 6.0
    assert pruner.saliency()[name].tolist() == [1.0, 2.0, 3.0]
    assert pruner.update_mask() == {name: [0]}

    # the masked filter grows back (as its straight-through updates may make it): its Taylor
    # term is taken at the masked point, W1[0] . dL/dW1[0] = 5 * 1, though it outputs zero
    with torch.no_grad():
        model[0].weight[0] = torch.tensor([5.0, 0.0])
    assert _step(model, pruner, x) == 5.0  # 0 (masked) + 2 + 3
    assert pruner.saliency()[name].tolist() == [5.0, 2.0, 3.0]
    assert pruner.update_mask() == {name: [1]}  # unit 0 is back, unit 1 is masked
    assert _step(model, pruner, x) == 8.0  # 5 + 0 + 3
    assert pruner.history == [{name: [0]}, {name: [1]}]
    pruner.detach()


def test_masked_filters_train_and_removal_equals_zeroed_model() -> None:
    torch.manual_seed(0)
    model = ConvBNNet((16, 32))
    x = torch.randn(2, 3, 8, 8)
    data = random_data(64)
    pruner = gdp.GlobalDynamicPruner(model, x, {"target_flops": 0.4}, mask_interval=1000)
    picks = pruner.calibrate([(data.tensors[0][:16], data.tensors[1][:16])])
    assert picks
    c2 = next(n for n in picks if "c2" in pruner.graph.group(n).out_layers)
    masked = picks[c2]
    before = model.c2.weight.detach()[masked].clone()
    seen = {}
    model.b2.register_forward_hook(lambda m, a, y: seen.update(b2=y.detach()))
    config = TrainConfig(epochs=1, lr=0.05, batch_size=16, device="cpu", seed=0)
    pruner.train(data, config, progress=False)
    assert pruner.picks == picks  # no update within the interval
    assert not torch.allclose(model.c2.weight.detach()[masked], before)  # straight through
    model(x)  # the masked channels output zero (masked after their BatchNorm)
    assert "b2" in seen

    pruner.detach()
    model.eval()
    zeroed = copy.deepcopy(model)
    graph = build(zeroed, x)
    for name, idx in picks.items():
        graph.group(name).zero(idx)
    want = zeroed(x)
    report = pruner.finish()
    assert report.removed == picks
    assert model.c2.out_channels == 32 - len(masked)
    assert torch.allclose(model(x), want, atol=1e-5)


def test_bad_options_are_refused() -> None:
    ctx = Context(
        ConvBNNet((8, 12)),
        torch.randn(1, 3, 8, 8),
        random_data(64),
        random_data(16),
        {"target_flops": 0.3},
    )
    ctx.options = {"mask_interval": 0}
    with pytest.raises(ConfigError, match="mask_interval"):
        methods.get("gdp").prune(ctx)
    ctx.options, ctx.calib_batches = {"gdp_epochs": 0}, 0
    with pytest.raises(ConfigError, match="calib_batches"):
        methods.get("gdp").prune(ctx)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(ctx.model.eval()(x), ctx.model(x))  # no mask left behind


def test_method_meets_flops_target_on_three_conv_net() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    x = torch.randn(1, 3, 8, 8)
    dense = measure.count_flops(model.eval(), x).flops
    data = TensorDataset(torch.randn(48, 3, 8, 8), torch.randint(0, 3, (48,)))
    ctx = Context(
        model,
        x,
        data,
        data,
        {"target_flops": 0.5},
        batch_size=16,
        calib_batches=2,
        options={"gdp_epochs": 2, "mask_interval": 2},
    )
    method = methods.get("gdp")
    report = method.prune(ctx)
    assert len(method.history) == 4  # calibration, then after steps 2, 4 and 6
    assert report.removed == method.history[-1]
    model.eval()
    measured = measure.count_flops(model, x).flops
    assert measured == report.flops_after
    assert abs(report.flops_reduction - 0.5) <= 0.02
    assert abs(measured / dense - 0.5) <= 0.02
    assert model(x).shape == (1, 3)
