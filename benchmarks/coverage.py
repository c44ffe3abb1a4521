"""Coverage of structural pruning on the stand-in models (``tests/standins``), prunekit beside
Torch-Pruning.

Every stand-in (code written the way timm, torchvision and the detection and segmentation
libraries write it) is pruned by both libraries at the same ratio, in float64, from the same
seeded model with non-trivial BatchNorm statistics:

* prunekit: ``graph.build``; ``select_channels(ratio=RATIO, scope="layer", importance="l1")``;
  the selected channels are first zeroed (``group.zero``) and the outputs recorded, then
  ``remove_selected`` removes them;
* Torch-Pruning: ``MetaPruner`` (its constructor builds the ``DependencyGraph``) with
  ``MagnitudeImportance(p=1)``, ``pruning_ratio=RATIO``, local pruning, and the layers that
  produce the model's outputs ignored (found by walking the autograd graph back from the
  outputs to the first conv / Linear layers); its groups are taken interactively, each group's
  output-side parameters zeroed, the outputs recorded, then every group pruned.

Per row: status (``pruned``; ``pinned``: builds but nothing can be pruned; ``refused``: the
library raised, with the first words of why; ``broken``: the pruned model fails to run or
changes an output's shape), for prunekit the number of channels pinned beyond the model's
own inputs and outputs (``pinned channels``), parameters removed, the largest output change between the zeroed and
the pruned model (``exact`` when below 1e-9; prunekit reports a group as inexact when it runs
through a norm across the channels, so a change there is expected), whether the planned FLOPs
and params equal those measured after surgery (prunekit only), and build and prune times
(wall clock, one torch thread).

    python benchmarks/coverage.py [--names vit swin ...] [--ratio 0.3]
                                  [--out benchmarks/results/coverage.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from prunekit import graph as pg  # noqa: E402
from prunekit.graph.explain import pinned_sets  # noqa: E402
from prunekit.measure import count_flops, count_params  # noqa: E402
from prunekit.prune import remove_selected, select_channels  # noqa: E402
from standins import STANDINS  # noqa: E402
from test_graph import randomise_norms  # noqa: E402

RATIO = 0.3
EXACT = 1e-9
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "coverage.md"
INHERENT = ("model input", "model output")  # pinned by what a model is, not by the core


def prepared(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    spec = STANDINS[name]
    torch.manual_seed(0)
    model = spec.build().double().eval()
    randomise_norms(model, torch.Generator().manual_seed(0))
    return model, tuple(x.double() if x.is_floating_point() else x for x in spec.example_inputs())


def outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        flat, _ = tree_flatten(model(*inputs))
    return [t for t in flat if isinstance(t, torch.Tensor)]


def max_change(before: list[torch.Tensor], after: list[torch.Tensor]) -> float | str:
    """Largest absolute output difference, or why the outputs cannot be compared."""
    if [b.shape for b in before] != [a.shape for a in after]:
        return "output shape changed"
    return max(
        (float((a - b).abs().max()) for a, b in zip(after, before, strict=True)), default=0.0
    )


def why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"


def pinned_channels(graph: pg.Graph) -> int:
    """Channels (unit label classes) a layer carries that are pinned for a reason other than
    being the model's own input or output (as :func:`prunekit.graph.explain` lists them)."""
    return sum(p.units for p in pinned_sets(graph) if not p.reason.startswith(INHERENT))


# ------------------------------------------------------------------------------- prunekit


