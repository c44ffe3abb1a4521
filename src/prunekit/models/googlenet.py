"""GoogLeNet for CIFAR, the variant pruned by HRank and later CIFAR pruning papers.

Szegedy et al.'s Inception-v1 blocks (3a ... 5b with the paper's filter counts) on 32x32 inputs: a
3x3 "pre-layer" of 192 filters replaces the ImageNet stem, the 5x5 branch is two stacked 3x3 convs,
every conv is followed by BatchNorm and ReLU, and there are no auxiliary classifiers. Two 3x3
stride-2 max pools sit after 3b and 4e; then global average pooling and one Linear. About 6.15M
params and 1.53G MACs.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.core import MODELS, init_weights

# in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5 (as two 3x3), pool projection: table 1 of the paper
_BLOCKS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "a3": (192, 64, 96, 128, 16, 32, 32),
    "b3": (256, 128, 128, 192, 32, 96, 64),
    "a4": (480, 192, 96, 208, 16, 48, 64),
    "b4": (512, 160, 112, 224, 24, 64, 64),
    "c4": (512, 128, 128, 256, 24, 64, 64),
    "d4": (512, 112, 144, 288, 32, 64, 64),
    "e4": (528, 256, 160, 320, 32, 128, 128),
    "a5": (832, 256, 160, 320, 32, 128, 128),
    "b5": (832, 384, 192, 384, 48, 128, 128),
}


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3-3x3; maxpool-1x1) concatenated."""

    def __init__(
        self,
        in_channels: int,
        n1x1: int,
        n3x3_reduce: int,
        n3x3: int,
        n5x5_reduce: int,
        n5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = nn.Sequential(*_conv_bn_relu(in_channels, n1x1, 1))
        self.branch2 = nn.Sequential(
            *_conv_bn_relu(in_channels, n3x3_reduce, 1), *_conv_bn_relu(n3x3_reduce, n3x3, 3)
        )
        self.branch3 = nn.Sequential(
            *_conv_bn_relu(in_channels, n5x5_reduce, 1),
            *_conv_bn_relu(n5x5_reduce, n5x5, 3),
            *_conv_bn_relu(n5x5, n5x5, 3),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_channels, pool_proj, 1)
        )
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, dim=1)


class GoogLeNet(nn.Module):
    """CIFAR GoogLeNet: pre-layer, inception 3a-3b, pool, 4a-4e, pool, 5a-5b, avgpool, Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.pre_layers = nn.Sequential(*_conv_bn_relu(in_channels, 192, 3))
        for name, widths in _BLOCKS.items():
            setattr(self, name, Inception(*widths))
        self.maxpool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1024, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_layers(x)
        x = self.maxpool1(self.b3(self.a3(x)))
        x = self.maxpool2(self.e4(self.d4(self.c4(self.b4(self.a4(x))))))
        x = self.b5(self.a5(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


@MODELS.register(
    "googlenet",
    input_size=(32, 32),
    dims=2,
    family="googlenet_cifar",
    paper="Szegedy et al., Going Deeper with Convolutions (2015)",
    description="GoogLeNet (Inception-v1) CIFAR variant with a 192-filter 3x3 pre-layer and "
    "BatchNorm; 6.15M params, 1.53G MACs.",
)
def googlenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return GoogLeNet(num_classes, in_channels)
