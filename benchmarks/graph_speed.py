"""Structural pruning speed and payoff: prunekit's channel graph against Torch-Pruning.

For each model, both libraries prune the *same* initialised network (each run works on a fresh
``copy.deepcopy`` of one seeded model) by 50% of the channels of every layer group, ranked by
L1-norm importance, with the final classifier kept whole:

* prunekit: ``prunekit.prune_channels(model, x, ratio=0.5, scope="layer", importance="l1")`` when
  it exists; otherwise ``prunekit.graph.build`` and, for each group, ``group.prune`` of the half
  of its channels with the lowest L1 filter norm (``group.scores``);
* Torch-Pruning: ``tp.pruner.MagnitudePruner`` (``BasePruner`` where that is all there is) with
  ``MagnitudeImportance(p=1)``, ``pruning_ratio=0.5`` (``ch_sparsity`` in old versions),
  ``global_pruning=False`` and ``ignored_layers=[model.classifier]``.

Reported per (model, library):

* build: constructing the dependency graph (prunekit ``graph.build``; Torch-Pruning the pruner's
  constructor, which builds its ``DependencyGraph``); prune: scoring + surgery (prunekit's
  ``prune_channels`` minus its build, Torch-Pruning's ``pruner.step()``). Median of
  ``--repeats`` warm runs, each on a fresh deepcopy, wall clock (and process CPU time, which
  counts every thread of the process but is less disturbed by other processes on a shared
  machine);
* peak RSS: ``ru_maxrss`` after the first build+prune of the model minus before it, in a fresh
  subprocess per (model, library) so the high-water marks of different cases never mix, after
  the library has pruned a small ``resnet20`` once (lazy imports are not the library's working
  memory);
* params and FLOPs of the pruned model (``prunekit.measure`` for both), whether it runs and gives
  the right output shape (batch 1, 2 and 32);
* CPU latency speedup dense/pruned at batch 1 and 32 (``prunekit.measure.measure_latency``, same
  fixed thread count for all), measured in one subprocess per model where the dense model and both
  pruned models are timed in interleaved rounds, next to the FLOPs ratio dense/pruned.

    python benchmarks/graph_speed.py [--models resnet50 ...] [--repeats 3] [--threads 2]
                                     [--min-run-time 1.0] [--rounds 3] [--no-latency]
                                     [--out benchmarks/results/graph_speed.md]

Needs the ``bench`` extra (``pip install -e .[bench]``) for Torch-Pruning.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit
from prunekit import graph as pkgraph
from prunekit import models as zoo
from prunekit.measure import count_flops, count_params, measure_latency

# model name -> (num_classes, input side)
SPECS: dict[str, tuple[int, int]] = {
    "resnet50": (1000, 224),
    "mobilenetv2_imagenet": (1000, 224),
    "densenet40": (10, 32),
    "resnet110": (10, 32),
}
LIBS = ("prunekit", "torch-pruning")
WARMUP_MODEL = "resnet20"  # pruned once by each library before anything is measured
RATIO = 0.5
MARK = "@@GRAPH_SPEED@@"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "graph_speed.md"


# ------------------------------------------------------------------------------- shared set-up


def make_model(name: str) -> nn.Module:
    num_classes, _ = SPECS[name]
    torch.manual_seed(0)
    return zoo.create(name, num_classes=num_classes).eval()


def example(name: str, batch: int) -> torch.Tensor:
    _, side = SPECS[name]
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, side, side, generator=g)


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def tp_version() -> str:
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------- the two sides


def _prune_channels() -> Callable[..., Any] | None:
    """``prunekit.prune_channels`` (or ``prunekit.prune.prune_channels`` before it is exported)."""
    fn = getattr(prunekit, "prune_channels", None)
    if fn is None:
        try:
            from prunekit.prune import prune_channels as fn
        except ImportError:
            return None
    return fn


def _l1_per_filter(w: torch.Tensor) -> torch.Tensor:
    """L1 norm of each output filter; 1-D scales (BatchNorm) score 0, as prunekit's "l1"."""
    return w.flatten(1).abs().sum(1) if w.dim() >= 2 else torch.zeros(w.shape[0])


