"""Dataclass configs as command-line options, plain dicts, and stable run names.

A config dataclass is the single place where an option is declared: its field type and default,
and ``metadata={"help": ...}``. The CLI derives its flags from it and every run saves it beside its
results; the hash of the non-default fields names the run folder, so a rerun of the same command
resumes instead of starting over.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

from prunekit.errors import ConfigError

C = TypeVar("C")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple


def _base(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()
) -> None:
    """Add one ``--flag`` per field of the dataclass ``cls`` (underscores become dashes).

    Flags default to ``None`` so :func:`config_from_args` can tell what the user actually set.
    """
    hints = _field_types(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        choices = f.metadata.get("choices")
        if tp is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif _is_tuple(tp):
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            group.add_argument(
                flag, type=item, nargs="+", default=None, metavar=f.name.upper(), help=help_text
            )
        else:
            group.add_argument(
                flag, type=tp, default=None, choices=choices, metavar=f.name.upper(), help=help_text
            )


def config_from_args(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build ``cls`` from parsed flags; fields the user did not set keep ``overrides`` or defaults."""
    values = dict(overrides)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild ``cls`` from :func:`to_dict`'s output; an unknown key is an error naming it."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
    hints = _field_types(cls)
    values = {
        k: tuple(v) if _is_tuple(_base(hints[k])) and isinstance(v, list) else v
        for k, v in data.items()
    }
    return cls(**values)


def non_default(config: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from their defaults."""
    out = {}
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = getattr(config, f.name)
        if value != default:
            out[f.name] = value
    return out


def run_hash(*parts: Any, length: int = 10) -> str:
    """A short stable hash of JSON-serialisable parts (dataclasses hashed by non-default fields)."""
    norm = [non_default(p) if dataclasses.is_dataclass(p) else p for p in parts]
    blob = json.dumps(norm, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
