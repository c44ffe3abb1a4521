"""The methods that search a per-layer allocation (legr, bo_rates, amc) beside uniform rates
(every layer the same fraction, lowest-L1 filters), random channel pruning (random allocations,
best after a short fine-tune) and a strong one-shot method, at equal FLOPs: the same baseline
per seed, the same fine-tuning, several seeds and targets, each search's wall time.

Each finished (seed, target, method) run is kept under ``--work``; rerunning skips it.

    nice python benchmarks/search_methods.py --target-flops 0.5 0.7 --seeds 0 1 2 \
        --out benchmarks/results/search_methods_resnet20_digits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prunekit import workflow
from prunekit.errors import ConfigError
from prunekit.io import atomic_open, atomic_write_json

sys.path.insert(0, str(Path(__file__).parent))
from compare_methods import table  # the comparison's table, one row per method

UNIFORM = "uniform"  # not a method: the l1 criterion with one ratio per layer
DEFAULT = [UNIFORM, "random_channel", "lasso_channel", "legr", "bo_rates", "amc"]


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
            calib_batches=args.calib_batches,
            finetune_epochs=args.finetune_epochs,
            finetune_lr=args.finetune_lr,
        )
        job, train_cfg = workflow.baseline_config(config)
        baseline = None
        for target in args.target_flops:
            for method in args.methods:
                out = work / f"seed{seed}" / f"flops{target:g}" / method
                done = out / "metrics.json"
                if args.report_only and not done.exists():
                    continue
                if done.exists():
                    runs.append(
                        {**json.loads(done.read_text()), "target": target, "method": method}
                    )
                    continue
                if baseline is None:
                    baseline = workflow.train_and_test(
                        job,
                        train_cfg,
                        checkpoint=work / f"seed{seed}" / "baseline.pt",
                        progress=False,
                    )
                    print(f"seed {seed}: baseline {baseline.test['top1']:.2f}%", flush=True)
                if method == UNIFORM:
                    cfg = dataclasses.replace(
                        config, method=None, importance="l1", scope="layer", target_flops=target
                    )
                else:
                    opts = tuple(args.search_option) if method in args.searches else ()
                    cfg = dataclasses.replace(
                        config, method=method, option=opts, target_flops=target
                    )
                t0 = time.perf_counter()
                try:
                    m = workflow.run_pruning(cfg, out=out, progress=False, baseline=baseline)
                except ConfigError as e:
                    m = {"method": method, "seed": seed, "target": target, "error": str(e)}
                    atomic_write_json(m, done)
                    print(f"seed {seed} {target:g} {method}: not run: {e}", flush=True)
                    runs.append(m)
                    continue
                m.update(target=target, method=method)
                print(
                    f"seed {seed} flops {target:g} {method}: {m['acc_before']:.2f} -> "
                    f"{m['acc_pruned']:.2f} -> {m['acc_finetuned']:.2f}% FLOPs "
                    f"-{1 - m['flops_after'] / m['flops_before']:.3f} (prune "
                    f"{m['prune_time_s']:.0f}s, run {time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
                runs.append(m)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--methods", nargs="+", default=DEFAULT)
    p.add_argument(
        "--searches",
        nargs="+",
        default=["legr", "bo_rates", "amc"],
        help="the methods --search-option applies to",
    )
    p.add_argument(
        "--search-option",
        nargs="+",
        default=["search_budget=40"],
        metavar="KEY=VALUE",
        help="options of every search method",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target-flops", type=float, nargs="+", default=[0.5, 0.7])
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/search_methods")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    p.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, run nothing"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = run_all(args)
    result = table(runs, args.methods, UNIFORM)
    setting = (
        f"{args.model} on {args.data} at {args.image_size}x{args.image_size}; baseline "
        f"{args.epochs} epochs (batch {args.batch_size}, SGD lr {args.lr} cosine); every method "
        f"removes {', '.join(f'{t:.0%}' for t in args.target_flops)} of the FLOPs, then "
        f"{args.finetune_epochs} fine-tuning epochs at lr {args.finetune_lr}; `{UNIFORM}`: the "
        f"same fraction of every layer, lowest L1 first; search methods with "
        f"{' '.join(args.search_option)}, other options at their defaults; seeds {args.seeds}; "
        f"mean ± sd over seeds; prune time = the search's wall time on a shared 2-core CPU; "
        f"torch {torch.__version__}"
    )
    print(setting)
    print(result)
    if args.out:
        cmd = "python benchmarks/search_methods.py " + " ".join(
            a for a in sys.argv[1:] if a != "--report-only"
        )
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(
                f"# Search methods, {args.model} on {args.data}\n\n{setting}\n\n{result}\n\n"
                f"Command: `{cmd}`\n"
            )
        atomic_write_json({"setting": setting, "runs": runs}, f"{args.out}.json")


if __name__ == "__main__":
    main()
