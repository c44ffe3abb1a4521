"""Latency of dense and channel-pruned CNNs under torch and under onnxruntime (CPU).

Each model (32x32 inputs, 10 classes, untrained: latency does not depend on the weights) is
pruned with ``prunekit.prune.prune_channels`` to remove half its FLOPs, both versions are exported
to ONNX (dynamic batch), and one Markdown table gives, per model: FLOPs dense and pruned, the
median latency at batch 1 and batch 32 under torch (``prunekit.measure.measure_latency``) and
under onnxruntime (``prunekit.export.onnx_latency``), dense, pruned and pruned/dense, and the
largest absolute difference between torch's and onnxruntime's outputs.

    python benchmarks/onnx_latency.py [--models resnet20,vgg11] [--threads 1] [--round-to 8]
        [--out FILE.md]

onnxruntime's CPU convolutions work on channel blocks of 8 or 16, so widths that are not a
multiple of the block gain less from pruning under onnxruntime than under torch; ``--round-to 8``
keeps every pruned width a multiple of 8.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
from pathlib import Path

import torch

from prunekit.export import check_onnx, export_onnx, onnx_latency
from prunekit.io import atomic_open
from prunekit.measure import batch_of, count_flops, measure_latency
from prunekit.models import create
from prunekit.prune import prune_channels
from prunekit.tables import markdown_table

BATCHES = (1, 32)
HEADERS = [
    "model",
    "FLOPs dense",
    "FLOPs pruned",
    "torch b1 dense (ms)",
    "torch b1 pruned (ms)",
    "torch b1 ratio",
    "torch b32 dense (ms)",
    "torch b32 pruned (ms)",
    "torch b32 ratio",
    "ORT b1 dense (ms)",
    "ORT b1 pruned (ms)",
    "ORT b1 ratio",
    "ORT b32 dense (ms)",
    "ORT b32 pruned (ms)",
    "ORT b32 ratio",
    "max abs diff",
]


def measure(
    model: torch.nn.Module, x: torch.Tensor, folder: Path, threads: int, min_run_time: float
) -> dict[str, float]:
    """FLOPs per sample, torch and onnxruntime latency per batch size, torch-vs-ONNX difference."""
    out: dict[str, float] = {"flops": count_flops(model, x).flops}
    for n in BATCHES:
        xb = batch_of(x, n)
        lat = measure_latency(model, xb, threads=threads, min_run_time=min_run_time)
        out[f"torch_b{n}"] = lat.median_ms
    path = export_onnx(model, x, folder / f"{type(model).__name__}-{id(model)}.onnx")
    diff = max(check_onnx(path, model, batch_of(x, n)) for n in BATCHES)
    out["diff"] = diff
    ort = onnx_latency(path, x, batch_sizes=BATCHES, threads=threads, min_run_time=min_run_time)
    for n, ms in ort.items():
        out[f"ort_b{n}"] = ms
    return out


def row(name: str, dense: dict[str, float], pruned: dict[str, float]) -> list[object]:
    cells: list[object] = [name, int(dense["flops"]), int(pruned["flops"])]
    for engine in ("torch", "ort"):
        for n in BATCHES:
            key = f"{engine}_b{n}"
            cells += [dense[key], pruned[key], f"{pruned[key] / dense[key]:.2f}x"]
    cells.append(f"{max(dense['diff'], pruned['diff']):.1e}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,vgg11", help="comma-separated zoo names")
    parser.add_argument("--target-flops", type=float, default=0.5, help="fraction removed")
    parser.add_argument(
        "--round-to", type=int, default=None, help="keep pruned widths multiples of this"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    x = torch.randn(1, 3, 32, 32)
    with tempfile.TemporaryDirectory(prefix="prunekit-onnx-bench-") as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            dense = create(name, num_classes=10).eval()
            pruned = copy.deepcopy(dense)
            prune_channels(pruned, x, target_flops=args.target_flops, round_to=args.round_to)
            pruned.eval()
            figures = [
                measure(m, x, Path(tmp), args.threads, args.min_run_time) for m in (dense, pruned)
            ]
            rows.append(row(name, *figures))
            print(f"measured {name}", flush=True)

    text = "\n".join(
        [
            f"# Dense vs pruned ({args.target_flops:.0%} of FLOPs removed) latency: torch vs "
            "onnxruntime",
            "",
            f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), "
            f"pruned widths rounded to {args.round_to or 1}, "
            f"torch {torch.__version__}, median of >= {args.min_run_time:g} s per figure; "
            "FLOPs per sample at 32x32; ratio = pruned / dense; max abs diff = torch vs "
            "onnxruntime outputs over both models and both batch sizes.",
            "",
            markdown_table(HEADERS, rows),
            "",
        ]
    )
    print(text)
    if args.out is not None:
        with atomic_open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
