"""MobileNetV2 (Sandler et al., 2018): inverted residual blocks with depthwise convolutions.

Each block expands its input with a 1x1 conv (skipped when the expansion factor is 1), filters it
with a 3x3 depthwise conv (``groups`` = channels) and projects it back with a linear 1x1 conv (no
activation after it: the "linear bottleneck"). Blocks that keep stride 1 and width add their input.

Two layouts are registered:

* ``mobilenetv2_imagenet``: the paper's network for 224x224, width 1.0 (3.5M params, 300M MACs
  with 1000 classes);
* ``mobilenetv2``: the common CIFAR port for 32x32, with stride 1 in the stem and in the second
  stage so the last feature map is 4x4 rather than 1x1 (2.2M params with 10 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.models.core import MODELS, init_weights

_PAPER = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks (2018)"

# (expansion t, output channels c, blocks n, stride s of the first block), table 2 of the paper
_IMAGENET_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    return [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1), with a residual add if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [*_conv_bn(in_channels, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride=stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, out_channels, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv (32), the inverted residual stages, a 1x1 conv to 1280, pooling and a Linear.

    ``stem_stride`` and ``stage_strides`` select the ImageNet or the CIFAR layout.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        stem_stride: int = 2,
        stage_strides: tuple[int, ...] = tuple(s for *_, s in _IMAGENET_STAGES),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(in_channels, 32, 3, stride=stem_stride), nn.ReLU6())
        blocks: list[nn.Module] = []
        channels = 32
        for (t, c, n, _), stride in zip(_IMAGENET_STAGES, stage_strides, strict=True):
            for i in range(n):
                blocks.append(InvertedResidual(channels, c, stride if i == 0 else 1, t))
                channels = c
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(channels, 1280, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


@MODELS.register(
    "mobilenetv2",
    input_size=(32, 32),
    dims=2,
    family="mobilenetv2",
    paper=_PAPER,
    description="MobileNetV2 (width 1.0), CIFAR layout: stride 1 in the stem and the 24-channel "
    "stage; 2.2M params, 88M MACs.",
)
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, stem_stride=1, stage_strides=(1, 1, 2, 2, 1, 2, 1))


@MODELS.register(
    "mobilenetv2_imagenet",
    input_size=(224, 224),
    dims=2,
    family="mobilenetv2",
    paper=_PAPER,
    description="MobileNetV2 (width 1.0) for 224x224 ImageNet; 3.5M params, 300M MACs with "
    "1000 classes.",
)
def mobilenetv2_imagenet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return MobileNetV2(num_classes, in_channels)
