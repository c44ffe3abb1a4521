"""Peer and reference baselines of the benchmark: Torch-Pruning's criteria through its
MetaPruner and uniform width scaling, run on the same target as prunekit's methods and kept out
of prunekit's method registry; the spec options that go with them (several baselines per seed,
distillation, round_to)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import prunekit
from nets import ConvBNNet, random_data
from prunekit import methods, workflow
from prunekit.bench import expand, load_records, parse_spec, peers, run_spec
from prunekit.bench.spec import RunConfig
from prunekit.errors import ConfigError, PrunekitError
from prunekit.measure import count_flops, count_params
from prunekit.models import create

PEERS = ["peer:tp_l2", "peer:tp_taylor", "peer:tp_lamp", "peer:tp_bn", "peer:tp_random"]
UNSTRUCTURED_PEERS = ["peer:torch_l1"]


@dataclasses.dataclass
class FakeSetup:
    """What a baseline's pruning function reads of a :class:`prunekit.workflow.Setup`."""

    model: nn.Module
    train_set: Any
    val_set: Any
    shape: tuple[int, ...]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.shape)


def conv_bn_setup(seed: int = 0) -> FakeSetup:
    torch.manual_seed(seed)
    model = ConvBNNet((16, 32, 32), classes=4).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # trained-looking, distinct scales
                m.weight.uniform_(0.2, 1.5)
                m.running_var.uniform_(0.5, 2.0)
    data = random_data(64)
    return FakeSetup(model, data, data, (3, 8, 8))


def config(**kw: Any) -> workflow.PruneConfig:
    base = {"model": "conv_bn", "data": "random", "target_flops": 0.5, "batch_size": 16}
    return workflow.PruneConfig(**{**base, **kw})


def flops(model: nn.Module, shape: tuple[int, ...]) -> int:
    return count_flops(model, (torch.zeros(1, *shape),)).flops


# ---------------------------------------------------------------------------------- registry


def test_peers_are_registered_apart_from_prunekit_methods() -> None:
    assert set(peers.BASELINES.names()) == {*PEERS, *UNSTRUCTURED_PEERS, "ref:width_scaled"}
    for pid in peers.BASELINES.names():
        with pytest.raises(PrunekitError):
            methods.get(pid)
        assert peers.method_type(pid) == ("U" if pid in UNSTRUCTURED_PEERS else "S")
    assert peers.method_kind("peer:torch_l1") == "peer"
    assert {peers.method_kind(p) for p in PEERS} == {"peer"}
    assert peers.method_kind("ref:width_scaled") == "reference"
    assert peers.method_kind("sfp") == "prunekit"
    assert peers.get("peer:tp_l2").kind == "peer"
    with pytest.raises(ConfigError, match="unknown peer or reference baseline 'peer:tp_l9'"):
        peers.get("peer:tp_l9")


def test_spec_without_torch_pruning_fails_at_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "torch_pruning" else real(name, *a),
    )
    spec = {
        "name": "p",
        "models": ["mnist1d_cnn"],
        "datasets": ["mnist1d"],
        "methods": ["sfp", "peer:tp_lamp"],
    }
    with pytest.raises(
        ConfigError, match=r"methods\[1\]: peer:tp_lamp .*pip install 'prunekit\[bench\]'"
    ):
        parse_spec(spec, source="p.yaml")
    spec["methods"] = ["sfp", "ref:width_scaled"]  # the reference needs nothing extra
    assert len(expand(parse_spec(spec))) == 1 + 1


def test_options_are_checked_and_converted() -> None:
    spec = {
        "name": "p",
        "models": ["mnist1d_cnn"],
        "datasets": ["mnist1d"],
        "methods": [{"id": "peer:tp_l2", "options": {"global_pruning": "false"}}],
    }
    (run,) = expand(parse_spec(spec))
    assert run.options == {"global_pruning": False}
    spec["methods"] = [{"id": "peer:tp_l2", "options": {"rounds": 3}}]
    with pytest.raises(ConfigError, match=r"methods\[0\]\.options\.rounds: .*no option 'rounds'"):
        parse_spec(spec, source="p.yaml")


# ---------------------------------------------------------------------------------- Torch-Pruning


