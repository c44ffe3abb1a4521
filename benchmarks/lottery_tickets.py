"""Lottery tickets: test accuracy against the weights remaining, round by round of iterative
magnitude pruning, for the three ways of resetting the surviving weights (Frankle & Carbin's
reset to the initial values, rewinding to an early iteration, and the random re-initialisation
control).

Each (reset, seed) run is the ``lth`` method through ``prunekit.methods`` on the data set's
train split: it re-initialises the model under the seed (``theta_0``), trains it, then prunes
``rate_per_round`` of the remaining weights per round, resets, and retrains. After every round's
training the model is evaluated on the test split (a training callback at the last epoch of the
round). Finished runs are kept under ``--work`` and skipped on a rerun.

    python benchmarks/lottery_tickets.py --out benchmarks/results/lottery_tickets_lenet300_digits
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import torch
from matplotlib.figure import Figure

from prunekit import methods, workflow
from prunekit.io import atomic_open, atomic_write_json
from prunekit.tables import markdown_table
from prunekit.train import evaluate

RESETS = {
    "init": "reset to init (the ticket)",
    "rewind": "rewind",
    "random": "random re-init (control)",
}


def one_run(args: argparse.Namespace, reset: str, seed: int) -> dict[str, Any]:
    done = Path(args.work) / f"{reset}-seed{seed}.json"
    if done.exists():
        return json.loads(done.read_text())
    setup = workflow.prepare(
        args.model, args.data, image_size=args.image_size, augment=False, seed=seed
    )
    test_top1: list[float] = []

    def test_at_round_end(event: str, state: dict[str, Any]) -> None:
        if event == "epoch_end" and state["epoch"] == state["config"].epochs:
            test_top1.append(evaluate(state["model"], setup.test_set)["top1"])

    method = methods.get("lth")
    method.callbacks = [test_at_round_end]
    ctx = methods.Context(
        setup.model,
        setup.example_input(),
        setup.train_set,
        setup.val_set,
        {"target_sparsity": args.target_sparsity},
        batch_size=args.batch_size,
        seed=seed,
        options={
            "progress": False,
            # the control: the masks of the ticket reset to init, trained from a new draw
            "reset": "init" if reset == "random" else reset,
            "random_control": reset == "random",
            "rate_per_round": args.rate,
            "round_epochs": args.round_epochs,
            "rewind_steps": args.rewind_steps,
            "lr": args.lr,
            "schedule": args.schedule,
            "scope": args.scope,
        },
    )
    method.prune(ctx)
    if len(test_top1) != len(method.rounds):
        raise RuntimeError(f"{len(test_top1)} test evaluations for {len(method.rounds)} rounds")
    rounds = [
        {
            "round": r["round"],
            "weights_left": 1.0 - r["sparsity"],
            "val_top1": r["val_top1"],
            "test_top1": t,
        }
        for r, t in zip(method.rounds, test_top1, strict=True)
    ]
    result = {"reset": reset, "seed": seed, "rounds": rounds}
    atomic_write_json(result, done)
    return result


def curves(runs: list[dict[str, Any]]) -> dict[str, list[tuple[float, float, float]]]:
    """Per reset: (weights left, mean test top-1, sd) per round, over seeds."""
    out = {}
    for reset in RESETS:
        rs = [r["rounds"] for r in runs if r["reset"] == reset]
        if not rs:
            continue
        points = []
        for i in range(min(len(r) for r in rs)):
            accs = [r[i]["test_top1"] for r in rs]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            points.append((rs[0][i]["weights_left"], statistics.mean(accs), sd))
        out[reset] = points
    return out


def plot(data: dict[str, list[tuple[float, float, float]]], path: str, title: str) -> None:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for reset, points in data.items():
        x = [100 * p[0] for p in points]
        ax.errorbar(
            x,
            [p[1] for p in points],
            yerr=[p[2] for p in points],
            marker="o",
            markersize=3,
            capsize=2,
            label=RESETS[reset],
        )
    ax.set_xscale("log")
    ticks = [
        t
        for t in (100, 50, 20, 10, 5, 2, 1, 0.5)
        if t >= min(100 * p[0] for v in data.values() for p in v)
    ]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def table(data: dict[str, list[tuple[float, float, float]]]) -> str:
    resets = list(data)
    n = min(len(v) for v in data.values())
    rows = []
    for i in range(n):
        rows.append(
            [str(i), f"{100 * data[resets[0]][i][0]:.1f}"]
            + [f"{data[r][i][1]:.2f} ± {data[r][i][2]:.2f}" for r in resets]
        )
    return markdown_table(["round", "weights left %", *(RESETS[r] for r in resets)], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="lenet_300_100")
    p.add_argument("--data", default="digits")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--resets", nargs="+", default=list(RESETS), choices=list(RESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--target-sparsity", type=float, default=0.985)
    p.add_argument("--rate", type=float, default=0.2, help="fraction pruned per round")
    p.add_argument("--round-epochs", type=int, default=10)
    p.add_argument("--rewind-steps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--scope", default="layer")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/lottery_tickets")
    p.add_argument("--out", default=None, help="write OUT.md, OUT.json and OUT.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    for reset in args.resets:
        for seed in args.seeds:
            r = one_run(args, reset, seed)
            last = r["rounds"][-1]
            print(
                f"{reset} seed {seed}: {len(r['rounds'])} rounds, "
                f"{100 * last['weights_left']:.1f}% left: {last['test_top1']:.2f}%",
                flush=True,
            )
            runs.append(r)
    data = curves(runs)
    setting = (
        f"{args.model} on {args.data} at {args.image_size}x{args.image_size}; lth prunes "
        f"{args.rate:.0%} of the remaining weights per round ({args.scope} scope) down to "
        f"{1 - args.target_sparsity:.1%} left; {args.round_epochs} epochs of SGD (lr {args.lr}, "
        f"{args.schedule}, momentum 0.9, batch {args.batch_size}) per round; rewinding to step "
        f"{args.rewind_steps}; seeds {args.seeds}, mean ± sd of the test top-1 after each round's "
        "training"
    )
    result = table(data)
    print(setting)
    print(result)
    if args.out:
        plot(data, f"{args.out}.png", f"Lottery tickets, {args.model} on {args.data}")
        cmd = (
            f"python benchmarks/lottery_tickets.py --model {args.model} --data {args.data} "
            f"--image-size {args.image_size} --resets {' '.join(args.resets)} --seeds "
            f"{' '.join(map(str, args.seeds))} --target-sparsity {args.target_sparsity} --rate "
            f"{args.rate} --round-epochs {args.round_epochs} --rewind-steps {args.rewind_steps} "
            f"--lr {args.lr} --schedule {args.schedule} --scope {args.scope} --batch-size "
            f"{args.batch_size} --threads {args.threads} --out {args.out}"
        )
        name = Path(args.out).name
        with atomic_open(f"{args.out}.md", "w") as f:
            f.write(
                f"# Lottery tickets, {args.model} on {args.data}\n\n{setting}\n\n"
                f"![accuracy against weights remaining]({name}.png)\n\n{result}\n\n"
                f"Command: `{cmd}`\n"
            )
        atomic_write_json({"setting": setting, "runs": runs}, f"{args.out}.json")


if __name__ == "__main__":
    main()
