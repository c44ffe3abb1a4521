"""The figures of one model gathered as data: a flat dict, and a per-layer table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit.measure._inputs import Inputs, as_args
from prunekit.measure.flops import count_flops
from prunekit.measure.latency import measure_latency
from prunekit.measure.memory import peak_memory
from prunekit.measure.params import count_params
from prunekit.measure.size import serialized_size


def batch_of(inputs: Inputs, n: int) -> tuple[Any, ...]:
    """Repeat (or cut) the first dimension of each tensor input to ``n``."""
    out = []
    for a in as_args(inputs):
        if isinstance(a, torch.Tensor) and a.dim():
            reps = -(-n // a.shape[0])
            a = a.repeat(reps, *([1] * (a.dim() - 1)))[:n]
        out.append(a)
    return tuple(out)


def summarize(
    model: nn.Module,
    inputs: Inputs,
    *,
    latency: bool = True,
    batch_sizes: tuple[int, ...] = (1, 32),
    min_run_time: float = 0.5,
    threads: int | None = None,
) -> dict[str, float | int]:
    """Params, FLOPs and MACs per sample, bytes, peak memory and latency at each batch size
    (median and inter-quartile range, on ``threads`` torch threads: default the current count)."""
    one = batch_of(inputs, 1)
    params = count_params(model)
    flops = count_flops(model, one)
    out: dict[str, float | int] = {
        "params": params.total,
        "nonzero_params": params.nonzero,
        "flops": flops.flops,
        "macs": flops.macs,
        "bytes": serialized_size(model),
        "peak_memory_bytes": peak_memory(model, one),
    }
    if latency:
        for n in batch_sizes:
            lat = measure_latency(
                model, batch_of(inputs, n), min_run_time=min_run_time, threads=threads
            )
            out[f"latency_b{n}_ms"] = lat.median_ms
            out[f"latency_b{n}_iqr_ms"] = lat.iqr_ms
    return out


@dataclass(frozen=True)
class LayerRow:
    name: str
    kind: str
    params: int
    flops: int


def layer_table(model: nn.Module, inputs: Inputs) -> list[LayerRow]:
    """One row per leaf module that has parameters or FLOPs (FLOPs for the inputs given)."""
    flops = count_flops(model, inputs).per_module
    rows = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        n_params = sum(p.numel() for p in module.parameters(recurse=False))
        f = flops.get(name, 0)
        if n_params or f:
            rows.append(LayerRow(name, type(module).__name__, n_params, f))
    return rows
