"""The structural core on layers written the way model libraries write them.

One small model per kind of code: subclasses of standard layers whose forward calls the
functional op, functional ops on parameters held by any module, the ops of model libraries
(drop path, roll, windows, SDPA), Python control flow on shapes, hand-written attention. Each
goes through the zero-then-remove equivalence harness of ``test_graph`` (float64, 1e-9, plan
equals measured params and FLOPs); the tests then check what pruned, what stayed and why.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from tests.test_graph import check_equivalence, out_prunable, out_reasons
from torch import nn

from prunekit import graph as pg
from prunekit import prune_channels
from prunekit.errors import UnsupportedError
from prunekit.graph import Handler, register_handler
from prunekit.graph.handlers import _HANDLERS

IMG = (2, 3, 12, 12)


def img(shape: tuple[int, ...] = IMG) -> tuple[torch.Tensor]:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(0)),)


class Head(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(c, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class Net(nn.Module):
    protected_layers = ("head.fc",)


# ----------------------------------------------------------------------------- class 1


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm, dropout and activation in one module, BatchNorm's own forward replaced."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.drop = nn.Dropout(0.1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            self.training, self.momentum, self.eps,
        )  # fmt: skip
        return self.act(self.drop(x))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map: permute, F.layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GroupNorm1(nn.GroupNorm):
    def __init__(self, c: int) -> None:
        super().__init__(1, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class ScaledStdConv2d(nn.Conv2d):
    """Weight standardisation with a per-output gain (NF-ResNet style)."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))
        self.scale = (cin * k * k) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = F.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None,
            weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-6,
        ).reshape_as(self.weight)  # fmt: skip
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Subclasses(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = BatchNormAct(8)
        self.conv2 = ScaledStdConv2d(8, 10, 3)
        self.ln = LayerNorm2d(10)
        self.conv3 = nn.Conv2d(10, 12, 1)
        self.gn = GroupNorm1(12)
        self.head = Head(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = F.gelu(self.ln(self.conv2(x)))
        return self.head(F.relu(self.gn(self.conv3(x))))


def test_layer_subclasses_calling_functional_ops_prune() -> None:
    model = Subclasses()
    graph = check_equivalence(model, img(), max_groups=None)
    for layer in ("conv1", "conv2", "conv3"):
        assert out_prunable(graph, layer), layer
    by_layer = {m.layer: g for g in graph.groups for m in g.members}
    assert by_layer["bn1"] is by_layer["conv1"]
    # the weight standardisation mixes conv2's inputs: conv1's channels are not exact; conv2's
    # outputs feed a LayerNorm and conv3's a one-group GroupNorm: neither exact either
    assert not graph.group("conv1").exact and not graph.group("conv2").exact
    # every attribute that mirrors a parameter's size followed the surgery
    assert model.bn1.num_features == model.bn1.weight.shape[0] == model.conv1.out_channels
    assert model.conv2.in_channels == model.conv2.weight.shape[1] == model.conv1.out_channels
    assert model.conv2.out_channels == model.conv2.gain.shape[0] == model.ln.weight.shape[0]
    assert model.ln.normalized_shape == (model.conv2.out_channels,)
    assert model.gn.num_channels == model.conv3.out_channels == model.gn.bias.shape[0]


def test_weight_standardised_output_channels_remove_exactly() -> None:
    class OnlyStd(Net):
        def __init__(self) -> None:
            super().__init__()
            self.conv = ScaledStdConv2d(3, 6, 3)
            self.bn = nn.BatchNorm2d(6)
            self.head = Head(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.bn(self.conv(x))))

    graph = check_equivalence(OnlyStd(), img())
    assert graph.group("conv").exact  # outputs are standardised one by one


# ----------------------------------------------------------------------------- class 2


class RawParams(Net):
    """One module holding raw parameters and calling the functional ops itself."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.bn_w, self.bn_b = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.register_buffer("bn_mean", torch.randn(8))
        self.register_buffer("bn_var", torch.rand(8) + 0.5)
        self.slope = nn.Parameter(torch.rand(8) * 0.3)
        self.dw = nn.Parameter(torch.randn(8, 1, 3, 3) * 0.3)
        self.scale = nn.Parameter(torch.rand(1, 8, 1, 1) + 0.5)
        self.num_groups, self.groups = 4, 8
        self.gn_w, self.gn_b = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))
        self.up = nn.Parameter(torch.randn(8, 6, 2, 2) * 0.3)  # conv_transpose: (in, out, k, k)
        self.fc_w = nn.Parameter(torch.randn(10, 6) * 0.3)
        self.fc_b = nn.Parameter(torch.randn(10) * 0.1)
        self.head = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.w1, self.b1, padding=1)
        x = F.batch_norm(x, self.bn_mean, self.bn_var, self.bn_w, self.bn_b, False, 0.1, 1e-5)
        x = F.prelu(x, self.slope)
        x = F.conv2d(x, self.dw, None, 1, 1, 1, self.groups) * self.scale
        x = F.group_norm(x, self.num_groups, self.gn_w, self.gn_b)
        x = F.conv_transpose2d(x, self.up, stride=2)
        x = F.linear(x.mean((2, 3)), self.fc_w, self.fc_b)
        return self.head(F.relu(x))


def test_functional_ops_on_raw_parameters_prune() -> None:
    RawParams.protected_layers = ("head",)
    model = RawParams()
    graph = pg.build(model, img())
    assert {g.name for g in graph.groups} == {"w1", "up", "fc_w"}
    # conv, BN, PReLU, depthwise, scale and GroupNorm share one group, removed by whole groups
    w1 = graph.group("w1")
    assert w1.size == 4 and {m.layer for m in w1.members} >= {"bn_w", "slope", "dw", "gn_w"}
    check_equivalence(model, img(), max_groups=None)
    assert model.num_groups == model.gn_w.shape[0] // 2 == model.w1.shape[0] // 2
    assert model.groups == model.dw.shape[0] == model.w1.shape[0]


class LiteralGroups(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn_w = nn.Parameter(torch.ones(8))
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.group_norm(self.conv(x), 4, self.gn_w))


def test_group_count_written_as_a_number_is_pinned_with_reason() -> None:
    graph = check_equivalence(LiteralGroups(), img(), min_groups=0)
    assert not out_prunable(graph, "conv")
    assert any("group count 4" in r for r in out_reasons(graph, "conv"))


class SizedLayerNorm(Net):
    """F.layer_norm on channels-last maps, its width read from the map itself or written."""

    def __init__(self, size: str, affine: bool = True) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln_w = nn.Parameter(torch.ones(8)) if affine else None
        self.ln_b = nn.Parameter(torch.zeros(8)) if affine else None
        self.mix = nn.Conv2d(8, 6, 1)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x).permute(0, 2, 3, 1)
        shape = {"shape": (x.shape[-1],), "size": [x.size(3)], "literal": (8,)}[self.size]
        x = F.layer_norm(x, shape, self.ln_w, self.ln_b)
        return self.head(F.relu(self.mix(x.permute(0, 3, 1, 2))))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("size", ["shape", "size"])
def test_layer_norm_width_read_from_its_input_follows_the_pruning(size: str, affine: bool) -> None:
    model = SizedLayerNorm(size, affine)
    graph = check_equivalence(model, img(), max_groups=None)
    assert out_prunable(graph, "conv") and not graph.group("conv").exact
    if affine:
        assert {m.layer for m in graph.group("conv").members} >= {"ln_w", "mix"}
        assert model.ln_w.shape == model.ln_b.shape == (model.conv.out_channels,)
    assert model.conv.out_channels < 8 and model.mix.in_channels == model.conv.out_channels


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_width_written_as_a_number_is_pinned_with_reason(affine: bool) -> None:
    graph = check_equivalence(SizedLayerNorm("literal", affine), img(), min_groups=0)
    assert not out_prunable(graph, "conv")
    assert any("normalized_shape (8,)" in r for r in out_reasons(graph, "conv"))


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(20, 8))
        self.w = nn.Parameter(torch.randn(8, 5, 3) * 0.3)  # used as (5, 8, 3): (out, in, k)
        self.classifier = nn.Linear(5, 3)

    protected_layers = ("classifier",)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = F.embedding(idx, self.table)  # (B, L, 8)
        x = F.conv1d(x.transpose(1, 2), self.w.transpose(0, 1), padding=1)
        return self.classifier(F.relu(x).mean(-1))


def test_embedding_and_transposed_weight_views() -> None:
    model = Embed()
    idx = torch.randint(0, 20, (2, 7))
    graph = pg.build(model, (idx,))
    # the conv1d weight is a transposed view of the parameter: its dims are followed
    assert out_prunable(graph, "table") and out_prunable(graph, "w")
    before = model(idx)
    zero = graph.group("table")
    zero.zero([0, 2])
    before = model(idx)
    zero.prune([0, 2])
    torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-6)
    assert model.table.shape == (20, 6) and model.w.shape == (6, 5, 3)


# ----------------------------------------------------------------------------- class 3


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def window_reverse(w: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    C = w.shape[-1]
    x = w.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


class ShiftedWindowBlock(nn.Module):
    """Channels-last windows, a cyclic shift, SDPA over per-head q/k/v and drop path."""

    def __init__(self, c: int, ws: int = 3, shift: int = 1) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm = nn.LayerNorm(c)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, 6)
        self.proj = nn.Linear(6, c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.p = 0.2

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, C)
        _, H, W, _ = x.shape
        assert H % self.ws == 0, "input must be a whole number of windows"
        y = torch.roll(self.norm(x), shifts=(-self.shift, -self.shift), dims=(1, 2))
        w = window_partition(y, self.ws)
        out = F.scaled_dot_product_attention(self.q(w), self.k(w), self.v(w))
        y = window_reverse(self.proj(out), self.ws, H, W)
        y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + drop_path(y, self.p, self.training)
        return x + drop_path(self.mlp(x), self.p, self.training)


class SwinLike(Net):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = ShiftedWindowBlock(8)
        self.head = Head(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem(x).permute(0, 2, 3, 1))
        return self.head(x.permute(0, 3, 1, 2))


def test_library_ops_shifted_windows_sdpa_drop_path() -> None:
    graph = check_equivalence(SwinLike(), (torch.randn(2, 3, 6, 6),), max_groups=None)
    # the value/proj width and the MLP hidden width prune exactly; q/k are contracted: pinned
    assert graph.group("block.v").exact and graph.group("block.mlp.0").exact
    assert not out_prunable(graph, "block.q")
    assert any("attention over the channels" in r for r in out_reasons(graph, "block.q"))
    assert out_prunable(graph, "stem")  # the residual stream, through roll and the windows


def test_roll_over_the_channels_is_pinned() -> None:
    class RollC(Net):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, padding=1)
            self.head = Head(6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.roll(self.conv(x), 1, dims=1))

    graph = check_equivalence(RollC(), img(), min_groups=0)
    assert any("roll" in r for r in out_reasons(graph, "conv"))


# ----------------------------------------------------------------------------- class 4


class ShapeCode(nn.Module):
    """Branches on shapes and attributes, padding from the input size, asserts."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.h = 9
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, H, _ = x.shape
        assert H == self.h, f"expected height {self.h}"  # noqa: SIM300
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1, 0, 1))
        pad = max(math.ceil(H / 2) * 2 - H, 0)
        x = F.pad(x, (pad, 0, pad, 0))
        if self.training:
            x = x * 1.0
        for _ in range(len(x.shape) - 3):
            x = F.relu(x)
        return self.conv(x)


