"""Simplification: dead channels removed with unchanged outputs, BatchNorm folded into convs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.compress.simplify import fold_batchnorm, remove_zero_channels, simplify
from prunekit.models import create


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class ResCNN(nn.Module):
    """conv-bn-relu x3, block 3 added to block 1 (a residual), average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.b3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.b1(self.c1(x)))
        x2 = F.relu(self.b2(self.c2(x1)))
        x3 = F.relu(self.b3(self.c3(x2)) + x1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x3, 1), 1))


def _kill(conv: nn.Conv2d, bn: nn.BatchNorm2d, idx: list[int]) -> None:
    with torch.no_grad():
        conv.weight[idx] = 0
        conv.bias[idx] = 0
        bn.weight[idx] = 0
        bn.bias[idx] = 0


def test_dead_filters_removed_outputs_identical_params_by_hand() -> None:
    model = ResCNN().double()
    _randomize_bn(model)
    model.eval()
    _kill(model.c2, model.b2, [1, 5])  # c2 loses 2 filters
    _kill(model.c1, model.b1, [2])  # the residual unit 2 is dead only if c1 *and* c3 are
    _kill(model.c3, model.b3, [2])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = model(x)
    before = _n_params(model)
    report = remove_zero_channels(model, x)
    assert report.removed == {"c1": [2], "c2": [1, 5]}
    assert model.c2.out_channels == 6 and model.c1.out_channels == 7 and model.c3.out_channels == 7
    # by hand: residual unit 2 goes from c1 (3*9 + 1), b1 (2), c2's inputs (6 kept filters * 9),
    # c3's output (7 kept inputs... counted on the final widths below) and fc's input (10)
    final = (
        (7 * 3 * 9 + 7) + 2 * 7  # c1, b1
        + (6 * 7 * 9 + 6) + 2 * 6  # c2, b2
        + (7 * 6 * 9 + 7) + 2 * 7  # c3, b3
        + 10 * 7 + 10  # fc
    )  # fmt: skip
    assert before == (8 * 3 * 9 + 8) + 16 + 2 * ((8 * 8 * 9 + 8) + 16) + 90
    assert _n_params(model) == final == report.params_after
    assert before - final == 2 * (8 * 9 + 1 + 2 + 8 * 9) + (
        3 * 9 + 1 + 2 + 6 * 9 + 6 * 9 + 1 + 2 + 10
    )
    assert torch.allclose(model(x), ref, rtol=0, atol=1e-9)


def test_residual_unit_kept_while_one_branch_is_live() -> None:
    model = ResCNN().eval()
    _kill(model.c1, model.b1, [2])  # c3's filter 2 still produces into the same channel
    x = torch.randn(2, 3, 8, 8)
    report = remove_zero_channels(model, x)
    assert report.removed == {} and model.c1.out_channels == 8


def test_constant_channel_is_not_removed() -> None:
    model = ResCNN().double()
    _randomize_bn(model)
    model.eval()
    _kill(model.c2, model.b2, [3])
    with torch.no_grad():
        model.b2.bias[3] = 0.5  # BN output is the constant 0.5, relu keeps it: not dead
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ref = model(x)
    report = remove_zero_channels(model, x)
    assert report.removed == {} and report.constant == {"c2": [3]}
    assert model.c2.out_channels == 8
    assert torch.allclose(model(x), ref, rtol=0, atol=1e-12)


def test_zero_mapped_to_constant_by_an_op_is_caught_by_the_forward_check() -> None:
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)
            self.protected_layers = ("b",)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.sigmoid(self.a(x)))  # sigmoid(0) = 0.5

    model = Gate().double().eval()
    with torch.no_grad():
        model.a.weight[1] = 0
        model.a.bias[1] = 0
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    ref = model(x)
    report = remove_zero_channels(model, x)
    assert report.removed == {} and model.a.out_channels == 4
    assert torch.equal(model(x), ref)


def test_resnet20_with_zeroed_filters_shrinks_exactly() -> None:
    model = create("resnet20").double()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    graph = prunekit.graph.build(model, x)
    zeroed = {"layer1.0.conv1": 4, "layer2.1.conv1": 8, "layer3.0.conv2": 16}
    for name, n in zeroed.items():
        graph.group(name).zero(range(0, 4 * n, 4))  # 25%: every fourth unit (SFP-style mask)
    ref = model(x)
    before = _n_params(model)
    report = remove_zero_channels(model, x)
    assert {k: len(v) for k, v in report.removed.items()} == zeroed
    assert model.layer1[0].conv1.out_channels == 12 and model.layer2[1].conv1.out_channels == 24
    assert model.layer3[0].conv2.out_channels == 48 and model.classifier.in_features == 48
    assert _n_params(model) < before and report.flops_after < report.flops_before
    assert torch.allclose(model(x), ref, rtol=0, atol=1e-9)


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_batchnorm_resnet20_and_mobilenetv2() -> None:
    for name, size in (("resnet20", 32), ("mobilenetv2", 16)):
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
            model = create(name).to(dtype)
            _randomize_bn(model)
            model.eval()
            x = torch.randn(2, 3, size, size, dtype=dtype)
            ref = model(x)
            bns = _bn_count(model)
            folded = fold_batchnorm(model, x)
            assert len(folded) == bns and _bn_count(model) == 0, name
            out = model(x)
            assert torch.allclose(out, ref, rtol=tol, atol=tol), (name, (out - ref).abs().max())


def test_fold_skips_conv_with_two_users_and_handles_linear_and_transposed() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.bn_a = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.t, self.bn_t = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2), nn.BatchNorm2d(6)
            self.fc, self.bn_fc = nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            y = self.bn_a(y) + y  # the conv output is used twice: folding would change it
            y = self.bn_t(self.t(y))
            return self.bn_fc(self.fc(y.mean((2, 3))))

    model = Net().double()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    ref = model(x)
    folded = fold_batchnorm(model, x)
    assert folded == [("t", "bn_t"), ("fc", "bn_fc")]
    assert isinstance(model.bn_a, nn.BatchNorm2d) and isinstance(model.bn_t, nn.Identity)
    assert torch.allclose(model(x), ref, rtol=1e-10, atol=1e-10)


def test_simplify_reports_sizes() -> None:
    model = ResCNN()
    _randomize_bn(model)
    model.eval()
    _kill(model.c2, model.b2, [0, 1, 2, 3])
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    report = simplify(model, x)
    assert report.removed == {"c2": [0, 1, 2, 3]} and len(report.folded) == 3
    assert report.params_after == _n_params(model) < report.params_before
    assert report.flops_after < report.flops_before
    assert torch.allclose(model(x), ref, rtol=1e-5, atol=1e-5)
