"""The structural pruning core: channel groups, physical surgery and size plans.

The central check is the equivalence harness :func:`check_equivalence`: in float64, zeroing a
group's channels and then removing them must leave every output unchanged (to 1e-9), and the
params/FLOPs the graph planned before surgery must equal what is measured after it. It runs over
every zoo model and over the small architectures below, each written to exercise one coupling
pattern (residual adds, concats, chunks, depthwise and grouped convs, flattening, attention ...).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

from prunekit import graph as pg
from prunekit.errors import ConfigError, UnsupportedError
from prunekit.measure import count_flops, count_params
from prunekit.models import create, list_models, model_info

Inputs = tuple[Any, ...]


# ----------------------------------------------------------------------------- the harness


def _to_double(inputs: Inputs, device: torch.device) -> Inputs:
    return tuple(
        x.to(device=device, dtype=torch.float64) if x.is_floating_point() else x.to(device)
        for x in inputs
    )


def randomise_norms(model: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters: with BatchNorm at its identity
    initialisation a channel whose conv is zeroed would output zero even if the BN were left
    alone, so zeroing (and thus surgery) would not really be tested."""
    with torch.no_grad():
        for m in model.modules():
            params: list[torch.Tensor] = []
            if isinstance(m, nn.modules.batchnorm._NormBase):
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                params = [m.weight, m.bias] if m.affine else []
            elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                params = [p for p in (m.weight, m.bias) if p is not None]
            elif isinstance(m, nn.PReLU):
                params = [m.weight]
            for p in params:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5 + 0.5)


def _outputs(model: nn.Module, inputs: Inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        out, _ = tree_flatten(model(*inputs))
    return [t for t in out if isinstance(t, torch.Tensor)]


def _measure(model: nn.Module, inputs: Inputs) -> tuple[int, int]:
    return count_params(model).total, count_flops(model, inputs).flops


def check_equivalence(
    model: nn.Module,
    inputs: Inputs | torch.Tensor,
    *,
    max_groups: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    min_groups: int = 1,
    **build_kwargs: Any,
) -> pg.Graph:
    """Zero-then-prune every group (or ``max_groups`` random ones) and check outputs and plans.

    For each group: zero random units (at least one, not all), record the outputs, plan the
    removal, remove the units, then the outputs must be unchanged (unless a member normalises
    across the channels, ``group.exact == False``) and the measured params/FLOPs must equal the
    plan exactly. Model inputs and outputs keep their shapes throughout. Returns the graph.
    """
    dev = torch.device(device)
    inputs = _to_double((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs), dev)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = model.double().eval()
    randomise_norms(model, gen)
    model.to(dev)

    graph = pg.build(model, inputs, **build_kwargs)
    dense = _measure(model, inputs)
    assert (graph.plan([]).params, graph.plan([]).flops) == dense
    out_shapes = [o.shape for o in _outputs(model, inputs)]

    groups = [g for g in graph.groups if g.size >= 2]
    assert len(groups) >= min_groups, f"expected prunable groups, got {graph.groups}"
    if max_groups is not None and len(groups) > max_groups:
        groups = [groups[i] for i in sorted(rng.choice(len(groups), max_groups, replace=False))]
    for group in groups:
        size, params = group.size, count_params(model).total
        idx = rng.choice(size, int(rng.integers(1, size)), replace=False).tolist()
        group.zero(idx)
        before = _outputs(model, inputs)
        plan = graph.plan([group.units[i] for i in idx])
        group.prune(idx)
        assert group.size == size - len(idx)
        after = _outputs(model, inputs)
        assert [o.shape for o in after] == out_shapes, f"outputs changed shape ({group.name})"
        if group.exact:
            for a, b in zip(after, before, strict=True):
                torch.testing.assert_close(
                    a, b, rtol=1e-9, atol=1e-9, msg=lambda m, g=group: f"{g.name}: {m}"
                )
        assert _measure(model, inputs) == (plan.params, plan.flops), group.name
        assert plan.params < params, group.name  # every unit is made by some layer's weights
    assert (graph.plan([]).params, graph.plan([]).flops) == _measure(model, inputs)

    # the pruned model is still an ordinary trainable model
    model.train()
    out = model(*inputs)
    sum(t.sum() for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)).backward()
    model.eval()
    return graph


def group_layers(graph: pg.Graph) -> set[str]:
    """Every layer that appears in some prunable group."""
    return {m.layer for g in graph.groups for m in g.members}


def out_prunable(graph: pg.Graph, layer: str) -> bool:
    return any(m.layer == layer and m.side == "out" for g in graph.groups for m in g.members)


# ----------------------------------------------------------------------------- the zoo

ZOO = list_models()
BIG = {"googlenet", "densenet40", "mobilenetv2_imagenet", "mobilenetv2", "resnet110", "resnet50"}


def _zoo_input(name: str) -> tuple[dict[str, Any], torch.Tensor]:
    info = model_info(name)
    in_channels = 1 if info.family in ("lenet", "mnist1d") else 3
    if info.dims == 1:
        size: tuple[int, ...] = info.input_size
    elif info.input_size == (224, 224):
        size = (32, 32)  # ends in global pooling: a small image runs every layer
    elif info.family in ("vgg_cifar", "lenet"):
        size = info.input_size  # five (two) poolings need the native size
    else:
        size = (16, 16)
    kwargs: dict[str, Any] = {"in_channels": in_channels, "input_size": size}
    return kwargs, torch.randn(2, in_channels, *size)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_equivalence(name: str) -> None:
    kwargs, x = _zoo_input(name)
    torch.manual_seed(0)
    model = create(name, num_classes=7, **kwargs)
    graph = check_equivalence(model, x, max_groups=3 if name in BIG else 6, seed=len(name))
    assert model.classifier.out_features == 7
    assert not out_prunable(graph, "classifier")


