"""What a pruning method is in prunekit, the registry that maps catalogue ids to methods, and how
to add one.

A method gets a :class:`Context` (the trained model, example input, data, target, options) and
prunes the model in place: a structured method ends in physical removal through the structural
core and returns a :class:`~prunekit.prune.PruneReport`; an unstructured one leaves masks
attached and returns a :class:`SparsityReport`. Only methods whose code does their paper's
defining computation are registered; every other catalogue entry is listed as planned and refuses
to run.

Adding a method: one file
-------------------------
A method is one file, ``src/prunekit/methods/<id>.py``, named by its catalogue id
(``catalogue.json``); the package imports every such file, and :func:`register_method` refuses a
method defined anywhere else. The file reads top to bottom like the paper's algorithm box:

1. **Module docstring**: the citation, the paper's computation step by step, what is computed
   here, every deviation from the paper, and the source of every default (paper section or the
   authors' official code file). ``docs/fidelity.md`` has the same four headings per method.
2. **Options**: a frozen dataclass deriving from :class:`prunekit.methods.options.Options`, one
   :func:`~prunekit.methods.options.option` per setting with ``help``, ``source`` and bounds.
   Use the shared names (``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``schedule``,
   ``scope``, ``calib_batches``) where they mean the same thing. ``--option KEY=VALUE``, a spec's
   ``options:`` and ``prunekit methods --show <id>`` all read this class; values arrive converted
   and checked, so ``prune`` does not re-validate them.
3. **The computation**: small functions for the paper's equations (each testable on a case small
   enough to work out by hand), composed from the shared machinery rather than copied:
   criteria in :mod:`prunekit.criteria` (activation statistics at the tensor the next layer
   reads), channel selection and removal in :mod:`prunekit.prune`, masks and sparsity schedules
   in :mod:`prunekit.masks`, training through :meth:`Context.train`, least squares and chains in
   :mod:`prunekit.methods.reconstruct` / :mod:`prunekit.methods.common`, re-initialisation in
   :mod:`prunekit.methods.initialisation`, the fine-grained target accounting in
   :mod:`prunekit.methods.fine_grained`. A method that *searches* a channel allocation opens
   :func:`prunekit.methods.search.search_setup` (target, budget, eval modes, graph, groups,
   target keywords) and evaluates its candidates in ``setup.search()`` (budgeted, shown,
   checkpointed, parallel), ending in ``setup.remove(picks)``; ``bo_rates.py`` is the shortest
   example. A method that prunes while it trains writes a
   :class:`prunekit.masks.Pruner` (``prepare / step / state_dict / load_state_dict``, driven by a
   :mod:`prunekit.masks.schedules` schedule; :class:`~prunekit.masks.StraightThroughMask` where
   pruned weights keep learning) and passes it to :meth:`Context.train` as a callback: each
   training phase, named, is then checkpointed with the pruner's state and resumes when a run is
   restarted.
4. **The class**::

       @register_method("my_id")
       class MyMethod(Method):
           # docstring: one paragraph, what it computes

           Options = MyOptions

           def prune(self, ctx: Context) -> PruneReport:
               opts = self.options(ctx)          # a MyOptions instance
               target = ctx.target.require("flops", "params", method=self.id)
               ...

   ``ctx.target`` is a :class:`~prunekit.targets.Target`, validated once; a method checks only
   that its kind fits (:meth:`~prunekit.targets.Target.require`).
5. **Tests**: ``tests/test_every_method.py`` runs every registered method on a residual, a
   depthwise and a plain 1-D network (target reached, report returned, save/load equal) with no
   work from you; add ``tests/test_method_<id>.py`` with a hand-computed case that a magnitude
   rule would get wrong.

Methods that have not moved to an ``Options`` class yet declare a ``defaults`` dict; it is
turned into an ``Options`` class on the fly (types from the default values, no bounds or help).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunekit.errors import CheckpointError, ConfigError
from prunekit.io import atomic_torch_save
from prunekit.methods.catalogue import CatalogueEntry, catalogue, entry
from prunekit.methods.options import Options, from_defaults
from prunekit.prune import PruneReport
from prunekit.registry import Registry
from prunekit.targets import Target
from prunekit.train import Callback, TrainConfig, TrainResult, fit
from prunekit.train import distributed as dist_
from prunekit.train.checkpoint import load_checkpoint
from prunekit.train.loop import LossFn

SCRATCH_FALLBACK = 3  # epochs from initialisation when neither the option nor the run says


def scratch_epochs(value: int | None, ctx: Context) -> int:
    """Epochs of a training phase that starts from the architecture's initialisation: ``value``
    when the user set it; otherwise the run's baseline epochs (:attr:`Context.scratch_epochs`),
    the budget a dense network gets from scratch in the same comparison, so a method that
    trains from scratch is not compared on fewer epochs than the network it replaces; outside a
    run, :data:`SCRATCH_FALLBACK`."""
    if value is not None:
        return value
    return ctx.scratch_epochs if ctx.scratch_epochs is not None else SCRATCH_FALLBACK


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
    work_dir: Path | None = None  # where the method's own training phases checkpoint
    # epochs a network trained from its initialisation gets in this run: the baseline's (the
    # runner sets it); None outside a run, where :func:`scratch_epochs` falls back
    scratch_epochs: int | None = None

    def __post_init__(self) -> None:
        self.target = Target.of(self.target)
        if self.scratch_epochs is not None and self.scratch_epochs < 1:
            raise ConfigError(f"scratch_epochs must be >= 1 or None, got {self.scratch_epochs}")
        if self.work_dir is not None:
            self.work_dir = Path(self.work_dir)

    def train(
        self,
        model: nn.Module,
        epochs: int,
        lr: float,
        *,
        name: str,
        callbacks: Sequence[Callback] = (),
        optimizer: str = "sgd",
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        seed: int | None = None,
        progress: bool = False,
        loss: LossFn | None = None,
    ) -> TrainResult:
        """Train ``model`` in place on the training set: the one way a method trains.

        :func:`prunekit.train.fit` with SGD (``momentum``, ``weight_decay``; ``optimizer="adam"``
        for Adam, where a paper's official code uses it), the learning-rate
        ``schedule`` peaking at ``lr``, the run's batch size and ``seed`` (default: the run's);
        the masks on the model stay attached, so pruned weights stay zero. ``loss(x, logits,
        labels)``, when given, is the per-sample loss in place of cross-entropy (fit's).
        ``callbacks`` are
        fit's (``cb(event, state)``); ``nesterov`` as :class:`~prunekit.train.TrainConfig`'s; a callback with ``state_dict`` / ``load_state_dict`` (an
        in-training pruner, :class:`prunekit.masks.Pruner`) has its state saved with every
        epoch.

        With :attr:`work_dir`, the phase ``name`` checkpoints to ``work_dir/<name>.pt`` after
        every epoch, so a killed run resumes it (and a finished phase is restored, not
        retrained); names must be unique within a method's run. The model goes back to the
        device it came from. ``epochs == 0`` does nothing.
        """
        if epochs < 0:
            raise ConfigError(f"training epochs of {name!r} must be >= 0, got {epochs}")
        if epochs == 0:
            return TrainResult()
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"learning rate of {name!r} must be a finite number > 0, got {lr!r}")
        config = TrainConfig(
            epochs=epochs,
            batch_size=self.batch_size,
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            schedule=schedule,
            seed=self.seed if seed is None else seed,
        )
        callbacks = list(callbacks)
        checkpoint = None
        if self.work_dir is not None:
            checkpoint = self.work_dir / f"{name}.pt"
            stateful = [cb for cb in callbacks if _is_stateful(cb)]
            if stateful:
                callbacks.append(
                    _StateKeeper(stateful, self.work_dir / f"{name}.state.pt", checkpoint)
                )
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        try:
            return fit(
                model,
                self.train_set,
                config,
                checkpoint=checkpoint,
                progress=progress,
                callbacks=callbacks,
                loss=loss,
            )
        finally:
            model.to(device)

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
    # the pruned model starts from the architecture's initialisation (pruning at init): the
    # runner trains it with the baseline's schedule before the common fine-tuning
    at_initialisation: bool = False
    # epochs the method itself trained the network from the architecture's initialisation
    # (0: it pruned the given trained weights); the runner records them as ``from_init_epochs``
    from_init_epochs: int = 0

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


def _is_stateful(callback: Any) -> bool:
    return callable(getattr(callback, "state_dict", None)) and callable(
        getattr(callback, "load_state_dict", None)
    )


class _StateKeeper:
    """A fit callback saving the states of stateful callbacks after every epoch, keyed by epoch
    (the last two kept: fit checkpoints right after the callbacks run, so the checkpoint's epoch
    is always one of them); on creation it loads the states matching an existing checkpoint."""

    def __init__(self, stateful: list[Any], path: Path, checkpoint: Path) -> None:
        self.stateful, self.path = stateful, path
        self.saved: dict[int, list[Any]] = {}
        if checkpoint.exists():
            done = int(load_checkpoint(checkpoint)["epoch"])
            if self.path.exists():
                self.saved = torch.load(self.path, weights_only=True)
            if done not in self.saved:
                raise CheckpointError(
                    f"cannot resume {checkpoint}: {self.path} holds no state for epoch {done} "
                    "of the callbacks that prune during training"
                )
            for cb, state in zip(self.stateful, self.saved[done], strict=True):
                cb.load_state_dict(state)

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event != "epoch_end":
            return
        self.saved[int(state["epoch"])] = [cb.state_dict() for cb in self.stateful]
        for old in sorted(self.saved)[:-2]:
            del self.saved[old]
        if dist_.rank() == 0:
            atomic_torch_save(self.saved, self.path)


def count_nonzero(model: nn.Module) -> int:
    """Non-zero conv / Linear weights of ``model`` (what :class:`SparsityReport` counts)."""
    from prunekit.masks import report

    return int(report(model)["overall"]["nonzero"])


class Method:
    """Base class: subclasses implement :meth:`prune` and are registered under a catalogue id.

    ``Options`` is the method's options dataclass (see the module docstring); a method not yet
    converted lists ``defaults`` instead. :meth:`options` reads ``ctx.options`` through it.
    """

    id: str = ""
    Options: ClassVar[type[Options] | None] = None
    defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def options_class(cls) -> type[Options]:
        """``Options``, or one made from the legacy ``defaults`` dict."""
        if cls.Options is not None:
            return cls.Options
        return from_defaults(cls.id, cls.defaults)

    @classmethod
    def option_name(cls, key: str) -> str:
        """The current name of option ``key`` (an old name maps to its replacement)."""
        return cls.options_class().renamed.get(key, key)

    def options(self, ctx: Context) -> Options:
        """``ctx.options`` over the defaults, converted and bounds-checked (read ``opts.lr`` or
        ``opts["lr"]``)."""
        return self.options_class().from_mapping(ctx.options, self.id)

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated by ``options``, each value converted and checked, as a dict.

        An option the method does not have, or a value of the wrong kind or out of bounds, is a
        :class:`~prunekit.errors.ConfigError` naming it and what was expected. ``progress``
        (show progress bars, default True) is accepted by every method.
        """
        return self.options_class().from_mapping(options, self.id).as_dict()

    @property
    def citation(self) -> CatalogueEntry:
        return entry(self.id)

    def prune(self, ctx: Context) -> PruneReport:
        raise NotImplementedError


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
