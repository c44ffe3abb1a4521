"""Latency as a budget: the per-layer table, its cache, the prediction, the knees, the
verification on the pruned model, and the target's way through configs and specs.

Every timer here is a deterministic cost (no clock): a layer costs ``pad(in) * pad(out) * k*k *
positions`` units, with widths padded up to a multiple of 4 (the "knee" of a kernel that works
on blocks of 4), and the whole model costs the sum over its layers plus ``overhead``."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.measure.latency_table import LatencyMeter, width_grid
from prunekit.prune import prune_channels, select_channels
from prunekit.targets import LatencySetting, Target


def pad(n: int) -> int:
    return math.ceil(n / 4) * 4


def layer_cost(module: nn.Module, x: torch.Tensor) -> float:
    if isinstance(module, nn.Linear):
        return pad(module.in_features) * pad(module.out_features) * 1e-3
    positions = x.shape[2] * x.shape[3]
    k = module.kernel_size[0] * module.kernel_size[1]
    cin = module.in_channels // module.groups
    return pad(cin) * pad(module.out_channels) * k * positions * 1e-3


class Counter:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, module: nn.Module, x: torch.Tensor) -> float:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # the build is killed
        self.calls += 1
        return layer_cost(module, x)


def model_cost(overhead: float = 0.0):
    def time_model(model: nn.Module, inputs) -> float:
        total = [overhead]

        def hook(m, args, out):
            total[0] += layer_cost(m, args[0])

        hooks = [
            m.register_forward_hook(hook)
            for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))
        ]
        try:
            with torch.no_grad():
                model.eval()(inputs if isinstance(inputs, torch.Tensor) else inputs[0])
        finally:
            for h in hooks:
                h.remove()
        return total[0]

    return time_model


class Net(nn.Module):
    """Conv layers called through the functional API in the model's own forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


X = torch.randn(1, 3, 8, 8)


def meter(tmp_path, **kw) -> LatencyMeter:
    kw.setdefault("layer_timer", Counter())
    kw.setdefault("model_timer", model_cost())
    return LatencyMeter(cache_dir=tmp_path, progress=False, **kw)


# ---------------------------------------------------------------------------- table and cache


def test_width_grid_every_width_when_small_else_multiples_of_the_step():
    assert width_grid(5, max_points=8) == [1, 2, 3, 4, 5]
    # 100 channels, 8 points at most, granularity 8: step ceil(100 / 8 / 8) * 8 = 16
    assert width_grid(100, max_points=8, granularity=8) == [16, 32, 48, 64, 80, 96, 100]


def test_granularity_follows_the_vector_width_kernels_block_channels_by(monkeypatch):
    from prunekit.measure import latency_table

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert latency_table.default_granularity() == 16
    assert LatencyMeter(progress=False).granularity == 16
    # 144 channels (a MobileNetV2 width), 32 points: every multiple of 16, never 8 * odd
    assert width_grid(144, 32, 16) == list(range(16, 145, 16))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert latency_table.default_granularity() == 8
    assert width_grid(144, 32, 8) == list(range(8, 145, 8))


def test_table_is_measured_once_then_read_from_the_cache(tmp_path):
    first = meter(tmp_path)
    first.predictor(build(net(), X))
    # conv1: 12 out widths + 3 in widths; conv2: 16 + 12; fc: 5 + 16
    assert first.layer_timer.calls == 12 + 3 + 16 + 12 + 5 + 16
    (cache,) = tmp_path.iterdir()
    assert cache.name.startswith("torch-") and "-b1-t1-" in cache.name
    again = meter(tmp_path)
    again.predictor(build(net(), X))
    assert again.layer_timer.calls == 0
    other = meter(tmp_path, setting=LatencySetting(threads=2))  # another key: measured anew
    other.predictor(build(net(), X))
    assert other.layer_timer.calls == first.layer_timer.calls


def test_an_interrupted_build_keeps_finished_layers_and_resumes(tmp_path):
    killed = meter(tmp_path, layer_timer=Counter(fail_after=20))
    with pytest.raises(KeyboardInterrupt):
        killed.predictor(build(net(), X))
    (cache,) = tmp_path.iterdir()
    assert len(json.loads(cache.read_text())["layers"]) == 1  # conv1 (15 widths) finished
    resumed = meter(tmp_path)
    resumed.predictor(build(net(), X))
    assert resumed.layer_timer.calls == 16 + 12 + 5 + 16  # conv2 and fc only


# ---------------------------------------------------------------------------- prediction


