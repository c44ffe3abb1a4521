"""Stochastic Frank-Wolfe (Miao et al., ICLR 2022): the K-sparse polytope's oracle, norm and step
worked out by hand, the per-parameter radius, and the method end to end (training moves the
weights by Frank-Wolfe steps, the cut meets the target, an interrupted run resumes)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.methods.base import Context
from prunekit.methods.sfw import (
    FrankWolfe,
    SFWOptions,
    frank_wolfe_step,
    init_norms,
    ksparse_lmo,
    ksparse_norm,
    polytope_size,
    shift_inside,
)


def test_lmo_is_the_vertex_on_the_largest_gradients_not_the_largest_weights() -> None:
    # weights: largest magnitudes at 0 and 3; gradient: largest at 1 and 2
    theta = torch.tensor([9.0, 0.1, 0.2, -8.0])
    d = torch.tensor([0.5, -3.0, 2.0, 0.1])
    v = ksparse_lmo(d, k=2, radius=1.5)
    assert torch.equal(v, torch.tensor([0.0, 1.5, -1.5, 0.0]))
    # <v, d> = -1.5 * 3 - 1.5 * 2 = -7.5, the minimum over the polytope's vertices
    assert float(v @ d) == pytest.approx(-7.5)
    magnitude_vertex = torch.zeros(4)
    magnitude_vertex[theta.abs().topk(2).indices] = 1.0
    assert not torch.equal(v != 0, magnitude_vertex != 0)


def test_frank_wolfe_step_with_gradient_rescaling() -> None:
    theta = torch.tensor([1.0, 0.0, 0.0, 0.0])
    d = torch.tensor([0.0, -3.0, 4.0, 0.0])  # |d| = 5
    v = ksparse_lmo(d, k=1, radius=2.0)  # -2 * sign(4) at entry 2
    assert torch.equal(v, torch.tensor([0.0, 0.0, -2.0, 0.0]))
    # |theta - v| = sqrt(1 + 4) = sqrt 5; eta = 0.1 * 5 / sqrt 5 = 0.1 sqrt 5
    new, eta = frank_wolfe_step(theta, d, v, lr=0.1, rescale="gradient")
    assert eta == pytest.approx(0.1 * math.sqrt(5))
    assert torch.allclose(new, torch.tensor([1 - eta, 0.0, -2 * eta, 0.0]))
    # eta is clipped at 1: the iterate becomes the vertex
    new, eta = frank_wolfe_step(theta, d, v, lr=10.0, rescale="gradient")
    assert eta == 1.0 and torch.equal(new, v)
    new, eta = frank_wolfe_step(theta, d, v, lr=0.25, rescale="none")
    assert eta == 0.25 and torch.allclose(new, torch.tensor([0.75, 0.0, -0.5, 0.0]))


def test_ksparse_norm_and_shift_inside() -> None:
    x = torch.tensor([3.0, -1.0, 1.0, 1.0])  # |x|_inf 3, |x|_1 / 2 = 3
    assert ksparse_norm(x, 2) == pytest.approx(3.0)
    assert ksparse_norm(x, 1) == pytest.approx(6.0)
    assert torch.allclose(shift_inside(x, 1, 2.0), x / 3.0)  # 6 -> 2
    assert torch.equal(shift_inside(x, 2, 5.0), x)  # inside already
    assert polytope_size(100, 0.05) == 5 and polytope_size(10, 0.05) == 1


def test_init_norm_averages_the_layers_own_initialisation() -> None:
    layer = nn.Linear(50, 20)
    norms = init_norms(nn.Sequential(layer, nn.BatchNorm1d(20)), draws=20, seed=0)
    # kaiming_uniform(a=sqrt 5): U(-1/sqrt(50), 1/sqrt(50)); E|W|^2 = 1000 / (3 * 50)
    assert norms["0.weight"] == pytest.approx(math.sqrt(1000 / 150), rel=0.05)
    assert norms["1.weight"] == pytest.approx(math.sqrt(20))  # ones
    assert norms["1.bias"] == 1.0  # zeros: 1 by the official rule


def test_frank_wolfe_callback_momentum_and_resume() -> None:
    p = nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))
    opts = SFWOptions(lr=0.5, momentum=0.9, rescale="none", schedule="constant")
    fw = FrankWolfe({"p": p}, {"p": 1}, {"p": 1.0}, opts, total_steps=10)
    fw.attach()
    (p * torch.tensor([0.0, 2.0, -1.0])).sum().backward()
    assert torch.equal(p.grad, torch.zeros(3))  # SGD sees nothing
    fw("step_end", {})
    # d = g (first step); v = -1 * sign(2) at entry 1; theta = 0.5 theta + 0.5 v
    assert torch.allclose(p.detach(), torch.tensor([0.5, -0.5, 0.0]))
    state = fw.state_dict()
    p.grad = None
    (p * torch.tensor([0.0, 0.0, -30.0])).sum().backward()
    fw("step_end", {})
    # d = 0.9 [0, 2, -1] + 0.1 [0, 0, -30] = [0, 1.8, -3.9]: the vertex moves to entry 2
    assert torch.allclose(p.detach(), torch.tensor([0.25, -0.25, 0.5]))
    other = FrankWolfe({"p": p}, {"p": 1}, {"p": 1.0}, opts, total_steps=10)
    other.load_state_dict(state)
    assert other.steps == 1 and torch.equal(other.buffers["p"], torch.tensor([0.0, 2.0, -1.0]))
    fw.detach()


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,)))


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _ctx(model: nn.Module, sparsity: float, tmp_path, **options) -> Context:
    data = _data()
    return Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_sparsity": sparsity},
        batch_size=8,
        options={"progress": False, "epochs": 1, "init_draws": 3, **options},
        work_dir=tmp_path,
    )


def test_sfw_trains_inside_the_polytopes_and_cuts_to_the_target(tmp_path) -> None:
    model = _net()
    method = methods.get("sfw")
    report = method.prune(_ctx(model, 0.7, tmp_path / "a"))
    assert method.steps == 4
    assert abs(report.sparsity - 0.7) < 0.01
    masks.finalize(model)
    for name, p in model.named_parameters():
        assert ksparse_norm(p.detach(), method.sizes[name]) <= method.radii[name] * (1 + 1e-5)
    # the same run, started again in its folder, restores the finished phase
    again = _net()
    methods.get("sfw").prune(_ctx(again, 0.7, tmp_path / "a"))
    masks.finalize(again)
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)


def test_sfw_refuses_a_masked_model(tmp_path) -> None:
    model = _net()
    masks.prune(model, 0.5)
    with pytest.raises(ConfigError, match="dense model"):
        methods.get("sfw").prune(_ctx(model, 0.7, tmp_path))