class ValueGate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.mean() > 0 else x * 0.5  # a branch on tensor values


class ControlFlow(Net):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shape_code = ShapeCode(8)
        self.gate = ValueGate()
        self.conv = nn.Conv2d(8, 6, 3, padding=1)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shape_code(F.relu(self.stem(x)))
        return self.head(self.gate(F.relu(self.conv(x))))


def test_control_flow_on_shapes_traces_and_on_values_pins_one_module() -> None:
    model = ControlFlow()
    graph = check_equivalence(model, (torch.randn(2, 3, 9, 9),), max_groups=None)
    assert set(graph.opaque) == {"gate"}  # only the value-dependent submodule is kept whole
    assert out_prunable(graph, "stem") and out_prunable(graph, "shape_code.conv")
    assert not out_prunable(graph, "conv")
    assert any("gate kept whole" in r for r in out_reasons(graph, "conv"))


# ----------------------------------------------------------------------------- class 5


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class ViTBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, 2)
        self.fc1, self.fc2 = nn.Linear(dim, 3 * dim), nn.Linear(3 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(Net):
    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 8))
        self.block = ViTBlock(8)
        self.head = nn.Linear(8, 4)

    protected_layers = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.head(self.block(x)[:, 0])


def test_hand_written_attention_is_pinned_precisely_and_the_mlp_prunes() -> None:
    graph = check_equivalence(TinyViT(), img((2, 3, 8, 8)), max_groups=None)
    assert out_prunable(graph, "block.fc1") and graph.group("block.fc1").exact
    assert not out_prunable(graph, "block.attn.qkv")
    # C // heads is read from the residual stream: it cannot shrink while the heads stay
    assert any("channel count read as a size" in r for r in out_reasons(graph, "patch"))