def test_prediction_equals_the_timed_pruned_model(tmp_path):
    """The stub cost is separable (pad(in) * pad(out)), so the table's product form is exact:
    the prediction of any selection is the pruned model's timed cost."""
    model = net()
    graph = build(model, X)
    predictor = meter(tmp_path).predictor(graph)
    assert predictor.predict(()) == pytest.approx(model_cost()(model, X))
    g1, g2 = graph.groups[0], graph.groups[1]
    picks = {g1.name: [0, 1, 2, 3, 4], g2.name: [3, 7, 8]}
    roots = [g1.units[i] for i in picks[g1.name]] + [g2.units[i] for i in picks[g2.name]]
    assert predictor.predict(roots) == pytest.approx(predictor.measure(picks))
    # conv1 3->7 (pad 8), conv2 7->13 (pad 8 x 16), fc 13->5 (pad 16 x 8), 8x8 positions
    expected = (4 * 8 * 9 * 64 + 8 * 16 * 9 * 64 + 16 * 8) * 1e-3
    assert predictor.measure(picks) == pytest.approx(expected)


def test_snap_moves_a_width_to_the_fastest_at_or_above(tmp_path):
    graph = build(net(), X)
    predictor = meter(tmp_path).predictor(graph)
    g1 = graph.groups[0]  # conv1's 12 outputs, read by conv2
    assert predictor.snap(g1, 5) == 8  # 5..8 cost the same (one block of 4 more): the wider
    assert predictor.snap(g1, 4) == 4
    assert predictor.snap(g1, 9) == 12
    assert predictor.snap(g1, 12) == 12


def test_unmeasured_widths_cost_their_padded_block(tmp_path):
    """Between measured widths a blocked kernel computes whole blocks: with block 16 and widths
    16, 32, 64 measured at 1, 2 and 4 ms, 20 channels cost what 32 cost (2), 40 what 48 costs
    (3, read between 32 and 64), 16 its measurement; before padding, 20 read 1.25."""
    from prunekit.measure.latency_table import _Curve, padded

    assert (padded(20, 16, 64), padded(40, 16, 64), padded(60, 16, 50), padded(0, 16, 64)) == (
        32,
        48,
        50,
        0,
    )
    curve = _Curve.of({"16": 1.0, "32": 2.0, "64": 4.0}, block=16)
    assert [curve(w) for w in (16, 20, 32, 40, 64)] == [1.0, 2.0, 2.0, 3.0, 4.0]
    assert _Curve.of({"16": 1.0, "32": 2.0, "64": 4.0})(20) == 1.25  # block 1: linear
    # the snap: conv1's 12 outputs measured at 8 and 12 only (2 points, block 8): 9 channels
    # cost the padded 12, so the tie goes to the wider; 8 is measured and cheaper, and stays
    graph = build(net(), X)
    predictor = meter(tmp_path, max_points=2, granularity=8).predictor(graph)
    g1 = graph.groups[0]
    assert width_grid(12, 2, 8) == [8, 12]
    assert predictor.snap(g1, 9) == 12
    assert predictor.snap(g1, 8) == 8


def test_latency_target_is_met_on_knee_widths_and_reported(tmp_path):
    model = net()
    report = prune_channels(model, X, target_latency=0.6, latency=meter(tmp_path))
    check = report.latency
    assert check.measured_ms == pytest.approx(model_cost()(model, X))
    assert abs(check.measured_reduction - 0.6) <= 0.02
    assert check.predicted_ms == pytest.approx(check.measured_ms)
    assert all(g.after % 4 == 0 for g in report.groups)  # every width on a knee
    assert model(X).shape == (1, 5)
    assert set(report.as_dict()) >= {"latency_budget_predicted_ms", "latency_budget_measured_ms"}


def test_global_scope_spends_importance_per_millisecond(tmp_path):
    """Half of conv1 (6 of 12) saves conv1 4x(12-8)x9x64 + conv2 (12-8)x16x9x64 units = 46.08,
    7.68 per unit; half of conv2 (8 of 16) saves conv2 12x8x9x64 + fc 8x8 = 55.36, 6.92 per
    unit. With equal scores the units of conv1 go first: a third of the latency is conv1's
    first knee (12 -> 8), conv2 untouched."""
    graph = build(net(), X)
    predictor = meter(tmp_path).predictor(graph)
    costs = predictor.unit_costs()
    assert costs == {"conv1": pytest.approx(7.68), "conv2": pytest.approx(6.92)}
    picks = select_channels(
        graph,
        target_latency=0.33,
        latency=predictor,
        scope="global",
        importance=lambda g: torch.ones(g.size),
    )
    assert {k: len(v) for k, v in picks.items()} == {"conv1": 4}
    assert predictor.last.measured_reduction == pytest.approx(1 - 92.288 / 138.368)


def test_a_flops_target_lands_off_the_knees_where_latency_does_not(tmp_path):
    """The same amount removed by FLOPs leaves widths that are not multiples of 4: cost paid
    for channels that were removed anyway (the gap the latency target closes)."""
    model = net()
    prune_channels(model, X, target_flops=0.5)
    widths = [model.conv1.out_channels, model.conv2.out_channels]
    assert any(w % 4 for w in widths)