# ----------------------------------------------------------------------------- architectures
# Small networks, one or two coupling patterns each. Every one ends in a layer named
# ``classifier`` (protected) unless the test says otherwise.


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class Head(nn.Module):
    """Global pooling and the protected classifier."""

    def __init__(self, cin: int, classes: int = 5) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(x), 1))


class Net(nn.Module):
    """A model whose classifier is declared protected, as the zoo's models are."""

    protected_layers = ("head.classifier",)


class ConvChain(Net):
    """conv -> BN -> ReLU chains, conv biases, max pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(3, 8),
            nn.Conv2d(8, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            conv_bn(12, 16),
        )
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Residual(Net):
    """Identity shortcuts (one unit across the whole stage) and a strided projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.a1, self.a2 = conv_bn(8, 6), nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.b1, self.b2 = conv_bn(8, 6), nn.Sequential(nn.Conv2d(6, 8, 3, 1, 1), nn.BatchNorm2d(8))
        self.c1 = conv_bn(8, 10, stride=2)
        self.c2 = nn.Sequential(nn.Conv2d(10, 12, 3, 1, 1), nn.BatchNorm2d(12))
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, 2, bias=False), nn.BatchNorm2d(12))
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.a2(self.a1(x)))
        x = torch.relu(self.b2(self.b1(x)).add(x))
        x = F.relu(self.c2(self.c1(x)) + self.proj(x))
        return self.head(x)


class DenseLike(Net):
    """DenseNet-style ``cat([x, f(x)])``: the stem's channels sit at offset 0 of every later
    concat, each layer's new channels at their own offset."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.layers = nn.ModuleList()
        c = 6
        for _ in range(3):
            self.layers.append(
                nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 4, 3, 1, 1))
            )
            c += 4
        self.trans = nn.Sequential(
            nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 1), nn.AvgPool2d(2)
        )
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return self.head(self.trans(x))


class Inception(nn.Module):
    def __init__(self, cin: int, a: int, b: int, c: int, d: int) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, a, 1)
        self.b2 = nn.Sequential(conv_bn(cin, 4, 1), conv_bn(4, b))
        self.b3 = nn.Sequential(conv_bn(cin, 3, 1), conv_bn(3, c, 5))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, d, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.b1(x), self.b2(x), self.b3(x), self.b4(x)), 1)


class InceptionLike(Net):
    """Four-branch concats feeding another inception block (concat offsets on the input side)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.i1 = Inception(8, 4, 6, 3, 2)
        self.i2 = Inception(15, 5, 4, 4, 3)
        self.head = Head(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.i2(self.i1(self.stem(x))))


class ChunkGLU(Net):
    """``chunk`` into equal pieces (a gated unit, ``a * sigmoid(b)``) and ``split`` with an equal
    integer size: position i of every piece is one unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 12)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.conv3 = conv_bn(4, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv1(x).chunk(2, dim=1)
        x = self.conv2(a * torch.sigmoid(b))
        p, q = torch.split(x, 4, dim=1)
        return self.head(self.conv3(p + q))


class UnequalSplit(Net):
    """``torch.split`` into hard-coded unequal sizes: conv1's channels must be pinned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.left = conv_bn(3, 4)
        self.right = conv_bn(5, 4)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.conv1(x), [3, 5], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1))


class Depthwise(Net):
    """Depthwise convs with channel multiplier 1 (MobileNet) and 2 (each input channel owns two
    outputs, removed together)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.dw1 = conv_bn(8, 8, groups=8)
        self.pw1 = conv_bn(8, 6, 1)
        self.dw2 = conv_bn(6, 12, groups=6)
        self.pw2 = conv_bn(12, 10, 1)
        self.head = Head(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw2(self.dw2(self.pw1(self.dw1(self.stem(x))))))


class Grouped(Net):
    """Grouped convs (ResNeXt style, inside a residual block): a unit is a whole group, so the
    number of groups shrinks and the per-group width stays."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.g1 = conv_bn(8, 16, groups=4)
        self.g2 = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 1, groups=2), nn.BatchNorm2d(8))
        self.g3 = conv_bn(8, 12, groups=2)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.g2(self.g1(x)))
        return self.head(self.g3(x))


