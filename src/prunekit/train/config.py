"""The training configuration: every knob of :func:`prunekit.train.fit`, validated once.

The fields are plain ``int``/``float``/``str``/``bool``/``tuple[float, ...]`` with a ``help``
entry in their metadata, so the CLI can turn each one into a ``--flag`` without a second list of
options. This module deliberately does not use ``from __future__ import annotations``:
``dataclasses.fields`` then reports real types (``int``, ``float`` ...) that a flag generator can
use directly.
"""

import itertools
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from prunekit.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "cosine", "linear")

# Fields that cannot change the trained weights, so a resumed run may differ in them.
RESULT_NEUTRAL_FIELDS = frozenset({"device", "eval_every"})


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """How to train: optimisation, schedule, seed, device and data loading.

    ``batch_size`` is the global batch: under DDP each of the ``world_size`` ranks gets
    ``batch_size // world_size`` samples per step, so a run means the same thing on any number of
    processes. Invalid values raise :class:`~prunekit.errors.ConfigError` naming the field.
    """

    epochs: int = field(default=10, metadata=_help("number of passes over the training set"))
    batch_size: int = field(
        default=128,
        metadata=_help("global batch size (split evenly across ranks under DDP)"),
    )
    optimizer: str = field(
        default="sgd", metadata=_help("optimizer: sgd or adam", choices=OPTIMIZERS)
    )
    lr: float = field(default=0.1, metadata=_help("peak learning rate"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (ignored by adam)"))
    nesterov: bool = field(default=False, metadata=_help("use Nesterov momentum (sgd only)"))
    weight_decay: float = field(default=5e-4, metadata=_help("L2 weight decay coefficient"))
    schedule: str = field(
        default="cosine",
        metadata=_help(
            "learning-rate schedule: constant, step, cosine or linear", choices=SCHEDULES
        ),
    )
    milestones: tuple[float, ...] = field(
        default=(0.5, 0.75),
        metadata=_help("for the step schedule: fractions of training at which lr *= gamma"),
    )
    gamma: float = field(default=0.1, metadata=_help("for the step schedule: lr multiplier"))
    warmup_epochs: int = field(
        default=0, metadata=_help("epochs of linear learning-rate warm-up from ~0")
    )
    label_smoothing: float = field(
        default=0.0, metadata=_help("label smoothing of the cross-entropy loss, in [0, 1)")
    )
    seed: int = field(default=0, metadata=_help("seed for init-independent randomness"))
    device: str = field(
        default="auto", metadata=_help("device: auto (cuda if available), cpu, cuda, cuda:N")
    )
    amp: bool = field(
        default=False, metadata=_help("mixed precision (float16 autocast); CUDA only")
    )
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes"))
    eval_every: int = field(
        default=1, metadata=_help("evaluate on the validation set every N epochs (and last)")
    )

    def __post_init__(self) -> None:
        self._check_types()
        _check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "in [0, 1)")
        if self.nesterov:
            _check(self.optimizer == "sgd", "nesterov", self.nesterov, "False with adam")
            _check(self.momentum > 0, "nesterov", self.nesterov, "False when momentum is 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(self.schedule in SCHEDULES, "schedule", self.schedule, f"one of {SCHEDULES}")
        ms = self.milestones
        _check(
            all(0 < m < 1 for m in ms) and all(a < b for a, b in itertools.pairwise(ms)),
            "milestones",
            ms,
            "strictly increasing fractions in (0, 1)",
        )
        _check(0 < self.gamma <= 1, "gamma", self.gamma, "in (0, 1]")
        _check(
            0 <= self.warmup_epochs <= self.epochs,
            "warmup_epochs",
            self.warmup_epochs,
            f"in [0, epochs={self.epochs}]",
        )
        _check(0 <= self.label_smoothing < 1, "label_smoothing", self.label_smoothing, "in [0, 1)")
        _check(0 <= self.seed < 2**32, "seed", self.seed, "in [0, 2**32)")
        _check(_valid_device(self.device), "device", self.device, "auto, cpu, cuda, cuda:N or mps")
        _check(self.num_workers >= 0, "num_workers", self.num_workers, ">= 0")
        _check(self.eval_every >= 1, "eval_every", self.eval_every, ">= 1")

    def _check_types(self) -> None:
        """Coerce harmless spellings (1 for 1.0, a list of milestones) and reject the rest."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type is bool:
                _check(isinstance(value, bool), f.name, value, "a bool")
            elif f.type is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
                _check(ok, f.name, value, "an int")
            elif f.type is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                _check(ok and math.isfinite(value), f.name, value, "a finite number")
                setattr(self, f.name, float(value))
            elif f.type is str:
                _check(isinstance(value, str), f.name, value, "a string")
            else:  # tuple[float, ...]
                ok = isinstance(value, (tuple, list)) and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
                )
                _check(ok, f.name, value, "a tuple of numbers")
                setattr(self, f.name, tuple(float(v) for v in value))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints and reports."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; an unknown key is an error rather than silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            names, expected = ", ".join(unknown), ", ".join(sorted(known))
            raise ConfigError(f"unknown TrainConfig field(s) {names}; expected one of: {expected}")
        return cls(**d)

    def result_differences(self, other: "TrainConfig") -> list[str]:
        """Names of fields that differ between two configs and can change the trained weights."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESULT_NEUTRAL_FIELDS and mine[k] != theirs[k]]


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def _valid_device(spec: str) -> bool:
    if spec == "auto":
        return True
    try:
        return torch.device(spec).type in ("cpu", "cuda", "mps")
    except (RuntimeError, ValueError):
        return False
