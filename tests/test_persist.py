"""prunekit.save / prunekit.load: a pruned model comes back with the same shapes and outputs, in
this process and in a fresh one, from plain data only; bad files fail with one clear error."""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
import prunekit.graph as graph
from prunekit.errors import CheckpointError, ConfigError, MissingFileError
from prunekit.models import create
from prunekit.persist import FORMAT, VERSION

EXPECTED = "expected a prunekit model file written by prunekit.save"

USER_MODULE = "pk_persist_user_model"
USER_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)
            self.gamma = nn.Parameter(torch.ones(c, 1, 1))  # layer scale: sliced by the graph

        def forward(self, x):
            return x + self.conv2(torch.relu(self.bn1(self.conv1(x)))) * self.gamma


    class Net(nn.Module):
        protected_layers = ("fc",)

        def __init__(self, width=8, classes=5):
            super().__init__()
            self.stem = nn.Conv2d(3, width, 3, padding=1)
            self.block = Block(width)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(width, classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))
    """
)

FRESH_LOAD = textwrap.dedent(
    """
    import importlib
    import json
    import sys

    import torch
    import prunekit

    for job in json.loads(open(sys.argv[1]).read()):
        model = None
        if job["module_dir"]:
            sys.path.insert(0, job["module_dir"])
            model = importlib.import_module({module!r}).Net
        m = prunekit.load(job["path"], model=model)
        with torch.no_grad():
            torch.save(m(torch.load(job["inputs"])), job["out"])
    """
).format(module=USER_MODULE)


# ---------------------------------------------------------------------------------- helpers


def _randomize(model: nn.Module, seed: int) -> None:
    """Distinct, non-default values everywhere (BN statistics included), so a tensor that is not
    loaded, or loaded into the wrong place, changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.5)


def _prune_random(model: nn.Module, x: torch.Tensor, seed: int, n_groups: int = 3) -> None:
    """Build the graph and remove a random quarter of the channels of ``n_groups`` groups."""
    rng = np.random.default_rng(seed)
    g = graph.build(model, x)
    groups = list(g.groups)
    for i in rng.choice(len(groups), size=min(n_groups, len(groups)), replace=False):
        group = groups[int(i)]
        k = max(1, group.size // 4)
        group.prune(rng.choice(group.size, size=k, replace=False).tolist())


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


def _rewrite(path: Path, **changes: object) -> None:
    """Tamper with a saved file (for the error cases)."""
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(changes)
    torch.save(ckpt, path)


@pytest.fixture(scope="module")
def user_src(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ModuleType]]:
    """The user-defined model lives in a real file, so a fresh process can import it too."""
    src = tmp_path_factory.mktemp("user_src")
    (src / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(src))
        sys.modules.pop(USER_MODULE, None)
        yield src, importlib.import_module(USER_MODULE)
    sys.modules.pop(USER_MODULE, None)


@pytest.fixture
def user_module(user_src: tuple[Path, ModuleType]) -> ModuleType:
    return user_src[1]


