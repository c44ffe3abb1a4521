"""Per-layer latency measured per width, and the latency of a pruned model predicted from it.

A latency target (``target_latency``) needs the latency of a candidate selection long before any
surgery. This module measures once, per layer, how its latency moves with its width, and
predicts a whole model from those curves:

* **The table.** Every Conv1d/2d/3d (``groups`` 1, or depthwise) and Linear layer is timed alone
  on its real input shape (batch set to the setting's), once with its output width swept over a
  grid and its input width whole, once the other way round (a depthwise conv has one width).
  The grid holds every width up to :attr:`LatencyMeter.max_points`, else multiples of a step
  that is itself a multiple of :attr:`LatencyMeter.granularity` (the fp32 vector width the
  CPU's kernels block channels by: 16 on AVX-512, else 8; :func:`default_granularity`), always
  with the full width. Identical layers are timed once.
* **The timing.** Each width is the fastest block of ``torch.utils.benchmark``'s blocked
  autorange (on a shared machine the slower blocks hold other processes' time), on the wall
  clock or, with the setting's ``clock="cpu"`` (torch, one thread), the process's CPU time.
* **The cache.** Curves are kept on disk, one JSON file per runtime, machine (CPU model,
  architecture, runtime version), batch size and thread count, keyed by the layer's signature
  (type, widths, kernel, stride, padding, input shape); every finished layer is written at once
  (atomic replace), so an interrupted build resumes and other models reuse what is there.
* **The prediction.** A layer with kept widths ``(i, o)`` costs ``t_out(o) * t_in(i) / t_full``
  (each curve read at a measured width, else at the width padded to the channel block and
  linearly between measured widths: blocked kernels compute whole blocks, so 22 channels cost
  what 32 cost). Whatever the table does not hold
  (normalisation, activations, additions, pooling) is the dense model's measured latency less
  the table's layers; it is scaled by the fraction of the layers' output elements kept. The
  sum is rescaled so that the dense model predicts its measured latency exactly.
* **The knees.** Real kernels are not linear in the width: a width just past a vector multiple
  can be slower than the next multiple. :meth:`LatencyPredictor.snap` moves a group's kept width
  to the fastest measured or block-padded width at or above it (the latency of every layer the group touches,
  the other widths whole; ties go to the wider).

``layer_timer(module, x) -> ms`` and ``model_timer(model, inputs) -> ms`` are injectable, so
the logic can be tested with a deterministic cost; the defaults time with
``torch.utils.benchmark`` (torch runtime) or onnxruntime (a one-node ONNX graph per layer; the
whole model exported through :func:`prunekit.export.onnx_latency`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.io import atomic_write_json
from prunekit.measure._inputs import Inputs, as_args
from prunekit.targets import LatencySetting

__all__ = [
    "LatencyCheck",
    "LatencyMeter",
    "LatencyPredictor",
    "default_cache_dir",
    "default_granularity",
    "measure_model",
    "width_grid",
]

LayerTimer = Callable[[nn.Module, torch.Tensor], float]
ModelTimer = Callable[[nn.Module, Inputs], float]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORMAT = 2  # of the cache files: tables timed as the fastest block


def default_cache_dir() -> Path:
    """``$PRUNEKIT_CACHE/latency``, else ``$XDG_CACHE_HOME/prunekit/latency``, else
    ``~/.cache/prunekit/latency``."""
    root = os.environ.get("PRUNEKIT_CACHE")
    if root:
        return Path(root) / "latency"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit" / "latency"


def default_granularity() -> int:
    """fp32 lanes of the vector unit torch dispatches to: 16 on AVX-512, 8 otherwise (AVX2; on
    ARM two NEON registers). oneDNN's and MLAS's blocked layouts pad channels to this multiple,
    so widths between two multiples cost as much as the next one."""
    return 16 if torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512") else 8


def width_grid(size: int, max_points: int = 32, granularity: int = 8) -> list[int]:
    """The widths a layer of ``size`` channels is timed at: all of them up to ``max_points``,
    else multiples of a step (a multiple of ``granularity``) and ``size`` itself."""
    if size <= max_points:
        return list(range(1, size + 1))
    step = math.ceil(size / max_points / granularity) * granularity
    return sorted({*range(step, size, step), size})


def _machine(setting: LatencySetting) -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if setting.runtime == "onnxruntime":
        import onnxruntime

        version = f"onnxruntime {onnxruntime.__version__}"
    else:
        version = f"torch {torch.__version__}"
    return f"{cpu} | {platform.machine()} | {version}"


# ------------------------------------------------------------------------------------ timers


def _fastest(timer: Any, min_run_time: float) -> float:
    """The fastest block of ``torch.utils.benchmark``'s blocked autorange, in ms: on a shared
    machine every slower block holds time taken by other processes."""
    return min(timer.blocked_autorange(min_run_time=min_run_time).times) * 1e3


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _torch_layer_timer(setting: LatencySetting, min_run_time: float) -> LayerTimer:
    import torch.utils.benchmark as tbench

    def time_it(module: nn.Module, x: torch.Tensor) -> float:
        with torch.no_grad():
            module(x)
            timer = tbench.Timer(
                stmt="m(x)",
                globals={"m": module, "x": x},
                num_threads=setting.threads,
                timer=CLOCKS[setting.clock],
            )
            return _fastest(timer, min_run_time)

    return time_it


def _onnx_node(module: nn.Module, x: torch.Tensor) -> Any:
    """A one-node ONNX model computing ``module`` (a conv or Linear) on inputs shaped as ``x``."""
    from onnx import TensorProto, helper, numpy_helper

    w = module.weight.detach().float().numpy()
    inits = [numpy_helper.from_array(w, "W")]
    names = ["X", "W"]
    if module.bias is not None:
        inits.append(numpy_helper.from_array(module.bias.detach().float().numpy(), "B"))
        names.append("B")
    y = module(x)
    if isinstance(module, nn.Linear):
        inits[0] = numpy_helper.from_array(np.ascontiguousarray(w.T), "W")
        node = helper.make_node("MatMul", ["X", "W"], ["M" if module.bias is not None else "Y"])
        nodes = [node]
        if module.bias is not None:
            nodes.append(helper.make_node("Add", ["M", "B"], ["Y"]))
    else:
        pad = module.padding
        if isinstance(pad, str):
            pad = (
                tuple(0 for _ in module.kernel_size)
                if pad == "valid"
                else tuple(
                    d * (k - 1) // 2
                    for k, d in zip(module.kernel_size, module.dilation, strict=True)
                )
            )
        nodes = [
            helper.make_node(
                "Conv",
                names,
                ["Y"],
                kernel_shape=list(module.kernel_size),
                strides=list(module.stride),
                pads=list(pad) * 2,
                dilations=list(module.dilation),
                group=module.groups,
            )
        ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y.shape))],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_layer_timer(setting: LatencySetting, min_run_time: float) -> LayerTimer:
    import onnxruntime as ort
    import torch.utils.benchmark as tbench

    def time_it(module: nn.Module, x: torch.Tensor) -> float:
        options = ort.SessionOptions()
        options.intra_op_num_threads = setting.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        with torch.no_grad():
            blob = _onnx_node(module, x)
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        feed = {"X": x.numpy()}
        session.run(None, feed)
        timer = tbench.Timer(
            stmt="run(None, feed)",
            globals={"run": session.run, "feed": feed},
            num_threads=setting.threads,
            timer=CLOCKS[setting.clock],  # the wall clock: the cpu one is refused here
        )
        return _fastest(timer, min_run_time)

    return time_it


def measure_model(
    model: nn.Module,
    inputs: Inputs,
    setting: LatencySetting,
    *,
    min_run_time: float = 0.5,
) -> float:
    """Latency in ms of ``model`` on ``inputs`` cut or repeated to the setting's batch, on its
    runtime and thread count: the fastest timed block (torch; see :func:`_fastest`), the median
    run (onnxruntime, :func:`prunekit.export.onnx_latency`). The setting's ``clock="cpu"``
    (torch, one thread) times the process's CPU time instead of the wall clock: on a machine
    shared with other processes it leaves out the time they take."""
    from prunekit.measure.summary import batch_of

    args = batch_of(as_args(inputs), setting.batch)
    if setting.runtime == "onnxruntime":
        from prunekit.export import onnx_latency

        return onnx_latency(
            model,
            args,
            batch_sizes=(setting.batch,),
            threads=setting.threads,
            min_run_time=min_run_time,
            reuse=True,
        )[setting.batch]
    import torch.utils.benchmark as tbench

    from prunekit.measure._inputs import inference

    with inference(model):
        for _ in range(2):  # warm-up
            model(*args)
        timer = tbench.Timer(
            stmt="model(*args)",
            globals={"model": model, "args": args},
            num_threads=setting.threads,
            timer=CLOCKS[setting.clock],
        )
        return _fastest(timer, min_run_time)


# ------------------------------------------------------------------------------------ layers


@dataclass
class _Layer:
    """One timed layer of a graph: its site name, signature, widths and how to build it."""

    site: str
    key: str
    cin: int
    cout: int
    depthwise: bool
    make: Callable[[int, int], tuple[nn.Module, torch.Tensor]]
    out_elems: int  # output elements per sample at full width, per output channel


def _layer(graph: Any, name: str, batch: int) -> _Layer | None:
    site = graph.sites[name]
    m = site.module
    if not site.calls or not isinstance(m, (*_CONVS, nn.Linear)):
        return None
    shape = site.calls[0].in_shapes[0] if site.calls[0].in_shapes else None
    if shape is None or len(shape) < 2:
        return None
    shape = (batch, *shape[1:])
    if isinstance(m, nn.Linear):
        cin, cout, depthwise = m.in_features, m.out_features, False
        if shape[-1] != cin:
            return None

        def make(i: int, o: int) -> tuple[nn.Module, torch.Tensor]:
            return nn.Linear(i, o, bias=m.bias is not None), torch.randn(*shape[:-1], i)

        out_elems = math.prod(shape[1:-1]) if len(shape) > 2 else 1
        spec = f"linear:{cin}x{cout}:b{int(m.bias is not None)}"
    else:
        cin, cout, groups = m.in_channels, m.out_channels, m.groups
        depthwise = groups > 1 and groups == cin == cout
        if groups > 1 and not depthwise:
            return None
        kind = type(m)
        kw = {
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "dilation": m.dilation,
            "bias": m.bias is not None,
        }

        def make(i: int, o: int) -> tuple[nn.Module, torch.Tensor]:
            layer = kind(i, o, groups=i if depthwise else 1, **kw)
            return layer, torch.randn(shape[0], i, *shape[2:])

        with torch.no_grad():
            probe = m(torch.zeros(1, *shape[1:], dtype=m.weight.dtype, device=m.weight.device))
        out_elems = math.prod(probe.shape[2:])
        spec = (
            f"{kind.__name__.lower()}:{cin}x{cout}:{'dw' if depthwise else 'g1'}:k{m.kernel_size}"
            f":s{m.stride}:p{m.padding}:d{m.dilation}:b{int(m.bias is not None)}"
        )
    key = f"{spec}:in{list(shape)}"
    return _Layer(name, key, cin, cout, depthwise, make, out_elems * len(site.calls))


def padded(w: int, block: int, size: int) -> int:
    """``w`` rounded up to a multiple of ``block`` (at most ``size``): the width a blocked kernel
    computes when asked for ``w`` channels."""
    return min(size, math.ceil(w / block) * block) if w > 0 else 0


@dataclass
class _Curve:
    """Latency over one width: a measured width reads its measurement; any other is first
    padded to the channel block (:func:`padded`: kernels compute whole blocks, so 22 channels
    cost what 32 cost), then read piecewise linearly between the measured widths."""

    widths: np.ndarray
    ms: np.ndarray
    block: int = 1

    def __call__(self, w: int) -> float:
        if w not in self._measured:
            w = padded(w, self.block, int(self.widths[-1]))
        return float(np.interp(w, self.widths, self.ms))

    def __post_init__(self) -> None:
        self._measured = {int(v) for v in self.widths}

    @classmethod
    def of(cls, points: dict[str, float], block: int = 1) -> _Curve:
        items = sorted((int(k), float(v)) for k, v in points.items())
        w = np.array([0] + [k for k, _ in items], dtype=np.float64)
        t = np.array([0.0] + [v for _, v in items], dtype=np.float64)
        return cls(w, t, block)


# ------------------------------------------------------------------------------------ meter


@dataclass
class LatencyCheck:
    """One latency-targeted selection: the dense model's measured latency, the prediction for
    the selection, and the pruned model's measured latency (ms), with the setting."""

    setting: LatencySetting
    dense_ms: float
    predicted_ms: float
    measured_ms: float | None = None
    rounds: int = 1

    @property
    def predicted_reduction(self) -> float:
        return 1.0 - self.predicted_ms / self.dense_ms

    @property
    def measured_reduction(self) -> float | None:
        return None if self.measured_ms is None else 1.0 - self.measured_ms / self.dense_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_budget_runtime": self.setting.runtime,
            "latency_budget_batch": self.setting.batch,
            "latency_budget_threads": self.setting.threads,
            "latency_budget_clock": self.setting.clock,
            "latency_budget_dense_ms": self.dense_ms,
            "latency_budget_predicted_ms": self.predicted_ms,
            "latency_budget_measured_ms": self.measured_ms,
        }


