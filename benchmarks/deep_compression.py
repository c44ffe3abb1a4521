"""Deep Compression end to end: prune, share weights by k-means, fine-tune the centroids, write the
Huffman-coded file, load it back and test it.

For each model and seed a baseline is trained on the data set, the ``deep_compression`` method
runs through ``prunekit.workflow.run_pruning`` (the path of ``prunekit prune --method
deep_compression``), the pruned model is written by ``prunekit.compress.deep_compression.
compress_model`` (the path of ``prunekit compress``), and the model rebuilt from that file by
``prunekit.load`` is evaluated on the test split. The ratio is the file's bytes against the fp32
dense weights (4 bytes per parameter), as the paper counts it. Finished runs are kept under
``--work`` and skipped on a rerun.

    python benchmarks/deep_compression.py --out benchmarks/results/deep_compression_lenet_digits
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from prunekit import load, workflow
from prunekit.compress.deep_compression import compress_model
from prunekit.io import atomic_open, atomic_write_json
from prunekit.tables import markdown_table
from prunekit.train import evaluate

PAPER = {"lenet_300_100": "40x, err 1.64 -> 1.58", "lenet5": "39x, err 0.80 -> 0.74"}


def one_run(args: argparse.Namespace, model: str, seed: int) -> dict[str, Any]:
    out = Path(args.work) / model / f"seed{seed}"
    done = out / "deep_compression.json"
    if done.exists():
        return json.loads(done.read_text())
    bits = dict(o.split("=", 1) for o in args.option)
    config = workflow.PruneConfig(
        model=model,
        data=args.data,
        image_size=args.image_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        method="deep_compression",
        target_sparsity=args.target_sparsity,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        option=tuple(args.option),
    )
    m = workflow.run_pruning(config, out=out, progress=False)
    pruned = load(out / "pruned.pt")
    report = compress_model(
        pruned,
        out / "model.pkdc",
        bits_conv=int(bits.get("bits_conv", 8)),
        bits_fc=int(bits.get("bits_fc", 5)),
    )
    restored = load(out / "model.pkdc")
    job, _ = workflow.baseline_config(config)
    setup = workflow.prepare(
        job.model, job.data, root=job.root, image_size=job.image_size, augment=False, seed=seed
    )
    x = setup.example_input()
    with torch.no_grad():
        same = torch.equal(pruned.eval()(x), restored.eval()(x))
    result = {
        "model": model,
        "seed": seed,
        "acc_before": m["acc_before"],
        "acc_pruned_quantised": m["acc_pruned"],
        "acc_finetuned": m["acc_finetuned"],
        "acc_from_file": evaluate(restored, setup.test_set)["top1"],
        "outputs_equal_quantised_model": same,
        "sparsity": m["sparsity"],
        "params": m["params_before"],
        "file_bytes": report.bytes_written,
        "dense_fp32_bytes": report.dense_bytes,
        "torch_save_bytes": report.torch_save_bytes,
        "ratio": report.ratio,
    }
    atomic_write_json(result, done)
    return result


def mean_sd(values: list[float], fmt: str = "{:.2f}") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


def table(runs: list[dict[str, Any]]) -> str:
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        rows.append(
            [
                model,
                f"{rs[0]['params']:,}",
                mean_sd([r["acc_before"] for r in rs]),
                mean_sd([r["acc_from_file"] for r in rs]),
                mean_sd([r["acc_before"] - r["acc_from_file"] for r in rs]),
                f"{statistics.mean(r['sparsity'] for r in rs):.3f}",
                f"{statistics.mean(r['file_bytes'] for r in rs):,.0f}",
                f"{rs[0]['dense_fp32_bytes']:,}",
                mean_sd([r["ratio"] for r in rs], "{:.1f}") + "x",
                "yes" if all(r["outputs_equal_quantised_model"] for r in rs) else "NO",
                PAPER.get(model, "—"),
            ]
        )
    headers = [
        "model",
        "params",
        "top-1 dense %",
        "top-1 from the file %",
        "drop (points)",
        "weight sparsity",
        "file bytes",
        "fp32 dense bytes",
        "ratio",
        "file outputs = quantised model",
        "paper (MNIST)",
    ]
    return markdown_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5"])
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--target-sparsity", type=float, default=0.92)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--finetune-lr", type=float, default=0.001)
    p.add_argument(
        "--option",
        nargs="+",
        default=["prune_iterations=3", "prune_epochs=3", "quant_epochs=3"],
        metavar="KEY=VALUE",
        help="deep_compression options (prunekit methods --show deep_compression)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/deep_compression")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    for model in args.models:
        for seed in args.seeds:
            r = one_run(args, model, seed)
            print(
                f"{model} seed {seed}: {r['acc_before']:.2f}% -> {r['acc_from_file']:.2f}% from "
                f"{r['file_bytes']:,} bytes ({r['ratio']:.1f}x)",
                flush=True,
            )
            runs.append(r)
    setting = (
        f"{args.data} at {args.image_size}x{args.image_size}; baseline {args.epochs} epochs (batch "
        f"{args.batch_size}, SGD lr {args.lr} cosine); deep_compression to "
        f"{args.target_sparsity:.0%} weight sparsity with options {' '.join(args.option)}, then "
        f"{args.finetune_epochs} fine-tuning epochs of the centroids at lr {args.finetune_lr}; "
        f"seeds {args.seeds}, mean ± sd; accuracy of the model rebuilt from the file"
    )
    result = table(runs)
    print(setting)
    print(result)
    if args.out:
        cmd = (
            f"python benchmarks/deep_compression.py --models {' '.join(args.models)} --data "
            f"{args.data} --image-size {args.image_size} --seeds {' '.join(map(str, args.seeds))} "
            f"--epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} "
            f"--target-sparsity {args.target_sparsity} --finetune-epochs {args.finetune_epochs} "
            f"--finetune-lr {args.finetune_lr} --option {' '.join(args.option)} --threads "
            f"{args.threads} --out {args.out}"
        )
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(f"# Deep Compression on LeNets\n\n{setting}\n\n{result}\n\nCommand: `{cmd}`\n")
        atomic_write_json({"setting": setting, "runs": runs}, f"{args.out}.json")


if __name__ == "__main__":
    main()
