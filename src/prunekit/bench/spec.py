"""Benchmark specs: a YAML file naming models, data sets, methods, targets and seeds, validated
into dataclasses and expanded into one :class:`RunConfig` per run.

Every error is a :class:`~prunekit.errors.ConfigError` that names the file and the key path of
the bad value, e.g. ``spec.yaml: targets.flops[0]: expected a fraction in (0, 1), got 1.5``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prunekit.errors import ConfigError, PrunekitError
from prunekit.targets import CLOCKS, RUNTIMES, LatencySetting

__all__ = [
    "BaselineSpec",
    "DatasetSpec",
    "FinetuneSpec",
    "MeasureSpec",
    "MethodSpec",
    "RunConfig",
    "Spec",
    "Targets",
    "expand",
    "load_spec",
    "parse_spec",
]

TARGET_KINDS = ("flops", "params", "sparsity", "latency")
KINDS_OF_TYPE = {"S": ("flops", "params", "latency"), "U": ("sparsity",)}

T = TypeVar("T")


# ---------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class DatasetSpec:
    """A data set by registry name, with the input size and the folder of its files."""

    name: str
    image_size: int | None = None
    root: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A catalogue method id with the options given for it (converted to the option's type)."""

    id: str
    options: Mapping[str, Any] = field(default_factory=dict)
    distill: bool | None = None  # None: the spec's finetune.distill
    steps: int = 1  # reach the target in this many steps (prunekit.workflow.prune_in_steps)
    step_epochs: int = 0  # fine-tuning epochs between two steps


@dataclass(frozen=True)
class Targets:
    """Fractions removed: FLOPs, params and measured latency (on the spec's ``latency``
    setting) for structured methods, weights zeroed (sparsity) for unstructured ones."""

    flops: tuple[float, ...] = ()
    params: tuple[float, ...] = ()
    sparsity: tuple[float, ...] = ()
    latency: tuple[float, ...] = ()

    def of_type(self, method_type: str) -> list[tuple[str, float]]:
        """``(kind, fraction)`` pairs for a method of catalogue type ``"S"`` or ``"U"``."""
        return [(kind, v) for kind in KINDS_OF_TYPE[method_type] for v in getattr(self, kind)]


