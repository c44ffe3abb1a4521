"""Conv-2, Conv-4 and Conv-6: the small VGG-like CIFAR-10 networks of the lottery ticket paper.

Frankle & Carbin (2019), figure 2: stages of two 3x3 convolutions (64, 128, 256 filters) each
followed by 2x2 max pooling, then fully connected layers of 256, 256 and the classes. There is no
batch normalisation, as in the paper. The first Linear layer is sized from ``input_size``.

The paper's table lists 1.7M weights for Conv-6, but the architecture it describes has 2.26M
(1.15M in the convolutions, 1.05M in the 4096 -> 256 layer). We build the described architecture;
Conv-2 (4.3M) and Conv-4 (2.4M) match the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.core import MODELS, as_size, init_weights, too_small

_STAGES: dict[int, tuple[int, ...]] = {2: (64,), 4: (64, 128), 6: (64, 128, 256)}


class ConvNet(nn.Module):
    """Conv-``depth``: ``depth // 2`` stages of (conv, ReLU, conv, ReLU, max pool), then 3 FCs."""

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        input_size: Sequence[int] = (32, 32),
    ) -> None:
        super().__init__()
        if depth not in _STAGES:
            raise ValueError(f"Conv-n depth must be one of {sorted(_STAGES)}, got {depth}")
        h, w = as_size(input_size, 2)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in _STAGES[depth]:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, kernel_size=3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise too_small(f"conv{depth}", input_size)
        self.features = nn.Sequential(*layers)
        self.fc1 = nn.Linear(channels * h * w, 256)
        self.fc2 = nn.Linear(256, 256)
        self.classifier = nn.Linear(256, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.classifier(x)


_PAPER = (
    "Frankle & Carbin, The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks "
    "(2019)"
)


@MODELS.register(
    "conv2",
    input_size=(32, 32),
    dims=2,
    family="convnet",
    paper=_PAPER,
    description="Conv-2: two 64-filter 3x3 convs, pool, FC 256-256; 4.3M params.",
)
def conv2(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return ConvNet(2, num_classes, in_channels, input_size)


@MODELS.register(
    "conv4",
    input_size=(32, 32),
    dims=2,
    family="convnet",
    paper=_PAPER,
    description="Conv-4: 3x3 convs 64,64,pool,128,128,pool, FC 256-256; 2.4M params.",
)
def conv4(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return ConvNet(4, num_classes, in_channels, input_size)


@MODELS.register(
    "conv6",
    input_size=(32, 32),
    dims=2,
    family="convnet",
    paper=_PAPER,
    description="Conv-6: 3x3 convs 64,64,pool,128,128,pool,256,256,pool, FC 256-256; 2.3M params.",
)
def conv6(
    num_classes: int = 10, in_channels: int = 3, input_size: Sequence[int] = (32, 32)
) -> nn.Module:
    return ConvNet(6, num_classes, in_channels, input_size)
