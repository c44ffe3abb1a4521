"""Wall-clock latency through ``torch.utils.benchmark`` (fixed threads, warm-up, median, spread)."""

from __future__ import annotations

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