class GroupNormNet(Net):
    """GroupNorm: the channels of one normalisation group are one unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.gn2 = nn.GroupNorm(3, 12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn1(self.conv1(x)))
        return self.head(F.silu(self.gn2(self.conv2(x))))


class FlattenLinear(nn.Module):
    """``torch.flatten`` into a Linear (each channel owns H*W features), then
    ``x.view(x.size(0), -1)`` and ``nn.Flatten`` after a 1-D pooling."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 6)
        self.conv2 = conv_bn(6, 5, stride=2)
        self.fc = nn.Linear(5 * 4 * 4, 12)
        self.fc2 = nn.Linear(6 * 2 * 2, 7)
        self.flat = nn.Flatten()
        self.classifier = nn.Linear(12 + 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        a = F.relu(self.fc(torch.flatten(self.conv2(x), 1)))
        b = F.adaptive_avg_pool2d(x, 2)
        b = F.relu(self.fc2(b.view(b.size(0), -1)))
        return self.classifier(self.flat(torch.cat([a, b], 1)))


class SE(nn.Module):
    """Squeeze-and-excitation: avgpool -> fc -> relu -> fc -> sigmoid -> channel multiply."""

    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(c, c // r)
        self.fc2 = nn.Linear(c // r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1).flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s.view(s.size(0), -1, 1, 1)


class SENet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.se1 = SE(8)
        self.conv2 = conv_bn(8, 12)
        self.gate = nn.Sequential(  # SE with 1x1 convs, as in MobileNetV3 / EfficientNet
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 4, 1), nn.ReLU(), nn.Conv2d(4, 12, 1)
        )
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.se1(self.conv1(x)))
        return self.head(x * F.hardsigmoid(self.gate(x)))


class PReLUNet(Net):
    """Per-channel PReLU (sliced with the channels) and a shared single-slope PReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.act2 = nn.PReLU()
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))))


class Elementwise(Net):
    """Activations, pooling, interpolation, upsampling, dropout, padding and clamps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.Sequential(
            nn.LeakyReLU(0.1), nn.ELU(), nn.Dropout2d(0.3), nn.GELU(), nn.Hardswish(), nn.Mish()
        )
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.pool = nn.AvgPool2d(2)
        self.pad = nn.ZeroPad2d(1)
        self.conv3 = nn.Conv2d(6, 5, 3)
        self.head = Head(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.acts(self.conv1(x))
        x = F.max_pool2d(F.dropout(F.silu(x), 0.2, self.training), 2)
        x = F.interpolate(torch.tanh(self.conv2(x)), scale_factor=2.0, mode="nearest")
        # only zero-preserving maps: a zeroed channel must stay zero for the equivalence check
        # (``x * 2 - 1`` would turn it into a constant -1 that the next conv sees)
        x = self.pool(self.up(x)).clamp(min=-0.5) * 2.0
        x = x - x.abs() / 4
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return self.head(F.relu6(self.conv3(self.pad(x))))


class ConvNeXtBlock(nn.Module):
    """dwconv -> NHWC -> LayerNorm -> MLP -> layer scale ``gamma`` -> NCHW, plus the input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1 = nn.Linear(c, 4 * c)
        self.pw2 = nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtLike(Net):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.block = ConvNeXtBlock(8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)))


class Decoder(nn.Module):
    """ConvTranspose upsampling (plain and grouped) to a dense prediction: the output image's
    channels are the model's output and stay."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.enc = conv_bn(3, 8, stride=2)
        self.up1 = nn.ConvTranspose2d(8, 12, 4, stride=2, padding=1, groups=groups)
        self.bn1 = nn.BatchNorm2d(12)
        self.up2 = nn.ConvTranspose2d(12, 6, 3, padding=1, groups=groups)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.up1(self.enc(x))))
        return self.out(F.relu(self.up2(x)))


class SpatialAttention(Net):
    """Self-attention over the flattened spatial positions, with a residual, batch first or not."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.conv1 = conv_bn(3, 12)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=batch_first)
        self.conv2 = conv_bn(12, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        if not self.batch_first:
            t = t.transpose(0, 1)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        if not self.batch_first:
            t = t.transpose(0, 1)
        return self.head(self.conv2(t.transpose(1, 2).reshape(n, c, h, w)))


class EmbeddingNet(nn.Module):
    """Embedding -> Linear on one path, Embedding -> Conv1d on another (its dim moved to 1)."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc = nn.Linear(8, 12)
        self.emb2 = nn.Embedding(20, 6)
        self.conv = nn.Conv1d(6, 10, 3, padding=1)
        self.classifier = nn.Linear(22, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.fc(self.emb(tokens))).mean(dim=1)
        b = F.relu(self.conv(self.emb2(tokens).transpose(1, 2))).amax(dim=2)
        return self.classifier(torch.cat([a, b], dim=-1))


class Conv1dNet(nn.Module):
    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
            nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.Conv1d(8, 6, 1), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Linear(6 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x).flatten(1))


