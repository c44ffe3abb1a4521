"""Sparsity report: how many weights each prunable layer keeps.

It counts zeros of the effective weight rather than reading masks, so it gives the same figures
for a masked model, a finalised plain model and a model pruned by another tool.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.masks.basis import counted_weight
from prunekit.masks.engine import prunable_layers, weight_name


def report(model: nn.Module) -> dict[str, Any]:
    """``{"layers": {param name: {params, nonzero, sparsity}}, "overall": {...}}``.

    Layers are the conv and linear weights (protected ones included); ``overall`` sums them.
    A layer whose kernels are stored in a basis counts its kept coefficients
    (:mod:`prunekit.masks.basis`).
    """
    layers: dict[str, dict[str, float | int]] = {}
    total = kept = 0
    for name, module in prunable_layers(model).items():
        with torch.no_grad():
            weight = counted_weight(module)  # the kept coefficients of a basis layer
            params, nonzero = weight.numel(), int(torch.count_nonzero(weight))
        layers[weight_name(name)] = _row(params, nonzero)
        total, kept = total + params, kept + nonzero
    return {"layers": layers, "overall": _row(total, kept)}


def _row(params: int, nonzero: int) -> dict[str, float | int]:
    return {
        "params": params,
        "nonzero": nonzero,
        "sparsity": 1.0 - nonzero / params if params else 0.0,
    }