def test_verification_corrects_a_prediction_that_misses(tmp_path):
    """Timed cost = layers + a constant 50 units, which the table takes for activations and
    scales down with the pruned widths: the prediction is optimistic, so one selection removes
    too little; the measured miss raises the goal and the next selection lands closer."""
    once = meter(tmp_path, model_timer=model_cost(50.0), rounds=1)
    single = prune_channels(net(), X, target_latency=0.5, latency=once).latency
    assert single.predicted_reduction >= 0.5
    assert 0.5 - single.measured_reduction > 0.02  # the prediction alone falls short
    checked = meter(tmp_path, model_timer=model_cost(50.0), rounds=3)
    verified = prune_channels(net(), X, target_latency=0.5, latency=checked).latency
    assert verified.rounds > 1
    # this net's knees allow few latencies: the verified one is the closest of them
    assert abs(verified.measured_reduction - 0.5) < abs(single.measured_reduction - 0.5)


def test_pruning_to_a_latency_target_preserves_outputs_of_zeroed_channels(tmp_path):
    """Zeroing the selected channels, then removing them, leaves the outputs unchanged."""
    model = net().double()
    graph = build(model, X.double())
    picks = select_channels(
        graph, target_latency=0.4, latency=meter(tmp_path).predictor(graph, X.double())
    )
    for name, idx in picks.items():
        graph.group(name).zero(idx)
    before = model(X.double())
    from prunekit.prune import selection_roots

    graph.remove(selection_roots(graph, picks))
    assert torch.allclose(model(X.double()), before, atol=1e-9, rtol=0)


# ---------------------------------------------------------------------------- target plumbing


def test_latency_target_forms_and_errors():
    t = Target.parse("latency=0.3")
    assert t.kind == "latency" and t.setting == LatencySetting("torch", 1, 1)
    assert t.structured
    assert t.require("flops", "params", "latency") is t
    with pytest.raises(ConfigError, match="expects a target_flops or target_params target"):
        t.require("flops", "params", method="taylor")
    assert t.as_dict() == {"target_latency": 0.3, "latency": LatencySetting()}
    assert Target.from_mapping(t.as_dict()) == t
    with pytest.raises(ConfigError, match="runtime"):
        LatencySetting("tvm")
    with pytest.raises(ConfigError, match="threads"):
        LatencySetting(threads=0)
    with pytest.raises(ConfigError, match="target_latency"):
        select_channels(build(net(), X), target_flops=0.5, latency=LatencySetting())


def test_prune_config_and_spec_carry_the_latency_setting():
    from prunekit.bench.spec import expand, parse_spec
    from prunekit.workflow import PruneConfig

    cfg = PruneConfig(target_latency=0.3, latency_runtime="onnxruntime", latency_threads=2)
    assert cfg.target() == {"target_latency": 0.3}
    assert cfg.target_object().setting == LatencySetting("onnxruntime", 1, 2)
    spec = parse_spec(
        {
            "name": "s",
            "models": ["resnet20"],
            "datasets": ["digits"],
            "methods": ["l1_filter"],
            "targets": {"flops": [0.5], "latency": [0.3]},
            "latency": {"runtime": "onnxruntime", "threads": 2},
        }
    )
    flops, latency = expand(spec)
    assert (flops.target_kind, latency.target_kind) == ("flops", "latency")
    assert flops.hashed() == {k: v for k, v in flops.hashed().items() if "latency" not in k}
    target = latency.prune_config().target_object()
    assert target == Target("latency", 0.3, LatencySetting("onnxruntime", 1, 2))
    with pytest.raises(ConfigError, match=r"latency\.runtime"):
        parse_spec({**spec_dict(), "latency": {"runtime": "tvm"}})


def test_the_clock_is_part_of_the_setting_from_cli_to_spec():
    """The cpu clock (process CPU time) travels from the CLI config and the spec to the target,
    is refused where it cannot measure (another runtime, several threads), and a latency spec
    that does not name it keeps its run ids."""
    from prunekit.bench.spec import expand, parse_spec
    from prunekit.workflow import PruneConfig

    cpu = LatencySetting(clock="cpu")
    assert str(cpu) == "torch, batch 1, 1 thread(s), cpu clock"
    assert LatencySetting.from_flat(cpu.flat()) == cpu
    assert PruneConfig(target_latency=0.3, latency_clock="cpu").target_object().setting == cpu
    with pytest.raises(
        ConfigError, match=r"cpu latency clock .* needs runtime 'torch' and threads 1"
    ):
        LatencySetting("onnxruntime", clock="cpu")
    with pytest.raises(ConfigError, match="threads 1"):
        LatencySetting(threads=2, clock="cpu")
    with pytest.raises(ConfigError, match="latency clock must be one of wall, cpu"):
        LatencySetting(clock="gpu")
    (plain,) = expand(parse_spec(spec_dict()))
    assert "latency_clock" not in plain.hashed()  # ids of stores written before the field
    (timed,) = expand(parse_spec({**spec_dict(), "latency": {"clock": "cpu"}}))
    assert timed.id != plain.id
    assert timed.prune_config().target_object().setting == cpu
    with pytest.raises(ConfigError, match=r"latency\.clock: expected one of wall, cpu"):
        parse_spec({**spec_dict(), "latency": {"clock": "sun"}})