@dataclass(frozen=True)
class BaselineSpec:
    """How each baseline is trained before pruning."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05


@dataclass(frozen=True)
class FinetuneSpec:
    """Fine-tuning after pruning (0 epochs: the pruned model is measured as it is)."""

    epochs: int = 3
    lr: float = 0.01
    distill: bool = False  # learn from the unpruned model (prunekit.train.distill)
    temperature: float = 4.0
    alpha: float = 0.9


@dataclass(frozen=True)
class MeasureSpec:
    """What the runner measures beyond accuracy, size and FLOPs."""

    latency: bool = True
    batch_sizes: tuple[int, ...] = (1, 32)
    onnx: bool = False
    threads: int = 1


def _default_targets() -> Targets:
    return Targets(flops=(0.5,), sparsity=(0.5,))


@dataclass(frozen=True)
class Spec:
    """A whole benchmark: the cross product of models, data sets, methods, targets and seeds.

    Without a ``targets`` section structured methods aim at 50% fewer FLOPs and unstructured ones
    at 50% sparsity; a ``targets`` section lists exactly the targets wanted.
    """

    name: str
    models: tuple[str, ...]
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    targets: Targets = field(default_factory=_default_targets)
    seeds: tuple[int, ...] = (0,)
    baseline: BaselineSpec = field(default_factory=BaselineSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    calib_batches: int = 4
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    baselines_per_seed: int = 1  # several baselines per seed: results averaged over scratches
    round_to: int | None = None  # pruned widths a multiple of this (criteria, peers, references)
    latency: LatencySetting = field(default_factory=LatencySetting)  # of the latency targets
    source: str = field(default="<spec>", compare=False)


@dataclass
class RunConfig:
    """One run of a benchmark, flat and JSON-able; its :attr:`id` is a hash of all its fields."""

    model: str
    data: str
    image_size: int | None
    root: str | None
    seed: int
    method: str
    target_kind: str  # "flops" | "params" | "sparsity" | "latency"
    target: float
    epochs: int
    batch_size: int
    lr: float
    finetune_epochs: int
    finetune_lr: float
    calib_batches: int
    options: dict[str, Any] = field(default_factory=dict)
    baseline: int = 0  # which of the seed's baselines (0 .. baselines_per_seed - 1)
    distill: bool = False
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9
    round_to: int | None = None
    latency_runtime: str = "torch"  # where a latency target is measured
    latency_batch: int = 1
    latency_threads: int = 1
    latency_clock: str = "wall"
    steps: int = 1  # the target reached in this many steps, fine-tuning step_epochs between
    step_epochs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hashed(self) -> dict[str, Any]:
        """:meth:`to_dict` less the later fields left at their defaults (and the distillation
        settings of a run without distillation), so runs stored before those fields existed
        keep their ids."""
        out = without_later_defaults(self.to_dict())
        if not self.distill:
            for key in ("distill_temperature", "distill_alpha"):
                out.pop(key, None)
        return out

    @property
    def baseline_seed(self) -> int:
        """The seed the baseline trains with: the run's seed for the first baseline of a seed,
        a distinct one for each further baseline."""
        return self.seed + 100_003 * self.baseline

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """The config a store record holds (unknown keys are refused)."""
        from prunekit.configs import from_dict

        return from_dict(cls, dict(mapping))

    @property
    def id(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of :meth:`hashed`."""
        return _short_hash(self.hashed())

    @property
    def baseline_key(self) -> str:
        """A hash of the fields that decide the baseline: runs sharing it share one baseline."""
        keys = ("model", "data", "image_size", "root", "seed", "epochs", "batch_size", "lr")
        key = {k: getattr(self, k) for k in keys}
        if self.baseline:
            key["baseline"] = self.baseline
        return _short_hash(key)

    def prune_config(self, *, for_baseline: bool = False) -> Any:
        """This run as a :class:`prunekit.workflow.PruneConfig` (a peer or reference baseline's
        run names no catalogue method: the runner passes its pruning function). With
        ``for_baseline`` the seed is :attr:`baseline_seed`, the one its baseline trains with."""
        from prunekit.bench.peers import is_baseline
        from prunekit.workflow import PruneConfig

        method = None if is_baseline(self.method) else self.method
        return PruneConfig(
            model=self.model,
            data=self.data,
            root=self.root,
            image_size=self.image_size,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.baseline_seed if for_baseline else self.seed,
            method=method,
            target_flops=self.target if self.target_kind == "flops" else None,
            target_params=self.target if self.target_kind == "params" else None,
            target_sparsity=self.target if self.target_kind == "sparsity" else None,
            target_latency=self.target if self.target_kind == "latency" else None,
            **LatencySetting.from_flat(self).flat(),
            calib_batches=self.calib_batches,
            finetune_epochs=self.finetune_epochs,
            finetune_lr=self.finetune_lr,
            option=()
            if method is None
            else tuple(f"{k}={_option_text(v)}" for k, v in sorted(self.options.items())),
            round_to=self.round_to,
            distill=self.distill,
            distill_temperature=self.distill_temperature,
            distill_alpha=self.distill_alpha,
            steps=self.steps,
            step_epochs=self.step_epochs,
        )

    def label(self) -> str:
        extra = (
            (f" baseline {self.baseline}" if self.baseline else "")
            + (" distilled" if self.distill else "")
            + (f" in {self.steps} steps" if self.steps > 1 else "")
        )
        return (
            f"{self.model}/{self.data} {self.method} {self.target_kind}={self.target:g} "
            f"seed {self.seed}{extra}"
        )


_LATER_DEFAULTS: dict[str, Any] = {
    "baseline": 0,
    "distill": False,
    "distill_temperature": 4.0,
    "distill_alpha": 0.9,
    "round_to": None,
    "latency_runtime": "torch",
    "latency_batch": 1,
    "latency_threads": 1,
    "latency_clock": "wall",
    "steps": 1,
    "step_epochs": 0,
}