class Conv3dNet(nn.Module):
    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.MaxPool3d(2),
            nn.Conv3d(6, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class MultiIO(nn.Module):
    """Two inputs (image and a 1-channel map), two outputs (a 3-channel map and logits): the
    inputs' and outputs' channels can never be pruned; everything in between can."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn(3, 8)
        self.b = conv_bn(1, 8)
        self.mid = conv_bn(8, 10)
        self.seg = nn.Conv2d(10, 3, 1)
        self.classifier = nn.Linear(10, 4)

    def forward(self, img: torch.Tensor, aux: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.mid(self.a(img) + self.b(aux))
        return self.seg(x), self.classifier(x.mean((2, 3)))


class Shared(Net):
    """One conv (and its BN) called twice: both calls must keep the same channels, so the
    layer's inputs and outputs are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.side = conv_bn(3, 8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.shared(self.stem(x))))
        y = F.relu(self.bn(self.shared(y)))
        return self.head(y + self.shared(self.side(x)))


class UNetLike(nn.Module):
    """Encoder-decoder with a skip concat after ``interpolate``: the output is a map."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = conv_bn(3, 6)
        self.enc2 = conv_bn(6, 10, stride=2)
        self.dec = conv_bn(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = F.interpolate(self.enc2(e1), size=e1.shape[-2:], mode="bilinear")
        return self.out(self.dec(torch.cat([e2, e1], dim=1)))


class Reshapes(Net):
    """Channel-preserving reshapes: ``view(n, c, -1)``, ``unsqueeze``/``squeeze``, ``permute``
    to channels-last and back, ``movedim``, ``mean`` over the spatial dims."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.fc = nn.Linear(8, 8)
        self.conv2 = conv_bn(8, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, c, h, w = x.size()
        s = x.view(n, c, -1).mean(-1)  # (N, C)
        s = self.fc(s).unsqueeze(-1).unsqueeze(-1)
        y = (x + s).permute(0, 2, 3, 1).contiguous()  # NHWC
        y = y.reshape(n, h, w, c).movedim(-1, 1)
        return self.head(self.conv2(y))


class CrossAttention(Net):
    """Queries from one branch, keys/values (passed by keyword) from another of a different
    length; key/value biases and returned (averaged) weights. The key/value producer is coupled
    to the query's channels position by position."""

    def __init__(self) -> None:
        super().__init__()
        self.q = conv_bn(3, 8)
        self.kv = conv_bn(3, 8, stride=2)
        self.attn = nn.MultiheadAttention(8, 4, batch_first=True, add_bias_kv=True)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q(x)
        n, c, h, w = q.shape
        kv = self.kv(x).flatten(2).transpose(1, 2)
        out, weights = self.attn(q.flatten(2).transpose(1, 2), key=kv, value=kv)
        out = out * weights.sum(-1, keepdim=True)  # (N, L, 1): broadcast over the channels
        return self.head(out.transpose(1, 2).reshape(n, c, h, w))


class TokenNorm(nn.Module):
    """Tokens (N, L, C) through a BatchNorm over the token dim: the Linear's features reach the
    norm on another dim than the one it reads as channels, so they stay (and the flow goes on)."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 6)
        self.bn = nn.BatchNorm1d(5)  # over the 5 tokens
        self.fc2 = nn.Linear(6, 4)
        self.classifier = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.relu(self.bn(self.fc1(self.emb(tokens)))))
        return self.classifier(x.mean(1))


class Reductions(Net):
    """Element-wise ``torch.max(a, b)`` (not a reduction), ``mean`` over the batch with a
    positional ``keepdim``, ``amax`` over space, ``zeros_like``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 8), conv_bn(3, 8), conv_bn(8, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = torch.maximum(a, b) + torch.max(a, b) + torch.min(a, b)
        y = y * torch.sigmoid(y.mean(0, True)) * y.amax((2, 3), keepdim=True)
        return self.head(self.c(y + torch.zeros_like(y)))


class MLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU stacks on flat features (LeNet-300-100 with BN)."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(3 * 8 * 8, 12), nn.BatchNorm1d(12)
        self.fc2, self.bn2 = nn.Linear(12, 10), nn.BatchNorm1d(10)
        self.classifier = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.fc1(x.flatten(1))))
        return self.classifier(F.dropout(F.relu(self.bn2(self.fc2(x))), 0.1, self.training))


def _arch_inputs() -> dict[str, tuple[Callable[[], nn.Module], Callable[[], Inputs]]]:
    img = lambda: (torch.randn(2, 3, 8, 8),)  # noqa: E731
    return {
        "conv_chain": (ConvChain, img),
        "residual": (Residual, img),
        "dense_like": (DenseLike, img),
        "inception_like": (InceptionLike, img),
        "chunk_glu": (ChunkGLU, img),
        "unequal_split": (UnequalSplit, img),
        "depthwise": (Depthwise, img),
        "grouped": (Grouped, img),
        "group_norm": (GroupNormNet, img),
        "flatten_linear": (FlattenLinear, img),
        "se": (SENet, img),
        "prelu": (PReLUNet, img),
        "elementwise": (Elementwise, img),
        "convnext": (ConvNeXtLike, img),
        "conv_transpose": (Decoder, img),
        "conv_transpose_grouped": (lambda: Decoder(groups=2), img),
        "attention_batch_first": (
            lambda: SpatialAttention(True),
            lambda: (torch.randn(2, 3, 4, 4),),
        ),
        "attention_seq_first": (
            lambda: SpatialAttention(False),
            lambda: (torch.randn(2, 3, 4, 4),),
        ),
        "cross_attention": (CrossAttention, lambda: (torch.randn(2, 3, 4, 4),)),
        "embedding": (EmbeddingNet, lambda: (torch.randint(0, 20, (2, 7)),)),
        "conv1d": (Conv1dNet, lambda: (torch.randn(2, 2, 16),)),
        "conv3d": (Conv3dNet, lambda: (torch.randn(2, 1, 6, 6, 6),)),
        "multi_io": (MultiIO, lambda: (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8))),
        "shared_layer": (Shared, img),
        "unet_like": (UNetLike, img),
        "reshapes": (Reshapes, img),
        "token_norm": (TokenNorm, lambda: (torch.randint(0, 10, (2, 5)),)),
        "reductions": (Reductions, img),
        "mlp_bn": (MLP, img),
    }


ARCHS = _arch_inputs()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_equivalence(arch: str) -> None:
    make, inputs = ARCHS[arch]
    torch.manual_seed(0)
    check_equivalence(make(), inputs(), seed=1)