@pytest.mark.parametrize("peer", ["peer:tp_l2", "peer:tp_taylor", "peer:tp_lamp", "peer:tp_bn"])
@pytest.mark.parametrize("kind", ["flops", "params"])
def test_peer_meets_the_target_and_saves_like_any_pruned_model(
    peer: str, kind: str, tmp_path: Path
) -> None:
    setup = conv_bn_setup()
    dense = copy.deepcopy(setup.model)
    cfg = config(
        target_flops=None if kind == "params" else 0.6,
        target_params=0.6 if kind == "params" else None,
    )
    report = peers.pruner(peer, cfg, {})(setup)
    reached = report.flops_reduction if kind == "flops" else report.params_reduction
    assert abs(reached - 0.6) <= 0.01
    assert report.flops_after == flops(setup.model, setup.shape)
    assert report.params_after == count_params(setup.model).total
    assert count_params(setup.model).total < count_params(dense).total
    prunekit.save(setup.model, tmp_path / "p.pt")
    loaded = prunekit.load(tmp_path / "p.pt", model=ConvBNNet((16, 32, 32), classes=4)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), setup.model(x), rtol=0, atol=0)


class InvertedResidualNet(nn.Module):
    """A MobileNetV2-style block as model libraries write it: expand, depthwise and project as
    Sequential blocks, ReLU6 called functionally, a residual add, then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48))
        self.dw = nn.Sequential(
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48)
        )
        self.project = nn.Sequential(nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 4)
        self.protected_layers = ("fc",)  # as the zoo's models declare their classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.relu6(self.stem(x))
        h = torch.nn.functional.relu6(self.dw(torch.nn.functional.relu6(self.expand(x))))
        x = x + self.project(h)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.mark.parametrize("peer", ["peer:tp_l2", "peer:tp_taylor"])
def test_peer_pruned_depthwise_model_saves_and_loads(peer: str, tmp_path: Path) -> None:
    """The depthwise conv loses the same positions on both sides: the saved structure must say
    so, or the reloaded conv keeps its old ``groups`` and fails on its narrower weight."""
    torch.manual_seed(0)
    setup = FakeSetup(InvertedResidualNet().eval(), random_data(32), random_data(32), (3, 8, 8))
    report = peers.pruner(peer, config(target_flops=0.5), {})(setup)
    assert 0.5 - 0.01 <= report.flops_reduction <= 0.5 + 0.03  # one channel is ~2% here
    assert setup.model.fc.out_features == 4
    dw = setup.model.dw[0]
    assert dw.out_channels < 48 and dw.groups == dw.in_channels == dw.out_channels
    record = setup.model._prunekit_structure["dw.0"]
    assert record["in"] == record["out"]
    prunekit.save(setup.model, tmp_path / "p.pt")
    loaded = prunekit.load(tmp_path / "p.pt", model=InvertedResidualNet()).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), setup.model(x), rtol=0, atol=0)


class _Head(nn.Linear):
    """A classifier as libraries subclass it (here with a temperature on the logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / 2.0


class UndeclaredNet(InvertedResidualNet):
    """A user's model: no ``protected_layers``, a subclassed classifier, optionally a
    log-softmax over the logits."""

    def __init__(self, log_softmax: bool) -> None:
        super().__init__()
        del self.protected_layers
        self.fc = _Head(16, 4)
        self.log_softmax = log_softmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return torch.nn.functional.log_softmax(out, dim=1) if self.log_softmax else out


@pytest.mark.parametrize("log_softmax", [False, True])
def test_peer_keeps_the_logits_of_a_model_that_declares_nothing(log_softmax: bool) -> None:
    """Torch-Pruning prunes a classifier it is not told to ignore; the peer must find the
    layer that writes the model's output itself, or the pruned model loses classes."""
    torch.manual_seed(0)
    model = UndeclaredNet(log_softmax).eval()
    assert not hasattr(model, "protected_layers")
    setup = FakeSetup(model, random_data(32), random_data(32), (3, 8, 8))
    report = peers.pruner("peer:tp_l2", config(target_flops=0.5), {})(setup)
    assert report.flops_reduction >= 0.49
    assert setup.model.fc.out_features == 4
    assert setup.model(torch.randn(2, 3, 8, 8)).shape == (2, 4)
    assert setup.model.expand[0].out_channels < 48  # the rest is still pruned


def test_taylor_peer_uses_calibration_gradients_where_magnitude_does_not() -> None:
    # channel 0 of c1 has by far the largest weights, but c2 reads nothing from it: its loss
    # gradient is zero, so the Taylor criterion removes it first while group L2 keeps it
    def setup() -> FakeSetup:
        s = conv_bn_setup()
        with torch.no_grad():
            s.model.c1.weight[0].mul_(50.0)
            s.model.b1.weight[0] = 5.0
            s.model.c2.weight[:, 0] = 0.0
        return s

    kept = {}
    for peer in ("peer:tp_l2", "peer:tp_taylor"):
        s = setup()
        peers.pruner(peer, config(target_flops=0.3), {})(s)
        kept[peer] = s.model._prunekit_structure["c1"]["out"]
    assert 0 in kept["peer:tp_l2"]
    assert 0 not in kept["peer:tp_taylor"]


def test_random_peer_follows_the_seed() -> None:
    picks = []
    for seed in (0, 0, 1):
        s = conv_bn_setup()
        peers.pruner("peer:tp_random", config(seed=seed), {})(s)
        picks.append(s.model._prunekit_structure)
    assert picks[0] == picks[1]
    assert picks[0] != picks[2]


def test_bn_peer_refuses_a_model_without_batchnorm() -> None:
    torch.manual_seed(0)
    model = create("mnist1d_cnn", in_channels=1)
    s = FakeSetup(model, None, None, (1, 40))
    with pytest.raises(ConfigError, match="peer:tp_bn ranks channels by BatchNorm scales"):
        peers.pruner("peer:tp_bn", config(model="mnist1d_cnn"), {})(s)


def test_peer_round_to_keeps_widths_multiples() -> None:
    s = conv_bn_setup()
    peers.pruner("peer:tp_l2", config(round_to=4), {})(s)
    widths = [s.model.c1.out_channels, s.model.c2.out_channels, s.model.c3.out_channels]
    assert all(w % 4 == 0 for w in widths), widths
    assert widths != [16, 32, 32]


# ---------------------------------------------------------------------------------- width scaling


def test_width_scaled_is_uniformly_narrower_freshly_initialised_and_trained(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trained: list[Any] = []

    def fake_fit(model: nn.Module, data: Any, cfg: Any, **kw: Any) -> None:
        trained.append((cfg.epochs, cfg.lr, cfg.seed, copy.deepcopy(model.state_dict())))

    monkeypatch.setattr("prunekit.train.fit", fake_fit)
    s = conv_bn_setup()
    dense_c1 = s.model.c1.weight.detach().clone()
    report = peers.pruner("ref:width_scaled", config(epochs=7, lr=0.03, seed=5), {})(s)
    assert abs(report.flops_reduction - 0.5) <= 0.01
    widths = [
        s.model.c1.out_channels / 16,
        s.model.c2.out_channels / 32,
        s.model.c3.out_channels / 32,
    ]
    assert (
        max(widths) - min(widths) <= 2 / 16
    )  # one ratio for all, a channel or two closing the gap
    ((epochs, lr, seed, state),) = trained
    assert (epochs, lr, seed) == (7, 0.03, 5)  # the baseline's schedule, from scratch
    # fresh weights, not the baseline's kept filters
    kept = s.model._prunekit_structure["c1"]["out"]
    assert not torch.allclose(state["c1.weight"], dense_c1[kept])
    assert torch.equal(state["b1.weight"], torch.ones_like(state["b1.weight"]))


# ---------------------------------------------------------------------------------- spec and runner


def test_run_ids_of_specs_without_the_new_fields_are_unchanged() -> None:
    spec = {"name": "p", "models": ["lenet5"], "datasets": ["digits"], "methods": ["hrank"]}
    (run,) = expand(parse_spec(spec))
    old = {k: v for k, v in run.to_dict().items() if k not in peers_fields()}
    assert run.hashed() == old
    assert dataclasses.replace(run, distill_alpha=0.5).id == run.id  # no distillation: unused
    assert dataclasses.replace(run, distill=True).id != run.id
    assert dataclasses.replace(run, baseline=1).baseline_key != run.baseline_key


def peers_fields() -> set[str]:
    return {
        "baseline",
        "distill",
        "distill_temperature",
        "distill_alpha",
        "round_to",
        "latency_runtime",
        "latency_batch",
        "latency_clock",
        "latency_threads",
        "steps",
        "step_epochs",
    }


def test_spec_options_expand_into_runs() -> None:
    spec = {
        "name": "p",
        "models": ["mnist1d_cnn"],
        "datasets": ["mnist1d"],
        "methods": ["fpgm", {"id": "fpgm", "distill": True}, "ref:width_scaled"],
        "targets": {"flops": [0.5]},
        "seeds": [0, 1],
        "baselines_per_seed": 3,
        "finetune": {"epochs": 1, "distill": False, "temperature": 2.0, "alpha": 0.5},
    }
    with pytest.raises(ConfigError, match=r"methods\[0\]: method 'fpgm' .*cannot take round_to"):
        parse_spec({**spec, "round_to": 2}, source="p.yaml")
    spec["methods"] += ["peer:tp_l2"]  # a peer with the same spec: rounded widths fine
    assert {
        r.round_to
        for r in expand(
            parse_spec({**spec, "round_to": 2, "methods": ["peer:tp_l2", "ref:width_scaled"]})
        )
    } == {2}
    runs = expand(parse_spec(spec))
    assert len(runs) == 4 * 2 * 3
    assert {(r.seed, r.baseline) for r in runs} == {(s, b) for s in (0, 1) for b in range(3)}
    assert len({r.baseline_key for r in runs}) == 6
    assert len({r.baseline_seed for r in runs}) == 6
    assert {r.distill for r in runs if r.method == "fpgm"} == {True, False}
    assert {(r.distill_temperature, r.distill_alpha, r.round_to) for r in runs} == {
        (2.0, 0.5, None)
    }
    ref = next(r for r in runs if r.method == "ref:width_scaled")
    pc = dataclasses.replace(ref, round_to=2).prune_config()
    assert (pc.method, pc.round_to, pc.option) == (None, 2, ())
    assert ref.prune_config(for_baseline=True).seed == ref.baseline_seed
    for bad, match in (
        ({"baselines_per_seed": 0}, r"baselines_per_seed: expected an integer >= 1"),
        ({"round_to": "8"}, r"round_to: expected an integer"),
        ({"finetune": {"alpha": 2}}, r"finetune\.alpha: expected a number in \[0, 1\]"),
        (
            {"methods": [{"id": "fpgm", "distill": "yes"}]},
            r"methods\[0\]\.distill: expected true or false",
        ),
    ):
        with pytest.raises(ConfigError, match=match):
            parse_spec({**spec, **bad}, source="p.yaml")


def test_torch_peer_zeroes_the_globally_smallest_weights_by_hand(tmp_path: Path) -> None:
    # |w| of a 1x1 conv: 2, 4, 6, 8; of a Linear: 1, 3, 5, 7. At 50% one global L1 threshold
    # zeroes the four smallest, 1, 2, 3, 4: the conv's first filter and the Linear's first row
    # (a per-layer rule would zero half of each layer alike); the biases stay
    model = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([2.0, -4.0, 6.0, -8.0]).reshape(2, 2, 1, 1))
        model[2].weight.copy_(torch.tensor([[1.0, -3.0], [5.0, -7.0]]))
        model[0].bias.fill_(0.5)
    data = random_data(8, shape=(2, 1, 1), classes=2)
    setup = FakeSetup(model, data, data, (2, 1, 1))
    cfg = workflow.PruneConfig(model="m", data="random", target_sparsity=0.5, batch_size=4)
    report = peers.pruner("peer:torch_l1", cfg, {})(setup)
    assert report.sparsity == 0.5 and report.nonzero_after == 4
    from prunekit import masks

    got = {n: m.data.tolist() for n, m in masks.get_masks(model).items()}
    assert got["0.weight"] == [[[[False]], [[False]]], [[[True]], [[True]]]]
    assert got["2.weight"] == [[False, False], [True, True]]
    assert not any(hasattr(m, "weight_orig") for m in model.modules())  # torch's reparam gone
    assert torch.equal(model[0].bias, torch.full((2,), 0.5))
    with pytest.raises(ConfigError, match="peer:torch_l1 zeroes weights: give it a sparsity"):
        peers.pruner("peer:torch_l1", config(), {})(conv_bn_setup())


def test_spec_gives_the_torch_peer_sparsity_targets_only() -> None:
    spec = parse_spec(
        {
            "name": "u",
            "models": ["lenet5"],
            "datasets": ["digits"],
            "methods": ["magnitude", "peer:torch_l1", "peer:tp_l2"],
            "targets": {"sparsity": [0.5, 0.8], "flops": [0.5]},
            "seeds": [0],
        }
    )
    runs = {(r.method, r.target_kind, r.target) for r in expand(spec)}
    assert ("peer:torch_l1", "sparsity", 0.8) in runs and ("peer:tp_l2", "flops", 0.5) in runs
    assert not any(m == "peer:torch_l1" and kind == "flops" for m, kind, _ in runs)
    config = next(r for r in expand(spec) if r.method == "peer:torch_l1").prune_config()
    assert config.method is None and config.target() == {"target_sparsity": 0.5}


def test_runner_runs_peers_references_and_several_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[str] = []
    real = peers.pruner

    def spy(method_id: str, *args: Any, **kw: Any) -> Any:  # the runner's way in
        called.append(method_id)
        return real(method_id, *args, **kw)

    monkeypatch.setattr(peers, "pruner", spy)
    spec = parse_spec(
        {
            "name": "peers",
            "models": ["lenet5"],
            "datasets": [{"name": "digits", "image_size": 28}],
            "methods": ["peer:tp_l2", "ref:width_scaled"],
            "targets": {"flops": [0.5]},
            "seeds": [0],
            "baselines_per_seed": 2,
            "baseline": {"epochs": 1},
            "finetune": {"epochs": 0},
            "measure": {"latency": False},
        }
    )
    summary = run_spec(spec, tmp_path / "r.sqlite", progress=False)
    assert (summary.total, summary.failed) == (4, 0)
    records = load_records([tmp_path / "r.sqlite"])
    for r in records:
        m = r.metrics
        assert abs(1 - m["flops_after"] / m["flops_before"] - 0.5) <= 0.01, r.config["method"]
    before = {r.config["baseline"]: r.metrics["acc_before"] for r in records}
    assert before[0] != before[1]  # two baselines, trained from two seeds
    assert RunConfig.from_dict(records[0].config).id == records[0].id
    # every run went through its baseline's own pruning, never a stand-in criterion
    assert sorted(called) == ["peer:tp_l2"] * 2 + ["ref:width_scaled"] * 2
    for r in records:  # the reference trained from scratch in its run folder
        scratch = tmp_path / "r-work" / "runs" / r.id / "scratch.pt"
        assert scratch.exists() == (r.config["method"] == "ref:width_scaled")


SPECS = sorted((Path(__file__).parent.parent / "benchmarks" / "specs").glob("*.yaml"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_committed_specs_are_valid(path: Path) -> None:
    from prunekit.bench import load_spec

    assert expand(load_spec(path))


def test_iterative_peer_prunes_in_steps_with_fine_tuning_between(tmp_path: Path) -> None:
    """``steps`` 3 and ``step_epochs`` 1 (Torch-Pruning's ``iterative_steps``): 60% of the FLOPs
    in three equal shares of the dense model, so step 1 asks 20%, step 2 1 - 0.6 / 0.8 = 25% of
    what is left, step 3 1 - 0.4 / 0.6 = 33% (up to the 1% each step may miss by); one
    fine-tuning epoch after each of the first two steps (2 epochs, counted by fit); the
    positions kept over the steps compose into the saved structure, so the saved model loads
    back computing exactly what the pruned one does."""
    from prunekit.train import epochs_trained

    setup = conv_bn_setup()
    asked: list[float] = []

    def once(step: workflow.PruneConfig, folder: Path | None) -> Any:
        asked.append(step.target_flops)
        return peers.pruner("peer:tp_l2", step, {}, folder)(setup)

    start = epochs_trained()
    cfg = config(target_flops=0.6, steps=3, step_epochs=1)
    report = workflow.prune_in_steps(cfg, setup, once, tmp_path)
    assert epochs_trained() - start == 2
    assert sorted(p.name for p in tmp_path.glob("step*.pt")) == ["step1.pt", "step2.pt"]
    assert asked == pytest.approx([0.2, 0.25, 1 / 3], abs=0.02)
    assert abs(report.flops_reduction - 0.6) <= 0.01
    assert report.flops_after == flops(setup.model, setup.shape)
    setup.model.eval()
    prunekit.save(setup.model, tmp_path / "p.pt")
    loaded = prunekit.load(tmp_path / "p.pt", model=ConvBNNet((16, 32, 32), classes=4)).eval()
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), setup.model(x), rtol=0, atol=0)


def test_steps_are_checked_in_configs_and_specs() -> None:
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        workflow.PruneConfig(model="lenet5", method="fpgm", target_flops=0.5, steps=0).validate()
    with pytest.raises(ConfigError, match="not to a sparsity target"):
        workflow.PruneConfig(
            model="lenet5", method="magnitude", target_sparsity=0.5, steps=2
        ).validate()
    spec = {
        "name": "p",
        "models": ["mnist1d_cnn"],
        "datasets": ["mnist1d"],
        "methods": [{"id": "peer:tp_l2", "steps": 4, "step_epochs": 1}, "fpgm"],
    }
    iterative, one_shot = expand(parse_spec(spec))
    assert (iterative.steps, iterative.step_epochs, one_shot.steps) == (4, 1, 1)
    assert "steps" not in one_shot.hashed()  # runs stored before the field keep their ids
    assert iterative.prune_config().steps == 4
    spec["methods"] = [{"id": "ref:width_scaled", "steps": 2}]
    with pytest.raises(ConfigError, match=r"methods\[0\]\.steps: ref:width_scaled does not"):
        parse_spec(spec, source="p.yaml")
