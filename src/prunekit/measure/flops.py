"""FLOPs and MACs through ``torch.utils.flop_counter``.

The counter sees convolutions and matrix products (the convention of the pruning papers, which
quote the MACs of conv and linear layers); element-wise ops, norms and pooling are not counted.
One multiply-accumulate is two FLOPs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.measure._inputs import Inputs, as_args, inference


@dataclass(frozen=True)
class FlopCount:
    flops: int
    per_module: dict[str, int] = field(default_factory=dict)
    """FLOPs per qualified module name (as in ``named_modules()``; ``""`` is the whole model)."""

    @property
    def macs(self) -> int:
        return self.flops // 2


@contextlib.contextmanager
def standard_attention() -> Iterator[None]:
    """Run ``nn.MultiheadAttention`` on its standard path while counting.

    In eval mode PyTorch may switch to a fused kernel the counter does not see at all (zero
    FLOPs), and it picks it on conditions such as an even number of heads, so the count of a
    model would depend on a kernel choice, and would jump when a pruned model loses one head.
    """
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


def count_flops(model: nn.Module, inputs: Inputs) -> FlopCount:
    """FLOPs of one forward pass on ``inputs`` (for the whole batch given)."""
    counter = FlopCounterMode(display=False)
    with inference(model), standard_attention(), counter:
        model(*as_args(inputs))
    return FlopCount(int(counter.get_total_flops()), flops_per_module(counter))


def flops_per_module(counter: FlopCounterMode) -> dict[str, int]:
    """FLOPs per qualified module name from a finished counter (``""``: the whole model)."""
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        # keys are "<RootClass>.<qualified.name>"; the root alone is the whole model
        _, _, name = key.partition(".")
        per_module[name] = int(sum(ops.values()))
    return per_module