def test_attention_prunes_whole_heads() -> None:
    model = SpatialAttention(batch_first=True)
    graph = check_equivalence(model, (torch.randn(2, 3, 4, 4),), seed=3)
    attn = model.attn
    assert attn.num_heads < 3 and attn.head_dim == 4  # heads removed, their width kept
    assert attn.embed_dim == attn.num_heads * 4 == attn.in_proj_weight.shape[1]
    assert attn.in_proj_weight.shape[0] == 3 * attn.embed_dim
    assert attn.out_proj.weight.shape == (attn.embed_dim, attn.embed_dim)
    members = {m.layer: m.per_unit for g in graph.groups for m in g.members if m.layer == "attn"}
    assert members == {"attn": 4}  # one unit = one head = head_dim positions


class PinnedAttention(nn.Module):
    """Attention the core cannot shrink by heads: the heads must be pinned, nothing fails."""

    protected_layers = ("classifier",)

    def __init__(self, case: str) -> None:
        super().__init__()
        self.case = case
        self.conv = conv_bn(3, 8)
        kv = {"kdim": 6, "vdim": 6} if case == "kdim" else {}
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, **kv)
        self.kv = nn.Linear(8, 6)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv(x).flatten(2).transpose(1, 2)
        if self.case == "kdim":
            kv = self.kv(t)
            out = self.attn(t, kv, kv)[0]
        elif self.case == "mask3d":  # one mask per (batch, head)
            mask = torch.zeros(2 * 2, t.shape[1], t.shape[1], dtype=t.dtype)
            out = self.attn(t, t, t, attn_mask=mask)[0]
        else:  # per-head weights returned
            out, w = self.attn(t, t, t, average_attn_weights=False)
            out = out + w.mean((1, 3)).unsqueeze(-1)
        return self.classifier(out.mean(1))


@pytest.mark.parametrize("case", ["kdim", "mask3d", "per_head_weights"])
def test_attention_pinned_cases(case: str) -> None:
    model = PinnedAttention(case)
    graph = check_equivalence(model, (torch.randn(2, 3, 4, 4),), min_groups=0)
    assert "attn" not in group_layers(graph)
    assert model.attn.num_heads == 2 and model.attn.embed_dim == 8


def test_layernorm_groups_are_inexact_and_layer_scale_is_sliced() -> None:
    model = ConvNeXtLike()
    graph = pg.build(model, torch.randn(1, 3, 8, 8))
    inexact = [g for g in graph.groups if not g.exact]
    assert [g.name for g in inexact] == ["stem"]  # the block's channels, normalised by the LN
    assert all(g.exact for g in graph.groups if g not in inexact)  # pw1's hidden features
    inexact[0].prune([0, 3])
    block = model.block
    assert block.gamma.shape == (6,) and block.norm.normalized_shape == (6,)
    assert block.dwconv.groups == 6 and block.pw2.out_features == 6
    model(torch.randn(1, 3, 8, 8))


def test_token_norm_pins_the_misplaced_features() -> None:
    graph = pg.build(TokenNorm(), torch.randint(0, 10, (2, 5)))
    assert not out_prunable(graph, "fc1")
    assert any("another dimension" in r for r in out_reasons(graph, "fc1"))
    assert out_prunable(graph, "fc2") and out_prunable(graph, "emb")


def test_grouped_convs_lose_whole_groups() -> None:
    model = Grouped()
    check_equivalence(model, (torch.randn(2, 3, 8, 8),), seed=5)
    g1, g2, g3 = model.g1[0], model.g2[0], model.g3[0]
    assert g1.groups < 4 or g3.groups < 2  # some groups went
    for conv, per_in, per_out in ((g1, 2, 4), (g2, 8, 4), (g3, 4, 6)):
        # each remaining group keeps its width
        assert conv.in_channels // conv.groups == per_in, conv
        assert conv.out_channels // conv.groups == per_out, conv
        assert conv.weight.shape == (conv.out_channels, per_in, 3, 3)


def test_shared_layer_keeps_one_width() -> None:
    model = Shared()
    graph = check_equivalence(model, (torch.randn(2, 3, 8, 8),), seed=2)
    assert model.shared.in_channels == model.shared.out_channels == model.bn.num_features < 8
    assert "shared" in group_layers(graph)


# ----------------------------------------------------------------------------- what stays pinned


def out_reasons(graph: pg.Graph, layer: str) -> set[str]:
    """Why the output channels of ``layer`` are pinned (empty if all are prunable)."""
    labels = graph.sites[layer].out_labels
    assert labels is not None
    return {r for r in map(graph.labels.fixed_reason, labels.tolist()) if r is not None}


def test_unequal_split_pins_its_channels() -> None:
    graph = check_equivalence(UnequalSplit(), (torch.randn(2, 3, 8, 8),))
    assert not out_prunable(graph, "conv1.0") and not out_prunable(graph, "conv1.1")
    assert any("split" in r for r in out_reasons(graph, "conv1.0"))
    assert out_prunable(graph, "left.0") and out_prunable(graph, "right.0")


