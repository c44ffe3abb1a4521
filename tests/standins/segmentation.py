"""Segmentation shapes: U-Net, DeepLabV3 (ASPP, dict output with an auxiliary head), PSPNet,
HRNet-style multi-resolution fusion, SegFormer-style decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import ConvBnAct, LayerNorm2d

IMG = (2, 3, 32, 32)


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(ConvBnAct(cin, cout, 3), ConvBnAct(cout, cout, 3))


class Up(nn.Module):
    """Transposed-conv upsampling, padding to the skip's size (odd sizes), concat, convs."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, 2)
        self.conv = DoubleConv(cin // 2 + cskip, cout)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        dy = x2.size()[2] - x1.size()[2]
        dx = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inc = DoubleConv(3, 8)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(8, 12))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(12, 16))
        self.up1 = Up(16, 12, 12)
        self.up2 = Up(12, 8, 8)
        self.outc = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        return self.outc(self.up2(self.up1(x3, x2), x1))


@standin("unet", (2, 3, 30, 30), kind="segmentation")
def unet() -> nn.Module:
    """U-Net: max-pool downs, ConvTranspose2d ups padded to the skip size, skip concats."""
    return UNet()


class ASPPPooling(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin: int, rates: tuple[int, ...], cout: int = 8) -> None:
        super().__init__()
        convs: list[nn.Module] = [
            nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        ]
        for r in rates:
            convs.append(nn.Sequential(nn.Conv2d(cin, cout, 3, padding=r, dilation=r, bias=False),
                                       nn.BatchNorm2d(cout), nn.ReLU()))  # fmt: skip
        convs.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(convs)
        self.project = nn.Sequential(nn.Conv2d(len(convs) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class DeepLabV3(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(ConvBnAct(3, 8, 3, 2), ConvBnAct(8, 12, 3, 2))
        self.layer2 = nn.Sequential(ConvBnAct(12, 16, 3), ConvBnAct(16, 16, 3))
        self.classifier = nn.Sequential(ASPP(16, (2, 3)), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))  # fmt: skip
        self.aux_classifier = nn.Sequential(ConvBnAct(12, 8, 3), nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        aux_feat = self.layer1(x)
        feat = self.layer2(aux_feat)
        out = F.interpolate(self.classifier(feat), size=size, mode="bilinear", align_corners=False)
        aux = F.interpolate(
            self.aux_classifier(aux_feat), size=size, mode="bilinear", align_corners=False
        )
        return {"out": out, "aux": aux}


@standin("deeplabv3", IMG, kind="segmentation")
def deeplabv3() -> nn.Module:
    """DeepLabV3: ASPP with dilated branches and image pooling, bilinear upsampling to the
    input size, {"out", "aux"} dict output."""
    return DeepLabV3()


class PyramidPooling(nn.Module):
    def __init__(self, cin: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        red = cin // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(cin, red, 1, bias=False),
                nn.BatchNorm2d(red),
                nn.ReLU(),
            )
            for b in bins
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.size(2), x.size(3)
        pyramids = [x]
        pyramids.extend(
            F.interpolate(s(x), size=(h, w), mode="bilinear", align_corners=True)
            for s in self.stages
        )
        return torch.cat(pyramids, dim=1)


class PSPNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(ConvBnAct(3, 8, 3, 2), ConvBnAct(8, 16, 3, 2))
        self.ppm = PyramidPooling(16)
        self.final = nn.Sequential(ConvBnAct(32, 8, 3), nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final(self.ppm(self.backbone(x)))
        return F.interpolate(out, scale_factor=4.0, mode="bilinear", align_corners=False)


@standin("pspnet", IMG, kind="segmentation")
def pspnet() -> nn.Module:
    """PSPNet: adaptive pools at four bin sizes, upsampled to h, w and concatenated with x."""
    return PSPNet()


class HRFuse(nn.Module):
    """Two resolutions exchanging features: the low branch upsampled and added to the high one,
    the high branch strided down and added to the low one."""

    def __init__(self, ch: int, cl: int) -> None:
        super().__init__()
        self.high = ConvBnAct(ch, ch, 3)
        self.low = ConvBnAct(cl, cl, 3)
        self.low_to_high = nn.Sequential(nn.Conv2d(cl, ch, 1, bias=False), nn.BatchNorm2d(ch))
        self.high_to_low = nn.Sequential(nn.Conv2d(ch, cl, 3, 2, 1, bias=False), nn.BatchNorm2d(cl))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        h, l_ = self.high(xs[0]), self.low(xs[1])
        up = F.interpolate(
            self.low_to_high(l_),
            size=[h.shape[-2], h.shape[-1]],
            mode="bilinear",
            align_corners=False,
        )
        return [F.relu(h + up), F.relu(l_ + self.high_to_low(h))]


class HRNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBnAct(3, 8, 3, 2), ConvBnAct(8, 8, 3, 2))
        self.transition = ConvBnAct(8, 12, 3, 2)
        self.fuse = nn.Sequential(HRFuse(8, 12), HRFuse(8, 12))
        self.last = nn.Sequential(ConvBnAct(20, 8, 1), nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        h, l_ = self.fuse([x, self.transition(x)])
        l_ = F.interpolate(l_, size=h.shape[2:], mode="bilinear", align_corners=False)
        return self.last(torch.cat([h, l_], 1))


@standin("hrnet", IMG, kind="segmentation")
def hrnet() -> nn.Module:
    """HRNet: parallel resolutions fused by upsample-and-add and strided-conv-and-add."""
    return HRNet()


class EfficientSelfAttention(nn.Module):
    """SegFormer's attention with spatial reduction: keys and values from a strided conv on the
    tokens reshaped back to a map."""

    def __init__(self, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
        x_ = self.sr(x.permute(0, 2, 1).reshape(B, C, H, W)).reshape(B, C, -1).permute(0, 2, 1)
        kv = (
            self.kv(self.norm(x_))
            .reshape(B, -1, 2, self.heads, C // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        k, v = kv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.fc1(x)
        B, _N, C = x.shape
        x = self.dwconv(x.transpose(1, 2).view(B, C, H, W)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class SegFormerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, 2 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), H, W)
        return x + self.mlp(self.norm2(x), H, W)


class Stage(nn.Module):
    def __init__(self, cin: int, dim: int, stride: int, heads: int, sr: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(cin, dim, 2 * stride - 1, stride, stride - 1)
        self.embed_norm = nn.LayerNorm(dim)
        self.block = SegFormerBlock(dim, heads, sr)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, _C, H, W = x.shape
        x = self.embed_norm(x.flatten(2).transpose(1, 2))
        x = self.norm(self.block(x, H, W))
        return x.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()


class SegFormer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stage1 = Stage(3, 8, 4, 1, 2)
        self.stage2 = Stage(8, 16, 2, 2, 1)
        self.linear_c = nn.ModuleList(nn.Conv2d(c, 8, 1) for c in (8, 16))
        self.fuse = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.norm = LayerNorm2d(8)
        self.linear_pred = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.stage1(x)
        c2 = self.stage2(c1)
        c2_up = F.interpolate(
            self.linear_c[1](c2), size=c1.size()[2:], mode="bilinear", align_corners=False
        )
        x = self.fuse(torch.cat([c2_up, self.linear_c[0](c1)], dim=1))
        return self.linear_pred(self.norm(x))


@standin("segformer", IMG, kind="segmentation", expect="inexact")
def segformer() -> nn.Module:
    """SegFormer: overlapping patch embeddings, spatial-reduction attention with H, W passed as
    arguments, a depthwise conv inside the MLP, an all-MLP decoder."""
    return SegFormer()
