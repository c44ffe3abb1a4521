"""Pruning during training, shaped like an optimizer: ``prepare / step / state_dict /
load_state_dict``, driven by a :mod:`prunekit.masks.schedules` schedule.

A :class:`Pruner` is prepared once on a model (it attaches its masks), then stepped while the
model trains: it is itself a :func:`prunekit.train.fit` callback, stepping after every optimizer
step (``every="step"``) or every epoch (``every="epoch"``) at which its schedule asks for a new
mask (:meth:`~prunekit.masks.SparsitySchedule.is_pruning_step`). Its state dict holds the schedule
counter, the pruner's own record and anything a subclass adds, so
:meth:`prunekit.methods.Context.train` saves it with every epoch and a killed run resumes it.

Soft pruning (prune after every epoch), gradual magnitude pruning (a cubic schedule over steps),
dynamic surgery and global dynamic pruning (mask updates every few steps) and lottery-ticket
rounds are all this shape; :class:`ScheduledMagnitudePruner` is the plain one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks.apply import apply_masks, get_masks, split_name
from prunekit.masks.engine import prune
from prunekit.masks.mask import Mask, MaskParametrization
from prunekit.masks.report import report
from prunekit.masks.schedules import SparsitySchedule

__all__ = ["Pruner", "ScheduledMagnitudePruner"]

EVERY = ("step", "epoch")


class Pruner:
    """Base of in-training pruners. Subclasses implement :meth:`step` (make the mask for step
    ``t``) and may extend :meth:`prepare`, :meth:`state_dict` and :meth:`load_state_dict`."""

    def __init__(self, schedule: SparsitySchedule | None = None, *, every: str = "step") -> None:
        if every not in EVERY:
            raise ConfigError(f"a pruner steps every 'step' or 'epoch', got {every!r}")
        self.schedule, self.every = schedule, every
        self.model: nn.Module | None = None
        self.history: list[tuple[int, float, float]] = []  # (t, target, measured sparsity)

    # ------------------------------------------------------------------ the protocol
    def prepare(self, model: nn.Module) -> None:
        """Take ``model`` (attach masks, record what is needed); called once, before training."""
        self.model = model

    def step(self, t: int) -> None:
        """Update the masks for step (or epoch) ``t``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Schedule counter, record and the masks on the model (plain data and tensors). The
        weights are not part of it: they are the model's, checkpointed with it (loading masks
        that prune less than the current ones does not bring zeroed weights back)."""
        state: dict[str, Any] = {"history": [list(h) for h in self.history]}
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
        if self.model is not None:
            state["masks"] = {n: m.state_dict() for n, m in get_masks(self.model).items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [(int(t), float(a), float(b)) for t, a, b in state.get("history", [])]
        if self.schedule is not None and "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        if self.model is not None and state.get("masks"):
            saved = {n: Mask.from_state_dict(s) for n, s in state["masks"].items()}
            _replace_masks(self.model, saved)

    # ------------------------------------------------------------------ as a fit callback
    def __call__(self, event: str, state: dict[str, Any]) -> None:
        wanted = "step_end" if self.every == "step" else "epoch_end"
        if event != wanted:
            return
        t = int(state["step"] if self.every == "step" else state["epoch"])
        if self.schedule is not None:
            self.schedule.last_step = t
            if not self.schedule.is_pruning_step(t):
                return
        self.step(t)


def _replace_masks(model: nn.Module, saved: dict[str, Mask]) -> None:
    """Make the masks on ``model`` equal ``saved``: written into the mask buffers already there
    (a restore may un-prune entries, which applying by AND could not), attached where none is."""
    current = get_masks(model)
    apply_masks(model, {n: m for n, m in saved.items() if n not in current})
    for name, mask in saved.items():
        if name not in current:
            continue
        module, tensor_name = split_name(model, name)
        for p in module.parametrizations[tensor_name]:
            if isinstance(p, MaskParametrization):
                with torch.no_grad():
                    p.mask.copy_(mask.data.to(p.mask))


class ScheduledMagnitudePruner(Pruner):
    """Magnitude pruning of the layers ``names`` to the schedule's sparsity at each of its
    pruning steps (``scope`` ``"layer"``: every layer to that sparsity; ``"global"``: one
    threshold). :meth:`prepare` attaches all-ones masks first, so pruning during training
    changes mask buffers only, never the parameters the optimizer holds. ``history`` records
    ``(t, target, sparsity measured over the named layers)``."""

    def __init__(
        self,
        schedule: SparsitySchedule,
        names: Sequence[str],
        scope: str = "layer",
        *,
        every: str = "step",
    ) -> None:
        super().__init__(schedule, every=every)
        self.names, self.scope = list(names), scope

    def prepare(self, model: nn.Module) -> None:
        super().prepare(model)
        ones = {}
        for n in self.names:
            module, tensor_name = split_name(model, n)
            ones[n] = Mask(torch.ones_like(getattr(module, tensor_name), dtype=torch.bool))
        apply_masks(model, ones)

    def step(self, t: int) -> None:
        assert self.schedule is not None
        self.prune_to(t, self.schedule.get_sparsity(t))

    def prune_to(self, t: int, sparsity: float) -> None:
        """Prune the named layers to ``sparsity`` now (also outside the schedule, e.g. to make
        sure the final target is reached when training was too short)."""
        if self.model is None:
            raise ConfigError("prepare(model) the pruner before stepping it")
        prune(self.model, sparsity, scope=self.scope, include=self.names)
        rows = report(self.model)["layers"]
        params = sum(rows[n]["params"] for n in self.names)
        zeros = sum(rows[n]["params"] - rows[n]["nonzero"] for n in self.names)
        self.history.append((t, sparsity, zeros / params if params else 0.0))
