"""Detection shapes: FPN + RetinaNet-style head, YOLO (C2f, SPPF, decoupled head), YOLOv5 C3
with a parallel SPP, BiFPN with weighted fusion, SSD head, CenterNet."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import standin
from .layers import ConvBnAct

IMG = (2, 3, 32, 32)


class TinyBackbone(nn.Module):
    """Three feature levels (strides 4, 8, 16) with residual stages; returns a list."""

    def __init__(self, widths: tuple[int, int, int] = (8, 12, 16)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBnAct(3, widths[0], 3, 2), ConvBnAct(widths[0], widths[0], 3, 2)
        )
        self.down = nn.ModuleList(ConvBnAct(a, b, 3, 2) for a, b in itertools.pairwise(widths))
        self.blocks = nn.ModuleList(ConvBnAct(w, w, 3, act=None) for w in widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, block in enumerate(self.blocks):
            if i:
                x = self.down[i - 1](x)
            x = F.relu(x + block(x))
            feats.append(x)
        return feats


class FPN(nn.Module):
    """Lateral 1x1 convs, top-down nearest upsampling to the lateral's size and add, 3x3 output
    convs, and an extra level by max pooling; returns an ordered dict of levels."""

    def __init__(self, in_channels: list[int], out: int) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out, out, 3, padding=1) for _ in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        last = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last)]
        for idx in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[idx](feats[idx])
            top_down = F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            last = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last))
        results.append(F.max_pool2d(results[-1], 1, 2, 0))
        return OrderedDict((f"p{i + 2}", r) for i, r in enumerate(results))


class FPNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.fpn = FPN([8, 12, 16], 8)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.backbone(x))


@standin("fpn", IMG, kind="detection")
def fpn() -> nn.Module:
    """Backbone + FPN: upsample-and-add over three scales, four outputs in a dict."""
    return FPNNet()


class RetinaHead(nn.Module):
    """One conv tower per task shared across every FPN level; outputs permuted to
    ``(B, H*W*A, K)`` per level and concatenated."""

    def __init__(self, c: int, anchors: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.classes = classes
        self.cls_tower = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(2, c), nn.ReLU(),
                                       nn.Conv2d(c, c, 3, padding=1), nn.ReLU())  # fmt: skip
        self.box_tower = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(c, anchors * classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, anchors * 4, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        cls, box = [], []
        for f in feats:
            N, _, H, W = f.shape
            c = self.cls_logits(self.cls_tower(f))
            cls.append(
                c.view(N, -1, self.classes, H, W)
                .permute(0, 3, 4, 1, 2)
                .reshape(N, -1, self.classes)
            )
            b = self.bbox_pred(self.box_tower(f))
            box.append(b.view(N, -1, 4, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, 4))
        return {"cls_logits": torch.cat(cls, dim=1), "bbox_regression": torch.cat(box, dim=1)}


class RetinaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.fpn = FPN([8, 12, 16], 8)
        self.head = RetinaHead(8)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(list(self.fpn(self.backbone(x)).values()))


@standin("retinanet", IMG, kind="detection")
def retinanet() -> nn.Module:
    """RetinaNet: FPN, a head shared across levels, per-level permute/reshape, dict output."""
    return RetinaNet()


# ----------------------------------------------------------------------------- YOLO


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvBnAct(c, c, 3, act=nn.SiLU)
        self.cv2 = ConvBnAct(c, c, 3, act=nn.SiLU)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8 C2f: a 1x1 conv chunked in two; bottlenecks chained on the second half, every
    intermediate output kept in a list and concatenated."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c2 // 2
        self.cv1 = ConvBnAct(c1, 2 * self.c, 1, act=nn.SiLU)
        self.cv2 = ConvBnAct((2 + n) * self.c, c2, 1, act=nn.SiLU)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: one 5x5 max pool applied three times in a row, the input
    and the three results concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBnAct(c1, c_, 1, act=nn.SiLU)
        self.cv2 = ConvBnAct(c_ * 4, c2, 1, act=nn.SiLU)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class Detect(nn.Module):
    """Decoupled head: per level a box branch and a class branch, concatenated per level."""

    def __init__(self, classes: int, ch: tuple[int, ...]) -> None:
        super().__init__()
        self.no = classes + 4
        c2, c3 = 8, 8
        self.cv2 = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, c2, 3, act=nn.SiLU), nn.Conv2d(c2, 4, 1)) for c in ch
        )
        self.cv3 = nn.ModuleList(
            nn.Sequential(ConvBnAct(c, c3, 3, act=nn.SiLU), nn.Conv2d(c3, classes, 1)) for c in ch
        )

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]


class YOLOv8(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b0 = ConvBnAct(3, 8, 3, 2, act=nn.SiLU)
        self.b1 = ConvBnAct(8, 16, 3, 2, act=nn.SiLU)
        self.b2 = C2f(16, 16, 1, True)
        self.b3 = ConvBnAct(16, 24, 3, 2, act=nn.SiLU)
        self.b4 = C2f(24, 24, 2, True)
        self.b5 = ConvBnAct(24, 32, 3, 2, act=nn.SiLU)
        self.b6 = SPPF(32, 32)
        self.up = nn.Upsample(None, 2, "nearest")
        self.n1 = C2f(32 + 24, 24)
        self.n2 = C2f(24 + 16, 16)
        self.d1 = ConvBnAct(16, 16, 3, 2, act=nn.SiLU)
        self.n3 = C2f(16 + 24, 24)
        self.d2 = ConvBnAct(24, 24, 3, 2, act=nn.SiLU)
        self.n4 = C2f(24 + 32, 32)
        self.detect = Detect(3, (16, 24, 32))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.b2(self.b1(self.b0(x)))
        p4 = self.b4(self.b3(p3))
        p5 = self.b6(self.b5(p4))
        h4 = self.n1(torch.cat([self.up(p5), p4], 1))
        h3 = self.n2(torch.cat([self.up(h4), p3], 1))
        o4 = self.n3(torch.cat([self.d1(h3), h4], 1))
        o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
        return self.detect([h3, o4, o5])


@standin("yolov8", IMG, kind="detection")
def yolov8() -> nn.Module:
    """YOLOv8: C2f (chunk, list extend, concat), SPPF, PAN neck with upsample + concat, a
    decoupled per-level head; a list of outputs."""
    return YOLOv8()


class C3(nn.Module):
    """YOLOv5 C3: two 1x1 branches, bottlenecks on one, concat, 1x1."""

    def __init__(self, c1: int, c2: int, n: int = 1) -> None:
        super().__init__()
        c_ = c2 // 2
        self.cv1 = ConvBnAct(c1, c_, 1, act=nn.SiLU)
        self.cv2 = ConvBnAct(c1, c_, 1, act=nn.SiLU)
        self.cv3 = ConvBnAct(2 * c_, c2, 1, act=nn.SiLU)
        self.m = nn.Sequential(*(Bottleneck(c_) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPP(nn.Module):
    """Classic SPP: parallel max pools of 5, 9 and 13 concatenated with the input."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        c_ = c1 // 2
        self.cv1 = ConvBnAct(c1, c_, 1, act=nn.SiLU)
        self.cv2 = ConvBnAct(c_ * (len(k) + 1), c2, 1, act=nn.SiLU)
        self.m = nn.ModuleList(nn.MaxPool2d(x, 1, x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class YOLOv5(nn.Module):
    """Backbone of C3 blocks, SPP, and anchor-based heads reshaped to (B, A, H, W, no)."""

    def __init__(self) -> None:
        super().__init__()
        self.na, self.no = 2, 3 + 5
        self.b0 = ConvBnAct(3, 8, 3, 2, act=nn.SiLU)
        self.b1 = C3(8, 16)
        self.b2 = ConvBnAct(16, 24, 3, 2, act=nn.SiLU)
        self.b3 = C3(24, 24, 2)
        self.spp = SPP(24, 24)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * self.no, 1) for c in (16, 24))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3 = self.b1(self.b0(x))
        p4 = self.spp(self.b3(self.b2(p3)))
        out = []
        for conv, f in zip(self.m, (p3, p4), strict=True):
            y = conv(f)
            bs, _, ny, nx = y.shape
            out.append(y.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return out


@standin("yolov5", IMG, kind="detection")
def yolov5() -> nn.Module:
    """YOLOv5: C3 split-and-concat blocks, SPP pyramid of parallel max pools, anchor heads."""
    return YOLOv5()


class SPPFNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBnAct(3, 8, 3, 2, act=nn.SiLU), ConvBnAct(8, 16, 3, 2, act=nn.SiLU)
        )
        self.sppf = SPPF(16, 16)
        self.out = nn.Conv2d(16, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.sppf(self.stem(x)))


