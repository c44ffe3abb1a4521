"""One small model per kind of code the structural core must understand (classes 1-5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import (
    Attention,
    BatchNormAct2d,
    ClassifierHead,
    Conv2dSame,
    DropPath,
    GroupNorm1,
    LayerNorm2d,
    LayerNormCl,
    ScaledStdConv2d,
    StdConv2d,
)

IMG = (2, 3, 16, 16)


# ----------------------------------------------------------------------------- class 1


class NormActNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = BatchNormAct2d(8, act_layer=nn.SiLU, drop=0.1)
        self.conv2 = nn.Conv2d(8, 12, 3, 2, 1, bias=False)
        self.bn2 = BatchNormAct2d(12)
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn2(self.conv2(self.bn1(self.conv1(x)))))


@standin("bn_act_subclass", IMG, kind="class1")
def bn_act_subclass() -> nn.Module:
    """BatchNorm2d subclass calling F.batch_norm, then dropout and activation children."""
    return NormActNet()


class ChannelNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm1 = LayerNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.norm2 = LayerNormCl(8)
        self.conv3 = nn.Conv2d(8, 10, 3, padding=1)
        self.norm3 = GroupNorm1(10)
        self.head = ClassifierHead(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(self.conv1(x)))
        x = x + F.gelu(self.norm2(self.conv2(x)))
        return self.head(F.gelu(self.norm3(self.conv3(x))))


@standin("channel_norm_subclasses", IMG, kind="class1", expect="inexact")
def channel_norm_subclasses() -> nn.Module:
    """LayerNorm subclasses on NCHW maps (permute + F.layer_norm) and a one-group GroupNorm."""
    return ChannelNormNet()


class StdConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = StdConv2d(3, 8, 3)
        self.gn1 = nn.GroupNorm(4, 8)
        self.conv2 = ScaledStdConv2d(8, 12, 3, stride=2)
        self.conv3 = ScaledStdConv2d(12, 12, 1, groups=1)
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.head(x + F.relu(self.conv3(x)))


@standin("weight_standardised_convs", IMG, kind="class1", expect="inexact")
def weight_standardised_convs() -> nn.Module:
    """Conv2d subclasses that standardise their own weight with F.batch_norm (and a gain)."""
    return StdConvNet()


# ----------------------------------------------------------------------------- class 2


class FunctionalConvBlock(nn.Module):
    """Holds parameters and buffers itself and calls the functional ops on them."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.bn_weight = nn.Parameter(torch.rand(cout) + 0.5)
        self.bn_bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.register_buffer("running_mean", torch.randn(cout) * 0.1)
        self.register_buffer("running_var", torch.rand(cout) + 0.5)
        self.slope = nn.Parameter(torch.full((cout,), 0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, self.bias, padding=1)
        x = F.batch_norm(x, self.running_mean, self.running_var, self.bn_weight, self.bn_bias)
        return F.prelu(x, self.slope)


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = FunctionalConvBlock(3, 8)
        self.block2 = FunctionalConvBlock(8, 10)
        self.w_fc = nn.Parameter(torch.randn(12, 10) * 0.3)
        self.b_fc = nn.Parameter(torch.zeros(12))
        self.w_out = nn.Parameter(torch.randn(4, 12) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(x)).mean((2, 3))
        x = F.relu(F.linear(x, self.w_fc, self.b_fc))
        return F.linear(x, self.w_out)


@standin("functional_params", IMG, kind="class2")
def functional_params() -> nn.Module:
    """F.conv2d, F.batch_norm, F.prelu and F.linear on parameters a module holds itself."""
    return FunctionalNet()


class FunctionalMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)  # parameters used through F.conv1d below
        self.gn_w = nn.Parameter(torch.rand(8) + 0.5)
        self.gn_b = nn.Parameter(torch.randn(8) * 0.1)
        self.up_w = nn.Parameter(torch.randn(8, 6, 2) * 0.3)  # conv_transpose: (in, out, k)
        self.in_w = nn.Parameter(torch.rand(6) + 0.5)
        self.in_b = nn.Parameter(torch.randn(6) * 0.1)
        self.gate = nn.Parameter(torch.rand(6, 1) + 0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(x, self.conv.weight, self.conv.bias, padding=1)
        x = F.silu(F.group_norm(x, 4, self.gn_w, self.gn_b))
        x = F.conv_transpose1d(x, self.up_w, stride=2)
        x = F.instance_norm(x, weight=self.in_w, bias=self.in_b)
        x = torch.mul(x, self.gate)
        return self.head(F.relu(x).amax(-1))


@standin("functional_misc", (2, 3, 12), kind="class2")
def functional_misc() -> nn.Module:
    """F.conv1d on another module's weight, F.group_norm, F.conv_transpose1d, F.instance_norm."""
    return FunctionalMix()


class FunctionalTokens(nn.Module):
    """A token model holding raw parameters: embedding table, LayerNorm and MLP weights."""

    def __init__(self, vocab: int = 20, dim: int = 12, hidden: int = 16) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(vocab, dim))
        self.ln_w = nn.Parameter(torch.rand(dim) + 0.5)
        self.ln_b = nn.Parameter(torch.randn(dim) * 0.1)
        self.w1 = nn.Parameter(torch.randn(hidden, dim) * 0.3)
        self.b1 = nn.Parameter(torch.randn(hidden) * 0.1)
        self.w2 = nn.Parameter(torch.randn(dim, hidden) * 0.3)
        self.head = nn.Linear(dim, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = F.embedding(tokens, self.table)
        x = F.layer_norm(x, (x.shape[-1],), self.ln_w, self.ln_b)
        x = x + F.linear(F.gelu(F.linear(x, self.w1, self.b1)), self.w2)
        return self.head(x.mean(1))


@standin("functional_embedding", (2, 7), kind="class2", expect="inexact", vocab=20)
def functional_embedding() -> nn.Module:
    """F.embedding, F.layer_norm and F.linear on raw parameters of a token model."""
    return FunctionalTokens()


class FunctionalVolume(nn.Module):
    """A volume reduced to a map: F.conv3d, then F.conv_transpose2d on held parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.w3d = nn.Parameter(torch.randn(6, 2, 3, 3, 3) * 0.2)
        self.b3d = nn.Parameter(torch.randn(6) * 0.1)
        self.w_up = nn.Parameter(torch.randn(6, 4, 2, 2) * 0.3)  # (in, out, k, k)
        self.b_up = nn.Parameter(torch.randn(4) * 0.1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.conv3d(x, self.w3d, self.b3d, padding=1)).mean(2)
        x = F.relu(F.conv_transpose2d(x, self.w_up, self.b_up, stride=2))
        return self.out(x)


@standin("functional_conv3d", (2, 2, 4, 6, 6), kind="class2")
def functional_conv3d() -> nn.Module:
    """F.conv3d and F.conv_transpose2d with parameter and bias arguments."""
    return FunctionalVolume()


# ----------------------------------------------------------------------------- class 3


class DropPathNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
            for _ in range(2)
        )
        self.drop_path = nn.ModuleList(DropPath(p) for p in (0.0, 0.2))
        self.head = ClassifierHead(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block, dp in zip(self.blocks, self.drop_path, strict=True):
            x = x + dp(block(x))
        return self.head(x)


@standin("drop_path", IMG, kind="class3")
def drop_path_net() -> nn.Module:
    """Residual branches through stochastic depth (identity in eval, per-sample in training)."""
    return DropPathNet()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    return torch.transpose(x, 1, 2).contiguous().view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNet V2 unit: split, a branch on one half, concat, shuffle."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, 1, 1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.down = nn.Sequential(  # the strided unit's two branches, concatenated and shuffled
            nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.down2 = nn.Sequential(
            nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.stage = nn.Sequential(ShuffleUnit(16), ShuffleUnit(16))
        self.conv5 = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = channel_shuffle(torch.cat((self.down(x), self.down2(x)), 1), 2)
        x = self.conv5(self.stage(x))
        return self.fc(x.mean([2, 3]))


@standin("shufflenet_v2", IMG, kind="class3", expect="pinned")
def shufflenet_v2() -> nn.Module:
    """ShuffleNet V2: chunk, concat and channel shuffle (view, transpose, view)."""
    return ShuffleNetV2()


class RollNet(nn.Module):
    """Channels-last tokens shifted spatially with torch.roll, then a channel MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # B H W C
        shifted = torch.roll(x, shifts=(-1, -1), dims=(1, 2))
        x = x + self.mlp(self.norm(shifted))
        x = torch.roll(x, shifts=(1, 1), dims=(1, 2))
        return self.head(x.mean((1, 2)))


@standin("roll_shift", IMG, kind="class3", expect="inexact")
def roll_shift() -> nn.Module:
    """torch.roll over the spatial dims of channels-last maps (Swin's shifted windows)."""
    return RollNet()


# ----------------------------------------------------------------------------- class 4


class ShapeDependent(nn.Module):
    """Padding computed from the input size, odd sizes padded, shapes asserted."""

    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.conv = Conv2dSame(cin, cout, 3, 2)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _B, _C, H, _W = x.shape
        assert self.size == H, f"input height {H} != {self.size}"
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        return F.relu(self.bn(self.conv(x)))


class ShapeFlowNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = ShapeDependent(3, 8, 15)
        self.b = ShapeDependent(8, 12, 8)
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x))
        if self.training:
            x = F.dropout(x, 0.1)
        return self.head(x)


