"""ResNet-20 in one dimension: the CIFAR ResNet layout of He et al. (2016, section 4.2) with
``Conv1d`` / ``BatchNorm1d`` in place of their 2-D forms, for signals such as MNIST-1D.

A kernel-3 stem of 16 filters, three stages of three basic blocks with 16, 32 and 64 filters (the
first block of stages 2 and 3 halves the length), global average pooling and a Linear classifier:
0.09M parameters. Shortcuts follow the 2-D zoo model (:mod:`prunekit.models.resnet_cifar`): the
identity, except a 1x1 convolution + BatchNorm (option B) where the shape changes, so the channels
a shortcut shares with its block stay visible to the dependency graph. Inputs are
``(batch, channels, length)``; the pooling makes the model work at any length of at least 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.core import MODELS, as_size, init_weights, too_small

_PAPER = "He et al., Deep Residual Learning for Image Recognition (2016), in 1-D"
_MIN_LENGTH = 4  # two stride-2 stages leave one position


class BasicBlock1d(nn.Module):
    """Two kernel-3 conv-BN layers and a shortcut; the sum passes through a ReLU."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm1d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNet1d(nn.Module):
    """ResNet-``depth`` for 1-D signals; ``depth`` must be ``6n + 2``."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 40,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"1-D ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        size = as_size(input_size, 1)
        if size[0] < _MIN_LENGTH:
            raise too_small(f"resnet{depth}_1d", size)
        n = (depth - 2) // 6
        self.conv1 = nn.Conv1d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(64, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock1d(in_channels, channels, stride)]
        layers += [BasicBlock1d(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@MODELS.register(
    "resnet20_1d",
    input_size=(40,),
    dims=1,
    family="resnet_1d",
    paper=_PAPER,
    description="ResNet-20 layout with Conv1d (16/32/64 filters, 3 blocks per stage, 1x1-conv "
    "downsampling shortcuts); 0.09M params, for 1-D signals such as MNIST-1D.",
)
def resnet20_1d(
    num_classes: int = 10, in_channels: int = 1, input_size: int | Sequence[int] = 40
) -> nn.Module:
    return ResNet1d(20, num_classes, in_channels, input_size)
