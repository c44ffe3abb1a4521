"""Layers written the way the public model libraries write them.

Subclasses of standard layers whose ``forward`` calls the functional op itself, helpers that
compute padding from the input size, stochastic depth that checks ``self.training``, squeeze-
excite gates and hand-written attention: the shapes of code that users' models are made of.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a width to a multiple of ``divisor``, never more than 10% below ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def same_padding(size: int, k: int, s: int, d: int) -> int:
    """Total padding a TensorFlow 'SAME' convolution adds along one dimension of ``size``."""
    return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)


def pad_same(
    x: torch.Tensor, k: tuple[int, ...], s: tuple[int, ...], d: tuple[int, ...]
) -> torch.Tensor:
    ih, iw = x.size()[-2:]
    ph, pw = same_padding(ih, k[0], s[0], d[0]), same_padding(iw, k[1], s[1], d[1])
    if ph > 0 or pw > 0:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return x


class Conv2dSame(nn.Conv2d):
    """'SAME' padding computed from the input's size on every call (TF-ported weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: drop whole samples of a residual branch in training."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm, dropout and activation in one module that keeps BatchNorm's state-dict keys:
    the batch norm is applied with ``F.batch_norm`` on the module's own parameters."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        act_layer: Callable[[], nn.Module] | None = nn.ReLU,
        drop: float = 0.0,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()
        self.act = act_layer() if act_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map: permute, ``F.layer_norm``, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class LayerNormCl(nn.LayerNorm):
    """LayerNorm on a channels-last view of an NCHW tensor, written with ``F.layer_norm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps
        )
        return y.permute(0, 3, 1, 2).contiguous()


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group (normalises over C, H, W), as PoolFormer uses."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(1, num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class StdConv2d(nn.Conv2d):
    """Weight-standardised conv: each filter normalised to zero mean, unit variance."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int | None = None,
                 groups: int = 1, bias: bool = False, eps: float = 1e-6) -> None:  # fmt: skip
        super().__init__(cin, cout, k, stride, k // 2 if padding is None else padding,
                         groups=groups, bias=bias)  # fmt: skip
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            training=True, momentum=0.0, eps=self.eps,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ScaledStdConv2d(nn.Conv2d):
    """Scaled weight standardisation (NF-Nets): standardised filters times a learnt per-filter
    gain and ``gamma / sqrt(fan_in)``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 bias: bool = True, gamma: float = 1.0, eps: float = 1e-6) -> None:  # fmt: skip
        super().__init__(cin, cout, k, stride, k // 2, groups=groups, bias=bias)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 1.0))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=self.eps,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvBnAct(nn.Module):
    """conv -> BatchNormAct2d; ``same=True`` uses the input-size-dependent 'SAME' padding."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: Callable[[], nn.Module] | None = nn.ReLU, same: bool = False) -> None:  # fmt: skip
        super().__init__()
        if same:
            self.conv = Conv2dSame(cin, cout, k, stride, groups=groups, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(cout, act_layer=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Squeeze-excite with 1x1 convs and a gate function (sigmoid, or hard sigmoid in
    MobileNetV3); the reduced width is derived from the block's input width."""

    def __init__(self, chs: int, rd_chs: int, act: Callable[[], nn.Module] = nn.ReLU,
                 gate: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid) -> None:  # fmt: skip
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1)
        self.act1 = act()
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1)
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * self.gate(s)


class Mlp(nn.Module):
    """Linear -> act -> dropout -> Linear on the last dimension (tokens or channels-last)."""

    def __init__(self, dim: int, hidden: int, act: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop1(self.act(self.fc1(x))))


class ConvMlp(nn.Module):
    """The same MLP with 1x1 convs on an NCHW map."""

    def __init__(self, dim: int, hidden: int, act: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """A learnt per-channel scale on the last dim (``2d=True``: on dim 1 of an NCHW map)."""

    def __init__(self, dim: int, init: float = 0.5, two_d: bool = False) -> None:
        super().__init__()
        shape = (dim, 1, 1) if two_d else (dim,)
        self.gamma = nn.Parameter(init * torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)`` written by hand: one qkv Linear,
    reshape to ``(B, N, 3, heads, head_dim)``, permute, then either
    ``F.scaled_dot_product_attention`` or ``softmax(q @ k^T * scale) @ v``, and a projection."""

    def __init__(self, dim: int, heads: int, fused: bool = False, qkv_bias: bool = True) -> None:
        super().__init__()
        assert dim % heads == 0, "dim should be divisible by heads"
        self.num_heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block with layer scale and drop path."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0, fused: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, fused)
        self.ls1 = LayerScale(dim)
        self.drop_path1 = DropPath(0.1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)
        self.drop_path2 = DropPath(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class ClassifierHead(nn.Module):
    """Global average pool, flatten, dropout, Linear (named ``fc``)."""

    def __init__(self, cin: int, classes: int = 5) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.drop(x))