@standin("sppf", IMG, kind="detection")
def sppf() -> nn.Module:
    """SPPF alone: a max-pool pyramid concatenated, a dense prediction map out."""
    return SPPFNet()


# ----------------------------------------------------------------------------- BiFPN


class FastFusion(nn.Module):
    """EfficientDet's fast normalised fusion: ReLU'd learnt weights, normalised, weighted sum."""

    def __init__(self, n: int, c: int) -> None:
        super().__init__()
        self.edge_weights = nn.Parameter(torch.ones(n))
        self.conv = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False), nn.Conv2d(c, c, 1),
                                  nn.BatchNorm2d(c))  # fmt: skip

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.edge_weights.to(dtype=xs[0].dtype))
        w = w / (w.sum() + 1e-4)
        out = torch.stack(xs, dim=-1)
        out = torch.sum(out * w, dim=-1)
        return self.conv(F.silu(out))


class BiFPNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.lateral = nn.ModuleList(nn.Conv2d(c, 8, 1) for c in (8, 12, 16))
        self.td = nn.ModuleList(FastFusion(2, 8) for _ in range(2))
        self.bu = nn.ModuleList(FastFusion(3, 8) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p3, p4, p5 = (lat(f) for lat, f in zip(self.lateral, self.backbone(x), strict=True))
        p4_td = self.td[0]([p4, F.interpolate(p5, scale_factor=2.0, mode="nearest")])
        p3_out = self.td[1]([p3, F.interpolate(p4_td, scale_factor=2.0, mode="nearest")])
        p4_out = self.bu[0]([p4, p4_td, F.max_pool2d(p3_out, 3, 2, 1)])
        p5_out = self.bu[1]([p5, p5, F.max_pool2d(p4_out, 3, 2, 1)])
        return [p3_out, p4_out, p5_out]


@standin("bifpn", IMG, kind="detection")
def bifpn() -> nn.Module:
    """EfficientDet BiFPN: torch.stack of levels, learnt normalised weights, weighted sum."""
    return BiFPNNet()


# ----------------------------------------------------------------------------- SSD / CenterNet


class SSD(nn.Module):
    """SSD: extra layers on the backbone, per-level loc/conf convs, outputs permuted, flattened
    and concatenated across levels."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.extra = nn.Sequential(
            nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU()
        )
        self.l2norm_weight = nn.Parameter(torch.full((8,), 2.0))
        chans = (8, 12, 16, 12)
        self.loc = nn.ModuleList(nn.Conv2d(c, 2 * 4, 3, padding=1) for c in chans)
        self.conf = nn.ModuleList(nn.Conv2d(c, 2 * 3, 3, padding=1) for c in chans)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        f0 = feats[0]
        feats[0] = F.normalize(f0, dim=1) * self.l2norm_weight.view(1, -1, 1, 1)
        feats.append(self.extra(feats[-1]))
        loc = [
            l_(f).permute(0, 2, 3, 1).contiguous() for l_, f in zip(self.loc, feats, strict=True)
        ]
        conf = [
            c(f).permute(0, 2, 3, 1).contiguous() for c, f in zip(self.conf, feats, strict=True)
        ]
        loc_t = torch.cat([o.view(o.size(0), -1) for o in loc], 1)
        conf_t = torch.cat([o.view(o.size(0), -1) for o in conf], 1)
        return loc_t.view(loc_t.size(0), -1, 4), conf_t.view(conf_t.size(0), -1, 3)


@standin("ssd", IMG, kind="detection")
def ssd() -> nn.Module:
    """SSD: L2Norm with a learnt scale, extra layers, permute-view-cat across levels, a tuple."""
    return SSD()


class CenterNet(nn.Module):
    """Backbone, transposed-conv upsampling, three heads returned in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = TinyBackbone()
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(16, 12, 4, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
            nn.ConvTranspose2d(12, 8, 4, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        )  # fmt: skip
        self.heads = nn.ModuleDict(
            {
                name: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, n, 1))
                for name, n in (("hm", 3), ("wh", 2), ("reg", 2))
            }
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.deconv(self.backbone(x)[-1])
        out = {name: head(x) for name, head in self.heads.items()}
        out["hm"] = out["hm"].sigmoid()
        return out


@standin("centernet", IMG, kind="detection")
def centernet() -> nn.Module:
    """CenterNet: ConvTranspose2d upsampling, a ModuleDict of heads, a dict output."""
    return CenterNet()


# ----------------------------------------------------------------------------- torchvision / mmdet


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters held as buffers, folded into a
    scale and a shift in ``forward`` (detection backbones)."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        # statistics as a pretrained checkpoint would bring them (not the identity)
        self.register_buffer("weight", torch.rand(n) + 0.5)
        self.register_buffer("bias", torch.randn(n) * 0.5)
        self.register_buffer("running_mean", torch.randn(n) * 0.5)
        self.register_buffer("running_var", torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        return x * scale + (b - rm * scale)


class FrozenBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = FrozenBatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), FrozenBatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class IntermediateLayerGetter(nn.ModuleDict):
    """Runs the children in order and returns the outputs of the named ones in a dict."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]) -> None:
        layers = OrderedDict()
        wanted = dict(return_layers)
        for name, module in model.named_children():
            layers[name] = module
            wanted.pop(name, None)
            if not wanted:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class FrozenResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = FrozenBlock(8, 8, 1)
        self.layer2 = FrozenBlock(8, 12, 2)
        self.layer3 = FrozenBlock(12, 16, 2)
        self.fc = nn.Linear(16, 10)  # never reached by the layer getter


class FasterRCNNBackbone(nn.Module):
    """torchvision's detection backbone: frozen-BN ResNet through IntermediateLayerGetter into
    an FPN, a dict of levels out."""

    def __init__(self) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(
            FrozenResNet(), {"layer1": "0", "layer2": "1", "layer3": "2"}
        )
        self.fpn = FPN([8, 12, 16], 8)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(list(self.body(x).values()))


@standin("frozen_bn_fpn", IMG, kind="detection")
def frozen_bn_fpn() -> nn.Module:
    """FrozenBatchNorm2d (buffers folded into scale and shift), IntermediateLayerGetter, FPN."""
    return FasterRCNNBackbone()


class ConvModule(nn.Module):
    """conv / norm / act built from config dicts and applied in the order named by ``order``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, norm_cfg: dict | None = None,
                 act_cfg: dict | None = None, order: tuple[str, ...] = ("conv", "norm", "act")) -> None:  # fmt: skip
        super().__init__()
        self.order = order
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=not self.with_norm)
        if self.with_norm:
            groups = norm_cfg.get("num_groups")
            self.norm_name = "gn" if groups else "bn"
            norm = nn.GroupNorm(groups, cout) if groups else nn.BatchNorm2d(cout)
            self.add_module(self.norm_name, norm)
        if self.with_activation:
            self.activate = nn.LeakyReLU(act_cfg.get("negative_slope", 0.01))

    @property
    def norm(self) -> nn.Module:
        return getattr(self, self.norm_name)

    def forward(self, x: torch.Tensor, activate: bool = True, norm: bool = True) -> torch.Tensor:
        for layer in self.order:
            if layer == "conv":
                x = self.conv(x)
            elif layer == "norm" and norm and self.with_norm:
                x = self.norm(x)
            elif layer == "act" and activate and self.with_activation:
                x = self.activate(x)
        return x


