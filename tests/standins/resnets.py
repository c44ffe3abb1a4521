"""Residual families: RegNet, NF-ResNet, CSPNet, DPN, RepVGG, MobileOne, ReXNet, Res2Net,
ResNeSt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import BatchNormAct2d, ClassifierHead, ConvBnAct, ScaledStdConv2d, SqueezeExcite

IMG = (2, 3, 32, 32)


# ----------------------------------------------------------------------------- RegNet


class RegBottleneck(nn.Module):
    """1x1, grouped 3x3 (fixed group width), SE reduced from the block's input, 1x1."""

    def __init__(self, cin: int, cout: int, stride: int, group_width: int, se: float) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(cin, cout, 1)
        self.conv2 = ConvBnAct(cout, cout, 3, stride, groups=cout // group_width)
        self.se = SqueezeExcite(cout, round(cin * se))
        self.conv3 = ConvBnAct(cout, cout, 1, act=None)
        self.downsample = (
            ConvBnAct(cin, cout, 1, stride, act=None)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(x + self.downsample(shortcut))


class RegNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 8, 3, 2)
        self.s1 = nn.Sequential(RegBottleneck(8, 16, 2, 4, 0.25), RegBottleneck(16, 16, 1, 4, 0.25))
        self.s2 = nn.Sequential(RegBottleneck(16, 24, 2, 4, 0.25))
        self.head = ClassifierHead(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.s2(self.s1(self.stem(x))))


@standin("regnet", IMG, kind="classification")
def regnet() -> nn.Module:
    """RegNetY: grouped convs with a fixed group width, SE, projection shortcuts."""
    return RegNet()


# ----------------------------------------------------------------------------- NF-ResNet


class NFBlock(nn.Module):
    """Normaliser-free pre-activation bottleneck: out = shortcut + alpha * skipinit * f(x * beta)."""

    def __init__(self, cin: int, cout: int, stride: int, alpha: float, beta: float) -> None:
        super().__init__()
        mid = cout // 2
        self.alpha, self.beta = alpha, beta
        self.downsample = (
            ScaledStdConv2d(cin, cout, 1, stride) if stride > 1 or cin != cout else None
        )
        self.act1 = nn.ReLU()
        self.conv1 = ScaledStdConv2d(cin, mid, 1, gamma=1.7)
        self.act2 = nn.ReLU()
        self.conv2 = ScaledStdConv2d(mid, mid, 3, stride, groups=2, gamma=1.7)
        self.act3 = nn.ReLU()
        self.conv3 = ScaledStdConv2d(mid, cout, 1)
        self.skipinit_gain = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(x) * self.beta
        shortcut = x if self.downsample is None else self.downsample(out)
        out = self.conv3(self.act3(self.conv2(self.act2(self.conv1(out)))))
        return out.mul_(self.skipinit_gain) * self.alpha + shortcut


class NFResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ScaledStdConv2d(3, 8, 3, 2)
        self.stages = nn.Sequential(
            NFBlock(8, 16, 2, 0.2, 1.0),
            NFBlock(16, 16, 1, 0.2, 0.98),
            NFBlock(16, 24, 2, 0.2, 0.96),
        )
        self.final_act = nn.ReLU()
        self.head = ClassifierHead(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_act(self.stages(self.stem(x))))


@standin("nf_resnet", IMG, kind="classification", expect="inexact")
def nf_resnet() -> nn.Module:
    """NF-ResNet: ScaledStdConv2d (F.batch_norm on its weight, gain), alpha/beta, skipinit."""
    return NFResNet()


# ----------------------------------------------------------------------------- CSPNet


class DarkBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(c, c // 2, 1, act=nn.LeakyReLU)
        self.conv2 = ConvBnAct(c // 2, c, 3, act=nn.LeakyReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class CrossStage(nn.Module):
    """CSP stage: downsample, expand, split the expansion in two halves with ``split``; blocks on
    one half, a transition conv, concat with the other half, a final transition."""

    def __init__(self, cin: int, cout: int, depth: int) -> None:
        super().__init__()
        self.expand_chs = cout
        self.conv_down = ConvBnAct(cin, cout, 3, 2, act=nn.LeakyReLU)
        self.conv_exp = ConvBnAct(cout, cout, 1, act=nn.LeakyReLU)
        self.blocks = nn.Sequential(*[DarkBlock(cout // 2) for _ in range(depth)])
        self.conv_transition_b = ConvBnAct(cout // 2, cout // 2, 1, act=nn.LeakyReLU)
        self.conv_transition = ConvBnAct(cout, cout, 1, act=nn.LeakyReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_exp(self.conv_down(x))
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], dim=1))


class CSPNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 8, 3, act=nn.LeakyReLU)
        self.stages = nn.Sequential(CrossStage(8, 16, 1), CrossStage(16, 24, 2))
        self.head = ClassifierHead(24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@standin("cspnet", IMG, kind="classification")
def cspnet() -> nn.Module:
    """CSPDarkNet: split into halves, dark residual blocks on one, transition, concat."""
    return CSPNet()


# ----------------------------------------------------------------------------- DPN


class BnActConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.bn = BatchNormAct2d(cin)
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


class DualPathBlock(nn.Module):
    """A residual path (first ``num_1x1_c`` channels, added) and a dense path (the rest,
    concatenated and growing by ``inc`` per block); the input is a tuple of both."""

    def __init__(
        self, cin: int, r: int, groups: int, num_1x1_c: int, inc: int, proj: bool, stride: int = 1
    ) -> None:
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.proj = proj
        if proj:
            self.c1x1_w = BnActConv(cin, num_1x1_c + 2 * inc, 1, stride)
        self.c1x1_a = BnActConv(cin, r, 1)
        self.c3x3_b = BnActConv(r, r, 3, stride, groups)
        self.c1x1_c = BnActConv(r, num_1x1_c + inc, 1)

    def forward(
        self, x: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_in = torch.cat(x, dim=1) if isinstance(x, tuple) else x
        if self.proj:
            x_s = self.c1x1_w(x_in)
            x_s1, x_s2 = x_s[:, : self.num_1x1_c], x_s[:, self.num_1x1_c :]
        else:
            assert isinstance(x, tuple)
            x_s1, x_s2 = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        out1, out2 = out[:, : self.num_1x1_c], out[:, self.num_1x1_c :]
        return x_s1 + out1, torch.cat([x_s2, out2], dim=1)


class DPN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(3, 8, 3, 2)
        self.blocks = nn.Sequential(
            DualPathBlock(8, 8, 2, 12, 4, proj=True),
            DualPathBlock(12 + 12, 8, 2, 12, 4, proj=False),
            DualPathBlock(12 + 16, 12, 2, 16, 4, proj=True, stride=2),
            DualPathBlock(16 + 12, 12, 2, 16, 4, proj=False),
        )
        self.conv5_bn_ac = BatchNormAct2d(16 + 16)
        self.classifier = nn.Conv2d(32, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5_bn_ac(torch.cat(self.blocks(self.conv1(x)), dim=1))
        return self.classifier(F.adaptive_avg_pool2d(x, 1)).flatten(1)


@standin("dpn", IMG, kind="classification")
def dpn() -> nn.Module:
    """Dual-path net: tuple activations, slices at a fixed offset, add one part, concat the rest."""
    return DPN()


# ----------------------------------------------------------------------------- RepVGG


class RepVggBlock(nn.Module):
    """Training-time RepVGG: 3x3 conv-BN + 1x1 conv-BN + identity BN, summed, then act."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.conv_1x1 = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_kxk(x) + self.conv_1x1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)


class RepVGG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = RepVggBlock(3, 8, 2)
        self.stages = nn.Sequential(
            RepVggBlock(8, 12, 2), RepVggBlock(12, 12), RepVggBlock(12, 16, 2)
        )
        self.head = ClassifierHead(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@standin("repvgg", IMG, kind="classification")
def repvgg() -> nn.Module:
    """RepVGG (training form): parallel 3x3, 1x1 and identity-BN branches summed."""
    return RepVGG()


class MobileOneBlock(nn.Module):
    """MobileOne: ``k`` over-parameterised kxk conv-BN branches, a 1x1 'scale' branch and an
    identity BN, summed in a Python loop; used depthwise then pointwise."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, branches: int = 2
    ) -> None:
        super().__init__()
        self.num_conv_branches = branches
        self.rbr_skip = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_conv = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout),
            )
            for _ in range(branches)
        )
        self.rbr_scale = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, groups=groups, bias=False), nn.BatchNorm2d(cout))
            if k > 1 else None
        )  # fmt: skip
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0
        if self.rbr_skip is not None:
            out = self.rbr_skip(x)
        if self.rbr_scale is not None:
            out = out + self.rbr_scale(x)
        for i in range(self.num_conv_branches):
            out = out + self.rbr_conv[i](x)
        return self.act(out)


