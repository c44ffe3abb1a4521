"""Residual building blocks shared by the CIFAR and the ImageNet ResNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def projection_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    """Identity (``None``) where the shape is kept, else a 1x1 conv + BN (option B of He et al.).

    An explicit conv keeps the channel coupling of the shortcut visible to a dependency graph,
    where option A's zero-padding would hide it.
    """
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; the sum passes through a ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = projection_shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)
