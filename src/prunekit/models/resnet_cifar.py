"""CIFAR ResNets (ResNet-20/32/44/56/110) from He et al. (2016), section 4.2.

A 3x3 stem of 16 filters, three stages of ``n = (depth - 2) / 6`` basic blocks with 16, 32 and 64
filters (the first block of stages 2 and 3 halves the resolution), global average pooling and a
Linear classifier.

Shortcuts: the paper's CIFAR networks use option A, a parameter-free shortcut that subsamples and
zero-pads the channels. Zero-padding hides which channels the shortcut and the residual branch
share, so structured pruning could not follow it through a dependency graph. We use option B
instead, a 1x1 convolution + BatchNorm on the two downsampling shortcuts only. This adds a few
parameters (2.8k, about 1% on ResNet-20, 0.3% on ResNet-56) and about 0.26M MACs; every other
shortcut is the identity, as in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.blocks import BasicBlock
from prunekit.models.core import MODELS, init_weights

_PAPER = "He et al., Deep Residual Learning for Image Recognition (2016)"


class CifarResNet(nn.Module):
    """ResNet-``depth`` for 32x32 images; ``depth`` must be ``6n + 2``."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


def _meta(depth: int, params: str, macs: str) -> dict[str, object]:
    return {
        "input_size": (32, 32),
        "dims": 2,
        "family": "resnet_cifar",
        "paper": _PAPER,
        "description": f"ResNet-{depth} for CIFAR (16/32/64 filters, {(depth - 2) // 6} blocks "
        f"per stage, 1x1-conv downsampling shortcuts); {params} params, {macs} MACs.",
    }


@MODELS.register("resnet20", **_meta(20, "0.27M", "41M"))
def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@MODELS.register("resnet32", **_meta(32, "0.47M", "69M"))
def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(32, num_classes, in_channels)


@MODELS.register("resnet44", **_meta(44, "0.66M", "97M"))
def resnet44(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(44, num_classes, in_channels)


@MODELS.register("resnet56", **_meta(56, "0.86M", "126M"))
def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


@MODELS.register("resnet110", **_meta(110, "1.7M", "253M"))
def resnet110(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(110, num_classes, in_channels)
