"""The 1-D CNN of the MNIST-1D benchmark (Greydanus, 2020).

Three Conv1d layers of 25 channels with stride 2 and padding 1 (kernel 5 for the first, 3 for the
other two, as in the benchmark's reference ``ConvBase``), each followed by a ReLU, then a Linear
from the flattened features to the classes: 40 -> 19 -> 10 -> 5 positions, 5.2k params. Inputs
are ``(batch, channels, length)``; the Linear is sized from ``input_size`` (the length).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.models.core import MODELS, as_size, init_weights, too_small

_LAYERS = ((5, 2, 1), (3, 2, 1), (3, 2, 1))  # (kernel, stride, padding)


class MNIST1DCNN(nn.Module):
    """conv1-conv2-conv3 (25 channels each, ReLU) and a Linear ``classifier``."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        input_size: int | Sequence[int] = 40,
        channels: int = 25,
    ) -> None:
        super().__init__()
        (length,) = as_size(input_size, 1)
        convs = []
        c = in_channels
        for kernel, stride, padding in _LAYERS:
            convs.append(nn.Conv1d(c, channels, kernel, stride=stride, padding=padding))
            c = channels
            length = (length + 2 * padding - kernel) // stride + 1
            if length < 1:
                raise too_small("mnist1d_cnn", as_size(input_size, 1))
        self.conv1, self.conv2, self.conv3 = convs
        self.classifier = nn.Linear(channels * length, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.classifier(torch.flatten(x, 1))


@MODELS.register(
    "mnist1d_cnn",
    input_size=(40,),
    dims=1,
    family="mnist1d",
    paper="Greydanus, Scaling Down Deep Learning (MNIST-1D) (2020)",
    description="Three 25-channel stride-2 Conv1d layers (kernels 5, 3, 3) and a Linear; "
    "5.2k params on length-40 signals.",
)
def mnist1d_cnn(
    num_classes: int = 10, in_channels: int = 1, input_size: int | Sequence[int] = 40
) -> nn.Module:
    return MNIST1DCNN(num_classes, in_channels, input_size)