def _build_hook() -> tuple[Any, str] | None:
    """The module whose ``build`` prune_channels calls, so that call can be timed inside it."""
    fn = _prune_channels()
    mod = sys.modules.get(getattr(fn, "__module__", ""), None)
    if mod is not None and getattr(mod, "build", None) is pkgraph.build:
        return mod, "build"
    return None


def prunekit_mode() -> str:
    fn = _prune_channels()
    if fn is None:
        return "graph.build + group.prune (prune_channels not available)"
    if _build_hook() is not None:
        return "prune_channels (its graph.build call timed in place; prune = the rest)"
    return "prune_channels (graph.build timed on the side; prune = total - build)"


def prune_prunekit(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Build the graph and prune half of every group's channels; return the timings."""
    fn = _prune_channels()
    kwargs: dict[str, Any] = {"ratio": RATIO, "scope": "layer", "importance": "l1"}
    if fn is not None:
        hook = _build_hook()
        spent = {"wall": 0.0, "cpu": 0.0}
        if hook is None:  # time a separate build of the same model (it does not modify it)
            with Clock() as b:
                pkgraph.build(model, x)
            spent = {"wall": b.wall, "cpu": b.cpu}
            with Clock() as t:
                fn(model, x, **kwargs)
        else:  # wrap the build that prune_channels itself calls
            mod, attr = hook

            def timed_build(*a: Any, **kw: Any) -> Any:
                with Clock() as b:
                    g = pkgraph.build(*a, **kw)
                spent["wall"] += b.wall
                spent["cpu"] += b.cpu
                return g

            setattr(mod, attr, timed_build)
            try:
                with Clock() as t:
                    fn(model, x, **kwargs)
            finally:
                setattr(mod, attr, pkgraph.build)
        return {
            "build": spent["wall"],
            "prune": max(t.wall - spent["wall"], 0.0),
            "build_cpu": spent["cpu"],
            "prune_cpu": max(t.cpu - spent["cpu"], 0.0),
        }
    with Clock() as b:
        g = pkgraph.build(model, x)
    with Clock() as p:
        scored = [(grp, grp.scores(_l1_per_filter)) for grp in list(g.groups)]
        for grp, scores in scored:
            k = int(grp.size * RATIO)
            if k == 0 or k >= grp.size:
                continue
            grp.prune(torch.argsort(scores, stable=True)[:k].tolist())
    return {"build": b.wall, "prune": p.wall, "build_cpu": b.cpu, "prune_cpu": p.cpu}


def prune_torch_pruning(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    import torch_pruning as tp

    cls = getattr(tp.pruner, "MagnitudePruner", None) or tp.pruner.BasePruner
    params = inspect.signature(cls.__init__).parameters
    ratio_kw = "pruning_ratio" if "pruning_ratio" in params else "ch_sparsity"
    with Clock() as b:
        pruner = cls(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=1),
            global_pruning=False,
            ignored_layers=[model.classifier],
            **{ratio_kw: RATIO},
        )
    with Clock() as p:
        pruner.step()
    return {"build": b.wall, "prune": p.wall, "build_cpu": b.cpu, "prune_cpu": p.cpu}


PRUNERS: dict[str, Callable[[nn.Module, torch.Tensor], dict[str, float]]] = {
    "prunekit": prune_prunekit,
    "torch-pruning": prune_torch_pruning,
}


def check_runs(model: nn.Module, name: str, batches: tuple[int, ...]) -> str:
    """'ok', or what went wrong when running the pruned model."""
    num_classes, _ = SPECS[name]
    try:
        with torch.no_grad():
            for b in batches:
                y = model(example(name, b))
                if tuple(y.shape) != (b, num_classes):
                    return f"shape {tuple(y.shape)} != {(b, num_classes)}"
                if not torch.isfinite(y).all():
                    return "non-finite output"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return "ok"


# ------------------------------------------------------------------------------- child processes


def child_case(name: str, lib: str, repeats: int, threads: int) -> dict[str, Any]:
    """Timings, peak RSS, size and a run check for one (model, library)."""
    torch.set_num_threads(threads)
    dense = make_model(name)
    x = example(name, 1)
    prune = PRUNERS[lib]
    out: dict[str, Any] = {"model": name, "lib": lib}
    if lib == "prunekit":
        out["mode"] = prunekit_mode()

    # warm-up on a tiny model: lazy imports (torch.fx, the flop counter, torch._dynamo ...) and
    # one-time initialisation would otherwise dominate the memory high-water mark
    torch.manual_seed(0)
    tiny = zoo.create(WARMUP_MODEL, num_classes=10).eval()
    out["warmup"] = prune(tiny, torch.randn(1, 3, 32, 32))
    del tiny
    # first run on the model: the only one whose memory high-water mark is meaningful
    model = copy.deepcopy(dense)
    gc.collect()
    rss0 = maxrss_kib()
    out["first"] = prune(model, x)
    out["peak_rss_mib"] = (maxrss_kib() - rss0) / 1024

    runs = []
    for _ in range(repeats):
        del model
        model = copy.deepcopy(dense)
        gc.collect()
        runs.append(prune(model, x))
    for key in ("build", "prune", "build_cpu", "prune_cpu"):
        out[key] = statistics.median(r[key] for r in runs)
        out[key + "_all"] = [r[key] for r in runs]
    out["total"] = statistics.median(r["build"] + r["prune"] for r in runs)
    out["total_cpu"] = statistics.median(r["build_cpu"] + r["prune_cpu"] for r in runs)

    out["dense_params"] = count_params(dense).total
    out["dense_flops"] = count_flops(dense, x).flops
    out["params"] = count_params(model).total
    out["flops"] = count_flops(model, x).flops
    out["runs"] = check_runs(model, name, (1, 2))
    return out


def child_latency(name: str, threads: int, min_run_time: float, rounds: int) -> dict[str, Any]:
    """Dense and both pruned models timed in interleaved rounds in one process."""
    torch.set_num_threads(threads)
    dense = make_model(name)
    x = example(name, 1)
    variants: dict[str, nn.Module] = {"dense": dense}
    errors: dict[str, str] = {}
    for lib, prune in PRUNERS.items():
        m = copy.deepcopy(dense)
        try:
            prune(m, x)
            variants[lib] = m.eval()
        except Exception as exc:
            errors[lib] = f"{type(exc).__name__}: {exc}"[:200]
    out: dict[str, Any] = {"model": name, "errors": errors, "latency_ms": {}, "runs_b32": {}}
    if not errors:  # same architecture => same latency, whatever the channels chosen
        shapes = [
            {k: tuple(v.shape) for k, v in variants[lib].state_dict().items()} for lib in PRUNERS
        ]
        out["same_shapes"] = all(s == shapes[0] for s in shapes)
    for batch in (1, 32):
        xb = example(name, batch)
        broken = set()
        for key, m in variants.items():  # doubles as the warm-up
            status = check_runs(m, name, (batch,))
            if batch == 32:
                out["runs_b32"][key] = status
            if status != "ok":
                broken.add(key)
        samples: dict[str, list[float]] = {k: [] for k in variants}
        keys = list(variants)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate who goes first
            for key in order:
                if key in broken:
                    continue
                lat = measure_latency(
                    variants[key], xb, threads=threads, warmup=1, min_run_time=min_run_time
                )
                samples[key].append(lat.median_ms)
        out["latency_ms"][str(batch)] = {k: statistics.median(v) for k, v in samples.items() if v}
        out["latency_samples_ms_" + str(batch)] = samples
    return out


def run_child(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[-400:]}


# ------------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def environment(threads: int) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        f"torch {torch.__version__}",
        f"torch-pruning {tp_version()}",
        f"prunekit {prunekit.__version__}",
        f"python {platform.python_version()}",
        f"{threads} torch threads",
        f"{os.cpu_count()} CPUs ({cpu})",
    ]