def without_later_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a run's, as a dict) less the fields added since the first stores were
    written that are left at their defaults: a store written before them holds the same runs
    without the keys."""
    return {
        k: v for k, v in config.items() if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
    }


def _short_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------- expansion


def expand(spec: Spec) -> list[RunConfig]:
    """Every run of ``spec``: models x data sets x methods x targets x seeds, in that order.

    A structured method (catalogue type ``S``) gets the ``flops`` then ``params`` targets, an
    unstructured one (``U``) the ``sparsity`` targets; a method with no target of its type is a
    :class:`ConfigError` naming it.
    """
    from prunekit.bench.peers import is_baseline
    from prunekit.bench.peers import method_type as type_of

    kinds: dict[str, list[tuple[str, float]]] = {}
    for m in spec.methods:
        method_type = type_of(m.id)
        pairs = spec.targets.of_type(method_type)
        if is_baseline(m.id):  # peer and reference baselines prune to FLOPs or params only
            pairs = [(k, t) for k, t in pairs if k != "latency"]
        if not pairs:
            wanted = " or ".join(f"targets.{k}" for k in KINDS_OF_TYPE[method_type])
            kind = "structured" if method_type == "S" else "unstructured"
            raise ConfigError(
                f"{spec.source}: targets: method {m.id!r} is {kind} and needs {wanted}, "
                "which the spec leaves empty"
            )
        kinds[m.id] = pairs
    runs = [
        RunConfig(
            model=model,
            data=ds.name,
            image_size=ds.image_size,
            root=ds.root,
            seed=seed,
            method=m.id,
            target_kind=kind,
            target=target,
            epochs=spec.baseline.epochs,
            batch_size=spec.baseline.batch_size,
            lr=spec.baseline.lr,
            finetune_epochs=spec.finetune.epochs,
            finetune_lr=spec.finetune.lr,
            calib_batches=spec.calib_batches,
            options=dict(m.options),
            baseline=b,
            distill=spec.finetune.distill if m.distill is None else m.distill,
            distill_temperature=spec.finetune.temperature,
            distill_alpha=spec.finetune.alpha,
            round_to=spec.round_to,
            **(spec.latency.flat() if kind == "latency" else {}),
            steps=m.steps,
            step_epochs=m.step_epochs,
        )
        for model in spec.models
        for ds in spec.datasets
        for m in spec.methods
        for kind, target in kinds[m.id]
        for seed in spec.seeds
        for b in range(spec.baselines_per_seed)
    ]
    return runs


# ---------------------------------------------------------------------------------- parsing


def load_spec(path: str | Path) -> Spec:
    """Read and validate the YAML spec at ``path``."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"benchmark spec {path} {what}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    return parse_spec(data, source=str(path))


def parse_spec(mapping: Any, source: str = "<spec>") -> Spec:
    """Validate a spec already read into Python objects (as ``yaml.safe_load`` gives them)."""
    v = _Validator(source)
    top = v.mapping(mapping, "")
    v.keys(top, "", SPEC_KEYS, required=("name", "models", "datasets", "methods"))
    name = v.string(top["name"], "name")
    models = v.items(top["models"], "models", v.model)
    datasets = v.items(top["datasets"], "datasets", v.dataset)
    methods_ = v.items(top["methods"], "methods", v.method)
    kwargs: dict[str, Any] = {}
    if "targets" in top:
        kwargs["targets"] = v.targets(top["targets"], "targets")
    if "seeds" in top:
        kwargs["seeds"] = v.items(top["seeds"], "seeds", lambda x, p: v.integer(x, p, 0))
    if "baseline" in top:
        kwargs["baseline"] = v.section(top["baseline"], "baseline", BaselineSpec, BASELINE_CHECKS)
    if "finetune" in top:
        kwargs["finetune"] = v.section(top["finetune"], "finetune", FinetuneSpec, FINETUNE_CHECKS)
    if "calib_batches" in top:
        kwargs["calib_batches"] = v.integer(top["calib_batches"], "calib_batches", 1)
    if "measure" in top:
        kwargs["measure"] = v.section(top["measure"], "measure", MeasureSpec, MEASURE_CHECKS)
    if "baselines_per_seed" in top:
        kwargs["baselines_per_seed"] = v.integer(top["baselines_per_seed"], "baselines_per_seed", 1)
    if top.get("round_to") is not None:
        kwargs["round_to"] = v.integer(top["round_to"], "round_to", 1)
    if "latency" in top:
        kwargs["latency"] = v.section(top["latency"], "latency", LatencySetting, LATENCY_CHECKS)
    spec = Spec(name, models, datasets, methods_, source=source, **kwargs)
    expand(spec)  # a method without a target of its type fails here, at load time
    if spec.round_to is not None:
        from prunekit.bench.peers import is_baseline

        for i, m in enumerate(spec.methods):
            if not is_baseline(m.id):
                raise v.error(
                    f"methods[{i}]",
                    f"method {m.id!r} chooses its own widths and cannot take round_to "
                    "(round_to applies to the peer and reference baselines)",
                )
    return spec


