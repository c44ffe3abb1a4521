"""A method's options as a dataclass: typed fields with help text, bounds and the source of each
default.

A method declares ``class Options(options.Options)`` with one :func:`option` per setting::

    @dataclass(frozen=True)
    class Options(options.Options):
        epochs: int = option(3, help="sparsity-training epochs", source="paper Sec. 4.2", low=0)
        lr: float = option(0.01, help="learning rate", source="official main.py", low=0,
                           low_open=True)

Everything that reads options goes through it: ``--option KEY=VALUE`` on the command line (a
string, converted here), a spec's ``options:`` mapping (numbers, strings, booleans) and
``prunekit methods --show ID`` (the table of :meth:`Options.describe`). Conversion and bounds are
checked once, in :meth:`Options.from_mapping`; a bad value is a
:class:`~prunekit.errors.ConfigError` naming the option and what it expects.

Options with the same meaning use the same name in every method (:data:`SHARED`): ``epochs``,
``lr``, ``momentum``, ``weight_decay``, ``schedule``, ``scope``, ``calib_batches``, ``progress``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from prunekit.errors import ConfigError

__all__ = ["SHARED", "OptionInfo", "Options", "from_defaults", "option"]

SHARED: dict[str, str] = {
    "epochs": "epochs of the method's own training phase",
    "lr": "learning rate of the method's own training phase",
    "momentum": "SGD momentum of that phase",
    "weight_decay": "weight decay of that phase",
    "schedule": "learning-rate schedule of that phase (prunekit.train.schedules)",
    "scope": "'layer': the same rate in every layer; 'global': one ranking over all layers",
    "calib_batches": "batches of calibration data a data-driven score reads",
    "progress": "show progress bars",
}

OptionsT = TypeVar("OptionsT", bound="Options")


def option(
    default: Any,
    *,
    help: str,
    source: str = "",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field for an :class:`Options` subclass.

    ``help``: what the option does; ``source``: where the default comes from (a paper section or
    an official code file; "prunekit" for the library's own choices); ``low`` / ``high``: bounds,
    inclusive unless ``low_open`` / ``high_open``; ``choices``: the allowed values.
    """
    meta = {
        "help": help,
        "source": source,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
        "choices": tuple(choices) if choices is not None else None,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``methods --show`` lists it."""

    name: str
    type: str
    default: Any
    help: str
    source: str
    bounds: str


@dataclass(frozen=True)
class Options(Mapping[str, Any]):
    """Base of every method's options. Read them as attributes (``opts.lr``) or by key
    (``opts["lr"]``, for code written against the older dict form)."""

    # old option names still accepted, mapped to their new names (specs written before a rename)
    renamed: ClassVar[dict[str, str]] = {}

    progress: bool = option(True, help=SHARED["progress"], source="prunekit")

    # ------------------------------------------------------------------ reading
    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._names()}

    def non_default(self) -> dict[str, Any]:
        """The options whose value differs from the default."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        }

    # ------------------------------------------------------------------ building
    @classmethod
    def from_mapping(
        cls: type[OptionsT], values: Mapping[str, Any], method_id: str = ""
    ) -> OptionsT:
        """The options with ``values`` (strings from the command line, or spec values) over the
        defaults, each converted to its field's type and checked against its bounds."""
        who = f" of method {method_id!r}" if method_id else ""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        out: dict[str, Any] = {}
        for key, value in values.items():
            key = cls.renamed.get(key, key)
            if key not in fields:
                known = ", ".join(f"{k}={f.default!r}" for k, f in fields.items())
                raise ConfigError(
                    f"method {method_id!r} has no option {key!r}; its options: {known}"
                )
            f = fields[key]
            try:
                converted = convert(value, hints[key], f.default)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"option {key!r}{who} expects {_type_name(hints[key], f.default)} "
                    f"(default {f.default!r}), got {value!r}"
                ) from None
            _check_bounds(key, who, converted, f.metadata)
            out[key] = converted
        return cls(**out)

    @classmethod
    def describe(cls) -> list[OptionInfo]:
        """Every option: name, type, default, help, the default's source and its bounds."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            rows.append(
                OptionInfo(
                    f.name,
                    _type_name(hints[f.name], f.default),
                    f.default,
                    f.metadata.get("help", ""),
                    f.metadata.get("source", ""),
                    _bounds_text(f.metadata),
                )
            )
        return rows


# ---------------------------------------------------------------------- conversion
def convert(value: Any, hint: Any, default: Any) -> Any:
    """``value`` as the type ``hint`` (``bool``, ``int``, ``float``, ``str`` or one of them
    ``| None``); a string ``"none"`` gives None where None is allowed."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is Any:
        return value
    if hint is bool:
        return _to_bool(value)
    if isinstance(value, bool):
        raise ValueError(value)
    if hint is int:
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if hint is float:
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise TypeError(value)
        return str(value)
    return value


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _type_name(hint: Any, default: Any) -> str:
    args = typing.get_args(hint)
    if args:
        return " | ".join(getattr(a, "__name__", str(a)).replace("NoneType", "None") for a in args)
    if hint is Any:
        return type(default).__name__ if default is not None else "any"
    return getattr(hint, "__name__", str(hint))


def _bounds_text(meta: Mapping[str, Any]) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(map(str, meta["choices"]))
    low, high = meta.get("low"), meta.get("high")
    if low is None and high is None:
        return ""
    left = "(" if meta.get("low_open") or low is None else "["
    right = ")" if meta.get("high_open") or high is None else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def _check_bounds(key: str, who: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"option {key!r}{who} must be one of {', '.join(map(str, choices))}; got {value!r}"
        )
    low, high = meta.get("low"), meta.get("high")
    if value is None or (low is None and high is None):
        return
    ok = isinstance(value, (int, float)) and not (
        isinstance(value, float) and not math.isfinite(value)
    )
    if ok and low is not None:
        ok = value > low if meta.get("low_open") else value >= low
    if ok and high is not None:
        ok = value < high if meta.get("high_open") else value <= high
    if not ok:
        raise ConfigError(f"option {key!r}{who} must be in {_bounds_text(meta)}, got {value!r}")


# ---------------------------------------------------------------------- legacy dicts
_GENERATED: dict[tuple[str, tuple[tuple[str, Any], ...]], type[Options]] = {}


def from_defaults(method_id: str, defaults: Mapping[str, Any]) -> type[Options]:
    """An :class:`Options` class for a method still declaring a ``defaults`` dict: each field
    takes its default's type (no bounds, no help), so the dict form converts and lists as
    before until the method declares its own class."""
    key = (method_id, tuple((k, repr(v)) for k, v in defaults.items()))
    if key not in _GENERATED:
        specs = []
        for name, default in defaults.items():
            kind: Any = Any if default is None else type(default)
            specs.append((name, kind, option(default, help="", source="")))
        _GENERATED[key] = dataclasses.make_dataclass(
            f"{method_id.title().replace('_', '')}Options",
            specs,
            bases=(Options,),
            frozen=True,
            namespace={"__module__": __name__},
        )
    return _GENERATED[key]
