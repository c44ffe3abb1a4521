"""Vision transformers: ViT, DeiT, Swin, MaxViT, MLP-Mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import BatchNormAct2d, DropPath, Mlp, SqueezeExcite, TransformerBlock

IMG = (2, 3, 32, 32)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv, flattened to tokens ``(B, N, C)``."""

    def __init__(self, dim: int, patch: int = 4, flatten: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2) if self.flatten else x.permute(0, 2, 3, 1)


class VisionTransformer(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2, heads: int = 4, distilled: bool = False,
                 fused: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.num_prefix = 2 if distilled else 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.dist_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5) if distilled else None
        self.pos_embed = nn.Parameter(torch.randn(1, 64 + self.num_prefix, dim) * 0.5)
        self.blocks = nn.Sequential(
            *[TransformerBlock(dim, heads, fused=fused) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)
        self.head_dist = nn.Linear(dim, 5) if distilled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.patch_embed(x)
        tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*tokens, x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        if self.head_dist is None:
            return self.head(x[:, 0])
        x, x_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.training:
            return x, x_dist
        return (x + x_dist) / 2


@standin("vit", IMG, kind="classification", expect="inexact")
def vit() -> nn.Module:
    """ViT: patch embedding, class token concat, position embedding, hand-written attention."""
    return VisionTransformer()


@standin("deit", IMG, kind="classification", expect="inexact")
def deit() -> nn.Module:
    """DeiT (distilled): class and distillation tokens, SDPA attention, two heads averaged in
    eval and returned as a tuple in training."""
    return VisionTransformer(distilled=True, fused=True)


# ----------------------------------------------------------------------------- Swin


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, C)


def relative_position_index(ws: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(
        1
    )
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel[:, :, 0] += ws - 1
    rel[:, :, 1] += ws - 1
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


class WindowAttention(nn.Module):
    """Attention inside windows with a learnt relative position bias per head and an optional
    additive mask per window (shifted windows)."""

    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.randn((2 * ws - 1) ** 2, heads) * 0.1
        )
        self.register_buffer(
            "relative_position_index", relative_position_index(ws).view(-1), persistent=False
        )
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.window_area = ws * ws

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index]
        attn = attn + bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        x = attn.softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B_, N, -1))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, res: int, ws: int, shift: int) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.drop_path = DropPath(0.1)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        mask = None
        if shift:
            img = torch.zeros(1, res, res, 1)
            cnt = 0
            for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img[:, h, w, :] = cnt
                    cnt += 1
            win = window_partition(img, ws).view(-1, ws * ws)
            mask = win.unsqueeze(1) - win.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _B, H, W, C = x.shape
        shortcut = x
        x = self.norm1(x)
        pad_h = (self.ws - H % self.ws) % self.ws
        pad_w = (self.ws - W % self.ws) % self.ws
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, Hp, Wp, _ = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.ws).view(-1, self.ws * self.ws, C)
        windows = self.attn(windows, mask=self.attn_mask).view(-1, self.ws, self.ws, C)
        x = window_reverse(windows, self.ws, Hp, Wp)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x[:, :H, :W, :].contiguous()
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens concatenated along channels (4C), LayerNorm, Linear to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class Swin(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(dim, flatten=False)
        self.norm0 = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, 2, 8, 4, 0), SwinBlock(dim, 2, 8, 4, 2))
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(SwinBlock(2 * dim, 4, 4, 3, 0))  # 4x4 padded to 6x6
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.norm0(self.patch_embed(x)))
        x = self.norm(self.stage2(self.merge(x)))
        return self.head(x.mean((1, 2)))


@standin("swin", IMG, kind="classification", expect="inexact")
def swin() -> nn.Module:
    """Swin: padding from H % window, torch.roll, window partition/reverse, relative position
    bias per head, shifted-window masks, patch merging by reshape."""
    return Swin()


# ----------------------------------------------------------------------------- MaxViT


def grid_partition(x: torch.Tensor, g: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, g, H // g, g, W // g, C)
    return x.permute(0, 2, 4, 1, 3, 5).contiguous().view(-1, g, g, C)


def grid_reverse(windows: torch.Tensor, g: int, H: int, W: int) -> torch.Tensor:
    C = windows.shape[-1]
    x = windows.view(-1, H // g, W // g, g, g, C)
    return x.permute(0, 3, 1, 4, 2, 5).contiguous().view(-1, H, W, C)


class MbConv(nn.Module):
    """MaxViT's MBConv: pre-norm BN, 1x1 expand, depthwise 3x3, SE, 1x1 project, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        mid = 4 * dim
        self.pre_norm = BatchNormAct2d(dim, act_layer=None)
        self.conv1_1x1 = nn.Conv2d(dim, mid, 1)
        self.norm1 = BatchNormAct2d(mid, act_layer=nn.GELU)
        self.conv2_kxk = nn.Conv2d(mid, mid, 3, 1, 1, groups=mid)
        self.norm2 = BatchNormAct2d(mid, act_layer=nn.GELU)
        self.se = SqueezeExcite(mid, dim // 4 or 1, nn.SiLU)
        self.conv3_1x1 = nn.Conv2d(mid, dim, 1)
        self.drop_path = DropPath(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(self.conv1_1x1(self.pre_norm(x)))
        x = self.conv3_1x1(self.se(self.norm2(self.conv2_kxk(x))))
        return self.drop_path(x) + shortcut


class PartitionAttention(nn.Module):
    """Attention inside windows ('block') or across a dilated grid ('grid'), channels last."""

    def __init__(self, dim: int, heads: int, size: int, mode: str) -> None:
        super().__init__()
        self.size, self.mode = size, mode
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)
        self.drop_path = DropPath(0.1)

    def _partition_attn(self, x: torch.Tensor) -> torch.Tensor:
        _B, H, W, C = x.shape
        if self.mode == "block":
            parts = window_partition(x, self.size)
        else:
            parts = grid_partition(x, self.size)
        parts = self.attn(parts.view(-1, self.size * self.size, C)).view(
            -1, self.size, self.size, C
        )
        if self.mode == "block":
            return window_reverse(parts, self.size, H, W)
        return grid_reverse(parts, self.size, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self._partition_attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, size: int) -> None:
        super().__init__()
        self.conv = MbConv(dim)
        self.attn_block = PartitionAttention(dim, heads, size, "block")
        self.attn_grid = PartitionAttention(dim, heads, size, "grid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)


class MaxViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), BatchNormAct2d(16, act_layer=nn.GELU),
                                  nn.Conv2d(16, 16, 3, 2, 1))  # fmt: skip
        self.stage = nn.Sequential(MaxViTBlock(16, 2, 4))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage(self.stem(x)).mean((2, 3))
        return self.head(self.norm(x))


@standin("maxvit", IMG, kind="classification", expect="inexact")
def maxvit() -> nn.Module:
    """MaxViT: MBConv, then block and grid partition attention on channels-last maps."""
    return MaxViT()


# ----------------------------------------------------------------------------- MLP-Mixer


class MixerBlock(nn.Module):
    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mlp_tokens = Mlp(tokens, 2 * tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, 4 * dim)
        self.drop_path = DropPath(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = PatchEmbed(16)
        self.blocks = nn.Sequential(MixerBlock(16, 64), MixerBlock(16, 64))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))).mean(dim=1))


@standin("mlp_mixer", IMG, kind="classification", expect="inexact")
def mlp_mixer() -> nn.Module:
    """MLP-Mixer: a token-mixing MLP on the transposed tokens, a channel MLP."""
    return Mixer()
