"""The registry of stand-in models: what each one is, what it takes, what it should do."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

EXPECTS = ("exact", "inexact", "pinned")
"""What a stand-in is expected to do once the core handles its code:

* ``exact``: it prunes, and removing zeroed channels leaves every output unchanged;
* ``inexact``: it prunes, but some groups run through a layer that normalises across the
  channels (LayerNorm, a one-group GroupNorm, a weight-standardised conv whose filters are
  normalised over their input channels), where removing a zeroed channel changes the statistics,
  so those groups are excused from the output comparison (``group.exact`` is False);
* ``pinned``: it builds and what prunes is exact, but part of it is expected to stay pinned with a
  stated reason (a permutation that mixes every channel, control flow on tensor values).
"""

KINDS = (
    "class1",  # a subclass of a standard layer whose forward calls the functional op itself
    "class2",  # functional ops taking parameters and buffers as arguments
    "class3",  # ops of the model libraries: drop path, roll, windows, SDPA, channel shuffle
    "class4",  # Python control flow on shapes and attributes
    "class5",  # attention written by hand
    "classification",
    "detection",
    "segmentation",
)


@dataclass(frozen=True)
class Standin:
    name: str
    build: Callable[[], nn.Module]
    inputs: tuple[tuple[int, ...], ...]  # shapes of the example inputs (float tensors)
    kind: str
    expect: str
    doc: str
    vocab: int | None = None  # the first input is token ids below this, not a float tensor

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for i, shape in enumerate(self.inputs):
            if i == 0 and self.vocab is not None:
                out.append(torch.randint(0, self.vocab, shape, generator=gen))
            else:
                out.append(torch.randn(shape, generator=gen))
        return tuple(out)


STANDINS: dict[str, Standin] = {}


def standin(
    name: str,
    *inputs: tuple[int, ...],
    kind: str,
    expect: str = "exact",
    vocab: int | None = None,
) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Register a builder (a function of no arguments returning a fresh model)."""
    if kind not in KINDS or expect not in EXPECTS:
        raise ValueError(f"stand-in {name!r}: kind {kind!r} / expect {expect!r} unknown")

    def decorator(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        if name in STANDINS:
            raise ValueError(f"stand-in {name!r} registered twice")
        doc = (build.__doc__ or "").strip().splitlines()
        STANDINS[name] = Standin(name, build, inputs, kind, expect, doc[0] if doc else "", vocab)
        return build

    return decorator