class MobileOne(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = MobileOneBlock(3, 8, 3, 2, branches=1)
        layers = []
        for cin, cout, s in ((8, 12, 2), (12, 12, 1), (12, 16, 2)):
            layers += [MobileOneBlock(cin, cin, 3, s, groups=cin), MobileOneBlock(cin, cout, 1)]
        self.stages = nn.Sequential(*layers)
        self.head = ClassifierHead(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@standin("mobileone", IMG, kind="classification")
def mobileone() -> nn.Module:
    """MobileOne (training form): k depthwise branches + scale branch + identity BN, a loop sum."""
    return MobileOne()


# ----------------------------------------------------------------------------- ReXNet


class LinearBottleneck(nn.Module):
    """ReXNet: the widths grow block by block; the shortcut is added onto the first ``in_channels``
    channels only and the new ones are concatenated unchanged."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        self.use_shortcut = stride == 1 and cin <= cout
        self.in_channels = cin
        mid = cin * expand
        self.conv_exp = ConvBnAct(cin, mid, 1, act=nn.SiLU)
        self.conv_dw = ConvBnAct(mid, mid, 3, stride, groups=mid, act=None)
        self.se = SqueezeExcite(mid, mid // 4)
        self.act_dw = nn.ReLU6()
        self.conv_pwl = ConvBnAct(mid, cout, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_pwl(self.act_dw(self.se(self.conv_dw(self.conv_exp(x)))))
        if self.use_shortcut:
            x = torch.cat([x[:, 0 : self.in_channels] + shortcut, x[:, self.in_channels :]], dim=1)
        return x


class ReXNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 8, 3, 2, act=nn.SiLU)
        self.features = nn.Sequential(
            LinearBottleneck(8, 10, 1), LinearBottleneck(10, 12, 2), LinearBottleneck(12, 14, 1)
        )
        self.head = ClassifierHead(14)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


@standin("rexnet", IMG, kind="classification")
def rexnet() -> nn.Module:
    """ReXNet: a shortcut added onto a slice of wider outputs, concat of the rest."""
    return ReXNet()


# ----------------------------------------------------------------------------- Res2Net


class Bottle2neck(nn.Module):
    """Res2Net: the 1x1 output split into ``scale`` pieces with ``torch.split``; each piece after
    the first is added to the previous piece's output before its own 3x3 conv."""

    def __init__(self, cin: int, width: int, scale: int = 3) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.conv1 = ConvBnAct(cin, width * scale, 1)
        self.convs = nn.ModuleList(ConvBnAct(width, width, 3) for _ in range(scale - 1))
        self.conv3 = ConvBnAct(width * scale, cin, 1, act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        spx = torch.split(out, self.width, 1)
        outs = []
        sp = spx[0]
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = conv(sp)
            outs.append(sp)
        outs.append(spx[-1])
        return self.relu(self.conv3(torch.cat(outs, 1)) + x)


class Res2Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 12, 3, 2)
        self.layer = nn.Sequential(Bottle2neck(12, 4), Bottle2neck(12, 4))
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.stem(x)))