# ----------------------------------------------------------------------------- atomic prune


class Boom(nn.Conv2d):
    pass


@register_handler(Boom)
class BoomHandler(Handler):
    """Slices like a conv on the first call, fails on the second (a model that fails half
    way through surgery)."""

    calls = 0

    def propagate(self, call, module, inputs):  # type: ignore[no-untyped-def]
        return _HANDLERS[nn.Conv2d].propagate(call, module, inputs)

    def count(self, module, n_in, n_out):  # type: ignore[no-untyped-def]
        return _HANDLERS[nn.Conv2d].count(module, n_in, n_out)

    def prune(self, module, keep_in, keep_out):  # type: ignore[no-untyped-def]
        raise RuntimeError("surgery failed")


class HalfWay(Net):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = BatchNormAct(8)
        self.conv2 = ScaledStdConv2d(8, 8, 3)
        self.boom = Boom(8, 6, 3, padding=1)
        self.head = Head(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        return self.head(self.boom(self.conv2(x) + x))


def _state(model: nn.Module) -> dict[str, object]:
    out: dict[str, object] = {k: v.clone() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if not k.startswith("_") and isinstance(v, (int, tuple, float)):
                out[f"{name}:{k}"] = v
        out[f"{name}:params"] = [id(p) for p in m.parameters(recurse=False)]
    return out


def test_failed_prune_leaves_the_model_exactly_as_it_was() -> None:
    model = HalfWay().eval()
    x = img()[0]
    before_out, before = model(x), _state(model)
    graph = pg.build(model, x)
    assert _state(model).keys() == before.keys()
    group = next(g for g in graph.groups if "boom" in {m.layer for m in g.members})
    assert {"conv1", "conv2"} & {m.layer for m in group.members}  # slicing starts elsewhere
    with pytest.raises(RuntimeError, match="surgery failed"):
        group.prune([0])
    after = _state(model)
    assert after.keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, after[k]), k  # type: ignore[arg-type]
        else:
            assert v == after[k], k
    torch.testing.assert_close(model(x), before_out, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="surgery failed"):
        prune_channels(model, x, ratio=0.5)
    torch.testing.assert_close(model(x), before_out, rtol=0, atol=0)


def test_refused_build_never_mutates() -> None:
    class Einsum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw->bhwc", self.conv(x))

    model = Einsum()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedError) as err:
        pg.build(model, img())
    # the op is in the model's own forward: ignore=[...] (which takes submodules) cannot help
    assert "register_op('einsum')" in str(err.value)
    assert "ignore=[...] to keep that layer whole" not in str(err.value)
    assert "move that code into a submodule" in str(err.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(vars(model)) == set(vars(Einsum()))


# ----------------------------------------------------------------------------- explain


def test_explain_reports_groups_pins_and_refusals() -> None:
    report = pg.explain(ControlFlow(), (torch.randn(2, 3, 9, 9),))
    text = str(report)
    assert (
        report.refusal is None
        and report.groups
        and report.opaque == {"gate": report.opaque["gate"]}
    )
    assert "gate kept whole" in text and "prunable groups" in text
    reasons = {p.reason for p in report.pinned}
    assert any("model input" in r for r in reasons)
    refused = pg.explain(nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelShuffle(2)), img())
    assert refused.refusal is not None and "PixelShuffle" in refused.refusal
    assert refused.fix is not None and "register_handler" in refused.fix
    assert "refused" in str(refused) and "fix:" in str(refused)


def test_prune_that_removes_less_than_asked_says_what_is_pinned() -> None:
    model = TinyViT()
    model.protected_layers = ("head",)  # type: ignore[assignment]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prune_channels(model, img((2, 3, 8, 8)), ratio=0.5)
    messages = [str(w.message) for w in caught]
    assert any("pinned" in m and "channel count read as a size" in m for m in messages), messages
    assert any("channel count read as a size" in p.reason for p in report.pinned)