@standin("shape_control_flow", (2, 3, 15, 15), kind="class4")
def shape_control_flow() -> nn.Module:
    """if x.shape[-1] % 2, assert H == self.size, SAME padding from x.size(), if self.training."""
    return ShapeFlowNet()


class ValueGate(nn.Module):
    """Control flow on tensor values: only this submodule may stay opaque."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.conv(x)
        return x


class ValueControlNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gate = ValueGate(8)
        self.conv3 = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.head = ClassifierHead(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv3(self.gate(self.conv2(self.conv1(x)))))


@standin("value_control_flow", IMG, kind="class4", expect="pinned")
def value_control_flow() -> nn.Module:
    """A submodule branching on a tensor value: it is pinned, the rest of the model prunes."""
    return ValueControlNet()


# ----------------------------------------------------------------------------- class 5


class TokenAttentionNet(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, 4)
        self.attn = Attention(16, 4, fused=fused)
        self.fc1 = nn.Linear(16, 24)
        self.fc2 = nn.Linear(24, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


@standin("hand_attention", IMG, kind="class5")
def hand_attention() -> nn.Module:
    """qkv Linear, reshape (B, N, 3, heads, head_dim), permute, q @ k^T, softmax, @ v, proj."""
    return TokenAttentionNet(fused=False)


@standin("sdpa_attention", IMG, kind="class5")
def sdpa_attention() -> nn.Module:
    """The same attention through F.scaled_dot_product_attention."""
    return TokenAttentionNet(fused=True)
