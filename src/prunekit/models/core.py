"""The model registry and the functions that build models from it.

Every model is built through :func:`create`, which validates the arguments once, calls the
registered builder and then attaches the two attributes the rest of prunekit relies on:

* ``protected_layers``: qualified module names whose *outputs* must never be pruned (at least the
  classifier, whose outputs are the classes);
* ``prunekit_arch``: the name and keyword arguments that rebuild the same architecture, so a
  checkpoint only has to store this dict next to the state dict (see :func:`rebuild`).

Builders live in one small module per family and register themselves with ``@MODELS.register``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.registry import Registry

Builder = Callable[..., nn.Module]

MODELS: Registry[Builder] = Registry("model")
"""All registered models. Metadata keys: ``input_size``, ``dims``, ``family``, ``paper``,
``description`` and optionally ``protected`` (defaults to ``("classifier",)``)."""

DEFAULT_PROTECTED: tuple[str, ...] = ("classifier",)
"""Every builder names its final ``nn.Linear`` ``classifier``; this is the default protection."""


@dataclass(frozen=True)
class ModelInfo:
    """What is known about a registered model without building it."""

    name: str
    input_size: tuple[int, ...]
    """Native input size: (H, W) for 2-D models, (length,) for 1-D models."""
    dims: int
    family: str
    paper: str
    description: str


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model; raises :class:`UnknownNameError` for an unknown name."""
    meta = MODELS.entry(name).meta
    return ModelInfo(
        name=name,
        input_size=tuple(meta["input_size"]),
        dims=int(meta["dims"]),
        family=str(meta["family"]),
        paper=str(meta["paper"]),
        description=str(meta["description"]),
    )


def check_positive_int(value: Any, what: str) -> int:
    # bool is an int subclass; ``num_classes=True`` is a bug, not 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value


def as_size(value: int | Sequence[int], dims: int, what: str = "input_size") -> tuple[int, ...]:
    """Normalise an input size to a tuple of ``dims`` positive ints.

    An int means a square image for 2-D models and the length for 1-D models, so callers can pass
    the single number a data set reports.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size: tuple[Any, ...] = (value,) * dims
    elif isinstance(value, Sequence) and not isinstance(value, str):
        size = tuple(value)
    else:
        raise ConfigError(f"{what} must be an int or a sequence of {dims} ints, got {value!r}")
    if len(size) != dims:
        raise ConfigError(f"{what} must have {dims} value(s) for this model, got {value!r}")
    for v in size:
        check_positive_int(v, what)
    return size


def too_small(name: str, input_size: Sequence[int]) -> ConfigError:
    """The error a size-dependent model raises when its features would shrink to nothing."""
    return ConfigError(
        f"input_size {tuple(input_size)} is too small for {name}: "
        "the feature maps shrink to zero before the classifier"
    )


def _accepted_kwargs(builder: Builder) -> set[str] | None:
    """Keyword names a builder accepts beyond num_classes/in_channels (None: anything)."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} - {"num_classes", "in_channels"}


def create(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model and tag it with ``protected_layers`` and ``prunekit_arch``.

    ``input_size`` is accepted for every model so a caller can always pass the size of its data:
    models whose classifier depends on it size their Linear layers from it; models ending in a
    global pooling work at any size and only validate it. Any other unknown keyword is a
    :class:`ConfigError`, so a typo never silently builds a different model.
    """
    entry = MODELS.entry(name)
    check_positive_int(num_classes, "num_classes")
    check_positive_int(in_channels, "in_channels")

    accepted = _accepted_kwargs(entry.obj)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted - {"input_size"})
        if unknown:
            options = ", ".join(sorted(accepted | {"input_size"}))
            raise ConfigError(
                f"model {name!r} does not accept {', '.join(unknown)}; accepted options: {options}"
            )

    build_kwargs = dict(kwargs)
    arch_kwargs: dict[str, Any] = dict(kwargs)
    if "input_size" in kwargs:
        size = as_size(kwargs["input_size"], int(entry.meta["dims"]))
        # a list, not a tuple, so the arch dict survives a JSON round trip unchanged
        arch_kwargs["input_size"] = list(size)
        if accepted is None or "input_size" in accepted:
            build_kwargs["input_size"] = size
        else:
            del build_kwargs["input_size"]

    model = entry.obj(num_classes=num_classes, in_channels=in_channels, **build_kwargs)

    protected = tuple(entry.meta.get("protected", DEFAULT_PROTECTED))
    names = {n for n, _ in model.named_modules()}
    missing = [p for p in protected if p not in names]
    if missing:  # a builder bug, not a user error
        raise RuntimeError(f"model {name!r} declares protected layers it lacks: {missing}")
    model.protected_layers = protected
    model.prunekit_arch = {
        "name": name,
        "kwargs": {"num_classes": num_classes, "in_channels": in_channels, **arch_kwargs},
    }
    return model


def protected_layers(model: nn.Module) -> tuple[str, ...]:
    """Layers of ``model`` that must keep all their output channels.

    Works for any model: users' own models can declare a ``protected_layers`` attribute too.
    """
    return tuple(getattr(model, "protected_layers", ()))


def rebuild(arch: Mapping[str, Any]) -> nn.Module:
    """Build the architecture described by a ``prunekit_arch`` dict (freshly initialised)."""
    if (
        not isinstance(arch, Mapping)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs", {}), Mapping)
    ):
        raise CheckpointError(
            f"an architecture must be a dict with a 'name' string and a 'kwargs' dict, got {arch!r}"
        )
    return create(arch["name"], **dict(arch.get("kwargs", {})))


def init_weights(model: nn.Module) -> None:
    """The usual initialisation: He-normal convolutions, BatchNorm at identity, zero conv biases.

    ``fan_out`` mode follows He et al. (2015) for ReLU networks; Linear layers keep PyTorch's
    default, as the reference implementations of these architectures do.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