@dataclass
class LatencyMeter:
    """How latency is measured and predicted for a ``target_latency``: the setting, the timers
    (default: the runtime's), the table's grid and cache, and the verification.

    ``verify``: after the prediction has chosen a selection, a copy of the model is pruned and
    timed; if its measured reduction misses the target by more than ``tolerance`` the
    predicted goal is corrected by the miss and the selection redone, at most ``rounds`` times.
    """

    setting: LatencySetting = field(default_factory=LatencySetting)
    layer_timer: LayerTimer | None = None
    model_timer: ModelTimer | None = None
    cache_dir: Path | str | None = None
    use_cache: bool = True
    max_points: int = 32
    granularity: int = field(default_factory=default_granularity)
    min_run_time: float = 0.05  # seconds per layer width (torch.utils.benchmark autorange)
    model_run_time: float = 1.0  # seconds per whole-model measurement
    verify: bool = True
    rounds: int = 3
    pairs: int = 2  # dense / pruned timings alternated per verification
    tolerance: float = 0.02
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.setting, LatencySetting):
            raise ConfigError(f"setting must be a LatencySetting, got {self.setting!r}")
        for name in ("max_points", "granularity", "rounds", "pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"LatencyMeter.{name} must be a positive int, got {v!r}")
        if not 0 <= self.tolerance < 1:
            raise ConfigError(f"LatencyMeter.tolerance must be in [0, 1), got {self.tolerance}")

    @classmethod
    def of(cls, value: LatencyMeter | LatencySetting | None) -> LatencyMeter:
        if isinstance(value, LatencyMeter):
            return value
        if value is None:
            return cls()
        if isinstance(value, LatencySetting):
            return cls(setting=value)
        raise ConfigError(f"latency must be a LatencySetting or a LatencyMeter, got {value!r}")

    # ---------------------------------------------------------------- timing
    def time_layer(self, module: nn.Module, x: torch.Tensor) -> float:
        if self.layer_timer is None:
            make = (
                _onnx_layer_timer if self.setting.runtime == "onnxruntime" else _torch_layer_timer
            )
            self.layer_timer = make(self.setting, self.min_run_time)
        return float(self.layer_timer(module, x))

    def time_model(self, model: nn.Module, inputs: Inputs) -> float:
        if self.model_timer is not None:
            return float(self.model_timer(model, inputs))
        return measure_model(model, inputs, self.setting, min_run_time=self.model_run_time)

    # ---------------------------------------------------------------- cache
    def cache_file(self) -> Path | None:
        if not self.use_cache:
            return None
        folder = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        s = self.setting
        machine = hashlib.sha256(_machine(s).encode()).hexdigest()[:12]
        clock = "" if s.clock == "wall" else f"-{s.clock}"
        return folder / f"{s.runtime}-{machine}-b{s.batch}-t{s.threads}{clock}-v{_FORMAT}.json"

    def _load(self) -> dict[str, Any]:
        path = self.cache_file()
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a damaged cache is rebuilt, never trusted
        return data.get("layers", {}) if isinstance(data, dict) else {}

    def _save(self, layers: dict[str, Any]) -> None:
        path = self.cache_file()
        if path is None:
            return
        merged = {**self._load(), **layers}  # another process may have added layers meanwhile
        atomic_write_json(
            {"machine": _machine(self.setting), "setting": vars(self.setting), "layers": merged},
            path,
        )

    # ---------------------------------------------------------------- table
    def table(self, layers: Iterable[_Layer]) -> dict[str, dict[str, dict[str, float]]]:
        """``{layer key: {"out": {width: ms}, "in": {width: ms}}}`` for ``layers``, from the
        cache where it holds them, else measured (with a progress bar) and cached."""
        from tqdm.auto import tqdm

        known = self._load()
        todo: dict[str, _Layer] = {}
        for layer in layers:
            if layer.key not in known:
                todo.setdefault(layer.key, layer)
        if not todo:
            return known
        points = sum(
            len(width_grid(lay.cout, self.max_points, self.granularity))
            + (0 if lay.depthwise else len(width_grid(lay.cin, self.max_points, self.granularity)))
            for lay in todo.values()
        )
        bar = tqdm(
            total=points,
            desc=f"latency table ({self.setting})",
            unit="width",
            disable=not self.progress,
        )
        new: dict[str, Any] = {}
        try:
            for key, lay in todo.items():
                entry: dict[str, dict[str, float]] = {"out": {}, "in": {}}
                for o in width_grid(lay.cout, self.max_points, self.granularity):
                    module, x = lay.make(o if lay.depthwise else lay.cin, o)
                    entry["out"][str(o)] = self.time_layer(module.eval(), x)
                    bar.update()
                if lay.depthwise:
                    entry["in"] = dict(entry["out"])
                else:
                    for i in width_grid(lay.cin, self.max_points, self.granularity):
                        module, x = lay.make(i, lay.cout)
                        entry["in"][str(i)] = self.time_layer(module.eval(), x)
                        bar.update()
                new[key] = entry
                known[key] = entry
                self._save(new)  # every finished layer is kept: an interrupted build resumes
        finally:
            bar.close()
        return known

    def predictor(self, graph: Any, inputs: Inputs | None = None) -> LatencyPredictor:
        """A :class:`LatencyPredictor` for ``graph`` (built on the model and ``inputs``, default
        the graph's own): its table built or loaded, its dense model timed."""
        inputs = graph.inputs if inputs is None else inputs
        layers = [
            lay for n in graph.sites if (lay := _layer(graph, n, self.setting.batch)) is not None
        ]
        table = self.table(layers)
        dense = self.time_model(graph.model, inputs)
        if not dense > 0:
            raise ConfigError(f"the dense model's measured latency must be > 0 ms, got {dense!r}")
        return LatencyPredictor(graph, layers, table, dense, self, inputs)


class LatencyPredictor:
    """Predicted latency of ``graph``'s model without some units, and the knees of each group;
    see the module docstring."""

    def __init__(
        self,
        graph: Any,
        layers: list[_Layer],
        table: dict[str, Any],
        dense_ms: float,
        meter: LatencyMeter,
        inputs: Inputs,
    ) -> None:
        self.graph = graph
        self.layers = layers
        self.meter = meter
        self.inputs = inputs
        self.dense_ms = float(dense_ms)
        block = meter.granularity
        self.curves = {
            lay.key: (
                _Curve.of(table[lay.key]["in"], block),
                _Curve.of(table[lay.key]["out"], block),
            )
            for lay in layers
        }
        self.last: LatencyCheck | None = None
        full = self._layers_ms({})
        self._full_layers = full
        self._rest = max(0.0, self.dense_ms - full)
        self._elems = sum(lay.cout * lay.out_elems for lay in layers)
        self._knees: dict[tuple[str, int], int] = {}

    @property
    def setting(self) -> LatencySetting:
        return self.meter.setting

    def _cost(self, lay: _Layer, i: int, o: int) -> float:
        t_in, t_out = self.curves[lay.key]
        if lay.depthwise:
            return t_out(o)
        full = t_out(lay.cout)
        return t_out(o) * t_in(i) / full if full > 0 else 0.0

    def _kept(self, removed: Iterable[int]) -> dict[str, dict[str, int]]:
        removed = np.fromiter(removed, dtype=np.int64)
        kept: dict[str, dict[str, int]] = {}
        for lay in self.layers:
            site = self.graph.sites[lay.site]
            for side in ("in", "out"):
                arr = getattr(site, f"{side}_labels")
                if arr is not None and len(arr) and len(removed):
                    roots = self.graph._roots(site.name, side, arr)
                    kept.setdefault(lay.site, {})[side] = int((~np.isin(roots, removed)).sum())
        return kept

    def _layers_ms(self, kept: dict[str, dict[str, int]]) -> float:
        total = 0.0
        for lay in self.layers:
            k = kept.get(lay.site, {})
            total += self._cost(lay, k.get("in", lay.cin), k.get("out", lay.cout))
        return total

    def predict(self, removed: Iterable[int] = ()) -> float:
        """Predicted latency (ms) of the model without the units whose roots are ``removed``."""
        kept = self._kept(removed)
        layers = self._layers_ms(kept)
        elems = sum(
            kept.get(lay.site, {}).get("out", lay.cout) * lay.out_elems for lay in self.layers
        )
        share = elems / self._elems if self._elems else 1.0
        raw = layers + self._rest * share
        dense_raw = self._full_layers + self._rest
        return self.dense_ms * raw / dense_raw if dense_raw > 0 else self.dense_ms

    def unit_costs(self) -> dict[str, float]:
        """Milliseconds one unit of each group saves: the predicted saving of removing half the
        group (its first units; at least one), per unit removed."""
        dense = self.predict(())
        out = {}
        for g in self.graph.groups:
            half = g.units[: max(1, g.size // 2)] if g.size > 1 else []
            out[g.name] = (dense - self.predict(half)) / len(half) if half else 0.0
        return out

    def snap(self, group: Any, keep: int) -> int:
        """The fastest width of ``group`` at or above ``keep`` among the measured ones and
        ``keep`` padded to the channel block (ties: the wider), timing every table layer the
        group's channels cross with the other widths whole."""
        if keep >= group.size:
            return group.size
        cached = self._knees.get((group.name, keep))
        if cached is not None:
            return cached
        touched = []
        units = set(group.units)
        for lay in self.layers:
            site = self.graph.sites[lay.site]
            for side in ("in", "out"):
                arr = getattr(site, f"{side}_labels")
                if arr is None or not len(arr):
                    continue
                hit = int(np.isin(self.graph._roots(site.name, side, arr), list(units)).sum())
                if hit:
                    touched.append((lay, side, hit // group.size, len(arr)))
        if not touched:
            return keep
        grid = width_grid(group.size, self.meter.max_points, self.meter.granularity)
        keep_padded = padded(keep, self.meter.granularity, group.size)  # costs what keep costs
        best, best_ms = group.size, math.inf
        for w in sorted({keep, keep_padded, *(v for v in grid if v >= keep)}, reverse=True):
            ms = 0.0
            for lay, side, per_unit, full in touched:
                gone = (group.size - w) * per_unit
                i = full - gone if side == "in" else lay.cin
                o = full - gone if side == "out" else lay.cout
                if lay.depthwise:
                    i = o = min(i, o)
                ms += self._cost(lay, i, o)
            if ms < best_ms - 1e-12:
                best, best_ms = w, ms
        self._knees[(group.name, keep)] = best
        return best

    def measure(self, picks: dict[str, list[int]]) -> float:
        """Measured latency (ms) of a copy of the model (and its graph) with ``picks`` removed:
        timed in alternation with the dense model (``meter.pairs`` times each), the ratio of the
        medians times :attr:`dense_ms`, so a change of the machine's load between the dense
        timing and this one cancels out."""
        from prunekit.prune import selection_roots

        memo: dict[int, Any] = {}
        for site in self.graph.sites.values():  # the tracer behind each call: shared, not copied
            for call in site.calls:
                owner = getattr(call.record_fn, "__self__", None)
                if owner is not None:
                    memo[id(owner)] = owner
        trial = copy.deepcopy(self.graph, memo)
        roots = selection_roots(trial, picks)
        if roots:
            trial.remove(roots)
        dense, pruned = [], []
        for _ in range(self.meter.pairs):  # alternate: a load change hits both alike
            dense.append(self.meter.time_model(self.graph.model, self.inputs))
            pruned.append(self.meter.time_model(trial.model, self.inputs))
        return float(np.median(pruned)) / float(np.median(dense)) * self.dense_ms