@standin("res2net", IMG, kind="classification")
def res2net() -> nn.Module:
    """Res2Net: torch.split into scales, hierarchical adds between pieces, concat."""
    return Res2Net()


# ----------------------------------------------------------------------------- ResNeSt


class SplitAttn(nn.Module):
    """ResNeSt split attention: a conv producing ``radix`` groups of channels, summed over the
    radix, a gating MLP, softmax across the radix (rSoftMax), weighted sum."""

    def __init__(self, cin: int, cout: int, radix: int = 2, rd: int = 4) -> None:
        super().__init__()
        self.radix, self.out_channels = radix, cout
        self.conv = nn.Conv2d(cin, cout * radix, 3, padding=1, groups=radix, bias=False)
        self.bn0 = nn.BatchNorm2d(cout * radix)
        self.act0 = nn.ReLU()
        self.fc1 = nn.Conv2d(cout, rd, 1)
        self.bn1 = nn.BatchNorm2d(rd)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, cout * radix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        B, RC, H, W = x.shape
        x = x.reshape((B, self.radix, RC // self.radix, H, W))
        x_gap = x.sum(dim=1).mean((2, 3), keepdim=True)
        attn = self.fc2(self.act1(self.bn1(self.fc1(x_gap))))
        attn = attn.view(B, 1, self.radix, -1).transpose(1, 2)
        attn = F.softmax(attn, dim=1).reshape(B, -1, 1, 1)
        attn = attn.reshape((B, self.radix, RC // self.radix, 1, 1))
        return (x * attn).sum(dim=1)


class ResNeStBlock(nn.Module):
    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(c, mid, 1)
        self.conv2 = SplitAttn(mid, mid)
        self.conv3 = ConvBnAct(mid, c, 1, act=None)
        self.act3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act3(self.conv3(self.conv2(self.conv1(x))) + x)


class ResNeSt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnAct(3, 12, 3, 2)
        self.layer = nn.Sequential(ResNeStBlock(12, 8), ResNeStBlock(12, 8))
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(self.stem(x)))


@standin("resnest", IMG, kind="classification", expect="pinned")
def resnest() -> nn.Module:
    """ResNeSt: radix-grouped conv, reshape to (B, radix, C, H, W), softmax across the radix."""
    return ResNeSt()
