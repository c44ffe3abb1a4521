"""Where a pruned model's time goes: per kind of layer, timed inside the running network.

``benchmarks/latency_budget.py`` reports how much of the MACs removed shows up as time saved
(speed-up / MACs reduction). This script says why that ratio stops where it does. For each model
(224x224 input, seeded random weights, batch 1, one thread: ``graph_speed.py``'s setting) it
prunes a copy to ``--target-flops`` (L1 filter norm, one ratio per group) and optionally a copy
padded to a channel multiple (``--round-to``), then, in interleaved rounds:

* times every leaf layer **in place** (forward pre-hook and hook around each call, the median
  over ``--iters`` forward passes), summed per kind: stem / k x k conv, 1x1 conv, depthwise
  conv, normalisation, activation, linear; "rest" is the whole-model latency (same passes,
  without hooks) less the hooked layers: the functional ops between them (additions,
  pooling, flattening) and the interpreter;
* counts the MACs of each kind (``prunekit.measure.count_flops`` per layer).

``--allocator steady`` (the default) keeps glibc from faulting activation pages in afresh every
pass (``prunekit.measure.keep_freed_memory``; see ``latency_budget.py``); the whole-model row
gives each model's page faults per pass.

Reported per (model, variant, kind): ms dense and pruned, the kind's speed-up and MACs reduction,
and its share of the pruned model's time. A kind whose speed-up falls far below its MACs
reduction (a fixed cost per call, a layout conversion) caps the whole model's ratio however the
channels are chosen; the last column says by how much.

    nice python benchmarks/layer_breakdown.py [--models mobilenetv2_imagenet resnet50]
        [--target-flops 0.6] [--round-to 16] [--iters 40] [--rounds 3]
        [--out benchmarks/results/layer_breakdown.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit import models as zoo
from prunekit.io import atomic_open
from prunekit.measure import ALLOCATORS, count_flops, faults_per_pass, use_allocator
from prunekit.prune import prune_channels
from prunekit.tables import markdown_table

SIDE = 224
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "layer_breakdown.md"
KINDS = ("k x k conv", "1x1 conv", "depthwise conv", "norm", "activation", "linear", "rest")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU, nn.Hardsigmoid, nn.Sigmoid)


def kind_of(module: nn.Module) -> str | None:
    """The kind a leaf layer is counted under; None for one that is not timed on its own."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        return "1x1 conv" if module.kernel_size == (1, 1) else "k x k conv"
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, _ACTS):
        return "activation"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def layer_times(model: nn.Module, x: torch.Tensor, iters: int) -> tuple[dict[str, float], float]:
    """Per kind, the summed median time (ms) of its layers inside ``model``'s forward, and the
    median whole-model time (ms) over the same number of passes without hooks."""
    calls: dict[str, list[float]] = {}
    start: dict[str, float] = {}
    hooks = []
    kinds = {}
    for name, module in model.named_modules():
        kind = kind_of(module)
        if kind is None:
            continue
        kinds[name] = kind

        def pre(_m, _i, name=name):
            start[name] = time.perf_counter()

        def post(_m, _i, _o, name=name):
            calls.setdefault(name, []).append(time.perf_counter() - start[name])

        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        calls.clear()
        for _ in range(iters):
            model(x)
        for h in hooks:
            h.remove()
        whole = []
        for _ in range(iters):
            t0 = time.perf_counter()
            model(x)
            whole.append(time.perf_counter() - t0)
    per_kind = dict.fromkeys(KINDS, 0.0)
    for name, times in calls.items():
        per_kind[kinds[name]] += statistics.median(times) * 1e3
    total = statistics.median(whole) * 1e3
    per_kind["rest"] = max(0.0, total - sum(per_kind.values()))
    return per_kind, total


