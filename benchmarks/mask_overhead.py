"""Cost of prunekit masks: training step time masked vs dense, and latency after ``finalize``.

A masked model recomputes ``w * m`` for every conv on every step; this measures what that costs on
resnet20 (90% element sparsity, batch 128, CPU, one thread). Steps are timed in interleaved rounds
(alternating which model goes first) and the median is reported, with the ratio to dense (goal:
<= 1.10x). After ``finalize`` the model is plain again, so its latency should match dense (~1.0x).

    python benchmarks/mask_overhead.py [--steps 5] [--repeats 9] [--out benchmarks/results/mask_overhead.md]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prunekit import masks
from prunekit.measure import measure_latency
from prunekit.models import create


def step_time(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int
) -> float:
    """Seconds per SGD step, averaged over ``steps``."""
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mask_overhead.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    dense = create("resnet20", num_classes=10)
    masked = copy.deepcopy(dense)
    masks.prune(masked, args.sparsity)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    sides = {
        "dense": (dense, torch.optim.SGD(dense.parameters(), lr=0.01, momentum=0.9)),
        "masked": (masked, torch.optim.SGD(masked.parameters(), lr=0.01, momentum=0.9)),
    }
    for model, opt in sides.values():  # warm-up
        step_time(model, opt, x, y, 1)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.repeats):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for key in order:
            times[key].append(step_time(*sides[key], x, y, args.steps))
    train = {k: statistics.median(v) * 1000 for k, v in times.items()}

    masks.finalize(masked)
    lat = {
        key: measure_latency(model, x, threads=1, min_run_time=2.0).median_ms
        for key, model in (("dense", dense), ("finalized", masked))
    }
    sparsity = masks.report(masked)["overall"]["sparsity"]

    lines = [
        f"# Mask overhead: resnet20, {args.sparsity:.0%} element sparsity (layer scope), "
        f"batch {args.batch_size}, CPU, 1 thread",
        "",
        f"Overall conv/linear sparsity after pruning: {sparsity:.4f}. Training: median of "
        f"{args.repeats} interleaved rounds of {args.steps} SGD+momentum steps. Latency: "
        "`prunekit.measure.measure_latency` (eval forward).",
        "",
        "| measurement | dense (ms) | masked (ms) | ratio | goal |",
        "|---|---:|---:|---:|---|",
        f"| training step (masked, parametrized) | {train['dense']:.1f} | {train['masked']:.1f} "
        f"| {train['masked'] / train['dense']:.3f}x | <= 1.10x |",
        f"| forward latency after finalize | {lat['dense']:.1f} | {lat['finalized']:.1f} "
        f"| {lat['finalized'] / lat['dense']:.3f}x | ~1.0x |",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