def _pruned_zoo(name: str = "resnet20", seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = create(name, input_size=16)
    _randomize(model, seed)
    x = torch.randn(2, 3, 16, 16)
    _prune_random(model.eval(), x, seed)
    return model, x


@dataclass
class Saved:
    model: nn.Module
    x: torch.Tensor
    expected: torch.Tensor
    path: Path


@pytest.fixture(scope="module")
def saved(
    tmp_path_factory: pytest.TempPathFactory, user_src: tuple[Path, ModuleType]
) -> dict[str, Saved]:
    """Pruned and saved once per module: two zoo models and the user-defined one."""
    root = tmp_path_factory.mktemp("saved")
    models: dict[str, tuple[nn.Module, torch.Tensor]] = {
        name: _pruned_zoo(name, seed=1) for name in ("resnet20", "mobilenetv2")
    }
    torch.manual_seed(0)
    user = user_src[1].Net()
    _randomize(user, 2)
    x = torch.randn(2, 3, 8, 8)
    for group in list(graph.build(user.eval(), x).groups):
        group.prune([1, 2])
    models["user"] = (user, x)
    out = {}
    for name, (model, x) in models.items():
        path = root / f"{name}.pkm"
        prunekit.save(model, path, extra={"accuracy": 0.9} if name == "user" else None)
        out[name] = Saved(model, x, _outputs(model, x), path)
    return out


@pytest.fixture
def pruned(saved: dict[str, Saved], tmp_path: Path) -> tuple[nn.Module, Path]:
    """A pruned resnet20 and its own copy of the file, free to tamper with."""
    path = tmp_path / "m.pkm"
    shutil.copyfile(saved["resnet20"].path, path)
    return saved["resnet20"].model, path


# ---------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_zoo_model_round_trip(name: str, saved: dict[str, Saved]) -> None:
    case = saved[name]
    assert case.model._prunekit_structure  # something was pruned
    torch.manual_seed(123)  # the rebuilt original gets different initial weights
    loaded = prunekit.load(case.path)
    assert not loaded.training
    assert torch.equal(_outputs(loaded, case.x), case.expected)
    _assert_same_state(loaded, case.model)
    assert loaded._prunekit_structure == case.model._prunekit_structure
    assert loaded.prunekit_arch == case.model.prunekit_arch
    assert loaded.protected_layers == case.model.protected_layers
    for mod_name, module in loaded.named_modules():  # attributes follow the weights
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[0] == module.out_channels, mod_name
            assert module.weight.shape[1] * module.groups == module.in_channels, mod_name
        elif isinstance(module, nn.BatchNorm2d):
            assert module.running_mean.shape[0] == module.num_features, mod_name


def test_user_model_loads_with_model_argument(
    saved: dict[str, Saved], user_module: ModuleType
) -> None:
    case = saved["user"]
    assert case.model.block.gamma.shape == (6, 1, 1)  # sliced by the graph outside any layer
    with pytest.raises(CheckpointError, match=r"pass model="):
        prunekit.load(case.path)

    by_class = prunekit.load(case.path, model=user_module.Net)
    assert torch.equal(_outputs(by_class, case.x), case.expected)
    _assert_same_state(by_class, case.model)
    assert isinstance(by_class.block.gamma, nn.Parameter)
    assert by_class.protected_layers == ("fc",)
    assert by_class.prunekit_extra == {"accuracy": 0.9}

    instance = user_module.Net()
    by_instance = prunekit.load(case.path, model=instance)
    assert by_instance is instance
    assert torch.equal(_outputs(by_instance, case.x), case.expected)


def test_fresh_process_loads_identically(
    saved: dict[str, Saved], user_src: tuple[Path, ModuleType], tmp_path: Path
) -> None:
    """A new interpreter shares nothing with this one: the file alone rebuilds the model."""
    jobs = []
    for name, case in saved.items():
        inputs = tmp_path / f"{name}_x.pt"
        torch.save(case.x, inputs)
        jobs.append(
            {
                "path": str(case.path),
                "inputs": str(inputs),
                "out": str(tmp_path / f"{name}_out.pt"),
                "module_dir": str(user_src[0]) if name == "user" else None,
            }
        )
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, str(tmp_path / "jobs.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for name, case in saved.items():
        out = torch.load(tmp_path / f"{name}_out.pt", weights_only=True)
        assert torch.equal(out, case.expected), name


def test_unpruned_model_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet20")
    _randomize(model, 3)
    x = torch.randn(2, 3, 16, 16)
    path = tmp_path / "plain.pkm"
    prunekit.save(model, path)
    loaded = prunekit.load(path)
    assert loaded._prunekit_structure == {}
    assert torch.equal(_outputs(loaded, x), _outputs(model, x))


def test_two_pruning_rounds_compose_relative_to_the_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create("resnet20", input_size=16)
    _randomize(model, 4)
    original = copy.deepcopy(model)
    x = torch.randn(2, 3, 16, 16)
    _prune_random(model.eval(), x, seed=10, n_groups=4)
    _prune_random(model, x, seed=11, n_groups=4)

    # every recorded index addresses the ORIGINAL layer: slicing the original reproduces it
    layers = dict(original.named_modules())
    for name, rec in model._prunekit_structure.items():
        weight = layers[name].weight.detach()  # dense conv / linear: (out, in, ...); BN: (out,)
        if rec["out"] is not None:
            weight = weight[rec["out"]]
        if rec["in"] is not None and weight.dim() > 1:
            weight = weight[:, rec["in"]]
        assert torch.equal(weight, model.get_submodule(name).weight.detach()), name

    expected = _outputs(model, x)
    path = tmp_path / "twice.pkm"
    prunekit.save(model, path)
    loaded = prunekit.load(path)
    assert torch.equal(_outputs(loaded, x), expected)
    _assert_same_state(loaded, model)


def test_file_is_plain_data(saved: dict[str, Saved], tmp_path: Path) -> None:
    model = saved["resnet20"].model
    path = tmp_path / "m.pkm"
    prunekit.save(model, path, extra={"note": "hi", "top1": [0.5, 0.7]})
    ckpt = torch.load(path, weights_only=True)  # no code runs, no module is unpickled
    assert ckpt["format"] == FORMAT and ckpt["version"] == VERSION
    assert ckpt["arch"] == model.prunekit_arch
    assert ckpt["structure"] == model._prunekit_structure
    assert ckpt["protected_layers"] == list(model.protected_layers)
    assert ckpt["extra"] == {"note": "hi", "top1": [0.5, 0.7]}
    assert ckpt["torch"] == str(torch.__version__)
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    assert prunekit.load(path).prunekit_extra == {"note": "hi", "top1": [0.5, 0.7]}


def test_save_is_atomic(
    saved: dict[str, Saved], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, x = saved["resnet20"].model, saved["resnet20"].x
    path = tmp_path / "m.pkm"
    prunekit.save(first, path)
    second = create("resnet20")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        prunekit.save(second, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pkm"]  # no temporary file left behind
    assert torch.equal(_outputs(prunekit.load(path), x), _outputs(first, x))


# ---------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pkm"
    with pytest.raises(MissingFileError, match=r"nope\.pkm"):
        prunekit.load(path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "foreign", "not-a-dict", "empty"])
def test_unreadable_or_foreign_file(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pkm"
    if kind == "garbage":
        path.write_bytes(b"this is not a model" * 10)
    elif kind == "truncated":
        prunekit.save(create("lenet5"), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"model": create("lenet5").state_dict()}, path)
    elif kind == "not-a-dict":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=EXPECTED) as info:
        prunekit.load(path)
    assert "bad.pkm" in str(info.value)
    assert "\n" not in str(info.value)


def test_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pkm"
    prunekit.save(create("lenet5"), path)
    _rewrite(path, version=VERSION + 1)
    with pytest.raises(CheckpointError, match="version"):
        prunekit.load(path)


def test_corrupt_structure_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.pkm"
    prunekit.save(create("lenet5"), path)
    _rewrite(path, structure={"conv1": {"in": None, "out": [3, 1]}})
    with pytest.raises(CheckpointError, match=r"corrupt.*'conv1'"):
        prunekit.load(path)


def test_no_arch_and_no_model(tmp_path: Path, user_module: ModuleType) -> None:
    path = tmp_path / "user.pkm"
    prunekit.save(user_module.Net(), path)
    with pytest.raises(CheckpointError, match=r"user\.pkm.*pass model="):
        prunekit.load(path)


def test_structure_naming_an_unknown_layer(pruned: tuple[nn.Module, Path]) -> None:
    model, path = pruned
    structure = dict(model._prunekit_structure)
    structure["layer9.conv1"] = {"in": None, "out": [0, 1]}
    _rewrite(path, structure=structure)
    with pytest.raises(CheckpointError, match=r"m\.pkm.*'layer9\.conv1'"):
        prunekit.load(path)


def test_structure_that_does_not_match_the_weights(pruned: tuple[nn.Module, Path]) -> None:
    model, path = pruned
    structure = copy.deepcopy(model._prunekit_structure)
    name = next(n for n, rec in structure.items() if n.endswith("conv1") and rec["out"])
    structure[name]["out"] = structure[name]["out"][1:]  # one channel fewer than the weights
    _rewrite(path, structure=structure)
    with pytest.raises(CheckpointError, match=rf"m\.pkm: layer '{name}'"):
        prunekit.load(path)


def test_wrong_architecture_is_refused(pruned: tuple[nn.Module, Path]) -> None:
    _, path = pruned
    with pytest.raises(CheckpointError, match=r"m\.pkm"):
        prunekit.load(path, model=lambda: create("resnet32"))
    with pytest.raises(CheckpointError, match=r"m\.pkm.*'conv1'"):
        prunekit.load(path, model=lambda: create("resnet20", num_classes=10, in_channels=1))


def test_loose_tensor_may_only_shrink(tmp_path: Path, user_module: ModuleType) -> None:
    model = user_module.Net()
    path = tmp_path / "user.pkm"
    prunekit.save(model, path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["block.gamma"] = torch.ones(9, 1, 1)  # larger than the original's 8
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"layer 'block': gamma"):
        prunekit.load(path, model=user_module.Net)


def test_bad_arguments(pruned: tuple[nn.Module, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="JSON"):
        prunekit.save(create("lenet5"), tmp_path / "x.pkm", extra={"s": {1, 2}})
    assert not (tmp_path / "x.pkm").exists()
    model, path = pruned
    with pytest.raises(ConfigError, match="unpruned"):
        prunekit.load(path, model=model)
    with pytest.raises(ConfigError, match=r"nn\.Module"):
        prunekit.load(path, model=lambda: 3)
