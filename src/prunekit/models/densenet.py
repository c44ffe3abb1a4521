"""DenseNet-40 (k = 12) for CIFAR, from Huang et al. (2017).

A 3x3 stem, three dense blocks of 12 layers, each layer BN-ReLU-conv3x3 producing ``k = 12`` new
channels that are concatenated to its input (``torch.cat``), and between blocks a transition
BN-ReLU-conv1x1-avgpool2 that keeps the width (compression 1, no bottleneck: the plain "DenseNet"
of the paper, not DenseNet-BC).

Stem width: the paper gives the stem 16 filters (1.02M params, 265M MACs, the figures network
slimming reports). The code HRank and its successors prune, whose baseline figures (1.04M params,
282M MACs) most CIFAR pruning tables quote, uses ``2k = 24``; that is our default so results are
comparable with those tables: widths 24 -> 168 -> 312 -> 456, 1.06M params, 283M MACs. Pass
``stem_channels=16`` for the paper's network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.core import MODELS, check_positive_int, init_weights


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 giving ``growth`` new channels, appended to the input."""

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 then 2x2 average pooling: halves the resolution between dense blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet-``depth`` (no bottleneck); ``depth = 3 * layers_per_block + 4``."""

    def __init__(
        self,
        depth: int = 40,
        growth: int = 12,
        num_classes: int = 10,
        in_channels: int = 3,
        stem_channels: int = 24,
    ) -> None:
        super().__init__()
        if depth < 7 or (depth - 4) % 3:
            raise ValueError(f"DenseNet depth must be 3n + 4 with n >= 1, got {depth}")
        per_block = (depth - 4) // 3
        channels = stem_channels
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for b in range(3):
            layers = []
            for _ in range(per_block):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            stages.append(nn.Sequential(*layers))
            if b < 2:
                stages.append(Transition(channels, channels))
        self.dense1, self.trans1, self.dense2, self.trans2, self.dense3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.trans1(self.dense1(x))
        x = self.trans2(self.dense2(x))
        x = F.relu(self.bn(self.dense3(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@MODELS.register(
    "densenet40",
    input_size=(32, 32),
    dims=2,
    family="densenet_cifar",
    paper="Huang et al., Densely Connected Convolutional Networks (2017)",
    description="DenseNet-40, growth rate 12, three dense blocks of 12 layers, no bottleneck or "
    "compression, 24-channel stem; 1.06M params, 283M MACs.",
)
def densenet40(num_classes: int = 10, in_channels: int = 3, stem_channels: int = 24) -> nn.Module:
    check_positive_int(stem_channels, "stem_channels")
    return DenseNet(40, 12, num_classes, in_channels, stem_channels)
