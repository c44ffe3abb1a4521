"""Wall-clock latency through ``torch.utils.benchmark`` (fixed threads, warm-up, median, spread)."""

from __future__ import annotations

from dataclasses import dataclass

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