def run_prunekit(name: str, ratio: float) -> dict[str, Any]:
    model, x = prepared(name)
    params = count_params(model).total
    row: dict[str, Any] = {"params": params}
    t0 = time.perf_counter()
    try:
        graph = pg.build(model, x)
    except Exception as exc:
        return {**row, "status": "refused", "why": why(exc), "build": time.perf_counter() - t0}
    row["build"] = time.perf_counter() - t0
    row["pinned"] = pinned_channels(graph)
    row["groups"] = sum(1 for g in graph.groups if g.size >= 2)
    if not row["groups"]:
        return {**row, "status": "pinned", "why": "no group of two or more channels"}
    try:
        t0 = time.perf_counter()
        dense = graph.plan([])
        picks = select_channels(graph, ratio=ratio, scope="layer", importance="l1")
        row["prune"] = time.perf_counter() - t0
        exact = all(graph.group(n).exact for n in picks)
        for n, idx in picks.items():
            graph.group(n).zero(idx)
        before = outputs(model, x)
        t0 = time.perf_counter()
        report = remove_selected(graph, picks, dense)
        row["prune"] += time.perf_counter() - t0
        row["error"] = max_change(before, outputs(model, x))
    except Exception as exc:
        return {**row, "status": "broken", "why": why(exc)}
    row["removed"] = 1 - count_params(model).total / params
    measured = (count_params(model).total, count_flops(model, x).flops)
    row["plan_ok"] = measured == (report.params_after, report.flops_after)
    row["all_exact"] = exact
    row["status"] = "broken" if isinstance(row["error"], str) else "pruned"
    return row


# ------------------------------------------------------------------------------- Torch-Pruning

WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def output_layers(model: nn.Module, x: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The conv / Linear layers whose outputs reach a model output without passing through
    another such layer: Torch-Pruning must leave their output channels alone."""
    made: dict[Any, nn.Module] = {}

    def hook(m: nn.Module, _: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            made[out.grad_fn] = m

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, WEIGHTED)]
    try:
        with torch.enable_grad():
            flat, _ = tree_flatten(model(*x))
    finally:
        for h in handles:
            h.remove()
    found: list[nn.Module] = []
    seen: set[Any] = set()
    todo = [t.grad_fn for t in flat if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if all(made[fn] is not f for f in found):
                found.append(made[fn])
            continue
        todo.extend(nxt for nxt, _ in fn.next_functions)
    return found


def _tp_zero(group: Any) -> None:
    """Zero the output-side parameters of every layer a Torch-Pruning group shrinks on its
    output side, so the channels it removes output zero beforehand."""
    with torch.no_grad():
        for item in group:
            dep, idxs = item.dep, item.idxs
            if getattr(dep.handler, "__name__", "") != "prune_out_channels":
                continue
            m = dep.target.module
            idx = torch.as_tensor(list(idxs), dtype=torch.long)
            if isinstance(m, nn.Parameter):
                continue  # a bare parameter: sliced, not zeroed (the change column shows it)
            if isinstance(m, nn.modules.conv._ConvTransposeNd):
                m.weight[:, idx] = 0
                if m.bias is not None:
                    m.bias[idx] = 0
                continue
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, torch.Tensor) and p.dim() >= 1 and p.shape[0] > int(idx.max()):
                    p[idx] = 0


def run_torch_pruning(name: str, ratio: float) -> dict[str, Any]:
    import torch_pruning as tp

    model, x = prepared(name)
    params = count_params(model).total
    row: dict[str, Any] = {"params": params}
    example = x[0] if len(x) == 1 else list(x)
    try:
        ignored = output_layers(model, x)
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            global_pruning=False,
            ignored_layers=ignored,
        )
        row["build"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        groups = list(pruner.step(interactive=True))
        row["prune"] = time.perf_counter() - t0
    except Exception as exc:
        return {**row, "status": "refused", "why": why(exc)}
    if not groups:
        return {**row, "status": "pinned", "why": "no group to prune"}
    try:
        for g in groups:
            _tp_zero(g)
        before = outputs(model, x)
        t0 = time.perf_counter()
        for g in groups:
            g.prune()
        row["prune"] += time.perf_counter() - t0
        row["error"] = max_change(before, outputs(model, x))
    except Exception as exc:
        return {**row, "status": "broken", "why": why(exc)}
    row["removed"] = 1 - count_params(model).total / params
    row["status"] = "broken" if isinstance(row["error"], str) else "pruned"
    return row


# ------------------------------------------------------------------------------- the table


def _fmt_change(row: dict[str, Any]) -> str:
    err = row.get("error")
    if err is None:
        return "–"
    if isinstance(err, str):
        return err
    if err <= EXACT:
        return f"exact ({err:.0e})"
    if "all_exact" not in row:  # Torch-Pruning does not say which groups are inexact
        return f"{err:.1e}"
    return f"{err:.1e} (" + ("unannounced" if row["all_exact"] else "group reported inexact") + ")"


def _cell(row: dict[str, Any], lib: str) -> list[str]:
    status = row["status"]
    if row.get("why") and status != "pruned":
        status += f": {row['why'][:90]}"
    removed = f"{row['removed']:.0%}" if "removed" in row else "–"
    build = f"{row['build']:.2f}" if "build" in row else "–"
    prune = f"{row['prune']:.2f}" if "prune" in row else "–"
    cells = [status]
    if lib == "prunekit":
        cells.append(str(row.get("pinned", "–")))
    cells += [removed, _fmt_change(row)]
    if lib == "prunekit":
        cells.append({True: "yes", False: "NO"}.get(row.get("plan_ok"), "–"))
    return [*cells, build, prune]


def table(rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    head = (
        "| stand-in | kind | prunekit | pinned channels | params removed | output change | plan = measured "
        "| build s | prune s | Torch-Pruning | params removed | output change | build s | prune s |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for name, ours, peer in rows:
        cells = [name, STANDINS[name].kind, *_cell(ours, "prunekit"), *_cell(peer, "tp")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def summary(rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    out = []
    for i, lib in ((1, "prunekit"), (2, "Torch-Pruning")):
        counts: dict[str, int] = {}
        for r in rows:
            counts[r[i]["status"]] = counts.get(r[i]["status"], 0) + 1
        pruned = [r[i] for r in rows if r[i]["status"] == "pruned"]
        exact = sum(1 for r in pruned if r["error"] <= EXACT)
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        line = f"- {lib}: {parts}; of the pruned, outputs unchanged to 1e-9 on {exact}"
        if i == 1:  # prunekit says which groups are inexact: a change anywhere else is a bug
            excused = sum(1 for r in pruned if r["error"] > EXACT and not r["all_exact"])
            wrong = sum(1 for r in pruned if r["error"] > EXACT and r["all_exact"])
            line += (
                f", changed only through groups the graph reports inexact (a norm across the "
                f"channels) on {excused}, changed unannounced on {wrong}"
            )
        out.append(line)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", default=list(STANDINS))
    ap.add_argument("--ratio", type=float, default=RATIO)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.names) - set(STANDINS))
    if unknown:
        ap.error(f"unknown stand-ins {unknown}; known: {', '.join(STANDINS)}")
    torch.set_num_threads(1)
    # one untimed run of each library first: lazy imports (torch.fx, the flop counter) and
    # one-time initialisation would otherwise land in the first row's build time
    run_prunekit("drop_path", args.ratio)
    run_torch_pruning("drop_path", args.ratio)
    start = time.perf_counter()
    rows = []
    for name in args.names:
        ours = run_prunekit(name, args.ratio)
        peer = run_torch_pruning(name, args.ratio)
        rows.append((name, ours, peer))
        print(f"{name}: prunekit {ours['status']}, torch-pruning {peer['status']}", file=sys.stderr)
    try:
        tp_version = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        tp_version = "not installed"
    text = "\n".join(
        [
            "# Structural pruning coverage on the stand-in models: prunekit vs Torch-Pruning",
            "",
            f"Command: `python benchmarks/coverage.py` (ratio {args.ratio} of every group, L1, float64)",
            "",
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch "
            f"{torch.__version__}, torch-pruning {tp_version}, python {platform.python_version()}, "
            f"1 torch thread; total wall time {time.perf_counter() - start:.0f} s.",
            "",
            summary(rows),
            "",
            table(rows),
            "",
        ]
    )
    print(text)
    if args.names == list(STANDINS):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
