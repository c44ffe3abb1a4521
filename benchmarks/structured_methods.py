"""Structured methods compared on one footing: same model, data, baseline, FLOPs budget and
fine-tuning for every method, several seeds.

For each seed one baseline is trained (``prunekit prune``'s recipe); every method then prunes a
copy of it to the same FLOPs target through ``prunekit.workflow.run_pruning`` (the code path of
``prunekit prune --method ID``), and every pruned model gets the same fine-tuning. Latency is
measured for the dense and the pruned model in the same run, so the speed-up is a ratio taken
under one machine load. Each finished (method, seed) run is kept under ``--work``; rerunning the
command skips them, so an interrupted comparison resumes.

    python benchmarks/structured_methods.py --out benchmarks/results/structured_resnet20_digits
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from prunekit import methods, workflow
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


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    work = Path(args.work)
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
            target_flops=args.target_flops,
            calib_batches=args.calib_batches,
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
        )
        job, train_cfg = workflow.baseline_config(config)
        baseline = None
        for method in args.methods:
            out = work / f"seed{seed}" / method
            done = out / "metrics.json"
            if done.exists():
                runs.append(json.loads(done.read_text()))
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
            opts = tuple(
                o.split(":", 1)[1] for o in args.method_option if o.startswith(f"{method}:")
            )
            cfg = workflow.PruneConfig(**{**vars(config), "method": method, "option": opts})
            m = workflow.run_pruning(cfg, out=out, progress=False, baseline=baseline)
            print(
                f"seed {seed} {method}: {m['acc_before']:.2f} -> {m['acc_pruned']:.2f} -> "
                f"{m['acc_finetuned']:.2f}% FLOPs -{1 - m['flops_after'] / m['flops_before']:.3f} "
                f"(prune {m['prune_time_s']:.0f}s)",
                flush=True,
            )
            runs.append(m)
    return runs


def table(runs: list[dict[str, Any]], method_ids: list[str]) -> str:
    rows = []
    by_method = {m: [r for r in runs if r["method"] == m] for m in method_ids}
    ref = by_method.get("random_channel")
    ref_acc = statistics.mean(r["acc_finetuned"] for r in ref) if ref else None
    for m in method_ids:
        rs = by_method[m]
        if not rs:
            continue
        fin = statistics.mean(r["acc_finetuned"] for r in rs)
        beats = (
            "—" if m == "random_channel" or ref_acc is None else ("yes" if fin > ref_acc else "no")
        )
        rows.append(
            [
                m,
                mean_sd([r["acc_before"] for r in rs]),
                mean_sd([r["acc_pruned"] for r in rs]),
                mean_sd([r["acc_finetuned"] for r in rs]),
                beats,
                f"{statistics.mean(r['params_after'] for r in rs):,.0f}",
                f"{statistics.mean(1 - r['params_after'] / r['params_before'] for r in rs):.1%}",
                f"{statistics.mean(1 - r['flops_after'] / r['flops_before'] for r in rs):.1%}",
                f"{statistics.mean(r['latency_after_ms'] for r in rs):.3f}",
                f"{statistics.mean(r['latency_after_ms'] / r['latency_before_ms'] for r in rs):.2f}",
                f"{statistics.mean(r['prune_time_s'] for r in rs):.1f}",
            ]
        )
    headers = [
        "method",
        "top-1 before %",
        "right after pruning %",
        "after fine-tuning %",
        "beats random_channel",
        "params after",
        "params removed",
        "FLOPs removed",
        "latency b1 ms",
        "latency pruned/dense",
        "prune time s",
    ]
    return markdown_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target-flops", type=float, default=0.5)
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument(
        "--method-option",
        nargs="+",
        default=[],
        metavar="ID:KEY=VALUE",
        help="an option for one method, e.g. taylor:maps_per_step=8 (others keep their defaults)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings)")
    p.add_argument("--work", default="runs/structured_methods", help="per-run folders (resume)")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = p.parse_args()
    for m in args.methods:
        methods.get(m)  # a planned or unknown id fails now, not after hours
    torch.set_num_threads(args.threads)

    runs = run_all(args)
    result = table(runs, args.methods)
    setting = (
        f"{args.model} on {args.data} at {args.image_size}x{args.image_size}; baseline {args.epochs} "
        f"epochs (batch {args.batch_size}, SGD lr {args.lr} cosine); every method removes "
        f"{args.target_flops:.0%} of the FLOPs, then {args.finetune_epochs} fine-tuning epochs at lr "
        f"{args.finetune_lr}; methods' own options at their defaults (`prunekit methods --show ID`)"
        f"{' except ' + ', '.join(args.method_option) if args.method_option else ''}; "
        f"seeds {args.seeds}; mean ± sd over seeds; latency at batch 1, {args.threads} torch "
        f"thread(s), torch {torch.__version__} (CPU)"
    )
    print(setting)
    print(result)
    if args.out:
        cmd = (
            "python benchmarks/structured_methods.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
                if k != "out"
            )
            + f" --out {args.out}"
        )
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(
                f"# Structured methods, {args.model} on {args.data}\n\n{setting}\n\n{result}\n\n"
                f"Command: `{cmd}`\n"
            )
        atomic_write_json({"setting": setting, "runs": runs}, f"{args.out}.json")


if __name__ == "__main__":
    main()
