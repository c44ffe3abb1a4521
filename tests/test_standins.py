"""Every stand-in model (``tests/standins``: code written the way timm, torchvision and the
detection and segmentation libraries write it) through the equivalence harness: in float64,
zeroing a group's channels then removing them leaves every output (dict, tuple and list outputs
leaf by leaf) unchanged to 1e-9, and the planned params/FLOPs equal the measured ones.

A stand-in whose code the core does not handle yet is a strict xfail naming the missing
capability: when the core learns it, the case starts passing, the xfail turns into a failure,
and the mark is removed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from standins import STANDINS
from test_graph import check_equivalence

BN_F = "F.batch_norm with parameter arguments inside a BatchNorm2d subclass (class 1/2)"
CONV_F = "F.conv2d with parameter arguments inside a Conv2d subclass (class 1/2)"
MISSING: dict[str, str] = {
    "bn_act_subclass": BN_F,
    "channel_norm_subclasses": "F.layer_norm / F.group_norm inside LayerNorm / GroupNorm subclasses (class 1)",
    "weight_standardised_convs": CONV_F + " that standardises its weight with F.batch_norm",
    "functional_params": "F.conv2d / F.batch_norm / F.prelu / F.linear on a module's own parameters (class 2)",
    "functional_misc": "F.conv1d / F.group_norm / F.conv_transpose1d / F.instance_norm on parameters (class 2)",
    "functional_embedding": "F.embedding / F.layer_norm / F.linear on a module's own parameters (class 2)",
    "functional_conv3d": "F.conv3d / F.conv_transpose2d on a module's own parameters (class 2)",
    "roll_shift": "torch.roll over spatial dims (class 3)",
    "shape_control_flow": CONV_F + " with padding computed from the input size (class 4)",
    "value_control_flow": "control flow on tensor values refuses the model instead of pinning that submodule (class 4)",
    "hand_attention": "hand-written attention reshaped back to the input width: heads removed, reshape(B, N, C) breaks (class 5)",
    "sdpa_attention": "SDPA attention reshaped back to the input width: heads removed, reshape(B, N, C) breaks (class 5)",
    "convnext": "F.layer_norm inside a LayerNorm subclass on NCHW maps (class 1)",
    "poolformer": "F.group_norm inside a one-group GroupNorm subclass (class 1)",
    "efficientnet": CONV_F + " with 'SAME' padding from the input size (class 1/4)",
    "mobilenetv3": BN_F,
    "regnet": BN_F,
    "nf_resnet": CONV_F + " (scaled weight standardisation with a gain)",
    "cspnet": BN_F,
    "dpn": BN_F,
    "rexnet": BN_F,
    "res2net": BN_F,
    "resnest": BN_F,
    "swin": "torch.roll, window partition with padding, relative position bias per head (class 3)",
    "maxvit": BN_F,
    "mlp_mixer": "token-mixing MLP on transposed tokens: planned FLOPs differ from the measured ones",
    "segformer": "matmul of attention written by hand after a reshape with H, W arguments (class 5)",
    "fpn": BN_F,
    "retinanet": BN_F,
    "yolov8": BN_F,
    "yolov5": BN_F,
    "sppf": BN_F,
    "bifpn": BN_F,
    "ssd": BN_F,
    "centernet": BN_F,
    "unet": BN_F,
    "deeplabv3": BN_F,
    "pspnet": BN_F,
    "hrnet": BN_F,
}

# attributes a layer's forward reads that mirror the shape of its parameters
MIRRORS = {
    "out_channels": lambda m: (
        m.weight.shape[1] * m.groups
        if isinstance(m, nn.modules.conv._ConvTransposeNd)
        else m.weight.shape[0]
    ),
    "in_channels": lambda m: (
        m.weight.shape[0]
        if isinstance(m, nn.modules.conv._ConvTransposeNd)
        else m.weight.shape[1] * m.groups
    ),
    "num_features": lambda m: m.weight.shape[0],
    "num_channels": lambda m: m.weight.shape[0],
    "normalized_shape": lambda m: tuple(m.weight.shape),
    "out_features": lambda m: m.weight.shape[0],
    "in_features": lambda m: m.weight.shape[1],
}


def _case(name: str) -> pytest.param:
    reason = MISSING.get(name)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(name, marks=marks, id=name)


def check_mirrors(model: nn.Module) -> None:
    """Every shape-mirroring attribute agrees with the parameter it describes."""
    for name, m in model.named_modules():
        if not isinstance(getattr(m, "weight", None), torch.Tensor):
            continue
        for attr, actual in MIRRORS.items():
            if hasattr(m, attr) and not isinstance(m, nn.MultiheadAttention):
                assert getattr(m, attr) == actual(m), f"{name}.{attr}"


def test_registry_is_large_and_covers_every_kind() -> None:
    assert len(STANDINS) >= 40
    kinds = {s.kind for s in STANDINS.values()}
    assert {"class1", "class2", "class3", "class4", "class5"} <= kinds
    assert {"classification", "detection", "segmentation"} <= kinds
    assert set(MISSING) <= set(STANDINS), set(MISSING) - set(STANDINS)


def check_standin(name: str, max_groups: int | None) -> None:
    spec = STANDINS[name]
    torch.manual_seed(0)
    model = spec.build()
    graph = check_equivalence(model, spec.example_inputs(), max_groups=max_groups, seed=1)
    check_mirrors(model)
    if spec.expect == "exact":
        assert all(g.exact for g in graph.groups), [g.name for g in graph.groups if not g.exact]


@pytest.mark.parametrize("name", [_case(n) for n in STANDINS])
def test_standin_equivalence(name: str) -> None:
    """Two groups per stand-in, drawn at random: the default run stays fast."""
    check_standin(name, max_groups=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", [_case(n) for n in STANDINS])
def test_standin_equivalence_every_group(name: str) -> None:
    check_standin(name, max_groups=None)
