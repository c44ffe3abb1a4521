"""Wall-clock latency through ``torch.utils.benchmark`` (fixed threads, warm-up, median, spread),
and the allocator effect that can bias it (:func:`faults_per_pass`, :func:`keep_freed_memory`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.benchmark as tbench
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure._inputs import Inputs, as_args, inference, model_device


@dataclass(frozen=True)
class Latency:
    median_ms: float
    iqr_ms: float
    batch_size: int
    threads: int
    device: str
    runs: int

    @property
    def per_sample_ms(self) -> float:
        return self.median_ms / self.batch_size


def measure_latency(
    model: nn.Module,
    inputs: Inputs,
    *,
    threads: int | None = None,
    warmup: int = 3,
    min_run_time: float = 0.5,
) -> Latency:
    """Median and inter-quartile range of one forward pass on ``inputs``, in milliseconds.

    ``threads`` defaults to the current ``torch.get_num_threads()``; it is fixed for the
    measurement so dense and pruned models are timed alike.
    """
    if min_run_time <= 0:
        raise ConfigError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    threads = threads or torch.get_num_threads()
    args = as_args(inputs)
    device = model_device(model)
    first = args[0]
    batch = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
    with inference(model):
        for _ in range(warmup):
            model(*args)
        timer = tbench.Timer(
            stmt="model(*args)",
            globals={"model": model, "args": args},
            num_threads=threads,
        )
        m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(
        median_ms=m.median * 1e3,
        iqr_ms=m.iqr * 1e3,
        batch_size=batch,
        threads=threads,
        device=device.type,
        runs=len(m.times),
    )


SPREAD_LIMIT = 0.25
"""Inter-quartile range over median above which a latency figure is called unreliable: the
middle half of the runs spans more than a quarter of the typical time, so two models whose
figures differ by less than that cannot be told apart."""


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def latency_warnings(figures: Mapping[str, Any], *, threads: int = 1) -> list[str]:
    """Why the latency figures of :func:`~prunekit.measure.summarize` (``latency_b<N>_ms`` with
    ``latency_b<N>_iqr_ms``) may not be trusted; empty when there is no reason to doubt them.

    * a spread (IQR) over :data:`SPREAD_LIMIT` of the median at some batch size;
    * a machine whose 1-minute load average, less this process, leaves fewer free cores than
      the ``threads`` timed: other processes then share the cores and the figure measures them
      too.
    """
    out = []
    for key, median in sorted(figures.items()):
        m = re.fullmatch(r"latency_b(\d+)_ms", key)
        iqr = figures.get(f"latency_b{m.group(1)}_iqr_ms") if m else None
        if m and iqr is not None and median > 0 and iqr / median > SPREAD_LIMIT:
            out.append(
                f"latency at batch {m.group(1)} varies: IQR {iqr:.3g} ms on a median of "
                f"{median:.3g} ms ({iqr / median:.0%}); the figure is unreliable"
            )
    try:
        load = os.getloadavg()[0]
    except OSError:  # not available on this platform
        return out
    cores = _cores()
    others = max(0.0, load - 1.0)  # this process is one of the runnable ones
    if others > cores - threads:
        out.append(
            f"the machine is loaded (load average {load:.1f} on {cores} cores): other processes "
            "shared the cores while timing, so latency figures are unreliable"
        )
    return out


def faults_per_pass(model: nn.Module, inputs: Inputs, passes: int = 10) -> float | None:
    """Minor page faults per forward pass of ``model`` on ``inputs`` after two warm-up passes
    (``getrusage``; None where the platform has no ``resource`` module).

    With glibc's default malloc, activation buffers above its mmap threshold are mapped and
    unmapped (or the heap trimmed) on every pass, and each new page faults when first written: a
    dense MobileNetV2 at 224x224, batch 1, takes about 2,800 faults a pass and the same model
    pruned to 40% of its MACs none, so the dense model's latency, and any speed-up over it,
    then include the kernel's page zeroing (several ms, more on a loaded machine)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return None
    args = as_args(inputs)
    with inference(model):
        for _ in range(2):
            model(*args)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(passes):
            model(*args)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    return (after - before) / passes


MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``):
buffers above it are mapped per allocation whatever is set."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc, for the rest of this process, serve buffers up to
    :data:`MMAP_THRESHOLD_MAX` from its heap and never give freed heap memory back to the
    system (``mallopt(M_MMAP_THRESHOLD)``, ``mallopt(M_TRIM_THRESHOLD)``), so a model's forward
    passes reuse their pages instead of faulting them in again every pass
    (:func:`faults_per_pass`). Dense and pruned models are then timed on their compute alone;
    the price is a process that keeps its peak memory. Returns whether it was applied (False
    where the C library is not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(m_trim_threshold, 2**31 - 1)
    )


ALLOCATORS = ("steady", "default")
"""How a benchmark's process allocates while it times models: ``steady`` applies
:func:`keep_freed_memory`, ``default`` leaves the C library as it is."""


_IN_USE = ["default"]  # what use_allocator last applied in this process


def use_allocator(choice: str) -> str:
    """Apply ``choice`` (one of :data:`ALLOCATORS`) to this process and return the allocator it
    ended up with, for a report's header (``steady`` falls back to ``default`` where the C
    library is not glibc, and says so). ``steady`` lasts for the rest of the process."""
    if choice not in ALLOCATORS:
        raise ConfigError(f"allocator must be one of {', '.join(ALLOCATORS)}; got {choice!r}")
    if choice == "steady" and not keep_freed_memory():
        return "default (steady not available: the C library is not glibc)"
    if choice == "steady" or _IN_USE[0] != "steady":  # steady cannot be undone
        _IN_USE[0] = choice
    return _IN_USE[0]


def allocator_in_use() -> str:
    """The allocator this process times models with: ``steady`` once :func:`use_allocator` has
    applied it, else ``default``. Run metrics record it beside their latency figures."""
    return _IN_USE[0]