SPEC_KEYS = (
    "name",
    "models",
    "datasets",
    "methods",
    "targets",
    "seeds",
    "baseline",
    "finetune",
    "calib_batches",
    "measure",
    "baselines_per_seed",
    "round_to",
    "latency",
)


class _Validator:
    """Checks values against what a spec allows; every error names ``source`` and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )

    # ---- shapes

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(path, f"expected a mapping, got {_shown(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.error(path, f"keys must be strings, got {key!r}")
        return value

    def keys(
        self,
        mapping: Mapping[str, Any],
        path: str,
        allowed: Sequence[str],
        required: Sequence[str] = (),
    ) -> None:
        for key in mapping:
            if key not in allowed:
                raise self.error(
                    _join(path, key), f"unknown key (expected one of: {', '.join(allowed)})"
                )
        for key in required:
            if key not in mapping:
                raise self.error(_join(path, key), "required key missing")

    def items(self, value: Any, path: str, check: Callable[[Any, str], T]) -> tuple[T, ...]:
        """A non-empty list, each element checked, no element given twice."""
        if not isinstance(value, list):
            raise self.error(path, f"expected a list, got {_shown(value)}")
        if not value:
            raise self.error(path, "expected a non-empty list")
        out: list[T] = []
        for i, item in enumerate(value):
            checked = check(item, f"{path}[{i}]")
            if checked in out:
                raise self.error(f"{path}[{i}]", f"duplicate of {path}[{out.index(checked)}]")
            out.append(checked)
        return tuple(out)

    def fractions(self, value: Any, path: str) -> tuple[float, ...]:
        """A list of fractions in (0, 1), possibly empty."""
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error(path, f"expected a list of fractions in (0, 1), got {_shown(value)}")
        return self.items(value, path, self.fraction) if value else ()

    # ---- scalars

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(path, f"expected a non-empty string, got {_shown(value)}")
        return value.strip()

    def integer(self, value: Any, path: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(path, f"expected an integer, got {_shown(value)}")
        if minimum is not None and value < minimum:
            raise self.error(path, f"expected an integer >= {minimum}, got {value}")
        return value

    def number(self, value: Any, path: str, *, positive: bool = False) -> float:
        """A finite float; a string YAML did not read as a number (``1e-3``) is converted."""
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if number is None or not math.isfinite(number):
            raise self.error(path, f"expected a number, got {_shown(value)}")
        if positive and number <= 0:
            raise self.error(path, f"expected a number > 0, got {_shown(value)}")
        return number

    def fraction(self, value: Any, path: str) -> float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None or not 0.0 < number < 1.0:
            raise self.error(path, f"expected a fraction in (0, 1), got {_shown(value)}")
        return number

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"expected true or false, got {_shown(value)}")
        return value

    # ---- named things

    def model(self, value: Any, path: str) -> str:
        from prunekit.models import MODELS

        name = self.string(value, path)
        if name not in MODELS:
            raise self.error(path, f"unknown model {name!r} (known: {', '.join(MODELS.names())})")
        return name

    def dataset(self, value: Any, path: str) -> DatasetSpec:
        from prunekit.data import DATASETS

        if isinstance(value, str):
            value = {"name": value}
        mapping = self.mapping(value, path)
        self.keys(mapping, path, ("name", "image_size", "root"), required=("name",))
        name = self.string(mapping["name"], _join(path, "name"))
        if name not in DATASETS:
            raise self.error(
                _join(path, "name"),
                f"unknown data set {name!r} (known: {', '.join(DATASETS.names())})",
            )
        size = mapping.get("image_size")
        if size is not None:
            size = self.integer(size, _join(path, "image_size"), 1)
        root = mapping.get("root")
        if root is not None:
            root = self.string(root, _join(path, "root"))
        root_help = DATASETS.entry(name).meta["root_help"]
        if root is None and root_help is not None:
            raise self.error(
                _join(path, "root"),
                f"data set {name!r} needs a root folder ({{name: {name}, root: DIR}}): {root_help}",
            )
        return DatasetSpec(name, size, root)

    def method(self, value: Any, path: str) -> MethodSpec:
        from prunekit import methods
        from prunekit.bench import peers

        id_path = path if isinstance(value, str) else _join(path, "id")
        if isinstance(value, str):
            value = {"id": value}
        mapping = self.mapping(value, path)
        self.keys(
            mapping, path, ("id", "options", "distill", "steps", "step_epochs"), required=("id",)
        )
        method_id = self.string(mapping["id"], id_path)
        distill = mapping.get("distill")
        if distill is not None:
            distill = self.boolean(distill, _join(path, "distill"))
        steps = self.integer(mapping.get("steps", 1), _join(path, "steps"), 1)
        step_epochs = self.integer(mapping.get("step_epochs", 0), _join(path, "step_epochs"), 0)
        try:
            if peers.is_baseline(method_id):
                method: Any = peers.get(method_id)
            else:
                method = methods.get(method_id)
        except PrunekitError as e:
            raise self.error(id_path, str(e)) from None
        raw = mapping.get("options")
        raw = {} if raw is None else self.mapping(raw, _join(path, "options"))
        options: dict[str, Any] = {}
        for key, val in raw.items():
            key_path = _join(_join(path, "options"), key)
            if not isinstance(val, (str, int, float, bool)):
                raise self.error(key_path, f"expected a number, string or bool, got {_shown(val)}")
            try:
                key = getattr(method, "option_name", lambda k: k)(key)  # renamed options
                options[key] = method.resolve({key: val})[key]
            except ConfigError as e:
                raise self.error(key_path, str(e)) from None
        if steps > 1 and (method_id.startswith("ref:") or peers.method_type(method_id) != "S"):
            raise self.error(
                _join(path, "steps"),
                f"{method_id} does not prune channels to a FLOPs or params target in steps "
                "(steps > 1 is for structured methods and Torch-Pruning's criteria)",
            )
        return MethodSpec(method_id, options, distill, steps, step_epochs)

    def targets(self, value: Any, path: str) -> Targets:
        mapping = self.mapping(value, path)
        self.keys(mapping, path, TARGET_KINDS)
        return Targets(
            **{k: self.fractions(mapping[k], _join(path, k)) for k in TARGET_KINDS if k in mapping}
        )

    def section(
        self,
        value: Any,
        path: str,
        cls: type[T],
        checks: Mapping[str, Callable[[_Validator, Any, str], Any]],
    ) -> T:
        mapping = self.mapping(value, path)
        self.keys(mapping, path, tuple(checks))
        return cls(**{k: checks[k](self, v, _join(path, k)) for k, v in mapping.items()})


def _positive_ints(v: _Validator, value: Any, path: str) -> tuple[int, ...]:
    return v.items(value, path, lambda x, p: v.integer(x, p, 1))


BASELINE_CHECKS: dict[str, Callable[[_Validator, Any, str], Any]] = {
    "epochs": lambda v, x, p: v.integer(x, p, 1),
    "batch_size": lambda v, x, p: v.integer(x, p, 1),
    "lr": lambda v, x, p: v.number(x, p, positive=True),
}
FINETUNE_CHECKS: dict[str, Callable[[_Validator, Any, str], Any]] = {
    "epochs": lambda v, x, p: v.integer(x, p, 0),
    "lr": lambda v, x, p: v.number(x, p, positive=True),
    "distill": lambda v, x, p: v.boolean(x, p),
    "temperature": lambda v, x, p: v.number(x, p, positive=True),
    "alpha": lambda v, x, p: _unit_interval(v, x, p),
}


def _unit_interval(v: _Validator, value: Any, path: str) -> float:
    number = v.number(value, path)
    if not 0.0 <= number <= 1.0:
        raise v.error(path, f"expected a number in [0, 1], got {value!r}")
    return number


MEASURE_CHECKS: dict[str, Callable[[_Validator, Any, str], Any]] = {
    "latency": lambda v, x, p: v.boolean(x, p),
    "batch_sizes": _positive_ints,
    "onnx": lambda v, x, p: v.boolean(x, p),
    "threads": lambda v, x, p: v.integer(x, p, 1),
}


def _one_of(choices: tuple[str, ...]) -> Callable[[_Validator, Any, str], str]:
    def check(v: _Validator, value: Any, path: str) -> str:
        if value not in choices:
            raise v.error(path, f"expected one of {', '.join(choices)}, got {_shown(value)}")
        return str(value)

    return check


LATENCY_CHECKS: dict[str, Callable[[_Validator, Any, str], Any]] = {
    "runtime": _one_of(RUNTIMES),
    "batch": lambda v, x, p: v.integer(x, p, 1),
    "threads": lambda v, x, p: v.integer(x, p, 1),
    "clock": _one_of(CLOCKS),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown(value: Any) -> str:
    if isinstance(value, (Mapping, list)):
        return f"a {type(value).__name__}"
    return "nothing" if value is None else repr(value)