class MMDetNeck(nn.Module):
    """An mmdet-style FPN of ConvModules: upsampling from a config dict unpacked into
    F.interpolate, extra outputs by strided convs on the last output."""

    def __init__(self) -> None:
        super().__init__()
        norm = {"type": "GN", "num_groups": 2}
        act = {"type": "LeakyReLU", "negative_slope": 0.1}
        self.stem = ConvModule(3, 8, 3, 2, {"type": "BN"}, act)
        self.c3 = ConvModule(8, 8, 3, 2, {"type": "BN"}, act)
        self.c4 = ConvModule(8, 12, 3, 2, {"type": "BN"}, act)
        self.c5 = ConvModule(12, 16, 3, 2, {"type": "BN"}, act)
        self.lateral_convs = nn.ModuleList(ConvModule(c, 8, 1, norm_cfg=norm) for c in (8, 12, 16))
        self.fpn_convs = nn.ModuleList(
            ConvModule(8, 8, 3, norm_cfg=norm, act_cfg=act) for _ in range(3)
        )
        self.extra = ConvModule(8, 8, 3, 2, norm_cfg=norm)
        self.upsample_cfg = {"mode": "nearest"}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        laterals = [conv(c) for conv, c in zip(self.lateral_convs, (c3, c4, c5), strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            prev_shape = laterals[i - 1].shape[2:]
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=prev_shape, **self.upsample_cfg
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=True)]
        outs.append(self.extra(outs[-1], activate=False))
        return tuple(outs)


@standin("mmdet_fpn", IMG, kind="detection")
def mmdet_fpn() -> nn.Module:
    """mmdet-style ConvModule (order tuple, flags, config dicts), GroupNorm, tuple of levels."""
    return MMDetNeck()
