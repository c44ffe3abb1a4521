"""What a pruning method is in prunekit, and the registry that maps catalogue ids to methods.

A method gets a :class:`Context` (the trained model, example input, data, target) and prunes the
model in place, ending in physical removal through the structural core. Only methods whose code
does their paper's defining computation are registered; every other catalogue entry is listed as
planned and refuses to run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunekit.errors import ConfigError
from prunekit.methods.catalogue import CatalogueEntry, catalogue, entry
from prunekit.prune import PruneReport
from prunekit.registry import Registry
from prunekit.targets import Target


@dataclass
class Context:
    """Everything a method may use. ``target`` is the run's :class:`~prunekit.targets.Target`:
    a FLOPs or params fraction to remove for a structured method, a sparsity (the fraction of
    conv / Linear weights to zero) for an unstructured one. A mapping such as
    ``{"target_flops": 0.5}`` is accepted and converted (and validated) on construction."""

    model: nn.Module
    example_input: torch.Tensor
    train_set: Dataset[Any]
    val_set: Dataset[Any]
    target: Target
    calib_batches: int = 4
    batch_size: int = 64
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.target = Target.of(self.target)

    def calibration(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``calib_batches`` batches of a seeded shuffle of the training set (the same
        on every run and every rank, so data-driven scores agree)."""
        g = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)
        return list(itertools.islice(iter(loader), self.calib_batches))


@dataclass
class SparsityReport:
    """What an unstructured (fine-grained) method did: the conv / Linear weights of the model,
    how many are non-zero before and after, and the overall sparsity reached. The masks stay on
    the model (parametrizations keep pruned weights at zero while the runner fine-tunes);
    :func:`prunekit.masks.finalize` bakes them in."""

    params: int
    nonzero_before: int
    nonzero_after: int
    layers: dict[str, float] = field(default_factory=dict)  # weight name -> sparsity

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_after / self.params if self.params else 0.0

    @classmethod
    def measure(cls, model: nn.Module, nonzero_before: int) -> SparsityReport:
        """The report of ``model`` as it is now (``nonzero_before`` counted beforehand with
        :func:`count_nonzero`)."""
        from prunekit.masks import report

        rep = report(model)
        overall = rep["overall"]
        return cls(
            params=int(overall["params"]),
            nonzero_before=nonzero_before,
            nonzero_after=int(overall["nonzero"]),
            layers={k: float(v["sparsity"]) for k, v in rep["layers"].items()},
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "params": self.params,
            "nonzero_before": self.nonzero_before,
            "nonzero_after": self.nonzero_after,
            "sparsity": self.sparsity,
        }


def count_nonzero(model: nn.Module) -> int:
    """Non-zero conv / Linear weights of ``model`` (what :class:`SparsityReport` counts)."""
    from prunekit.masks import report

    return int(report(model)["overall"]["nonzero"])


class Method:
    """Base class: subclasses implement :meth:`prune` and are registered under a catalogue id.

    ``defaults`` lists the method's options with their default values (the paper's, where the
    paper gives one; the docstring says which); :meth:`options` merges ``ctx.options`` over them.
    """

    id: str = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def options(self, ctx: Context) -> dict[str, Any]:
        """:meth:`resolve` of ``ctx.options``."""
        return self.resolve(ctx.options)

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``defaults`` updated by ``options``, each value converted to its default's type.

        An option the method does not have, or a value of the wrong kind, is a
        :class:`~prunekit.errors.ConfigError` naming it and what was expected. ``progress``
        (show progress bars, default True) is accepted by every method.
        """
        known = {"progress": True, **self.defaults}
        out = dict(known)
        for key, value in options.items():
            if key not in known:
                raise ConfigError(
                    f"method {self.id!r} has no option {key!r}; its options: "
                    + (", ".join(f"{k}={v!r}" for k, v in known.items()))
                )
            default = known[key]
            try:
                value = _convert(value, default)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"option {key!r} of method {self.id!r} expects {type(default).__name__} "
                    f"(default {default!r}), got {value!r}"
                ) from None
            out[key] = value
        return out

    @property
    def citation(self) -> CatalogueEntry:
        return entry(self.id)

    def prune(self, ctx: Context) -> PruneReport:
        raise NotImplementedError


def _convert(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (a string from the command line, or a number)."""
    if isinstance(default, bool):
        return _to_bool(value)
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(default, int):
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    if isinstance(default, float):
        return float(value)
    return value if default is None else type(default)(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


METHODS: Registry[type[Method]] = Registry("pruning method")


def register_method(method_id: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator registering a :class:`Method` under its catalogue id (which must exist)."""

    def decorator(cls: type[Method]) -> type[Method]:
        entry(method_id)  # an id outside the catalogue is a programming error, caught at import
        if cls.__module__.startswith("prunekit.methods.") and cls.__module__ != (
            f"prunekit.methods.{method_id}"
        ):
            raise TypeError(
                f"method {method_id!r} must be defined in prunekit/methods/{method_id}.py, "
                f"not in {cls.__module__}"
            )
        cls.id = method_id
        METHODS.add(method_id, cls)
        return cls

    return decorator


def get(method_id: str) -> Method:
    """An instance of the method registered as ``method_id``.

    A catalogue id that is not implemented yet is refused: nothing else runs in its place.
    """
    if method_id not in METHODS:
        known = {e.id for e in catalogue()}
        if method_id in known:
            raise ConfigError(
                f"method {method_id!r} is in the catalogue but not implemented yet; "
                f"implemented: {', '.join(METHODS.names())}"
            )
        return METHODS.get(method_id)()  # raises UnknownNameError listing the implemented ones
    return METHODS.get(method_id)()


def list_methods() -> list[tuple[CatalogueEntry, str]]:
    """Every catalogue entry with its status: ``implemented`` or ``planned``."""
    return [(e, "implemented" if e.id in METHODS else "planned") for e in catalogue()]


def iter_implemented() -> Iterator[type[Method]]:
    return (e.obj for e in METHODS)