def report(
    cases: dict[tuple[str, str], dict[str, Any]],
    lats: dict[str, dict[str, Any]],
    models: list[str],
    args: argparse.Namespace,
    meta: dict[str, Any],
) -> str:
    lines = ["# Graph build and pruning speed: prunekit vs Torch-Pruning", ""]
    lines.append(f"Command: `{meta['command']}`")
    lines.append("")
    lines.append(f"Date: {meta['date']}; " + ", ".join(environment(args.threads)) + ".")
    lines.append(
        f"Load average at start / end: {meta['load_start']} / {meta['load_end']} "
        f"(a load above the CPU count means other processes shared the machine); "
        f"total wall time {meta['elapsed']:.0f} s."
    )
    pk_mode = next(
        (c.get("mode") for (_, lib), c in cases.items() if lib == "prunekit" and c.get("mode")),
        prunekit_mode(),
    )
    lines.append(f"prunekit path: {pk_mode}.")
    lines.append("")
    lines.append(
        "| model | library | build s | prune s | build+prune s (CPU s) | peak RSS Δ MiB "
        "| params dense → pruned | GFLOPs dense → pruned | FLOPs ratio | speedup b1 | speedup b32 "
        "| runs (b1, b2, b32) |"
    )
    lines.append("|" + "---|" * 12)
    for name in models:
        lat = lats.get(name, {})
        dense_ms = lat.get("latency_ms", {})
        for lib in LIBS:
            c = cases.get((name, lib), {})
            if "error" in c:
                lines.append(f"| {name} | {lib} | CRASH: {c['error']} |" + " |" * 10)
                continue
            fr = c["dense_flops"] / c["flops"] if c.get("flops") else None
            sp = {}
            for b in ("1", "32"):
                d = dense_ms.get(b, {})
                sp[b] = d["dense"] / d[lib] if "dense" in d and lib in d else None
            runs = c.get("runs", "?")
            b32 = lat.get("runs_b32", {}).get(lib, "not measured" if args.no_latency else "?")
            if lib in lat.get("errors", {}):
                b32 = "CRASH: " + lat["errors"][lib]
            lines.append(
                f"| {name} | {lib} | {c['build']:.3f} | {c['prune']:.3f} "
                f"| {c['total']:.3f} ({c['total_cpu']:.3f}) | {c['peak_rss_mib']:.1f} "
                f"| {c['dense_params'] / 1e6:.3f}M → {c['params'] / 1e6:.3f}M "
                f"| {c['dense_flops'] / 1e9:.3f} → {c['flops'] / 1e9:.3f} | {fmt(fr, '.2f')} "
                f"| {fmt(sp['1'], '.2f')} | {fmt(sp['32'], '.2f')} "
                f"| {runs}, {b32} |"
            )
    lines.append("")
    lines.append("## Ratios")
    lines.append("")
    lines.append(
        "| model | pk/tp build+prune wall (goal ≤ 0.5) | pk/tp CPU | pk/tp build | "
        "pk/tp prune | \\|speedup − FLOPs ratio\\| b1 pk / tp | b32 pk / tp | "
        "prunekit at least as close? |"
    )
    lines.append("|" + "---|" * 8)
    for name in models:
        pk, tpc = cases.get((name, "prunekit"), {}), cases.get((name, "torch-pruning"), {})
        if "error" in pk or "error" in tpc or not pk or not tpc:
            lines.append(f"| {name} | n/a (a side crashed) |" + " |" * 6)
            continue
        d = lats.get(name, {}).get("latency_ms", {})
        gaps: dict[str, dict[str, float | None]] = {}
        for b in ("1", "32"):
            gaps[b] = {}
            for lib, c in (("prunekit", pk), ("torch-pruning", tpc)):
                ms = d.get(b, {})
                if "dense" in ms and lib in ms:
                    gaps[b][lib] = abs(ms["dense"] / ms[lib] - c["dense_flops"] / c["flops"])
                else:
                    gaps[b][lib] = None
        closer = []
        for b in ("1", "32"):
            g_pk, g_tp = gaps[b]["prunekit"], gaps[b]["torch-pruning"]
            if g_pk is not None and g_tp is not None:
                closer.append(f"b{b}: {'yes' if g_pk <= g_tp else 'no'}")
        wall = pk["total"] / tpc["total"]
        cpu = pk["total_cpu"] / tpc["total_cpu"]
        lines.append(
            f"| {name} | {wall:.2f} {'✓' if wall <= 0.5 else '✗'} "
            f"| {cpu:.2f} {'✓' if cpu <= 0.5 else '✗'} "
            f"| {pk['build'] / tpc['build']:.2f} | {pk['prune'] / tpc['prune']:.2f} "
            f"| {fmt(gaps['1']['prunekit'], '.2f')} / {fmt(gaps['1']['torch-pruning'], '.2f')} "
            f"| {fmt(gaps['32']['prunekit'], '.2f')} / {fmt(gaps['32']['torch-pruning'], '.2f')} "
            f"| {', '.join(closer) or 'n/a'} |"
        )
    lines.append("")
    same = {n: lats[n].get("same_shapes") for n in models if n in lats}
    if same:
        lines.append(
            "Pruned models of the two libraries have identical shapes (every parameter and "
            "buffer): "
            + ", ".join(
                f"{n} {'yes' if v else 'no' if v is not None else 'n/a'}" for n, v in same.items()
            )
            + ". Where they do, both run the same computation, so a difference between the two "
            "speedups (and between the two |speedup − FLOPs ratio| gaps) is measurement noise, "
            "not a property of either library."
        )
        lines.append("")
    lines.append("## Dense and pruned latency (ms, median over rounds)")
    lines.append("")
    lines.append("| model | batch | dense | prunekit | torch-pruning |")
    lines.append("|---|---|---|---|---|")
    for name in models:
        for b in ("1", "32"):
            ms = lats.get(name, {}).get("latency_ms", {}).get(b, {})
            if ms:
                lines.append(
                    f"| {name} | {b} | {fmt(ms.get('dense'), '.2f')} "
                    f"| {fmt(ms.get('prunekit'), '.2f')} | {fmt(ms.get('torch-pruning'), '.2f')} |"
                )
    lines.append("")
    lines.append(
        f"How measured: build/prune columns are medians of {args.repeats} warm runs, each on a "
        "fresh deepcopy of one seeded model (batch-1 example input); build+prune is the median "
        "of the per-run sums, with process CPU time in brackets. Peak RSS Δ is ru_maxrss after "
        "the first build+prune of the model minus before it, in a fresh subprocess per row where "
        f"the library has already pruned a {WARMUP_MODEL} once (so lazy imports do not count). Params and "
        "FLOPs (prunekit.measure, batch 1) are the pruned model's; FLOPs ratio = dense/pruned; "
        f"speedup = dense/pruned latency (measure_latency, {args.threads} threads, "
        f"min_run_time {args.min_run_time} s, median of {args.rounds} interleaved rounds, dense "
        "and both pruned models in one process). Pruning: 50% of the channels of every group "
        "(per layer, L1 importance), classifier outputs kept."
    )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    p.add_argument("--repeats", type=int, default=3, help="warm timed runs per case (median)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in every subprocess (default 1: on a shared 2-core machine, 2 threads "
        "made forwards orders of magnitude slower whenever other processes ran)",
    )
    p.add_argument("--min-run-time", type=float, default=1.0, help="per latency measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--timeout", type=float, default=600, help="per subprocess, seconds")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--_case", nargs=2, metavar=("MODEL", "LIB"), help=argparse.SUPPRESS)
    p.add_argument("--_latency", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._case:
        res = child_case(args._case[0], args._case[1], args.repeats, args.threads)
        print(MARK + json.dumps(res), flush=True)
        return
    if args._latency:
        res = child_latency(args._latency, args.threads, args.min_run_time, args.rounds)
        print(MARK + json.dumps(res), flush=True)
        return

    if tp_version() == "not installed":
        raise SystemExit("torch-pruning is needed: pip install -e .[bench]")
    start = time.perf_counter()
    meta = {
        "command": " ".join(["python benchmarks/graph_speed.py", *sys.argv[1:]]),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "load_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    cases: dict[tuple[str, str], dict[str, Any]] = {}
    lats: dict[str, dict[str, Any]] = {}
    for name in args.models:
        for lib in LIBS:
            print(f"[{time.perf_counter() - start:6.0f}s] {name} / {lib} ...", file=sys.stderr)
            cases[(name, lib)] = run_child(["--_case", name, lib, *common], args.timeout)
            if "error" in cases[(name, lib)]:
                print(f"    {cases[(name, lib)]['error']}", file=sys.stderr)
        if not args.no_latency:
            print(f"[{time.perf_counter() - start:6.0f}s] {name} / latency ...", file=sys.stderr)
            lats[name] = run_child(
                [
                    "--_latency", name, *common, "--min-run-time", str(args.min_run_time),
                    "--rounds", str(args.rounds),
                ],
                args.timeout,
            )  # fmt: skip
            if "error" in lats[name]:
                print(f"    {lats[name]['error']}", file=sys.stderr)
    meta["load_end"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    meta["elapsed"] = time.perf_counter() - start
    text = report(cases, lats, args.models, args, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        raw = {"meta": meta, "cases": list(cases.values()), "latency": lats}
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
