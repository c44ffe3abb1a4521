"""File sizes of prunekit's sparse storage for resnet20 at several unstructured sparsities.

Each conv/linear weight of a seeded ``resnet20`` (CIFAR, 10 classes) has its smallest-magnitude
fraction zeroed, per layer; biases and norm layers stay dense, so the model's overall sparsity is a
little lower than the per-layer one. For each sparsity the model is written as a plain
``torch.save(state_dict)`` file and with :func:`prunekit.compress.save_sparse` in each encoding;
every byte count is the size of the file on disk.

    python benchmarks/sparse_storage.py [--out benchmarks/results/sparse_storage.md]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from prunekit import masks
from prunekit.compress import load_sparse, save_sparse
from prunekit.models import create

SPARSITIES = (0.0, 0.5, 0.9, 0.98)
# (column title, save_sparse keyword arguments)
VARIANTS = (
    ("bitmask fp32", {"fmt": "bitmask"}),
    ("csr fp32", {"fmt": "csr"}),
    ("auto fp32", {"fmt": "auto"}),
    ("auto fp16", {"fmt": "auto", "dtype": "fp16"}),
)


def prune_by_magnitude(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude ``sparsity`` of every conv/linear weight, per layer."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks.prune(model, sparsity, scope="layer", include=layers)
    masks.finalize(model)


def table() -> str:
    """The markdown table: one row per sparsity, byte counts and ratios to the dense file."""
    head = ["layer sparsity", "model sparsity", "dense torch.save"]
    head += [title for title, _ in VARIANTS] + ["auto fp32 / dense", "auto fp16 / dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in SPARSITIES:
            torch.manual_seed(0)
            model = create("resnet20").eval()
            prune_by_magnitude(model, sparsity)
            dense_path = Path(tmp) / "dense.pt"
            torch.save(model.state_dict(), dense_path)
            dense = dense_path.stat().st_size
            sizes: dict[str, int] = {}
            for title, kwargs in VARIANTS:
                path = Path(tmp) / "sparse.pks"
                report = save_sparse(model, path, **kwargs)  # type: ignore[arg-type]
                sizes[title] = report.bytes_written
                if "fp32" in title:  # check the claim the table rests on: nothing was lost
                    back = load_sparse(path)
                    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
                model_sparsity = report.sparsity
            row = [f"{sparsity:.0%}", f"{model_sparsity:.1%}", f"{dense:,}"]
            row += [f"{sizes[title]:,}" for title, _ in VARIANTS]
            row += [f"{sizes['auto fp32'] / dense:.3f}", f"{sizes['auto fp16'] / dense:.3f}"]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    args = parser.parse_args()
    text = table()
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Sparse storage: resnet20 file sizes\n\n"
            "Produced by `python benchmarks/sparse_storage.py --out "
            "benchmarks/results/sparse_storage.md` (torch "
            f"{torch.__version__}). Byte counts are file sizes on disk. *Layer sparsity*: "
            "fraction of each conv/linear weight zeroed by magnitude, per layer; *model "
            "sparsity*: zeros among all stored elements (biases and BatchNorm stay dense). "
            "fp32 files reload bit-exactly (checked by the script); fp16 files reload as the "
            "fp16-rounded values.\n\n" + text + "\n"
        )


if __name__ == "__main__":
    main()
