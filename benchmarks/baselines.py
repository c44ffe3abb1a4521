"""Baseline accuracy and training time of reference models on a data set (default: digits).

Every model gets the same recipe (SGD momentum 0.9, cosine schedule, weight decay 5e-4) through
``prunekit.workflow.train_model``, the code path of ``prunekit train``. Prints a Markdown table
and, with ``--out``, writes it beside a JSON file of the raw figures.

    python benchmarks/baselines.py --models lenet5 resnet20 vgg11 --seeds 0 1 \
        --out benchmarks/results/digits_baselines
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from prunekit import workflow
from prunekit.io import atomic_open, atomic_write_json
from prunekit.tables import markdown_table
from prunekit.train import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet5", "resnet20", "vgg11"])
    p.add_argument("--data", default="digits")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = p.parse_args()

    raw = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for seed in args.seeds:
                config = TrainConfig(
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed
                )
                job = workflow.TrainJob(model=model, data=args.data)
                m = workflow.train_model(
                    job, config, out=Path(tmp) / f"{model}-{seed}", progress=False
                )
                raw.append(
                    {k: m[k] for k in ("model", "test_top1", "train_time_s", "params", "macs")}
                    | {"seed": seed}
                )
                print(
                    f"{model} seed {seed}: top-1 {m['test_top1']:.2f}% in {m['train_time_s']:.1f}s",
                    flush=True,
                )

    rows = []
    for model in args.models:
        runs = [r for r in raw if r["model"] == model]
        accs = [r["test_top1"] for r in runs]
        times = [r["train_time_s"] for r in runs]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append(
            [
                model,
                f"{statistics.mean(accs):.2f} ± {spread:.2f}",
                statistics.mean(times),
                runs[0]["params"],
                runs[0]["macs"],
            ]
        )
    headers = ["model", "test top-1 % (mean ± sd)", "train time s", "params", "MACs"]
    table = markdown_table(headers, rows)
    setting = (
        f"{args.data}, {args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} cosine, "
        f"wd 5e-4, seeds {args.seeds}, torch {torch.__version__}, {torch.get_num_threads()} threads (CPU)"
    )
    print(setting)
    print(table)
    if args.out:
        cmd = "python benchmarks/baselines.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
        )
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(f"# Baselines on {args.data}\n\n{setting}\n\n{table}\n\nCommand: `{cmd}`\n")
        atomic_write_json({"setting": setting, "runs": raw}, f"{args.out}.json")


if __name__ == "__main__":
    main()
