"""Model zoo: every model builds, runs, declares its protected layers and rebuilds from its arch;
the CIFAR/ImageNet models match the parameter and MAC counts their papers publish."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, UnknownNameError
from prunekit.measure import count_flops, count_params
from prunekit.models import (
    ModelInfo,
    create,
    list_models,
    model_info,
    protected_layers,
    rebuild,
)

ALL = list_models()
IMAGENET = [n for n in ALL if model_info(n).input_size == (224, 224)]


def _forward_size(name: str) -> tuple[int, ...]:
    # ImageNet models end in global pooling; 64x64 exercises every layer at a fraction of the cost
    return (64, 64) if name in IMAGENET else model_info(name).input_size


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registry_lists_every_family() -> None:
    expected = {
        "lenet_300_100",
        "lenet5",
        "conv2",
        "conv4",
        "conv6",
        *(f"resnet{d}" for d in (20, 32, 44, 56, 110)),
        *(f"vgg{d}" for d in (11, 13, 16, 19)),
        "mobilenetv2",
        "mobilenetv2_imagenet",
        "densenet40",
        "googlenet",
        "resnet18",
        "resnet34",
        "resnet50",
        "mnist1d_cnn",
        "resnet20_1d",
    }
    assert set(ALL) == expected
    assert sorted(ALL) == ALL


@pytest.mark.parametrize("name", ALL)
def test_model_info(name: str) -> None:
    info = model_info(name)
    assert isinstance(info, ModelInfo)
    assert info.name == name
    assert len(info.input_size) == info.dims
    assert info.family and info.description
    assert any(str(y) in info.paper for y in range(1989, 2030)), "paper should carry its year"
    with pytest.raises(AttributeError):
        info.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("name", ALL)
def test_forward_protected_and_rebuild(name: str) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=10, in_channels=3)
    x = torch.randn(2, 3, *_forward_size(name))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)

    modules = dict(model.named_modules())
    protected = protected_layers(model)
    assert protected == model.protected_layers
    assert protected and all(p in modules for p in protected)
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    assert last_linear in protected
    assert modules[last_linear].out_features == 10

    arch = model.prunekit_arch
    assert arch == {"name": name, "kwargs": {"num_classes": 10, "in_channels": 3}}
    # the arch must survive a JSON round trip (checkpoints may store it as JSON)
    again = rebuild(json.loads(json.dumps(arch)))
    assert _shapes(again) == _shapes(model)
    assert again.protected_layers == model.protected_layers


@pytest.mark.parametrize(
    "name",
    [
        "lenet_300_100",
        "lenet5",
        "conv4",
        "resnet20",
        "vgg11",
        "mobilenetv2_imagenet",
        "mnist1d_cnn",
    ],
)
def test_other_channels_and_classes(name: str) -> None:
    model = create(name, num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, *_forward_size(name))).shape == (2, 7)
    assert model.prunekit_arch["kwargs"] == {"num_classes": 7, "in_channels": 1}
    assert _shapes(rebuild(model.prunekit_arch)) == _shapes(model)


@pytest.mark.parametrize("name", ALL)
def test_fx_traceable(name: str) -> None:
    # the pruning stages trace models into a graph; no model may hide structure from the tracer
    graph = torch.fx.symbolic_trace(create(name)).graph
    assert any(node.op == "call_module" for node in graph.nodes)


@pytest.mark.parametrize(
    ("name", "size", "in_features"),
    [
        ("lenet_300_100", 32, 3 * 32 * 32),
        ("lenet5", (32, 36), 50 * 5 * 6),
        ("conv2", 64, 64 * 32 * 32),
        ("conv6", (16, 24), 256 * 2 * 3),
        ("vgg16", 64, 512 * 2 * 2),
    ],
)
def test_input_size_sizes_the_classifier(
    name: str, size: int | tuple[int, int], in_features: int
) -> None:
    model = create(name, input_size=size).eval()
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == in_features
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        assert model(torch.randn(2, 3, h, w)).shape == (2, 10)
    assert model.prunekit_arch["kwargs"]["input_size"] == [h, w]
    assert _shapes(rebuild(model.prunekit_arch)) == _shapes(model)


def test_mnist1d_input_length() -> None:
    model = create("mnist1d_cnn", in_channels=1, input_size=72).eval()
    # 72 -> 35 -> 18 -> 9 positions of 25 channels
    assert model.classifier.in_features == 25 * 9
    with torch.no_grad():
        assert model(torch.randn(2, 1, 72)).shape == (2, 10)


def test_input_size_is_accepted_but_unused_by_pooled_models() -> None:
    model = create("resnet20", input_size=64)
    assert model.prunekit_arch["kwargs"]["input_size"] == [64, 64]
    assert _shapes(model) == _shapes(create("resnet20"))


def test_mnist1d_cnn_matches_reference_layout() -> None:
    model = create("mnist1d_cnn", in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (25, 5, 2, 1),
        (25, 3, 2, 1),
        (25, 3, 2, 1),
    ]
    assert count_params(model).total == 5210


# (name, num_classes, input size, params, MACs, relative tolerance). Published figures: He et al.
# (ResNets, option A), network slimming / HRank (VGG-16, GoogLeNet, DenseNet-40), Sandler et al.
# (MobileNetV2). Option-B shortcuts add 2.8k params and 0.26M MACs to the CIFAR ResNets: ~1% on
# ResNet-20, inside the 3% tolerance.
PUBLISHED = [
    ("resnet20", 10, 32, 0.27e6, 41e6, 0.03),
    ("resnet32", 10, 32, 0.46e6, 69e6, 0.03),
    ("resnet44", 10, 32, 0.66e6, 97e6, 0.03),
    ("resnet56", 10, 32, 0.85e6, 125e6, 0.03),
    ("resnet110", 10, 32, 1.7e6, 253e6, 0.03),
    ("vgg16", 10, 32, 14.7e6, 313e6, 0.03),
    # HRank's DenseNet-40 (24-channel stem) is published as 1.04M params and 282M MACs; this
    # build counts 1.06M and 283M
    ("densenet40", 10, 32, 1.04e6, 283e6, 0.03),
    ("googlenet", 10, 32, 6.15e6, 1.53e9, 0.03),
    ("mobilenetv2", 10, 32, 2.24e6, None, 0.03),
    ("resnet50", 1000, 224, 25.6e6, 4.1e9, 0.03),
    ("mobilenetv2_imagenet", 1000, 224, 3.5e6, 300e6, 0.03),
]


@pytest.mark.parametrize(("name", "classes", "size", "params", "macs", "tol"), PUBLISHED)
def test_published_params_and_macs(
    name: str, classes: int, size: int, params: float, macs: float | None, tol: float
) -> None:
    model = create(name, num_classes=classes)
    assert count_params(model).total == pytest.approx(params, rel=tol)
    if macs is not None:
        measured = count_flops(model, torch.zeros(1, 3, size, size)).macs
        assert measured == pytest.approx(macs, rel=tol)


def test_densenet40_paper_stem() -> None:
    # Huang et al.'s 16-channel stem: network slimming's 1.02M params and 5.33e8 FLOPs (266M MACs)
    model = create("densenet40", stem_channels=16)
    assert count_params(model).total == pytest.approx(1.02e6, rel=0.01)
    assert count_flops(model, torch.zeros(1, 3, 32, 32)).macs == pytest.approx(266e6, rel=0.01)
    assert rebuild(model.prunekit_arch).conv1.out_channels == 16


def test_lottery_ticket_sizes() -> None:
    # Frankle & Carbin, figure 2 (Conv-6 is listed as 1.7M there; the described net has 2.26M)
    counts = {
        n: count_params(create(n, in_channels=c)).total
        for n, c in [("lenet_300_100", 1), ("conv2", 3), ("conv4", 3), ("conv6", 3)]
    }
    assert counts["lenet_300_100"] == 266_610
    assert counts["conv2"] == pytest.approx(4.3e6, rel=0.01)
    assert counts["conv4"] == pytest.approx(2.4e6, rel=0.02)
    assert counts["conv6"] == pytest.approx(2.26e6, rel=0.01)
    assert count_params(create("lenet5", in_channels=1)).total == 431_080


def test_init_is_standard() -> None:
    model = create("resnet20")
    assert torch.all(model.bn1.weight == 1) and torch.all(model.bn1.bias == 0)
    # He-normal, fan_out: std = sqrt(2 / (out_channels * 3 * 3)) = sqrt(2 / 144)
    assert model.conv1.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.25)


def test_downsampling_shortcuts_are_convs() -> None:
    model = create("resnet20")
    assert model.layer1[0].shortcut is None
    assert isinstance(model.layer2[0].shortcut[0], nn.Conv2d)
    assert model.layer2[1].shortcut is None


def test_mobilenetv2_uses_depthwise_convs() -> None:
    model = create("mobilenetv2")
    depthwise = [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    assert len(depthwise) == 17


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        create("resnet21")
    assert "resnet20" in str(err.value) and "vgg16" in str(err.value)
    with pytest.raises(UnknownNameError):
        model_info("nope")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_num_classes_and_channels(bad: object) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        create("resnet20", num_classes=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="in_channels"):
        create("resnet20", in_channels=bad)  # type: ignore[arg-type]


def test_bad_kwargs_and_sizes() -> None:
    with pytest.raises(ConfigError, match="widht"):
        create("resnet20", widht=2)
    with pytest.raises(ConfigError, match="input_size"):
        create("vgg16", input_size=(32, 32, 3))
    with pytest.raises(ConfigError, match="input_size"):
        create("lenet5", input_size=0)
    with pytest.raises(ConfigError, match="too small"):
        create("vgg16", input_size=16)
    with pytest.raises(ConfigError, match="too small"):
        create("lenet5", input_size=8)
    with pytest.raises(ConfigError, match="too small"):
        create("mnist1d_cnn", input_size=2)


def test_rebuild_rejects_malformed_arch() -> None:
    with pytest.raises(CheckpointError):
        rebuild({"kwargs": {}})
    with pytest.raises(CheckpointError):
        rebuild("resnet20")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError):
        rebuild({"name": "nope", "kwargs": {}})


def test_protected_layers_of_user_models() -> None:
    assert protected_layers(nn.Linear(2, 2)) == ()
    user = nn.Sequential(nn.Linear(2, 2))
    user.protected_layers = ("0",)
    assert protected_layers(user) == ("0",)
