"""Accuracy of latency-targeted against FLOPs-targeted pruning at equal measured latency.

For each model and seed, on a real data set (default: ResNet-20 and MobileNetV2 on digits):

1. One baseline is trained (``prunekit.workflow.train_and_test``) and shared by both runs.
2. **FLOPs-targeted**: ``run_pruning`` with the L1 filter norm, one ratio for every group
   (``scope="layer"``), ``target_flops=F``, then the common fine-tuning.
3. Its measured latency reduction ``L`` (the dense and the pruned model timed in interleaved
   rounds, batch 1, one thread, torch) becomes the goal of the **latency-targeted** runs: the
   same criterion, ``target_latency=L`` (the per-layer latency table, widths on its knees,
   verified on the pruned copy), the same fine-tuning, in layer scope (one ratio, widths
   snapped to the knees) and in global scope (normalised L1 per millisecond a unit saves),
   without and with ``--max-ratio`` (the most of any layer's channels a run may remove).
4. The dense and the three pruned models are timed again in interleaved rounds, so a load
   change on the machine hits all of them.

With ``--method ID`` (and ``--option KEY=VALUE``) both runs use that catalogue method instead of
the L1 criterion, with its own way of spending a budget: ``slimming``, for instance, ranks every
channel of the network by its raw BatchNorm ``|gamma|`` against a FLOPs target, and by
``|gamma|`` per millisecond its removal saves against a latency target (a knapsack's greedy
order, HALP's form, on an importance that compares across layers). The rows are then the
FLOPs-targeted and the latency-targeted run of that method.

A latency-targeted run verifies its selection on the pruned copy on ``--clock`` (the process's
CPU time by default: on a shared machine a slow wall-clock round would make it remove more).

Reported per model: top-1 after fine-tuning of each (mean ± sd over seeds), the measured
latency of each relative to the dense model, the MACs reduction and the ratio speed-up / MACs
reduction. The claim under test: at the same measured latency the latency-targeted model is at
least as accurate.

    nice python benchmarks/latency_accuracy.py [--models resnet20 mobilenetv2] [--seeds 0 1 2]
        [--data digits] [--image-size 16] [--epochs 10] [--finetune-epochs 3]
        [--target-flops 0.6] [--rounds 5] [--min-run-time 0.5] [--clock cpu]
        [--method slimming [--option sparsity_epochs=3]]
        [--work runs/latency-accuracy] [--out benchmarks/results/latency_accuracy.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from latency_budget import interleaved
from prunekit import workflow
from prunekit.io import atomic_write_json
from prunekit.measure import count_flops
from prunekit.persist import load
from prunekit.targets import CLOCKS

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latency_accuracy.md"


def mean_sd(values: list[float], digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def one_seed(name: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    base = workflow.PruneConfig(
        model=name,
        data=args.data,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=64,
        lr=0.05,
        seed=seed,
        finetune_epochs=args.finetune_epochs,
        importance="l1",
        method=args.method,
        option=tuple(args.option),
        latency_clock=args.clock,
    )
    work = Path(args.work) / f"{name}-{args.data}-{args.image_size}-seed{seed}"
    job, train_cfg = workflow.baseline_config(base)
    trained = workflow.train_and_test(
        job, train_cfg, checkpoint=work / "baseline.pt", progress=False
    )
    x = trained.setup.example_input()[:1]
    dense = trained.setup.model.eval()

    def run(label: str, **target: object) -> tuple[dict, torch.nn.Module]:
        folder = work / (f"{args.method}-{label}" if args.method else label)
        if (folder / "metrics.json").exists():  # finished: a latency-targeted prune measures,
            # so pruning again could pick other widths than the fine-tuned model has
            metrics = json.loads((folder / "metrics.json").read_text())
        else:
            config = dataclasses.replace(base, **target)
            metrics = workflow.run_pruning(
                config, out=folder, baseline=trained, latency=False, progress=False
            )
        return metrics, load(folder / "pruned.pt").eval()

    by_flops, flops_model = run("flops", scope="layer", target_flops=args.target_flops)
    goal_file = work / "latency_goal.json"  # measured once: a resumed run aims at the same goal
    if goal_file.exists():
        goal = float(json.loads(goal_file.read_text())["goal"])
    else:
        first = interleaved(
            {"dense": dense, "flops": flops_model}, x, args.rounds, args.min_run_time, args.clock
        )
        goal = 1.0 - first["flops"] / first["dense"]
        atomic_write_json({"goal": goal}, goal_file)
    print(f"[{name} seed {seed}] FLOPs-targeted removes {goal:.3f} of the latency", flush=True)
    goal_ = min(max(goal, 0.01), 0.95)
    variants: dict[str, tuple[str, dict]] = (
        {"latency": ("latency", {"target_latency": goal_})}
        if args.method
        else {
            "global": ("latency", {"scope": "global", "target_latency": goal_}),
            "layer": ("latency-layer", {"scope": "layer", "target_latency": goal_}),
            "capped": (
                f"latency-global-max{args.max_ratio:g}",
                {"scope": "global", "target_latency": goal_, "max_ratio": args.max_ratio},
            ),
        }
    )
    models = {"dense": dense, "flops": flops_model}
    runs = {"flops": by_flops}
    for key, (label, target) in variants.items():
        runs[key], models[key] = run(label, **target)
    final = interleaved(models, x, args.rounds, args.min_run_time, args.clock)
    macs = {k: count_flops(m, x).macs for k, m in models.items()}
    out = {"goal": goal, "dense_acc": by_flops["acc_before"]}
    for key, metrics in runs.items():
        speed = final["dense"] / final[key]
        reduction = macs["dense"] / macs[key]
        out |= {
            f"{key}_acc": metrics["acc_finetuned"],
            f"{key}_latency": final[key] / final["dense"],
            f"{key}_macs": reduction,
            f"{key}_ratio": speed / reduction,
        }
    print(f"[{name} seed {seed}] {out}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--target-flops", type=float, default=0.6)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-run-time", type=float, default=0.5)
    p.add_argument("--clock", choices=CLOCKS, default="cpu")
    p.add_argument("--max-ratio", type=float, default=0.5, help="of the capped global run")
    p.add_argument("--method", default=None, help="a catalogue method for both runs (not L1)")
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE of --method")
    p.add_argument("--work", default="runs/latency-accuracy", help="baselines and run folders")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    head = [
        "model",
        "dense top-1",
        "latency goal",
        "pruning",
        "top-1 fine-tuned",
        "latency / dense",
        "MACs reduction",
        "speed-up / MACs reduction",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in args.models:
        runs = [one_seed(name, seed, args) for seed in args.seeds]

        def col(key: str, runs: list[dict[str, float]] = runs) -> list[float]:
            return [r[key] for r in runs]

        rows = (
            (
                ("flops", f"{args.method}, FLOPs-targeted ({args.target_flops:g})"),
                ("latency", f"{args.method}, latency-targeted at the FLOPs model's latency"),
            )
            if args.method
            else (
                ("flops", f"FLOPs-targeted ({args.target_flops:g}), layer scope"),
                ("layer", "latency-targeted at the FLOPs model's latency, layer scope"),
                ("global", "latency-targeted at the FLOPs model's latency, global scope"),
                ("capped", f"the same, global scope, max_ratio {args.max_ratio:g}"),
            )
        )
        for key, label in rows:
            lines.append(
                "| "
                + " | ".join(
                    [
                        name,
                        mean_sd(col("dense_acc")),
                        mean_sd(col("goal"), 3),
                        label,
                        mean_sd(col(f"{key}_acc")),
                        mean_sd(col(f"{key}_latency"), 3),
                        mean_sd(col(f"{key}_macs")) + "x",
                        mean_sd(col(f"{key}_ratio")),
                    ]
                )
                + " |"
            )
    try:
        load_avg = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load_avg = "n/a"
    text = (
        "# Accuracy at equal measured latency: latency-targeted vs FLOPs-targeted pruning\n\n"
        f"`{' '.join(['python', *sys.argv])}`, {datetime.date.today()}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}; {args.data} at "
        f"{args.image_size}x{args.image_size}, baseline {args.epochs} epochs, "
        f"{args.finetune_epochs} fine-tuning epochs for both, seeds {args.seeds} (mean ± sd); "
        f"latency at batch 1, one thread, torch, {args.clock} clock, the fastest block of "
        f"{args.rounds} interleaved rounds; load average {load_avg} at the end. "
        + (f"Method {args.method} {args.option or ''}" if args.method else "L1 filter norm")
        + " for both; the latency goal is the fraction of the dense latency the FLOPs-targeted "
        "model removed; latency-targeted selections verified on the same clock.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
