"""Parameter counts: total and non-zero (masked or sparsified weights count as zero)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamCount:
    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        """Fraction of parameters that are exactly zero."""
        return 1.0 - self.nonzero / self.total if self.total else 0.0


def count_params(model: nn.Module) -> ParamCount:
    """Count parameters once each (shared parameters are not double counted)."""
    total = nonzero = 0
    for p in model.parameters():  # parameters() already deduplicates shared tensors
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return ParamCount(total, nonzero)
