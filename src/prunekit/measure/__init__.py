"""Measurements: parameters, FLOPs/MACs, latency, peak memory, bytes on disk.

Each function takes a model and example inputs and returns a small frozen dataclass, so the
figures can be logged as data (:func:`summarize` gathers them into one flat dict).
"""

from __future__ import annotations

from prunekit.measure.flops import FlopCount, count_flops
from prunekit.measure.latency import (
    ALLOCATORS,
    Latency,
    allocator_in_use,
    faults_per_pass,
    keep_freed_memory,
    latency_warnings,
    measure_latency,
    use_allocator,
)
from prunekit.measure.memory import peak_memory
from prunekit.measure.params import ParamCount, count_params
from prunekit.measure.size import file_size, serialized_size
from prunekit.measure.summary import batch_of, layer_table, summarize

__all__ = [
    "ALLOCATORS",
    "FlopCount",
    "Latency",
    "ParamCount",
    "allocator_in_use",
    "batch_of",
    "count_flops",
    "count_params",
    "faults_per_pass",
    "file_size",
    "keep_freed_memory",
    "latency_warnings",
    "layer_table",
    "measure_latency",
    "peak_memory",
    "serialized_size",
    "summarize",
    "use_allocator",
]
