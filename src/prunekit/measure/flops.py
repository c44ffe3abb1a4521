"""FLOPs and MACs through ``torch.utils.flop_counter``.

The counter sees convolutions and matrix products (the convention of the pruning papers, which
quote the MACs of conv and linear layers); element-wise ops, norms and pooling are not counted.
One multiply-accumulate is two FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def count_flops(model: nn.Module, inputs: Inputs) -> FlopCount:
    """FLOPs of one forward pass on ``inputs`` (for the whole batch given)."""
    counter = FlopCounterMode(display=False)
    with inference(model), counter:
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
