"""Latency-targeted against FLOPs-targeted pruning at equal measured latency.

For each model (ResNet-50 and MobileNetV2 at 224x224, seeded random weights, synthetic input;
``benchmarks/graph_speed.py``'s setting: batch 1, one thread, on the CPU; ``--runtime`` below):

1. **FLOPs-targeted**: ``prune_channels(model, x, target_flops=F)`` (L1 filter norm, one ratio
   for every group); its latency is measured. Beside it, the same with ``round_to`` (default
   16: every kept width a multiple, the fixed-multiple stand-in for the table's knees).
2. **Latency-targeted**: ``prune_channels(model, x, target_latency=L, scope=...)`` with ``L``
   the fraction of the dense latency the faster FLOPs-targeted model (plain or rounded)
   removed, so all land at the same measured latency; same criterion, in layer scope (one
   ratio, widths on the table's knees) and in global scope (normalised L1 per millisecond a
   unit of its group saves), and in global
   scope with ``--max-ratio`` (default 0.9: no layer loses more than 90% of its channels, the
   collapse the uncapped global row can show). The per-layer latency table is built (or read
   from the cache) first, with its time reported.
3. The dense model and the pruned models are then timed in interleaved rounds
   (``prunekit.measure.latency_table.measure_model``, ``--rounds`` rounds of
   ``--min-run-time`` seconds each, the fastest block), so a load change on the machine hits
   all three.

The allocator: with glibc's default malloc a dense MobileNetV2 at 224x224 faults about 2,800
pages in afresh every pass (its activations are freed at the top of the heap and trimmed away),
its pruned copies none, which inflates every speed-up by the kernel's page zeroing (more on a
loaded machine). ``--allocator steady`` (the default) first calls
``prunekit.measure.keep_freed_memory`` so every model is timed on its compute; the table gives
each model's page faults per pass.

The runtime (``--runtime``): ``torch`` times eager PyTorch, where every BatchNorm and
activation is a call of its own with a fixed cost; ``onnxruntime`` (with ``--clock wall``)
exports every model to ONNX and times it there (the graph folds BatchNorm and fuses the
activations into the convolutions), and builds the latency table there, so the latency target
is met on the runtime the model ships on. ``--compiled`` adds each model's latency under
``torch.compile`` (inductor), torch's own fusing compiler.

Reported per (model, pruning): MACs and their reduction (dense / pruned), the latency and its
speed-up (dense / pruned), and **speed-up / MACs reduction**: how much of the MACs removed shows
up as time saved (1.0: all of it). The latency-targeted row also gives the latency the table
predicted. The issue's goal: at least 0.9 on ResNet-50 and 0.85 on MobileNetV2.

    nice python benchmarks/latency_budget.py [--models resnet50 mobilenetv2_imagenet]
        [--target-flops 0.6] [--rounds 5] [--min-run-time 1.0] [--cache DIR] [--clock cpu]
        [--layer-run-time 0.05] [--max-points 32] [--max-ratio 0.9]
        [--runtime torch|onnxruntime] [--compiled]
        [--out benchmarks/results/latency_budget.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit import models as zoo
from prunekit.graph import build
from prunekit.io import atomic_open
from prunekit.measure import ALLOCATORS, count_flops, faults_per_pass, use_allocator
from prunekit.measure.latency_table import LatencyMeter, measure_model
from prunekit.prune import prune_channels
from prunekit.tables import markdown_table
from prunekit.targets import CLOCKS, RUNTIMES, LatencySetting

SIDE = 224
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency_budget.md"
SCOPES = ("layer", "global")  # of the latency-targeted runs


def make_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return zoo.create(name, num_classes=1000).eval()


def example() -> torch.Tensor:
    return torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return count_flops(model, x).macs


def interleaved(
    models: dict[str, nn.Module], x: torch.Tensor, rounds: int, run: float, setting: LatencySetting
) -> dict:
    """Each model's latency (ms) on ``setting``'s runtime: the fastest of its timed blocks over
    ``rounds`` rounds, the models taken in turn (the statistic of the latency table; on a shared
    machine every slower block holds other processes' time)."""
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():
            times[k].append(measure_model(m, x, setting, min_run_time=run))
    return {k: min(v) for k, v in times.items()}


def compiled_latency(
    models: dict[str, nn.Module], x: torch.Tensor, args: argparse.Namespace
) -> dict:
    """Each model's latency (ms) under ``torch.compile`` (inductor, CPU: BatchNorm folded and
    elementwise ops fused into generated kernels), timed as :func:`interleaved` times them (on
    ``args.clock``); each compiles on its first, untimed, warm-up pass (tens of seconds)."""
    compiled = {k: torch.compile(m.eval()) for k, m in models.items()}
    setting = LatencySetting("torch", 1, 1, args.clock)
    return interleaved(compiled, x, args.rounds, args.min_run_time, setting)


def bench(name: str, args: argparse.Namespace) -> list[list[str]]:
    x = example()
    dense = make_model(name)
    print(f"[{name}] FLOPs-targeted prune to {args.target_flops:g}", flush=True)
    by_flops = copy.deepcopy(dense)
    prune_channels(by_flops, x, target_flops=args.target_flops)
    setting = LatencySetting(args.runtime, 1, 1, args.clock)
    flops_models = {"dense": dense, "flops": by_flops}
    if args.round_to > 1:  # the fixed-multiple approximation of the knees, for comparison
        flops_models["rounded"] = rounded = copy.deepcopy(dense)
        prune_channels(rounded, x, target_flops=args.target_flops, round_to=args.round_to)
    first = interleaved(flops_models, x, args.rounds, args.min_run_time, setting)
    fastest = min((k for k in flops_models if k != "dense"), key=first.__getitem__)
    goal = 1.0 - first[fastest] / first["dense"]
    print(f"[{name}] the fastest FLOPs-targeted model ({fastest}) removes {goal:.3f}", flush=True)
    meter = LatencyMeter(
        setting,
        cache_dir=args.cache,
        model_run_time=args.min_run_time,
        min_run_time=args.layer_run_time,
        max_points=args.max_points,
        progress=True,
    )
    t0 = time.perf_counter()
    meter.predictor(build(dense, x), x)  # builds (or reads) the table; timed on its own
    table_s = time.perf_counter() - t0
    pruned: dict[str, nn.Module] = dict(flops_models)
    checks, notes = {}, []
    variants = {scope: {"scope": scope} for scope in SCOPES}
    variants["capped"] = {"scope": "global", "max_ratio": args.max_ratio}
    for key, kw in variants.items():
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        report = prune_channels(model, x, target_latency=goal, latency=meter, **kw)
        prune_s = time.perf_counter() - t0
        check = checks[key] = report.latency
        pruned[key] = model
        notes.append(f"{key} {prune_s:.0f} s, {check.rounds} selection(s)")
        print(
            f"[{name}] latency-targeted, {key}: dense {check.dense_ms:.1f} ms, predicted "
            f"{check.predicted_ms:.1f} ms, measured {check.measured_ms:.1f} ms ({notes[-1]})",
            flush=True,
        )
    final = interleaved(pruned, x, args.rounds, args.min_run_time, setting)
    compiled = compiled_latency(pruned, x, args) if args.compiled else {}
    m = {k: macs(v, x) for k, v in pruned.items()}
    faults = {k: faults_per_pass(v, x) for k, v in pruned.items()}
    labels = {
        "dense": "dense",
        "flops": f"FLOPs-targeted ({args.target_flops:g}), layer scope",
        "rounded": f"FLOPs-targeted ({args.target_flops:g}), layer scope, round_to {args.round_to}",
        **{scope: f"latency-targeted ({goal:.3f}), {scope} scope" for scope in SCOPES},
        "capped": f"latency-targeted ({goal:.3f}), global scope, max_ratio {args.max_ratio:g}",
    }
    rows = []
    for key, label in labels.items():
        if key not in pruned:
            continue
        speed = final["dense"] / final[key]
        mac_red = m["dense"] / m[key]
        check = checks.get(key)
        predicted = (
            "" if check is None else f"{check.predicted_ms / check.dense_ms * final['dense']:.1f}"
        )
        rows.append(
            [
                name,
                label,
                f"{m[key] / 1e9:.3f}",
                f"{mac_red:.2f}x",
                f"{final[key]:.1f}",
                predicted,
                f"{speed:.2f}x",
                f"{speed / mac_red:.2f}",
                "n/a" if faults[key] is None else f"{faults[key]:.0f}",
            ]
            + (
                [f"{compiled[key]:.1f}", f"{compiled['dense'] / compiled[key] / mac_red:.2f}"]
                if compiled
                else []
            )
        )
    width = len(rows[0])
    rows.append(
        [name, f"(table {table_s:.0f} s; latency prunes: {'; '.join(notes)})", *[""] * (width - 2)]
    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenetv2_imagenet"])
    p.add_argument("--target-flops", type=float, default=0.6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=1.0)
    p.add_argument(
        "--round-to", type=int, default=16, help="a FLOPs-targeted row rounded so; 1: none"
    )
    p.add_argument("--cache", default=None, help="latency table cache folder")
    p.add_argument("--layer-run-time", type=float, default=0.05, help="seconds per table width")
    p.add_argument("--max-points", type=int, default=32, help="table widths per layer side")
    p.add_argument(
        "--max-ratio", type=float, default=0.9, help="of the capped global row: no layer emptied"
    )
    p.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="cpu: time the process's CPU time (one thread), for a machine shared with others",
    )
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="torch",
        help="where every model is timed and the latency table built: torch (eager) or "
        "onnxruntime (with --clock wall: the exported graph, BatchNorm folded, activations "
        "fused)",
    )
    p.add_argument(
        "--allocator", choices=ALLOCATORS, default="steady", help="prunekit.measure.use_allocator"
    )
    p.add_argument(
        "--compiled",
        action="store_true",
        help="also time every model under torch.compile (inductor; needs a C compiler)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.allocator = use_allocator(args.allocator)
    rows = [r for name in args.models for r in bench(name, args)]
    head = [
        "model",
        "pruning",
        "GMACs",
        "MACs reduction",
        "latency (ms)",
        "predicted (ms)",
        "speed-up",
        "speed-up / MACs reduction",
        "page faults / pass",
    ]
    if args.compiled:
        head += ["torch.compile latency (ms)", "torch.compile speed-up / MACs reduction"]
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    text = (
        f"# Latency-targeted vs FLOPs-targeted pruning at equal measured latency\n\n"
        f"`{' '.join(['python', *sys.argv])}`, {datetime.date.today()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, runtime {args.runtime}, batch 1, 1 thread, "
        f"input {SIDE}x{SIDE}, {args.clock} clock, allocator {args.allocator}, "
        f"load average {load} at the end. L1 filter norm; the latency-targeted runs aim at "
        "the latency the faster FLOPs-targeted model measured. Latencies: the fastest timed block of "
        "interleaved rounds. predicted: the table's prediction, scaled to this table's dense "
        "latency.\n\n" + markdown_table(head, rows) + "\n"
    )
    print(text)
    with atomic_open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
