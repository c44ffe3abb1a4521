"""Pruning methods compared on one footing: same model, data, baseline, budget and fine-tuning
for every method, several seeds, one or more budgets.

For each seed one baseline is trained (``prunekit prune``'s recipe); every method then prunes a
copy of it to each target (``--target-flops`` for structured methods, ``--target-sparsity`` for
unstructured ones) through ``prunekit.workflow.run_pruning`` (the code path of ``prunekit prune
--method ID``), and every pruned model gets the same fine-tuning. Latency is measured for the
dense and the pruned model in the same run, so the speed-up is a ratio taken under one machine
load. Each finished (seed, target, method) run is kept under ``--work``; rerunning the command
skips it, so an interrupted comparison resumes, and processes given different ``--seeds`` can
share one ``--work`` folder.

    python benchmarks/compare_methods.py --target-flops 0.5 --out benchmarks/results/structured_resnet20_digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from prunekit import methods, workflow
from prunekit.errors import ConfigError
from prunekit.io import atomic_open, atomic_write_json
from prunekit.tables import markdown_table

DEFAULT_METHODS = [
    "random_channel",
    "l1_filter",
    "thinet",
    "lasso_channel",
    "ssl",
    "slimming",
    "sfp",
    "gdp",
    "fpgm",
    "hrank",
    "taylor",
]


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def method_options(args: argparse.Namespace, method: str, target: float) -> tuple[str, ...]:
    """``ID:KEY=VALUE`` applies at every target, ``ID@TARGET:KEY=VALUE`` at that target only."""
    out = []
    for spec in args.method_option:
        head, _, option = spec.partition(":")
        name, _, at = head.partition("@")
        if name == method and (not at or abs(float(at) - target) < 1e-9):
            out.append(option)
    return tuple(out)


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(args.work)
    kind = "target_sparsity" if args.target_sparsity else "target_flops"
    runs = []
    for seed in args.seeds:
        config = workflow.PruneConfig(
            model=args.model,
            data=args.data,
            image_size=args.image_size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=seed,
            calib_batches=args.calib_batches,
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
        )
        job, train_cfg = workflow.baseline_config(config)
        baseline = None
        for target in args.target_sparsity or args.target_flops:
            for method in args.methods:
                out = work / f"seed{seed}" / f"{kind}{target:g}" / method
                done = out / "metrics.json"
                if done.exists():
                    runs.append({**json.loads(done.read_text()), "target": target})
                    continue
                if baseline is None:  # trained (or resumed) once per seed, only when needed
                    t0 = time.perf_counter()
                    baseline = workflow.train_and_test(
                        job,
                        train_cfg,
                        checkpoint=work / f"seed{seed}" / "baseline.pt",
                        progress=False,
                    )
                    print(
                        f"seed {seed}: baseline {baseline.test['top1']:.2f}% "
                        f"({time.perf_counter() - t0:.0f}s)",
                        flush=True,
                    )
                cfg = dataclasses.replace(
                    config,
                    method=method,
                    option=method_options(args, method, target),
                    **{kind: target},
                )
                try:
                    m = workflow.run_pruning(cfg, out=out, progress=False, baseline=baseline)
                except ConfigError as e:  # the method cannot meet this target on this model
                    m = {"method": method, "seed": seed, "target": target, "error": str(e)}
                    atomic_write_json(m, done)
                    print(f"seed {seed} {kind} {target:g} {method}: not run: {e}", flush=True)
                    runs.append(m)
                    continue
                m["target"] = target
                reached = (
                    f"sparsity {m['sparsity']:.3f}"
                    if "sparsity" in m
                    else f"FLOPs -{1 - m['flops_after'] / m['flops_before']:.3f}"
                )
                print(
                    f"seed {seed} {kind} {target:g} {method}: {m['acc_before']:.2f} -> "
                    f"{m['acc_pruned']:.2f} -> {m['acc_finetuned']:.2f}% {reached} "
                    f"(prune {m['prune_time_s']:.0f}s)",
                    flush=True,
                )
                runs.append(m)
    return runs


def table(runs: list[dict[str, Any]], method_ids: list[str], reference: str | None) -> str:
    """One row per (target, method): mean ± sd over seeds. ``reference`` (a method id) gets a
    column saying whether each method's mean after fine-tuning beats it at the same target."""
    unstructured = any("sparsity" in r for r in runs)
    rows: list[list[str]] = []
    notes: list[str] = []
    for target in sorted({r["target"] for r in runs}):
        by_method = {
            m: [r for r in runs if r["method"] == m and r["target"] == target] for m in method_ids
        }
        ref = by_method.get(reference) if reference else None
        ref = [r for r in ref or [] if "error" not in r]
        ref_acc = statistics.mean(r["acc_finetuned"] for r in ref) if ref else None
        for m in method_ids:
            rs = [r for r in by_method[m] if "error" not in r]
            failed = [r for r in by_method[m] if "error" in r]
            if failed:
                notes.append(f"{m} at {target:g}: not run: {failed[0]['error']}")
            if not rs:
                continue
            fin = statistics.mean(r["acc_finetuned"] for r in rs)
            beats = "—" if m == reference or ref_acc is None else ("yes" if fin > ref_acc else "no")
            row = [
                f"{target:g}",
                m,
                mean_sd([r["acc_before"] for r in rs]),
                mean_sd([r["acc_pruned"] for r in rs]),
                mean_sd([r["acc_finetuned"] for r in rs]),
                mean_sd([r["acc_before"] - r["acc_finetuned"] for r in rs]),
                beats,
            ]
            if unstructured:
                row += [
                    f"{statistics.mean(r['sparsity'] for r in rs):.3f}",
                    f"{statistics.mean(r['nonzero_params'] for r in rs):,.0f}",
                ]
            else:
                row += [
                    f"{statistics.mean(r['params_after'] for r in rs):,.0f}",
                    f"{statistics.mean(1 - r['params_after'] / r['params_before'] for r in rs):.1%}",
                    f"{statistics.mean(1 - r['flops_after'] / r['flops_before'] for r in rs):.1%}",
                    f"{statistics.mean(r['latency_after_ms'] for r in rs):.3f}",
                    f"{statistics.mean(r['latency_after_ms'] / r['latency_before_ms'] for r in rs):.2f}",
                ]
            row.append(f"{statistics.mean(r['prune_time_s'] for r in rs):.1f}")
            rows.append(row)
    headers = [
        "target",
        "method",
        "top-1 before %",
        "right after pruning %",
        "after fine-tuning %",
        "drop (points)",
        f"beats {reference}" if reference else "beats reference",
    ]
    if unstructured:
        headers += ["weight sparsity", "non-zero params"]
    else:
        headers += [
            "params after",
            "params removed",
            "FLOPs removed",
            "latency b1 ms",
            "latency pruned/dense",
        ]
    headers.append("prune time s")
    return markdown_table(headers, rows) + "".join(f"\n- {n}" for n in notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=None, help="default: every structured method")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--target-flops", type=float, nargs="+", default=[0.5])
    budget.add_argument("--target-sparsity", type=float, nargs="+", default=None)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument(
        "--method-option",
        nargs="+",
        default=[],
        metavar="ID[@TARGET]:KEY=VALUE",
        help="an option for one method, e.g. taylor:maps_per_step=8, or at one target only, "
        "e.g. nm_sparsity@0.8:m=5 (others keep their defaults)",
    )
    p.add_argument(
        "--reference",
        default=None,
        help="method the others are compared against (default: random_channel for FLOPs "
        "targets, magnitude for sparsity targets)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    p.add_argument("--work", default="runs/compare_methods", help="per-run folders (resume)")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = p.parse_args()
    if args.methods is None:
        args.methods = DEFAULT_METHODS
    if args.reference is None:
        args.reference = "magnitude" if args.target_sparsity else "random_channel"
    for m in args.methods:
        methods.get(m)  # a planned or unknown id fails now, not after hours
    torch.set_num_threads(args.threads)

    runs = run_all(args)
    result = table(runs, args.methods, args.reference if args.reference in args.methods else None)
    targets = args.target_sparsity or args.target_flops
    goal = (
        f"every method prunes to {', '.join(f'{t:.0%}' for t in targets)} weight sparsity"
        if args.target_sparsity
        else f"every method removes {', '.join(f'{t:.0%}' for t in targets)} of the FLOPs"
    )
    setting = (
        f"{args.model} on {args.data} at {args.image_size}x{args.image_size}; baseline {args.epochs} "
        f"epochs (batch {args.batch_size}, SGD lr {args.lr} cosine); {goal}, then "
        f"{args.finetune_epochs} fine-tuning epochs at lr {args.finetune_lr}; methods' own options "
        f"at their defaults (`prunekit methods --show ID`)"
        f"{' except ' + ', '.join(args.method_option) if args.method_option else ''}; "
        f"seeds {args.seeds}; mean ± sd over seeds; latency at batch 1, {args.threads} torch "
        f"thread(s), torch {torch.__version__} (CPU)"
    )
    print(setting)
    print(result)
    if args.out:
        cmd = (
            "python benchmarks/compare_methods.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if k != "out"
                and v not in (None, [])
                and not (k == "target_flops" and args.target_sparsity)
            )
            + f" --out {args.out}"
        )
        title = "Unstructured" if args.target_sparsity else "Structured"
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(
                f"# {title} methods, {args.model} on {args.data}\n\n{setting}\n\n{result}\n\n"
                f"Command: `{cmd}`\n"
            )
        atomic_write_json({"setting": setting, "runs": runs}, f"{args.out}.json")


if __name__ == "__main__":
    main()
