"""Models that are not in the registry: any importable constructor, named ``package.module:factory``.

This is how a user points prunekit at their own model (or one from a model library) without
registering it: ``load_factory("torchvision.models:resnet18")`` imports the module, looks up the
attribute (dotted paths such as ``module:Class.build`` work), calls it with no arguments and
checks that the result is an ``nn.Module``. Every failure is one line naming what was wrong.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from torch import nn

from prunekit.errors import ConfigError

FORM = "'package.module:factory'"


def is_factory_spec(text: str) -> bool:
    """True for ``package.module:factory`` (a registered model name has no colon)."""
    return ":" in text


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Modules in the current folder import as they would in ``python -c`` (the installed
    ``prunekit`` script's own folder, not the working folder, heads ``sys.path``)."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def load_factory(spec: str) -> nn.Module:
    """Import ``module``, look up ``factory`` in it, call it with no arguments, return the model."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise ConfigError(f"model {spec!r}: expected {FORM}, e.g. mypackage.models:build_net")
    try:
        with _cwd_importable():
            obj: object = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or an error raised while the module runs
        raise ConfigError(
            f"model {spec!r}: module {module_name!r} cannot be imported "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    path = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model {spec!r}: {path!r} has no attribute {part!r}")
        obj = getattr(obj, part)
        path = f"{path}.{part}"
    if not callable(obj):
        raise ConfigError(
            f"model {spec!r}: {path!r} is a {type(obj).__name__}, not a function or class "
            "that builds a model"
        )
    try:
        model = obj()
    except Exception as exc:
        raise ConfigError(
            f"model {spec!r}: calling {path}() with no arguments failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model {spec!r}: {path}() returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"1,3,32,32"`` -> ``(1, 3, 32, 32)``: a batch size, then channels (or features) and any
    spatial sizes, all positive integers."""
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(
            f"input shape {text!r}: expected positive integers separated by commas (batch, "
            "channels, then any sizes), e.g. 1,3,32,32"
        )
    return shape
