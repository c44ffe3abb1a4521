"""ConvNeXt and PoolFormer (MetaFormer): channels-first norms written as subclasses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import ConvMlp, DropPath, GroupNorm1, LayerNorm2d, LayerScale, Mlp

IMG = (2, 3, 32, 32)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, then channels-last LayerNorm and MLP with layer scale, drop path."""

    def __init__(self, dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(0.5 * torch.ones(dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x))
        x = x.mul(self.gamma).permute(0, 3, 1, 2)
        return self.drop_path(x) + shortcut


class ConvNeXtStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, downsample: bool) -> None:
        super().__init__()
        if downsample:
            self.downsample = nn.Sequential(LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, 2))
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(*[ConvNeXtBlock(cout, 0.1 * i) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class NormMlpHead(nn.Module):
    """Pool, LayerNorm2d on the pooled map, flatten, fc."""

    def __init__(self, dim: int, classes: int = 5) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(self.flatten(self.norm(x)))


class ConvNeXt(nn.Module):
    def __init__(
        self, dims: tuple[int, ...] = (8, 16, 24), depths: tuple[int, ...] = (1, 2, 1)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        cin = dims[0]
        stages = []
        for i, (d, n) in enumerate(zip(dims, depths, strict=True)):
            stages.append(ConvNeXtStage(cin, d, n, downsample=i > 0))
            cin = d
        self.stages = nn.Sequential(*stages)
        self.head = NormMlpHead(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


@standin("convnext", IMG, kind="classification", expect="inexact")
def convnext() -> nn.Module:
    """ConvNeXt: LayerNorm2d subclass, permute to NHWC, Linear MLP, gamma, drop path."""
    return ConvNeXt()


class Pooling(nn.Module):
    """PoolFormer's token mixer: average pooling minus the input."""

    def __init__(self, pool_size: int = 3) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class PoolFormerBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = Pooling()
        self.layer_scale1 = LayerScale(dim, two_d=True)
        self.drop_path = DropPath(0.1)
        self.norm2 = GroupNorm1(dim)
        self.mlp = ConvMlp(dim, 4 * dim)
        self.layer_scale2 = LayerScale(dim, two_d=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale1(self.token_mixer(self.norm1(x))))
        return x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))


class PoolFormer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 7, 4, 2)
        self.stage1 = nn.Sequential(PoolFormerBlock(8), PoolFormerBlock(8))
        self.down = nn.Conv2d(8, 16, 3, 2, 1)
        self.stage2 = nn.Sequential(PoolFormerBlock(16))
        self.norm = GroupNorm1(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x).mean([-2, -1]))


@standin("poolformer", IMG, kind="classification", expect="inexact")
def poolformer() -> nn.Module:
    """PoolFormer: GroupNorm1 subclass, pool(x) - x token mixer, 2-d layer scale."""
    return PoolFormer()
