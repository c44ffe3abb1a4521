"""FilterSketch: Frequent Directions worked out by hand and its covariance guarantee, the pruned
layer initialised with the sketch of its filters (not a subset of them, as any magnitude rule
would keep) and the next layer with the sketch of its input weights, the BatchNorms reset, and
the target met within 1%."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import methods
from prunekit.methods.sketch import frequent_directions
from target_check import prune_net
from test_every_method import NETS

A = torch.tensor([[3.0, 0], [0, 2.0], [1.0, 0]], dtype=torch.float64)


def test_frequent_directions_by_hand() -> None:
    # rows 0 and 1 fill B; row 2 finds it full: S = (3, 2), shrink by s_1^2 = 4 ->
    # (sqrt(5), 0), so B = [[sqrt 5, 0], [0, 0]], then row 2 goes into the free row
    b = frequent_directions(A, 2)
    assert torch.allclose(b, torch.tensor([[math.sqrt(5), 0], [1.0, 0]], dtype=torch.float64))
    # B^T B = diag(6, 0) against A^T A = diag(10, 4): error 4 <= 2 ||A||_F^2 / l = 14
    err = A.T @ A - b.T @ b
    assert torch.linalg.eigvalsh(err).tolist() == pytest.approx([4.0, 4.0])
    # with room for every row the sketch is the matrix itself
    assert torch.equal(frequent_directions(A, 3), A)


@pytest.mark.parametrize("l", [2, 4, 7])
def test_frequent_directions_guarantee(l: int) -> None:  # noqa: E741
    a = torch.randn(20, 9, dtype=torch.float64)
    b = frequent_directions(a, l)
    err = a.T @ a - b.T @ b
    eig = torch.linalg.eigvalsh(err)
    assert float(eig.min()) >= -1e-9  # B^T B never exceeds A^T A
    assert float(eig.max()) <= 2 * float(a.pow(2).sum()) / l + 1e-9


class Chain(nn.Module):
    """a (2 -> 3, 1x1, filters A) -relu- b (3 -> 2, 1x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.b = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(A.float()[:, :, None, None])
            # b's weights per input channel: (2, 0), (0, 1), (1, 1)
            self.b.weight.copy_(torch.tensor([[2.0, 0, 1], [0, 1, 1]])[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_method_initialises_the_pruned_layers_with_the_sketches() -> None:
    model = Chain()
    data = TensorDataset(torch.randn(8, 2, 3, 3), torch.zeros(8, dtype=torch.long))
    # one of a's three channels: (2 + 2) of (6 + 6) MACs per position
    ctx = methods.Context(
        model, data.tensors[0][:1], data, data, {"target_flops": 1 / 3}, options={"progress": False}
    )
    methods.get("sketch").prune(ctx)
    a = model.a.weight[:, :, 0, 0].double()
    assert torch.allclose(a, torch.tensor([[math.sqrt(5), 0], [1.0, 0]], dtype=torch.float64))
    # a magnitude rule keeps two of the original filters (3, 0) and (0, 2)
    assert not any(torch.allclose(a[0], r) for r in A[:2])
    # b's input rows (2, 0), (0, 1), (1, 1): S = (2, 1), shrink by 1 -> (sqrt 3, 0), then (1, 1)
    b = model.b.weight[:, :, 0, 0].double()
    assert torch.allclose(b.T, torch.tensor([[math.sqrt(3), 0], [1.0, 1.0]], dtype=torch.float64))


def test_batchnorms_between_are_reset_and_recalibrated() -> None:
    build, shape, classes = NETS["depthwise"]
    torch.manual_seed(0)
    model = build()
    data = TensorDataset(torch.randn(32, *shape), torch.randint(0, classes, (32,)))
    ctx = methods.Context(
        model, data.tensors[0][:2], data, data, {"target_flops": 0.3}, calib_batches=2,
        batch_size=16, options={"progress": False},
    )  # fmt: skip
    methods.get("sketch").prune(ctx)
    bn = model.block1.bn1  # between block1.expand and the depthwise conv: a sketched chain
    assert bn.num_features < 64
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # the running mean is the mean over the calibration batches of the new channels' outputs
    seen = []
    hook = model.block1.expand.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    with torch.no_grad():
        for x, _ in ctx.calibration():
            model.eval()(x)
    hook.remove()
    assert torch.allclose(bn.running_mean, torch.cat(seen).mean((0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1


@pytest.mark.parametrize(
    ("net", "target"),
    [
        ("resnet", 0.3),
        pytest.param("resnet", 0.5, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.3, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.5, marks=pytest.mark.slow),
    ],
)
def test_target_met_within_one_percent(net: str, target: float) -> None:
    report, measured = prune_net("sketch", net, target)
    assert abs(measured - target) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9


def test_sketch_bn_sketches_the_batchnorm_with_the_filters() -> None:
    build, shape, classes = NETS["depthwise"]
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        model.block1.bn1.weight.uniform_(0.5, 2.0)
    data = TensorDataset(torch.randn(32, *shape), torch.randint(0, classes, (32,)))
    ctx = methods.Context(
        model, data.tensors[0][:2], data, data, {"target_flops": 0.3}, calib_batches=2,
        batch_size=16, options={"progress": False, "sketch_bn": True},
    )  # fmt: skip
    methods.get("sketch").prune(ctx)
    bn = model.block1.bn1
    assert bn.num_features < 64
    assert not torch.equal(bn.weight, torch.ones_like(bn.weight))  # sketched, not reset
    out = model.eval()(data.tensors[0][:4])
    assert torch.isfinite(out).all()