class Sleeper(nn.Module):
    """Waits without computing: the wall clock sees the wait, the process's CPU clock does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.002)
        return x


def test_the_cpu_clock_leaves_out_time_the_process_does_not_run(tmp_path):
    from prunekit.measure.latency_table import measure_model

    x = torch.zeros(1, 3)
    wall = measure_model(Sleeper(), x, LatencySetting(), min_run_time=0.01)
    cpu = measure_model(Sleeper(), x, LatencySetting(clock="cpu"), min_run_time=0.01)
    assert wall >= 2.0
    assert cpu < 1.0
    # the meter times layers and verifies on its setting's clock, and caches per clock
    assert "-cpu-" in meter(tmp_path, setting=LatencySetting(clock="cpu")).cache_file().name
    assert "-cpu-" not in meter(tmp_path).cache_file().name


def spec_dict() -> dict:
    return {
        "name": "s",
        "models": ["resnet20"],
        "datasets": ["digits"],
        "methods": ["l1_filter"],
        "targets": {"latency": [0.3]},
    }


FAST = {
    "l1_filter": {"sensitivity_ratios": "0.25,0.5,0.75"},
    "fpgm": {},
    "hrank": {},
    "slimming": {"sparsity_epochs": 1},
    "flexible_rate": {"step": 0.25},
    "thinet": {},
}


def _structured() -> list:
    from prunekit import methods

    out = []
    for name in methods.METHODS.names():
        if methods.entry(name).type != "S":
            continue
        marks = [] if name in FAST else [pytest.mark.slow]
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("method", _structured())
def test_structured_methods_take_a_latency_target(method, tmp_path, monkeypatch):
    """Methods whose widths are chosen by select_channels meet a latency target through it (the
    stub timers stand in for the clock through the default meter); the others refuse it with
    a clear error."""
    from prunekit import methods
    from prunekit.measure import latency_table

    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(
        latency_table, "_torch_layer_timer", lambda setting, run, clock="wall": Counter()
    )
    monkeypatch.setattr(latency_table, "measure_model", lambda m, x, s, **kw: model_cost()(m, x))
    model = net()
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,)))
    ctx = methods.Context(
        model,
        X,
        data,
        data,
        Target("latency", 0.4),
        calib_batches=1,
        batch_size=8,
        options=_options(method),
    )
    try:
        report = methods.get(method).prune(ctx)
    except ConfigError as e:  # a method whose widths are not chosen by select_channels
        assert method not in FAST
        assert "expects a target_flops or target_params target, got target_latency" in str(e)
        return
    dense = model_cost()(net(), X)
    reduction = 1 - model_cost()(model, X) / dense
    assert reduction >= 0.4 - 0.02  # met, or passed by the knee step of this tiny net
    assert report.groups
    if report.latency is not None:  # the figures of the last latency-targeted selection
        assert report.latency.measured_reduction >= 0.4 - 0.02


def _options(method: str) -> dict:
    """``FAST``, or the shortest settings ``tests/test_every_method.py`` runs a method with."""
    if method in FAST:
        return {"progress": False, **FAST[method]}
    from prunekit import methods

    every = {"epochs": 1, "soft_epochs": 1, "finetune_steps": 1, "candidates": 2}
    known = set(methods.METHODS.get(method).options_class().__dataclass_fields__)
    return {"progress": False, **{k: v for k, v in every.items() if k in known}}


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Conv2d(5, 7, 3, stride=2, padding=1), torch.randn(1, 5, 9, 9)),
        (nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), torch.randn(1, 6, 8, 8)),
        (nn.Linear(5, 3), torch.randn(2, 5)),
    ],
)
def test_onnxruntime_times_a_one_node_graph_computing_the_layer(layer, x):
    """The onnxruntime table times each width as a one-node ONNX graph: it computes the layer."""
    ort = pytest.importorskip("onnxruntime")
    from prunekit.measure.latency_table import _onnx_node

    session = ort.InferenceSession(_onnx_node(layer, x), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"X": x.numpy()})
    assert torch.allclose(torch.from_numpy(got), layer(x).detach(), atol=1e-5)