class OddPieces(Net):
    """``chunk(4)`` of 6 channels gives 3 pieces and ``split(4)`` gives 4 + 2: the piece counts
    and sizes depend on the width, so those channels are pinned. ``x.split(x.size(1) // 2)``
    computes its size from the tensor and stays prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 6, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.head = Head(2 + 4 + 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x).chunk(4, dim=1)
        b = torch.split(self.b(x), 4, dim=1)
        c = self.c(x)
        c1, c2 = c.split(c.size(1) // 2, dim=1)
        return self.head(torch.cat([a[0] + a[2], b[0], c1 * c2], dim=1))


def test_width_dependent_pieces_are_pinned() -> None:
    graph = check_equivalence(OddPieces(), (torch.randn(2, 3, 8, 8),))
    assert not out_prunable(graph, "a") and not out_prunable(graph, "b")
    assert any("chunk(4)" in r for r in out_reasons(graph, "a"))
    assert any("hard-coded" in r for r in out_reasons(graph, "b"))
    assert out_prunable(graph, "c")


class ChannelShuffle(Net):
    """ShuffleNet's channel shuffle: a view that splits the channels over two dims."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.conv2 = conv_bn(8, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.head(self.conv2(x))


def test_channel_shuffle_prunes_in_shuffle_consistent_units() -> None:
    # one unit is one column of the (2, 4) grid: channels j and 4 + j go together
    group = pg.build(ChannelShuffle(), torch.randn(2, 3, 8, 8)).group("conv1.0")
    assert group.size == 4 and [m.per_unit for m in group.members if m.layer == "conv1.0"] == [2]
    graph = check_equivalence(ChannelShuffle(), (torch.randn(2, 3, 8, 8),))
    assert out_prunable(graph, "conv1.0") and out_prunable(graph, "conv2.0")


class LiteralShuffle(ChannelShuffle):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        n, _, h, w = x.shape
        x = x.view(n, 2, 4, h, w).transpose(1, 2).reshape(n, 8, h, w)
        return self.head(self.conv2(x))


def test_channel_shuffle_with_sizes_written_as_numbers_is_pinned_with_reason() -> None:
    graph = check_equivalence(LiteralShuffle(), (torch.randn(2, 3, 8, 8),))
    assert not out_prunable(graph, "conv1.0") and out_prunable(graph, "conv2.0")
    assert any(
        "shuffle whose group sizes are written as numbers" in r
        for r in out_reasons(graph, "conv1.0")
    )


def test_protected_classifier_and_ignored_layer_keep_their_outputs() -> None:
    model = ConvChain()
    graph = check_equivalence(model, (torch.randn(2, 3, 8, 8),), ignore=["body.5.0"])
    assert model.head.classifier.out_features == 5
    assert model.body[5][0].out_channels == 16  # ignored: its outputs stay ...
    assert model.body[5][0].in_channels < 12  # ... its inputs were still pruned
    assert not out_prunable(graph, "head.classifier") and not out_prunable(graph, "body.5.0")
    assert any("protected" in r for r in out_reasons(graph, "body.5.0"))
    # ignoring by module works the same
    other = ConvChain()
    graph = pg.build(other, torch.randn(1, 3, 8, 8), ignore=[other.body[5][0]])
    assert not out_prunable(graph, "body.5.0")


def test_explicit_protected_overrides_the_models_own() -> None:
    model = ConvChain()
    graph = pg.build(model, torch.randn(1, 3, 8, 8), protected=["body.0.0"])
    assert not out_prunable(graph, "body.0.0")
    # the classifier is no longer protected, only pinned as the model's output
    assert out_reasons(graph, "head.classifier") == {"model output"}


def test_inputs_and_outputs_never_change() -> None:
    model = MultiIO()
    inputs = (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8))
    graph = check_equivalence(model, inputs)
    assert model.a[0].in_channels == 3 and model.b[0].in_channels == 1
    assert model.seg.out_channels == 3 and model.classifier.out_features == 4
    assert model.mid[0].out_channels < 10  # the inside was pruned
    assert any("model output" in r for r in out_reasons(graph, "seg"))
    # decoders: the output image keeps its channels
    dec = Decoder()
    check_equivalence(dec, (torch.randn(2, 3, 8, 8),))
    assert dec.out.out_channels == 2 and dec.enc[0].in_channels == 3


def test_plan_of_nothing_is_the_dense_model() -> None:
    for model, x in ((create("resnet20"), torch.randn(1, 3, 16, 16)), (DenseLike(), None)):
        x = torch.randn(1, 3, 8, 8) if x is None else x
        graph = pg.build(model, x)
        plan = graph.plan([])
        assert (plan.params, plan.flops) == (count_params(model).total, count_flops(model, x).flops)
        assert plan.params > 0 and plan.flops > 0


