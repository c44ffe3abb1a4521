"""Wall time of every implemented method at its defaults: one run each on ResNet-20 / digits
(32x32) and on ``mnist1d_cnn`` / mnist1d, structured methods at 50% FLOPs removed, unstructured
ones at 80% sparsity.

What is timed is the method's own work (``method.prune(ctx)``: its scoring, searches and training
phases), on a copy of a short baseline (``--epochs``) trained once per model and kept under
``--work``; the runner's fine-tuning afterwards is the same for every method and is not timed.
Each run is a child process with one torch thread and a time limit (``--limit-s``, 10 minutes by
default); a run still going at the limit is recorded as such. Finished runs are kept under
``--work`` as JSON, so an interrupted benchmark resumes. The table flags every run over
``--budget-s`` (five minutes).

    nice python benchmarks/method_walltime.py --out benchmarks/results/method_walltime.md
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

SETUPS = {
    "resnet20/digits": ("resnet20", "digits", 32),
    "mnist1d_cnn/mnist1d": ("mnist1d_cnn", "mnist1d", None),
}
STRUCTURED_TARGET = {"target_flops": 0.5}
# why a method may take long at its defaults (shown beside its time)
NOTES = {
    "taylor": "iterations=10 x 10 SGD updates; maps_per_step=1 (the paper) ~210 iterations",
    "random_channel": "8 candidates x 50 SGD updates each",
}
# sparsity per setup: mnist1d_cnn's first conv and classifier (kept dense) hold 24% of its weights
UNSTRUCTURED_TARGET = {"resnet20/digits": 0.8, "mnist1d_cnn/mnist1d": 0.7}
# a method whose pattern fixes its sparsity runs at that sparsity (2:4 is 50%)
FIXED_SPARSITY = {"nm_sparsity": 0.5}


def load(setup: str) -> tuple[torch.nn.Module, Any, Any, torch.Tensor]:
    """The model (built for the data) and the train and val splits of ``setup``."""
    from prunekit import data, models

    model_name, data_name, size = SETUPS[setup]
    train = data.load(data_name, split="train", image_size=size)
    val = data.load(data_name, split="val", image_size=size)
    info = train.info
    torch.manual_seed(0)
    model = models.create(
        model_name,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_shape[1:],
    )
    return model, train, val, torch.zeros(1, *info.input_shape)


def baseline(setup: str, work: Path, epochs: int) -> Path:
    """A short baseline of ``setup``, trained once (``prunekit.train.fit``) and saved."""
    from prunekit.io import atomic_torch_save
    from prunekit.train import TrainConfig, fit

    path = work / setup.replace("/", "_") / "baseline.pt"
    if path.exists():
        return path
    model, train, val, _ = load(setup)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=0.05)
    fit(model, train, config, val_set=val, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(model.state_dict(), path)
    return path


def run_one(setup: str, method_id: str, weights: Path) -> dict[str, Any]:
    """Time ``method_id`` at its defaults on a copy of the baseline (in this process)."""
    from prunekit import methods

    torch.set_num_threads(1)
    model, train, val, example = load(setup)
    model.load_state_dict(torch.load(weights, weights_only=True))
    structured = methods.entry(method_id).type == "S"
    sparsity = FIXED_SPARSITY.get(method_id, UNSTRUCTURED_TARGET[setup])
    target = STRUCTURED_TARGET if structured else {"target_sparsity": sparsity}
    ctx = methods.Context(
        copy.deepcopy(model),
        example,
        train,
        val,
        target,
        calib_batches=4,
        batch_size=64,
        seed=0,
        options={"progress": False},
    )
    method = methods.get(method_id)
    t0, c0 = time.perf_counter(), time.process_time()
    method.prune(ctx)
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "target": dict(target),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--methods", nargs="+", default=None, help="default: every implemented one")
    p.add_argument("--epochs", type=int, default=3, help="baseline epochs (default 3)")
    p.add_argument("--limit-s", type=int, default=600, help="a run is stopped after this")
    p.add_argument("--budget-s", type=int, default=300, help="runs over this are flagged")
    p.add_argument("--work", default="/tmp/method_walltime")
    p.add_argument("--out", default=None, help="Markdown table to write")
    p.add_argument(
        "--report-only", action="store_true", help="tabulate the finished runs, start none"
    )
    p.add_argument("--one", nargs=3, metavar=("SETUP", "METHOD", "WEIGHTS"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # the child process: one timed run, its result as JSON on stdout
        print(json.dumps(run_one(args.one[0], args.one[1], Path(args.one[2]))))
        return

    from prunekit import methods
    from prunekit.io import atomic_open, atomic_write_json
    from prunekit.tables import markdown_table

    torch.set_num_threads(1)
    ids = args.methods or [e.id for e, status in methods.list_methods() if status == "implemented"]
    work = Path(args.work)
    rows = []
    for setup in args.setups:
        weights = None if args.report_only else baseline(setup, work, args.epochs)
        for method_id in ids:
            done = work / setup.replace("/", "_") / f"{method_id}.json"
            if done.exists():
                result = json.loads(done.read_text())
            elif args.report_only:
                result = {"error": "not run"}
            else:
                cmd = [sys.executable, __file__, "--one", setup, method_id, str(weights)]
                t0 = time.perf_counter()
                try:
                    proc = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=args.limit_s, check=False
                    )
                except subprocess.TimeoutExpired:
                    result = {"error": f"still running after {args.limit_s} s (stopped)"}
                else:
                    if proc.returncode == 0:
                        result = json.loads(proc.stdout.strip().splitlines()[-1])
                    else:
                        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                        result = {"error": last[:300]}
                result["wall_s"] = time.perf_counter() - t0
                done.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(result, done)
            seconds = result.get("seconds")
            cpu = result.get("cpu_seconds")
            flag = NOTES.get(method_id, "") if seconds is not None else result["error"]
            if seconds is not None and seconds > args.budget_s:
                flag = f"over {args.budget_s} s wall; " + flag
            rows.append(
                [
                    setup,
                    method_id,
                    "—" if seconds is None else f"{seconds:.1f}",
                    "—" if cpu is None else f"{cpu:.1f}",
                    flag,
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(
        ["model / data", "method", "prune wall time s", "CPU time s", "note"], rows
    )
    print(table)
    if args.out:
        head = (
            "# Wall time of every implemented method at its defaults\n\n"
            f"`method.prune` at its default options, structured methods at "
            f"{STRUCTURED_TARGET}, unstructured at the sparsity {UNSTRUCTURED_TARGET} (nm_sparsity "
            f"at its pattern's {FIXED_SPARSITY['nm_sparsity']}); baselines trained "
            f"{args.epochs} epochs; one torch thread per run, torch {torch.__version__}, CPU; runs "
            f"stopped after {args.limit_s} s; budget {args.budget_s} s. Wall time is what a "
            "user waits; CPU time (the run's process time) is what the run costs when the "
            "machine is shared (the two differ by the load).\n\n"
        )
        cmd = "python benchmarks/method_walltime.py " + " ".join(sys.argv[1:])
        with atomic_open(Path(args.out), "w") as f:
            f.write(head + table + f"\n\nCommand: `{cmd}`\n")


if __name__ == "__main__":
    main()
