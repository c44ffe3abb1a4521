"""ONNX export: onnxruntime agrees with torch, pruned shapes and mask zeros reach the file, the
caller's model is untouched, latency is measured, and failures leave no partial file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.export import check_onnx, export_onnx, onnx_latency
from prunekit.prune import prune_channels

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="the onnx extra (onnx, onnxruntime, onnxscript) is not installed",
)


class TinyNet(nn.Module):
    """Conv-BN-ReLU, a depthwise conv, a residual add, pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.classifier = nn.Linear(8, 5)
        for bn in (self.bn1, self.bn2, self.bn3):  # non-trivial running statistics
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.dw(x)))
        x = x + self.bn3(self.pw(y))
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        return self.classifier(x)


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward is broken on purpose")


def example(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8)


def initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


@needs_onnx
def test_dense_export_matches_torch_at_batch_1_and_3(tmp_path: Path) -> None:
    import onnx

    model = TinyNet().eval()
    path = export_onnx(model, example(), tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx"
    x3 = example(3)
    assert check_onnx(path, model, x3[:1]) <= 1e-4
    assert check_onnx(path, model, x3) <= 1e-4  # same file, another batch size
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no side or temp file


@needs_onnx
def test_export_leaves_the_callers_model_in_train_mode(tmp_path: Path) -> None:
    model = TinyNet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, example(), tmp_path / "m.onnx")
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@needs_onnx
def test_fixed_batch_export_has_a_fixed_first_dimension(tmp_path: Path) -> None:
    import onnx

    path = export_onnx(TinyNet(), example(2), tmp_path / "fixed.onnx", dynamic_batch=False)
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 2
    with pytest.raises(ConfigError, match="dynamic_batch=False"):
        onnx_latency(path, example(), batch_sizes=(3,), min_run_time=0.01)


@needs_onnx
def test_channel_pruned_model_exports_its_pruned_shapes(tmp_path: Path) -> None:
    model = TinyNet().eval()
    x = example()
    dense_shape = tuple(model.conv1.weight.shape)
    prune_channels(model, x, ratio=0.5)
    assert tuple(model.conv1.weight.shape) != dense_shape  # the pruning did narrow the net
    path = export_onnx(model, x, tmp_path / "pruned.onnx")
    assert check_onnx(path, model, example(3)) <= 1e-4
    found = initializers(path)
    for name in ("conv1", "dw", "pw"):
        shape = tuple(model.get_submodule(name).weight.shape)
        assert found[f"{name}.weight"].shape == shape
    assert found["classifier.weight"].shape == tuple(model.classifier.weight.shape)


@needs_onnx
def test_masked_model_exports_zeros_and_keeps_its_masks(tmp_path: Path) -> None:
    model = TinyNet().eval()
    applied = masks.prune(model, 0.5)
    assert applied  # some layers are masked
    x = example(2)
    with torch.no_grad():
        expected = model(x)
    path = export_onnx(model, x[:1], tmp_path / "masked.onnx")
    found = initializers(path)
    for name, mask in applied.items():
        zeros = found[name] == 0
        assert np.array_equal(zeros, ~mask.data.bool().numpy()), name
    # the caller's model is untouched: still masked, still running, same outputs
    assert set(masks.get_masks(model)) == set(applied)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert check_onnx(path, model, x) <= 1e-4


@needs_onnx
def test_check_onnx_refuses_a_model_that_differs(tmp_path: Path) -> None:
    model = TinyNet().eval()
    path = export_onnx(model, example(), tmp_path / "m.onnx")
    with torch.no_grad():
        model.classifier.bias.add_(1.0)
    with pytest.raises(ConfigError, match="differs from TinyNet"):
        check_onnx(path, model, example())


@needs_onnx
def test_onnx_latency_is_positive_for_each_batch_size(tmp_path: Path) -> None:
    model = TinyNet()
    from_model = onnx_latency(model, example(), batch_sizes=(1, 4), min_run_time=0.02)
    assert set(from_model) == {1, 4}
    assert all(v > 0 for v in from_model.values())
    path = export_onnx(model, example(), tmp_path / "m.onnx")
    from_file = onnx_latency(path, example(), batch_sizes=(2,), threads=1, min_run_time=0.02)
    assert set(from_file) == {2} and from_file[2] > 0
    with pytest.raises(ConfigError, match="batch_sizes"):
        onnx_latency(path, example(), batch_sizes=(0,))


@needs_onnx
def test_reused_session_exports_a_model_again_only_when_its_shapes_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prunekit import export as ex

    exported: list[int] = []
    real = ex.export_onnx

    def counting(model: nn.Module, *a: object, **kw: object) -> Path:
        exported.append(model.conv1.out_channels)
        return real(model, *a, **kw)

    monkeypatch.setattr(ex, "export_onnx", counting)
    monkeypatch.setattr(ex, "_SESSIONS", ex._SessionCache())
    model, other = TinyNet().eval(), TinyNet().eval()
    fast = {"batch_sizes": (1,), "min_run_time": 0.01, "reuse": True}
    onnx_latency(model, example(), **fast)
    with torch.no_grad():
        model.classifier.weight.mul_(2.0)  # new values, same shapes: the session serves
    onnx_latency(model, example(), **fast)
    assert exported == [8]
    onnx_latency(other, example(), **fast)  # another object of the same layout: its own export
    onnx_latency(model, example(), **{**fast, "reuse": False})  # not asked to reuse
    assert exported == [8, 8, 8]
    prune_channels(model, example(), ratio=0.5)  # pruned in place: a new layout
    onnx_latency(model, example(), **fast)
    assert len(exported) == 4 and exported[-1] < 8
    onnx_latency(model, example(), **fast)
    assert len(exported) == 4


@pytest.mark.parametrize("package", ["onnx", "onnxscript"])
def test_export_without_the_onnx_packages_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str
) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"prunekit\[onnx\]") as err:
        export_onnx(TinyNet(), example(), tmp_path / "m.onnx")
    assert repr(package) in str(err.value)
    assert not list(tmp_path.iterdir())


def test_latency_without_onnxruntime_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"'onnxruntime'.*prunekit\[onnx\]"):
        onnx_latency(path, example(), min_run_time=0.01)


@needs_onnx
def test_failed_export_keeps_the_existing_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = export_onnx(TinyNet(), example(), tmp_path / "m.onnx")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=r"Broken.*forward is broken on purpose"):
        export_onnx(Broken(), example(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
