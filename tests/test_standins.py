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

MISSING: dict[str, str] = {}

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
