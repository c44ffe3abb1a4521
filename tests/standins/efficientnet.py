"""Mobile families: EfficientNet (TF 'SAME' padding), MobileNetV3, GhostNet."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import (
    BatchNormAct2d,
    ClassifierHead,
    ConvBnAct,
    DropPath,
    SqueezeExcite,
    make_divisible,
)

IMG = (2, 3, 32, 32)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin: int, cout: int, same: bool, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.has_skip = cin == cout
        self.conv_dw = ConvBnAct(cin, cin, 3, groups=cin, act=act, same=same).conv
        self.bn1 = BatchNormAct2d(cin, act_layer=act)
        self.se = SqueezeExcite(cin, max(1, cin // 4), act)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = BatchNormAct2d(cout, act_layer=None)
        self.drop_path = DropPath(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.bn2(self.conv_pw(self.se(self.bn1(self.conv_dw(x)))))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise kxk, squeeze-excite (reduced from the block's input width),
    project 1x1 without activation, residual through drop path when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: float, se: float,
                 act: Callable[[], nn.Module], same: bool = False,
                 gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> None:  # fmt: skip
        super().__init__()
        mid = make_divisible(cin * expand)
        self.has_skip = cin == cout and stride == 1
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = BatchNormAct2d(mid, act_layer=act)
        self.conv_dw = ConvBnAct(mid, mid, k, stride, groups=mid, act=act, same=same)
        self.se = SqueezeExcite(mid, max(1, int(cin * se)), act, gate) if se else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct2d(cout, act_layer=None)
        self.drop_path = DropPath(0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(self.bn1(self.conv_pw(x)))
        x = self.bn3(self.conv_pwl(self.se(x)))
        if self.has_skip:
            x = self.drop_path(x) + shortcut
        return x


class EfficientNet(nn.Module):
    def __init__(self, width: float = 0.25, depth: float = 0.5) -> None:
        super().__init__()
        stem = make_divisible(32 * width)
        self.conv_stem = ConvBnAct(3, stem, 3, 2, act=nn.SiLU, same=True).conv
        self.bn1 = BatchNormAct2d(stem, act_layer=nn.SiLU)
        # (expand, k, stride, out, repeats) of B0, scaled
        arch = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3)]
        blocks: list[nn.Module] = []
        cin = stem
        for expand, k, stride, cout, repeats in arch:
            cout = make_divisible(cout * width)
            for i in range(max(1, math.ceil(repeats * depth))):
                s = stride if i == 0 else 1
                if expand == 1:
                    blocks.append(DepthwiseSeparable(cin, cout, same=True, act=nn.SiLU))
                else:
                    blocks.append(
                        InvertedResidual(cin, cout, k, s, expand, 0.25, nn.SiLU, same=True)
                    )
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(cin, 64, 1, bias=False)
        self.bn2 = BatchNormAct2d(64, act_layer=nn.SiLU)
        self.classifier = ClassifierHead(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(x)))
        return self.classifier(self.bn2(self.conv_head(x)))


@standin("efficientnet", IMG, kind="classification")
def efficientnet() -> nn.Module:
    """EfficientNet-B0 shape: TF 'SAME' padding from the input size, MBConv + SE, drop path."""
    return EfficientNet()


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


class MobileNetV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(8, act_layer=nn.Hardswish)
        cfg = [  # k, expand, out, se, act, stride
            (3, 1, 8, 0.25, nn.ReLU, 2),
            (3, 4.5, 12, 0, nn.ReLU, 2),
            (3, 3.5, 12, 0, nn.ReLU, 1),
            (5, 4, 16, 0.25, nn.Hardswish, 2),
            (5, 6, 16, 0.25, nn.Hardswish, 1),
        ]
        blocks = []
        cin = 8
        for k, e, cout, se, act, s in cfg:
            blocks.append(InvertedResidual(cin, cout, k, s, e, se, act, gate=hard_sigmoid))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final = ConvBnAct(cin, 48, 1, act=nn.Hardswish)
        self.conv_head = nn.Conv2d(48, 64, 1)  # applied after pooling, with its own bias
        self.act2 = nn.Hardswish()
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final(self.blocks(self.bn1(self.conv_stem(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        x = self.flatten(self.act2(self.conv_head(x)))
        return self.classifier(x)


@standin("mobilenetv3", IMG, kind="classification")
def mobilenetv3() -> nn.Module:
    """MobileNetV3: hard-swish, SE gated by a hard sigmoid, a 1x1 conv head after pooling."""
    return MobileNetV3()


class GhostModule(nn.Module):
    """Half the outputs from a primary conv, the rest from a cheap depthwise conv on them;
    concatenated and sliced to the requested width."""

    def __init__(self, cin: int, cout: int, relu: bool = True, ratio: int = 2) -> None:
        super().__init__()
        self.out_chs = cout
        init = math.ceil(cout / ratio)
        new = init * (ratio - 1)
        act: Callable[[], nn.Module] = nn.ReLU if relu else nn.Identity
        self.primary_conv = nn.Sequential(
            nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), act()
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, new, 3, 1, 1, groups=init, bias=False), nn.BatchNorm2d(new), act()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.out_chs, :, :]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, se: bool = False) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(cin, mid, relu=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid)
        self.se = (
            SqueezeExcite(mid, make_divisible(mid * 0.25, 4), gate=hard_sigmoid) if se else None
        )
        self.ghost2 = GhostModule(mid, cout, relu=False)
        if cin == cout and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.ghost1(x)
        if self.stride > 1:
            x = self.bn_dw(self.conv_dw(x))
        if self.se is not None:
            x = self.se(x)
        return self.ghost2(x) + self.shortcut(shortcut)


class GhostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.blocks = nn.Sequential(
            GhostBottleneck(8, 8, 8),
            GhostBottleneck(8, 24, 11, stride=2),  # odd width: the concat is sliced
            GhostBottleneck(11, 36, 11),
            GhostBottleneck(11, 36, 20, stride=2, se=True),
            GhostBottleneck(20, 60, 20, se=True),
        )
        self.conv_head = nn.Conv2d(20, 64, 1)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(F.adaptive_avg_pool2d(x, 1)))
        return self.classifier(x.flatten(1))


@standin("ghostnet", IMG, kind="classification")
def ghostnet() -> nn.Module:
    """GhostNet: primary + cheap depthwise convs concatenated then sliced, SE, dw shortcuts."""
    return GhostNet()
