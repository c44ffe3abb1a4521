"""VGG-11/13/16/19 with BatchNorm, in the CIFAR form used by the pruning papers.

Simonyan & Zisserman's configurations A, B, D and E; every 3x3 convolution is followed by
BatchNorm and ReLU. The CIFAR variant used by network slimming, l1-norm filter pruning and HRank
replaces the three 4096-wide FC layers by one Linear from the last feature map to the classes:
on 32x32 inputs the five max pools leave 512x1x1, so VGG-16 has 14.7M params and 313M MACs.
The classifier is sized from ``input_size`` (512 * H/32 * W/32 inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from prunekit.models.core import MODELS, as_size, init_weights, too_small

_PAPER = (
    "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition "
    "(2015)"
)

# conv widths; "M" is a 2x2 max pool
_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        *(64, 64, "M", 128, 128, "M"),
        *(256, 256, 256, 256, "M"),
        *(512, 512, 512, 512, "M"),
        *(512, 512, 512, 512, "M"),
    ],
}


class VGG(nn.Module):
    """VGG-``depth`` with BatchNorm: a ``features`` stack and a single Linear ``classifier``."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: Sequence[int] = (32, 32),
    ) -> None:
        super().__init__()
        if depth not in _CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(_CONFIGS)}, got {depth}")
        h, w = as_size(input_size, 2)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in _CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                width = int(item)
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
        if h < 1 or w < 1:
            raise too_small(f"vgg{depth}", input_size)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * h * w, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _meta(depth: int, config: str, params: str, macs: str) -> dict[str, object]:
    return {
        "input_size": (32, 32),
        "dims": 2,
        "family": "vgg_cifar",
        "paper": _PAPER,
        "description": f"VGG-{depth} (config {config}) with BatchNorm, CIFAR form with one "
        f"Linear classifier; {params} params, {macs} MACs.",
    }


@MODELS.register("vgg11", **_meta(11, "A", "9.2M", "153M"))
def vgg11(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return VGG(11, num_classes, in_channels, input_size)


@MODELS.register("vgg13", **_meta(13, "B", "9.4M", "228M"))
def vgg13(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return VGG(13, num_classes, in_channels, input_size)


@MODELS.register("vgg16", **_meta(16, "D", "14.7M", "313M"))
def vgg16(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return VGG(16, num_classes, in_channels, input_size)


@MODELS.register("vgg19", **_meta(19, "E", "20.0M", "398M"))
def vgg19(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return VGG(19, num_classes, in_channels, input_size)
