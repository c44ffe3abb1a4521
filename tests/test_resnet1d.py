"""The 1-D ResNet-20: the CIFAR layout in Conv1d, prunable through the dependency graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_params
from prunekit.models import create, model_info, rebuild
from prunekit.prune import prune_channels
from test_graph import check_equivalence, out_prunable


def test_layout_follows_resnet20() -> None:
    model = create("resnet20_1d", in_channels=1, input_size=40)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    # stem + 9 blocks x 2 convs + 2 downsampling shortcuts, as ResNet-20 with option B
    assert len(convs) == 1 + 18 + 2
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    widths = [m.out_channels for m in convs if m.kernel_size == (3,)]
    assert widths == [16] + [16] * 6 + [32] * 6 + [64] * 6
    shortcuts = [m for m in convs if m.kernel_size == (1,)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in shortcuts] == [
        (16, 32, (2,)),
        (32, 64, (2,)),
    ]
    # the 2-D ResNet-20's parameters with every 3x3 kernel cut to 3 taps (the 1x1 shortcuts,
    # BatchNorm and classifier unchanged): the same network in one dimension
    resnet2d = create("resnet20", in_channels=1)
    kernels = sum(m.weight.numel() for m in resnet2d.modules() if isinstance(m, nn.Conv2d))
    k3 = sum(
        m.weight.numel()
        for m in resnet2d.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert count_params(model).total == count_params(resnet2d).total - kernels + k3 // 3 + (
        kernels - k3
    )
    info = model_info("resnet20_1d")
    assert (info.dims, info.input_size) == (1, (40,))


def test_forward_any_length_and_rebuild() -> None:
    model = create("resnet20_1d", num_classes=7, in_channels=2, input_size=72).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 2, 72)).shape == (3, 7)
        assert model(torch.randn(3, 2, 5)).shape == (3, 7)  # pooled: length does not matter
    again = rebuild(model.prunekit_arch)
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with pytest.raises(ConfigError, match="too small for resnet20_1d"):
        create("resnet20_1d", input_size=3)


def test_zero_then_remove_is_exact() -> None:
    torch.manual_seed(0)
    model = create("resnet20_1d", num_classes=5, in_channels=1, input_size=40)
    graph = check_equivalence(model, torch.randn(2, 1, 40), seed=3)

    # every block's inner conv is its own group; each stage's residual channels are one group
    # coupling the stem (or shortcut) with every block's second conv
    def convs_out(g: object) -> set[str]:
        return {m.layer for m in g.members if m.side == "out" and "conv" in m.layer.split(".")[-1]}

    stage1 = {"conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"}
    assert stage1 in [convs_out(g) for g in graph.groups]
    assert sum(len(convs_out(g)) == 1 for g in graph.groups) == 9
    assert sum(len(convs_out(g)) == 4 for g in graph.groups) == 1  # stage 1: stem + 3 blocks
    assert not out_prunable(graph, "classifier")


def test_prunes_to_a_flops_target() -> None:
    torch.manual_seed(0)
    model = create("resnet20_1d", in_channels=1, input_size=40).eval()
    report = prune_channels(model, torch.randn(1, 1, 40), target_flops=0.5, importance="l1")
    assert abs(report.flops_reduction - 0.5) <= 0.01
    with torch.no_grad():
        assert model(torch.randn(2, 1, 40)).shape == (2, 10)