def macs_per_kind(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """MACs of each kind's layers, counted on each layer's real input."""
    inputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if kind_of(module) is not None:
            hooks.append(
                module.register_forward_pre_hook(
                    lambda _m, i, name=name: inputs.__setitem__(name, i[0])
                )
            )
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    out = dict.fromkeys(KINDS, 0)
    modules = dict(model.named_modules())
    for name, inp in inputs.items():
        out[kind_of(modules[name])] += count_flops(modules[name], inp).macs
    return out


def bench(name: str, args: argparse.Namespace) -> list[list[str]]:
    torch.manual_seed(0)
    dense = zoo.create(name, num_classes=1000).eval()
    x = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    variants: dict[str, nn.Module] = {"dense": dense}
    pruned = copy.deepcopy(dense)
    prune_channels(pruned, x, target_flops=args.target_flops)
    variants[f"flops {args.target_flops:g}"] = pruned
    if args.round_to > 1:
        rounded = copy.deepcopy(dense)
        prune_channels(rounded, x, target_flops=args.target_flops, round_to=args.round_to)
        variants[f"flops {args.target_flops:g}, round_to {args.round_to}"] = rounded
    rounds: dict[str, list[tuple[dict[str, float], float]]] = {k: [] for k in variants}
    for r in range(args.rounds):
        print(f"[{name}] round {r + 1}/{args.rounds}", flush=True)
        for key, model in variants.items():
            rounds[key].append(layer_times(model, x, args.iters))
    # the round with the fastest whole model of each variant (other processes' time left out)
    best = {k: min(v, key=lambda t: t[1]) for k, v in rounds.items()}
    macs = {k: macs_per_kind(m, x) for k, m in variants.items()}
    faults = {k: faults_per_pass(m, x) for k, m in variants.items()}
    d_kind, d_total = best["dense"]
    rows = []
    for key in variants:
        if key == "dense":
            continue
        p_kind, p_total = best[key]
        whole_speed = d_total / p_total
        whole_macs = sum(macs["dense"].values()) / max(1, sum(macs[key].values()))
        for kind in KINDS:
            if d_kind[kind] == 0 and p_kind[kind] == 0:
                continue
            speed = d_kind[kind] / p_kind[kind] if p_kind[kind] else float("inf")
            mred = macs["dense"][kind] / macs[key][kind] if macs[key][kind] else None
            # the whole model's time if this kind had sped up as much as its MACs went down
            ideal = p_total - p_kind[kind] + (d_kind[kind] / mred if mred else p_kind[kind])
            rows.append(
                [
                    name,
                    key,
                    kind,
                    f"{d_kind[kind]:.2f}",
                    f"{p_kind[kind]:.2f}",
                    f"{speed:.2f}x",
                    f"{mred:.2f}x" if mred else "-",
                    f"{p_kind[kind] / p_total:.0%}",
                    f"{(d_total / ideal) / whole_macs:.2f}" if mred else "-",
                ]
            )
        rows.append(
            [
                name,
                key,
                "**whole model**",
                f"{d_total:.2f}",
                f"{p_total:.2f}",
                f"{whole_speed:.2f}x",
                f"{whole_macs:.2f}x",
                "100%",
                f"{whole_speed / whole_macs:.2f} (as measured); page faults / pass: dense "
                f"{faults['dense']}, pruned {faults[key]}",
            ]
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mobilenetv2_imagenet", "resnet50"])
    p.add_argument("--target-flops", type=float, default=0.6)
    p.add_argument("--round-to", type=int, default=16, help="1: no rounded variant")
    p.add_argument("--iters", type=int, default=40, help="forward passes per timing")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--allocator", choices=ALLOCATORS, default="steady", help="prunekit.measure.use_allocator"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.allocator = use_allocator(args.allocator)
    rows = [r for name in args.models for r in bench(name, args)]
    head = [
        "model",
        "pruned",
        "kind",
        "dense ms",
        "pruned ms",
        "speed-up",
        "MACs reduction",
        "share of pruned time",
        "whole-model speed-up / MACs reduction had this kind scaled with its MACs",
    ]
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:
        load = "n/a"
    text = (
        "# Where a pruned model's time goes, per kind of layer\n\n"
        f"`{' '.join(['python', *sys.argv])}`, {datetime.date.today()}, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, batch 1, 1 thread, input {SIDE}x{SIDE}, "
        f"allocator {args.allocator}, load average {load} at the end. Layers timed inside the network (hooks), median of "
        f"{args.iters} passes; of {args.rounds} interleaved rounds, the one with the fastest "
        "whole model; 'rest' = whole model without hooks less the timed layers.\n\n"
        + markdown_table(head, rows)
        + "\n"
    )
    print(text)
    with atomic_open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
