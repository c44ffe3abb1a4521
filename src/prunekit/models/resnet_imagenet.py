"""ImageNet ResNets (ResNet-18/34/50) from He et al. (2016).

A 7x7 stride-2 stem and a 3x3 stride-2 max pool, four stages (64, 128, 256, 512 filters; the
first block of stages 2-4 halves the resolution), global average pooling and a Linear. ResNet-50
uses bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion) and puts the stride on the 3x3 conv
(the "v1.5" layout of the common reference implementations: 25.6M params, 4.1G MACs at 224x224).
Projection shortcuts (1x1 conv + BN, option B of the paper) are used wherever the shape changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.blocks import BasicBlock, projection_shortcut
from prunekit.models.core import MODELS, init_weights

_PAPER = "He et al., Deep Residual Learning for Image Recognition (2016)"


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * channels``, and a shortcut (ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = projection_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ImageNetResNet(nn.Module):
    """Stem, four stages of ``blocks[i]`` residual blocks, pooling, Linear ``classifier``."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        stages: list[nn.Sequential] = []
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers: list[nn.Module] = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


def _meta(depth: int, block: str, params: str, macs: str) -> dict[str, object]:
    return {
        "input_size": (224, 224),
        "dims": 2,
        "family": "resnet_imagenet",
        "paper": _PAPER,
        "description": f"ResNet-{depth} for ImageNet ({block} blocks); {params} params and "
        f"{macs} MACs at 224x224 with 1000 classes.",
    }


@MODELS.register("resnet18", **_meta(18, "basic", "11.7M", "1.8G"))
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ImageNetResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@MODELS.register("resnet34", **_meta(34, "basic", "21.8M", "3.7G"))
def resnet34(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ImageNetResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


@MODELS.register("resnet50", **_meta(50, "bottleneck", "25.6M", "4.1G"))
def resnet50(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ImageNetResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
