"""Throughput of ``prunekit.train.fit`` against a plain hand-written PyTorch training loop.

Both sides train the same freshly copied model on the same in-memory random 3x32x32 data with
the same batch size, optimizer settings and thread count, for one epoch of ``--steps`` steps.
Runs are interleaved (alternating which side goes first) so drift in machine speed hits both
equally; the table reports the median of ``--repeats`` wall-clock timings of each whole call
(loader set-up included) and the trainer's overhead relative to the plain loop (goal: < 5%).

    python benchmarks/train_speed.py [--model smallcnn resnet20] [--batch-size 128]
                                     [--steps 20] [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.train import TrainConfig, fit

try:  # the model zoo may not exist in every checkout
    from prunekit import models as zoo
except ImportError:  # pragma: no cover
    zoo = None

LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 5e-4


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A CIFAR-sized conv-BN-ReLU stack: cheap enough that per-step overhead would show."""

    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16, 1),
        *block(16, 32, 2),
        *block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "smallcnn":
        return small_cnn()
    if zoo is None:
        raise SystemExit(f"model {name!r} needs prunekit.models, which is not available")
    return zoo.create(name, num_classes=10)


def plain_loop(model: nn.Module, data: TensorDataset, batch_size: int) -> None:
    """What a user would write by hand: the baseline the trainer must not be much slower than."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    model.train()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def prunekit_fit(model: nn.Module, data: TensorDataset, batch_size: int) -> None:
    config = TrainConfig(
        epochs=1,
        batch_size=batch_size,
        lr=LR,
        momentum=MOMENTUM,
        weight_decay=WEIGHT_DECAY,
        device="cpu",
    )
    fit(model, data, config, progress=False)


def time_call(fn: Callable[[nn.Module, TensorDataset, int], None], template: nn.Module,
              data: TensorDataset, batch_size: int) -> float:  # fmt: skip
    model = copy.deepcopy(template)
    start = time.perf_counter()
    fn(model, data, batch_size)
    return time.perf_counter() - start


def bench(name: str, batch_size: int, steps: int, repeats: int) -> dict[str, float]:
    template = build_model(name)
    g = torch.Generator().manual_seed(0)
    n = batch_size * steps
    data = TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    runners = {"plain": plain_loop, "fit": prunekit_fit}
    for fn in runners.values():  # warm-up: allocator, kernels, lazy imports
        time_call(fn, template, data, batch_size)
    times: dict[str, list[float]] = {k: [] for k in runners}
    for rep in range(repeats):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for key in order:
            times[key].append(time_call(runners[key], template, data, batch_size))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {
        "plain_ips": n / med["plain"],
        "fit_ips": n / med["fit"],
        "overhead_pct": 100.0 * (med["fit"] / med["plain"] - 1.0),
        "best_overhead_pct": 100.0 * (best["fit"] / best["plain"] - 1.0),
        "spread_pct": 100.0 * (max(times["plain"]) - best["plain"]) / med["plain"],
    }


def main(argv: list[str] | None = None) -> None:
    default_models = ["smallcnn"] + (["resnet20"] if zoo is not None else [])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", nargs="+", default=default_models,
                   help="smallcnn and/or prunekit.models names (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per side (median)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    header = (
        f"{'model':<10} {'batch':>5} {'steps':>5} {'threads':>7} {'plain img/s':>12} "
        f"{'fit img/s':>10} {'overhead':>9} {'best-run ovh':>12} {'noise':>7}"
    )
    print(header)
    print("-" * len(header))
    for name in args.model:
        r = bench(name, args.batch_size, args.steps, args.repeats)
        print(
            f"{name:<10} {args.batch_size:>5} {args.steps:>5} {torch.get_num_threads():>7} "
            f"{r['plain_ips']:>12.1f} {r['fit_ips']:>10.1f} {r['overhead_pct']:>+8.1f}% "
            f"{r['best_overhead_pct']:>+11.1f}% {r['spread_pct']:>6.1f}%",
            flush=True,
        )
    print(
        f"img/s and overhead: median of {args.repeats} interleaved runs per side "
        "(overhead = fit time / plain time - 1); best-run ovh: the same from the fastest run of "
        "each side; noise: (slowest - fastest) / median of the plain runs"
    )


if __name__ == "__main__":
    main()
