"""LeNet-300-100 and LeNet-5 (Caffe variant): the small MNIST baselines of the pruning literature.

Both end in fully connected layers, so their widths depend on the input size; pass
``input_size`` to use them on other images than 28x28.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.core import MODELS, as_size, init_weights, too_small

_LECUN_1998 = "LeCun et al., Gradient-Based Learning Applied to Document Recognition (1998)"


class LeNet300100(nn.Module):
    """A 784-300-100-classes MLP (for 28x28 grey images), used by Han et al. and Frankle & Carbin.

    The input is flattened, so ``in_features = in_channels * H * W``.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)
    ) -> None:
        super().__init__()
        h, w = as_size(input_size, 2)
        self.fc1 = nn.Linear(in_channels * h * w, 300)
        self.fc2 = nn.Linear(300, 100)
        self.classifier = nn.Linear(100, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.classifier(x)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc classes), 431k params.

    This is the "LeNet-5-Caffe" of the SNIP and lottery-ticket experiments. Caffe's prototxt has no
    nonlinearity after the convolutions; we put a ReLU after each, as the PyTorch ports used by
    pruning papers do (it adds no parameters and keeps every conv followed by an activation).
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)
    ) -> None:
        super().__init__()
        h, w = as_size(input_size, 2)
        # two (valid 5x5 conv, 2x2 max pool) stages
        for _ in range(2):
            h, w = (h - 4) // 2, (w - 4) // 2
        if h < 1 or w < 1:
            raise too_small("lenet5", input_size)
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.classifier = nn.Linear(500, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.classifier(x)


@MODELS.register(
    "lenet_300_100",
    input_size=(28, 28),
    dims=2,
    family="lenet",
    paper=_LECUN_1998,
    description="MLP with hidden layers of 300 and 100 units; 267k params on 28x28x1.",
)
def lenet_300_100(
    num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)
) -> nn.Module:
    return LeNet300100(num_classes, in_channels, input_size)


@MODELS.register(
    "lenet5",
    input_size=(28, 28),
    dims=2,
    family="lenet",
    paper=_LECUN_1998,
    description="Caffe LeNet-5: conv 20, conv 50 (5x5, each max-pooled), fc 500; 431k params.",
)
def lenet5(
    num_classes: int = 10, in_channels: int = 1, input_size: Sequence[int] = (28, 28)
) -> nn.Module:
    return LeNet5(num_classes, in_channels, input_size)
