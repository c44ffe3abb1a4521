"""What a pruning run aims for: one :class:`Target`, a kind and a fraction, validated once.

* ``flops``: the fraction of the dense model's FLOPs removed (structured methods);
* ``params``: the fraction of the dense model's parameters removed (structured methods);
* ``sparsity``: the fraction of all conv / Linear weights set to zero (unstructured methods);
* ``latency``: the fraction of the dense model's *measured* latency removed, on a runtime, batch
  size and thread count (a :class:`LatencySetting`; structured methods). It is met by the same
  channel selection as a FLOPs target, predicted from a per-layer latency table
  (:mod:`prunekit.measure.latency_table`) and verified on the pruned model, so every method that
  takes a FLOPs target takes a latency one.

The runner, the bench and the methods all read the target through this class. The flat form
``{"target_flops": 0.5}`` (:meth:`Target.as_dict`) is what configs, result rows and
:func:`prunekit.prune.select_channels` use; a latency target adds its setting
(``{"target_latency": 0.3, "latency": LatencySetting(...)}``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prunekit.errors import ConfigError

__all__ = ["CLOCKS", "KINDS", "RUNTIMES", "STRUCTURED", "LatencySetting", "Target"]

KINDS: dict[str, str] = {
    "flops": "fraction of the FLOPs removed",
    "params": "fraction of the parameters removed",
    "sparsity": "fraction of the conv / Linear weights zeroed",
    "latency": "fraction of the measured latency removed",
}
STRUCTURED = ("flops", "params", "latency")  # the kinds met by removing channels
RUNTIMES = ("torch", "onnxruntime")
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class LatencySetting:
    """Where a latency is measured: ``runtime`` (``"torch"`` or ``"onnxruntime"``, CPU), the
    ``batch`` size of the input and the number of ``threads``; and on which ``clock``: ``"wall"``
    (elapsed time, what a user waits for) or ``"cpu"`` (the process's CPU time; torch on one
    thread only). On a machine shared with other processes the CPU clock leaves out the time they
    take, so a latency target verified on it is not missed by a slow round. The default (batch
    1, one thread, torch, wall clock) is the setting of ``benchmarks/graph_speed.py``.

    The flat form (:meth:`flat`, :meth:`from_flat`): ``latency_runtime``, ``latency_batch``,
    ``latency_threads`` and ``latency_clock``, the fields of run configs and specs."""

    runtime: str = "torch"
    batch: int = 1
    threads: int = 1
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ConfigError(
                f"latency runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )
        for name in ("batch", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"latency {name} must be a positive int, got {v!r}")
        if self.clock not in CLOCKS:
            raise ConfigError(
                f"latency clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}"
            )
        if self.clock == "cpu" and (self.runtime != "torch" or self.threads != 1):
            raise ConfigError(
                "the cpu latency clock times one torch thread's CPU time: it needs runtime "
                f"'torch' and threads 1, got runtime {self.runtime!r} and {self.threads} thread(s)"
            )

    def __str__(self) -> str:
        clock = ", cpu clock" if self.clock == "cpu" else ""
        return f"{self.runtime}, batch {self.batch}, {self.threads} thread(s){clock}"

    def flat(self) -> dict[str, Any]:
        """``{"latency_runtime": ..., "latency_batch": ..., ...}``: the config fields."""
        return {f"latency_{k}": v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_flat(cls, obj: Any) -> LatencySetting:
        """From an object (or mapping) with the :meth:`flat` fields."""
        get = obj.get if isinstance(obj, Mapping) else lambda k: getattr(obj, k)
        return cls(**{f.name: get(f"latency_{f.name}") for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Target:
    """One pruning target: ``kind`` (a key of :data:`KINDS`) and ``fraction`` in (0, 1); a
    latency target also has its ``setting`` (default :class:`LatencySetting`)."""

    kind: str
    fraction: float
    setting: LatencySetting | None = None

    def __post_init__(self) -> None:
        if self.setting is not None and self.kind != "latency":
            raise ConfigError(f"a latency setting belongs to a latency target, not {self.kind!r}")
        if self.kind == "latency" and self.setting is None:
            object.__setattr__(self, "setting", LatencySetting())
        if self.kind not in KINDS:
            raise ConfigError(
                f"unknown target kind {self.kind!r}; expected one of {', '.join(KINDS)}"
            )
        f = self.fraction
        if (
            isinstance(f, bool)
            or not isinstance(f, (int, float))
            or not math.isfinite(f)
            or not 0.0 < f < 1.0
        ):
            raise ConfigError(
                f"target_{self.kind} must be a fraction in (0, 1) ({KINDS[self.kind]}), got {f!r}"
            )
        object.__setattr__(self, "fraction", float(f))

    # ------------------------------------------------------------------ forms
    @property
    def key(self) -> str:
        """The flat key: ``"target_flops"``, ``"target_params"`` or ``"target_sparsity"``."""
        return f"target_{self.kind}"

    @property
    def structured(self) -> bool:
        """Met by removing channels (FLOPs, params), rather than by zeroing weights."""
        return self.kind in STRUCTURED

    def as_dict(self) -> dict[str, Any]:
        """``{"target_<kind>": fraction}``: the keywords :func:`prunekit.prune.select_channels`
        takes, and the form configs and result rows store; a latency target adds
        ``"latency": setting``."""
        if self.kind == "latency":
            return {self.key: self.fraction, "latency": self.setting}
        return {self.key: self.fraction}

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> Target:
        """From ``{"target_flops": 0.5}`` (exactly one ``target_<kind>`` key) or
        ``{"kind": "flops", "fraction": 0.5}``."""
        if not isinstance(mapping, Mapping):
            raise ConfigError(
                f"a target must be a mapping like {{'target_flops': 0.5}}, got {mapping!r}"
            )
        if set(mapping) == {"kind", "fraction"}:
            return cls(str(mapping["kind"]), mapping["fraction"])
        setting = mapping.get("latency")
        if setting is not None and not isinstance(setting, LatencySetting):
            raise ConfigError(f"latency must be a LatencySetting, got {setting!r}")
        given = {k: v for k, v in mapping.items() if v is not None and k != "latency"}
        if len(given) != 1:
            raise ConfigError(
                "a target has exactly one of "
                + ", ".join(f"target_{k}" for k in KINDS)
                + f"; got {dict(mapping)!r}"
            )
        ((key, value),) = given.items()
        if not str(key).startswith("target_"):
            raise ConfigError(
                f"unknown target {key!r}; expected one of "
                + ", ".join(f"target_{k}" for k in KINDS)
            )
        kind = str(key).removeprefix("target_")
        return cls(kind, value, setting if kind == "latency" else None)

    @classmethod
    def parse(cls, text: str) -> Target:
        """From a command-line or spec string: ``"flops=0.5"`` (also ``"flops:0.5"`` and
        ``"target_flops=0.5"``)."""
        raw = str(text).strip()
        for sep in ("=", ":"):
            kind, found, value = raw.partition(sep)
            if found:
                break
        else:
            raise ConfigError(f"a target is KIND=FRACTION (e.g. 'flops=0.5'), got {text!r}")
        try:
            fraction = float(value)
        except ValueError:
            raise ConfigError(
                f"the fraction of target {text!r} must be a number in (0, 1), got {value!r}"
            ) from None
        return cls(kind.strip().removeprefix("target_"), fraction)

    @classmethod
    def of(cls, value: Target | Mapping[str, Any] | str) -> Target:
        """``value`` as a :class:`Target` (a target, a mapping or a ``KIND=FRACTION`` string)."""
        if isinstance(value, Target):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        return cls.from_mapping(value)

    # ------------------------------------------------------------------ checks
    def require(self, *kinds: str, method: str = "") -> Target:
        """``self`` when its kind is one of ``kinds``, else a ConfigError naming the method and
        the kinds it takes. A method whose widths are chosen by
        :func:`prunekit.prune.select_channels` (or :func:`~prunekit.prune.prune_channels`) with
        :meth:`as_dict` takes ``"latency"`` as well as ``"flops"``."""
        if self.kind not in kinds:
            who = f"method {method!r}" if method else "this method"
            wanted = " or ".join(f"target_{k}" for k in kinds)
            extra = " (it is unstructured)" if kinds == ("sparsity",) else ""
            raise ConfigError(f"{who}{extra} expects a {wanted} target, got {self.key}={self:g}")
        return self

    def __format__(self, spec: str) -> str:
        return format(self.fraction, spec) if spec else str(self)