def test_build_leaves_the_model_alone() -> None:
    model = create("resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pg.build(model, torch.randn(4, 3, 16, 16))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm statistics untouched


def test_groups_describe_their_members() -> None:
    model = Depthwise()
    graph = pg.build(model, torch.randn(1, 3, 8, 8))
    by_name = {g.name: g for g in graph.groups}
    stem = by_name["stem.0"]
    layers = {(m.layer, m.side): m.per_unit for m in stem.members}
    # the depthwise conv's output follows its input channels: one unit spans stem, dw1, pw1's input
    assert layers[("stem.0", "out")] == 1 and layers[("dw1.0", "out")] == 1
    assert layers[("pw1.0", "in")] == 1
    pw1 = by_name["pw1.0"]
    assert {(m.layer, m.side): m.per_unit for m in pw1.members}[("dw2.0", "out")] == 2
    assert "dw1.0" not in by_name and "dw2.0" not in by_name  # no channels of their own
    assert "stem.0" in repr(stem) and "size=8" in repr(stem)
    with pytest.raises(ConfigError, match="no group"):
        graph.group("nope")


# ----------------------------------------------------------------------------- errors


def test_errors_on_bad_arguments() -> None:
    model = ConvChain()
    with pytest.raises(ConfigError, match="not a submodule"):
        pg.build(model, torch.randn(1, 3, 8, 8), ignore=["body.99"])
    with pytest.raises(ConfigError, match="not a submodule"):
        pg.build(model, torch.randn(1, 3, 8, 8), ignore=[nn.Conv2d(1, 1, 1)])
    graph = pg.build(model, torch.randn(1, 3, 8, 8))
    group = graph.groups[0]
    with pytest.raises(ConfigError, match="disconnect"):
        group.prune(range(group.size))
    with pytest.raises(ConfigError, match="channels"):
        group.prune([group.size])
    with pytest.raises(ConfigError, match="channels"):
        group.prune([-1])
    with pytest.raises(ConfigError, match="channels"):
        group.zero([group.size + 3])
    assert group.size == 8  # nothing happened


class Gate(nn.Module):
    """Data-dependent control flow: fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return x * 2
        return x


class WithGate(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn(3, 8)
        self.block = nn.Sequential(conv_bn(8, 8), Gate())
        self.conv2 = conv_bn(8, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.block(self.conv1(x))))


def test_value_dependent_module_is_kept_whole_and_named() -> None:
    model = WithGate()
    # control flow on tensor values: that submodule alone is kept whole, with the reason
    graph = pg.build(model, torch.randn(1, 3, 8, 8))
    assert set(graph.opaque) == {"block.1"} and "tensor data" in graph.opaque["block.1"]
    assert any(
        "block.1 kept whole" in p.reason for p in pg.explain(model, torch.randn(1, 3, 8, 8)).pinned
    )
    graph = check_equivalence(model, (torch.randn(2, 3, 8, 8),))
    assert not out_prunable(graph, "block.0.0")
    assert out_prunable(graph, "conv1.0") and out_prunable(graph, "conv2.0")
    graph = check_equivalence(model, (torch.randn(2, 3, 8, 8),), ignore=["block.1"])
    # channels into and out of the opaque module stay; the rest is prunable
    assert not out_prunable(graph, "block.0.0")
    assert out_prunable(graph, "conv1.0") and out_prunable(graph, "conv2.0")


class UntraceableForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x if x.sum() > 0 else -x


def test_untraceable_model_forward_is_refused() -> None:
    with pytest.raises(UnsupportedError, match=r"model itself \(UntraceableForward\)"):
        pg.build(UntraceableForward(), torch.randn(1, 3, 8, 8))


class FFTMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(self.conv(x)).abs().mean((2, 3))


class EinsumMix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.mix = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,dc->ndhw", self.conv(x), self.mix)


class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


@pytest.mark.parametrize(("inner", "op"), [(FFTMix, "rfft2"), (EinsumMix, "einsum")])
def test_unknown_op_is_refused_by_name(inner: type[nn.Module], op: str) -> None:
    with pytest.raises(UnsupportedError, match=rf"{op}.*in layer 'inner' \({inner.__name__}\)"):
        pg.build(Wrapper(inner()), torch.randn(1, 3, 8, 8))


class PixelShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def test_unknown_layer_is_refused_by_name() -> None:
    with pytest.raises(
        UnsupportedError, match=r"'shuffle' \(PixelShuffle\) has no pruning handler"
    ):
        pg.build(PixelShuffleNet(), torch.randn(1, 3, 8, 8))
    graph = pg.build(PixelShuffleNet(), torch.randn(1, 3, 8, 8), ignore=["shuffle"])
    assert graph.groups == []  # the conv only feeds the opaque layer


# ----------------------------------------------------------------------------- user handlers


class ScaledConv(nn.Conv2d):
    """A conv with a learnt per-output-channel scale: the conv handler alone would not slice
    ``scale``, so the core traces into its forward (or uses a handler registered for it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = nn.Parameter(torch.rand(self.out_channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale.view(1, -1, 1, 1)


class ChannelAffine(nn.Module):
    """A brand-new layer type: per-channel scale and shift."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class Conv3x3(nn.Conv2d):
    """A conv subclass that only fixes arguments: handled as a conv, no registration needed."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)


class UserLayers(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ScaledConv(3, 8, 3, padding=1)
        self.affine = ChannelAffine(8)
        self.conv2 = Conv3x3(8, 6)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(F.relu(self.affine(self.conv1(x)))))


def test_user_registered_handlers() -> None:
    x = torch.randn(2, 3, 8, 8)
    # without registering anything: both are traced into, and what their code computes (an
    # F.conv2d on the layer's weight times a scale, a per-channel affine) prunes exactly
    model = UserLayers()
    graph = check_equivalence(model, x)
    assert {"conv1", "conv2"} <= group_layers(graph)
    assert model.conv1.scale.shape == (model.conv1.out_channels,) == model.affine.weight.shape
    assert model.conv1.out_channels < 8

    @pg.register_handler(ScaledConv)
    class ScaledConvHandler(pg.handlers.ConvHandler):
        def prune(
            self, m: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
        ) -> None:
            super().prune(m, keep_in, keep_out)
            if keep_out is not None:
                m.scale = nn.Parameter(m.scale.detach()[keep_out].clone())

        def count(self, m: nn.Module, n_in: int | None, n_out: int | None) -> tuple[int, float]:
            params, scale = super().count(m, n_in, n_out)
            return params + (m.out_channels if n_out is None else n_out), scale

        def zero(self, m: nn.Module, pos: torch.Tensor) -> None:
            m.scale[pos] = 0

    @pg.register_handler(ChannelAffine)
    class ChannelAffineHandler(pg.Handler):
        def propagate(
            self, call: pg.Call, m: nn.Module, inputs: list[pg.Flow | None]
        ) -> pg.Flow | None:
            x = inputs[0]
            if x is not None:
                call.record(in_labels=x.labels, out_labels=x.labels)
            return x

        def prune(
            self, m: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
        ) -> None:
            if keep_out is not None:
                m.weight = nn.Parameter(m.weight.detach()[keep_out].clone())
                m.bias = nn.Parameter(m.bias.detach()[keep_out].clone())

        def count(self, m: nn.Module, n_in: int | None, n_out: int | None) -> tuple[int, float]:
            return 2 * (m.weight.numel() if n_out is None else n_out), 1.0

    assert isinstance(pg.handler_for(ScaledConv(1, 1, 1)), ScaledConvHandler)
    model = UserLayers()
    graph = check_equivalence(model, x)
    assert {"conv1", "affine", "conv2"} <= group_layers(graph)
    assert model.conv1.scale.shape == (model.conv1.out_channels,) == model.affine.weight.shape
    assert model.conv1.out_channels < 8 and model.conv2.out_channels < 6


# ----------------------------------------------------------------------------- random networks


class Block(nn.Module):
    """One fuzzer block; ``kind`` picks the pattern, ``out_channels`` is its width."""

    def __init__(self, kind: str, c: int, rnd: random.Random) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv":
            self.out_channels = rnd.randint(2, 10)
            self.f = conv_bn(c, self.out_channels, rnd.choice([1, 3]))
        elif kind == "dw":
            self.out_channels = c * rnd.choice([1, 2])
            self.f = conv_bn(c, self.out_channels, groups=c)
        elif kind == "grouped":
            g = rnd.choice([d for d in range(2, c + 1) if c % d == 0])
            self.out_channels = g * rnd.randint(1, 3)
            self.f = conv_bn(c, self.out_channels, groups=g)
        elif kind == "residual":
            self.out_channels = c
            self.f = nn.Sequential(
                conv_bn(c, rnd.randint(2, 8)), nn.LazyConv2d(c, 3, padding=1), nn.BatchNorm2d(c)
            )
        elif kind == "concat":
            a, b = rnd.randint(1, 6), rnd.randint(1, 6)
            self.dense = rnd.random() < 0.5  # cat([x, f(x)]) or cat([f(x), g(x)])
            self.f = conv_bn(c, a)
            self.g = nn.Identity() if self.dense else conv_bn(c, b, 1)
            self.out_channels = c + a if self.dense else a + b
        elif kind == "se":
            self.out_channels = c
            self.f = SE(c, r=c // 2)
        elif kind == "glu":
            self.out_channels = rnd.randint(2, 6)
            self.f = conv_bn(c, 2 * self.out_channels, 1)
        else:
            raise ValueError(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "residual":
            return F.relu(x + self.f(x))
        if self.kind == "concat":
            return torch.cat([x if self.dense else self.g(x), self.f(x)], dim=1)
        if self.kind == "glu":
            a, b = self.f(x).chunk(2, dim=1)
            return a * torch.sigmoid(b)
        return self.f(x)


class RandomNet(Net):
    KINDS = ("conv", "dw", "grouped", "residual", "concat", "se", "glu")

    def __init__(self, seed: int) -> None:
        super().__init__()
        rnd = random.Random(seed)
        c = rnd.randint(2, 8)
        self.stem = conv_bn(3, c)
        blocks = []
        for _ in range(rnd.randint(3, 7)):
            kinds = [k for k in self.KINDS if k != "se" or c >= 2]
            block = Block(rnd.choice(kinds), c, rnd)
            blocks.append(block)
            c = block.out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head = Head(c)
        with torch.no_grad():  # materialise the lazy convs
            self(torch.zeros(1, 3, 8, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


@pytest.mark.parametrize("seed", range(10))
def test_random_networks(seed: int) -> None:
    torch.manual_seed(seed)
    model = RandomNet(seed)
    check_equivalence(model, (torch.randn(2, 3, 8, 8),), seed=seed, min_groups=0)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["residual", "grouped", "convnext", "attention_batch_first"])
def test_equivalence_on_cuda(arch: str) -> None:
    make, inputs = ARCHS[arch]
    model = make()
    graph = check_equivalence(model, inputs(), device="cuda")
    assert all(p.is_cuda for p in model.parameters())
    scores = graph.groups[0].scores(lambda w: w.abs().reshape(len(w), -1).sum(1))
    assert scores.shape == (graph.groups[0].size,) and bool((scores >= 0).all())


def test_output_layers_are_the_layers_whose_channels_the_model_returns() -> None:
    class TwoHeads(nn.Module):
        """A detection-style head: a conv and a shortcut conv summed, then a log-softmax over
        the channels; a second output straight from a 1x1 conv."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.cls = nn.Conv2d(8, 4, 1)
            self.skip = nn.Conv2d(8, 4, 1)
            self.box = nn.Conv2d(8, 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.relu(self.stem(x))
            logits = torch.log_softmax(self.cls(h) + self.skip(h), dim=1)
            return logits, self.box(h)

    graph = pg.build(TwoHeads(), (torch.zeros(1, 3, 8, 8),), protected=())
    assert sorted(graph.output_layers()) == ["box", "cls", "skip"]
