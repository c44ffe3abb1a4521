"""Plots of a benchmark table: accuracy after fine-tuning against FLOPs removed (sparsity for
unstructured runs), measured speedup and parameters left; one curve per method over its targets,
error bars one standard deviation over seeds, the dense baseline as a dashed line. The Pareto
plot puts accuracy against *measured* batch-1 latency (a torch panel and an onnxruntime panel,
each where the runs timed it) and draws the front: the runs no other run beats on both.

Each plot is first described as plain data (:class:`PlotSeries`); the figure is drawn from that
description alone, so what the report's JSON says was plotted is what was plotted. Figures are
``matplotlib.figure.Figure`` objects on an Agg canvas, never pyplot's global figures.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prunekit.io import atomic_open

if TYPE_CHECKING:
    from prunekit.bench.results import Row, Table

KIND_ORDER = ("flops", "params", "sparsity")
Y_LABEL = "top-1 after fine-tuning (%)"


@dataclass
class PlotSeries:
    """One plot as data: its panels (one per target kind) and, per panel, one series per method
    with the mean x and y of each target and the y standard deviation over seeds."""

    name: str
    file: str  # relative to the report folder
    title: str
    baseline: float | None
    panels: list[dict[str, str]] = field(default_factory=list)  # {name, title, xlabel}
    series: list[dict[str, Any]] = field(default_factory=list)  # {panel, label, x, y, yerr}


@dataclass(frozen=True)
class Axis:
    """What a plot puts on x for runs of one target kind."""

    key: str
    label: str


# plot name -> (title, x axis for structured runs, x axis for unstructured runs)
PLOTS: dict[str, tuple[str, Axis, Axis]] = {
    "accuracy_vs_reduction": (
        "accuracy vs reduction",
        Axis("flops_removed_pct", "FLOPs removed (%)"),
        Axis("sparsity_pct", "sparsity (%)"),
    ),
    "accuracy_vs_speedup": (
        "accuracy vs measured speedup",
        Axis("speedup", "speedup, batch 1 latency ratio (x)"),
        Axis("speedup", "speedup, batch 1 latency ratio (x)"),
    ),
    "accuracy_vs_params": (
        "accuracy vs parameters",
        Axis("params_after", "parameters after pruning"),
        Axis("nonzero_params_after", "non-zero parameters after pruning"),
    ),
}


def kinds_of(table: Table) -> list[str]:
    present = {row.target_kind for row in table.rows}
    return [k for k in KIND_ORDER if k in present] + sorted(present - set(KIND_ORDER))


def axis_for(kind: str, structured: Axis, unstructured: Axis) -> Axis:
    return unstructured if kind == "sparsity" else structured


def curve(rows: list[Row], axis: Axis) -> dict[str, list[float]] | None:
    """Mean points of ``rows`` (one method's targets), in target order; None when none has both
    an x and a y."""
    xs, ys, errs = [], [], []
    for row in sorted(rows, key=lambda r: r.target):
        x, y = row.stats.get(axis.key), row.stats.get("acc_finetuned")
        if x is None or y is None:
            continue
        xs.append(x.mean)
        ys.append(y.mean)
        errs.append(y.sd if y.sd is not None else 0.0)
    return {"x": xs, "y": ys, "yerr": errs} if xs else None


def describe(table: Table) -> list[PlotSeries]:
    """The plots of ``table`` as data; a plot with nothing to draw is left out."""
    plots = []
    baseline = table.baseline.mean if table.baseline else None
    for name, (title, structured, unstructured) in PLOTS.items():
        plot = PlotSeries(
            name=name,
            file=f"plots/{table.slug}-{name}.png",
            title=f"{table.title}: {title}",
            baseline=baseline,
        )
        for kind in kinds_of(table):
            axis = axis_for(kind, structured, unstructured)
            by_label: dict[str, list[Row]] = {}
            for row in table.rows:
                if row.target_kind == kind:
                    by_label.setdefault(row.label, []).append(row)
            series = []
            for label, rows in by_label.items():
                points = curve(rows, axis)
                if points is not None:
                    series.append({"panel": kind, "label": label, **points})
            if series:
                plot.panels.append({"name": kind, "title": f"{kind} targets", "xlabel": axis.label})
                plot.series.extend(series)
        if plot.series:
            plots.append(plot)
    front = describe_pareto(table)
    if front is not None:
        plots.append(front)
    return plots


# panel name, metric after pruning, the dense model's metric, x-axis label
LATENCY_PANELS = (
    ("torch", "latency_after_ms", "latency_before_ms", "batch-1 latency, torch (ms)"),
    (
        "onnxruntime",
        "onnx_latency_after_ms",
        "onnx_latency_before_ms",
        "batch-1 latency, onnxruntime (ms)",
    ),
)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points (latency, accuracy) no other point beats on both counts (as fast or faster
    and more accurate), in order of latency."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def describe_pareto(table: Table) -> PlotSeries | None:
    """Accuracy against measured latency, one panel per runtime that timed the runs, each
    method's targets as one curve, the dense baseline as a point and the Pareto front of all of
    them as a dashed line; None when no run was timed."""
    baseline = table.baseline.mean if table.baseline else None
    plot = PlotSeries(
        name="accuracy_vs_latency",
        file=f"plots/{table.slug}-accuracy_vs_latency.png",
        title=f"{table.title}: accuracy vs measured latency (dashed: Pareto front)",
        baseline=None,
    )
    for panel, after, before, xlabel in LATENCY_PANELS:
        by_label: dict[str, list[Row]] = {}
        for row in table.rows:
            by_label.setdefault(row.label, []).append(row)
        series = []
        for label, rows in by_label.items():
            points = curve(rows, Axis(after, xlabel))
            if points is not None:
                series.append({"panel": panel, "label": label, **points})
        if not series:
            continue
        cloud = [(x, y) for s in series for x, y in zip(s["x"], s["y"], strict=True)]
        dense = [r.stats[before].mean for r in table.rows if before in r.stats]
        if dense and baseline is not None:
            x = sum(dense) / len(dense)
            series.append(
                {
                    "panel": panel,
                    "label": "dense baseline",
                    "x": [x],
                    "y": [baseline],
                    "yerr": [0.0],
                    "style": "point",
                }
            )
            cloud.append((x, baseline))
        front = pareto_front(cloud)
        series.append(
            {
                "panel": panel,
                "label": "Pareto front",
                "x": [p[0] for p in front],
                "y": [p[1] for p in front],
                "yerr": [0.0] * len(front),
                "style": "front",
            }
        )
        plot.panels.append({"name": panel, "title": panel, "xlabel": xlabel})
        plot.series.extend(series)
    return plot if plot.series else None


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*", "h")


LEGEND_INSIDE = 10  # series a panel's own legend holds; more get one legend beside the panels
LEGEND_ROWS = 24  # rows of a legend column beside the panels


def render(plot: PlotSeries) -> Figure:
    """Draw ``plot`` on a new figure (Agg canvas), one panel per entry of ``plot.panels``. With
    more than :data:`LEGEND_INSIDE` series the legend goes beside the panels, in columns of
    :data:`LEGEND_ROWS`, and the figure grows to hold it (a report of every method has 40)."""
    labels = list(dict.fromkeys(s["label"] for s in plot.series if "style" not in s))
    beside = len(labels) > LEGEND_INSIDE
    entries = len(labels) + 3  # the baseline, a front and a point may join them
    cols = -(-entries // LEGEND_ROWS) if beside else 0
    width = max(7.0, 5.0 * len(plot.panels)) + 3.2 * cols
    height = max(4.5, 0.19 * min(entries, LEGEND_ROWS) + 1.0) if beside else 4.5
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(plot.panels), squeeze=False)[0]
    colors = matplotlib.colormaps["tab20"].colors
    for ax, panel in zip(axes, plot.panels, strict=True):
        for s in plot.series:
            if s["panel"] != panel["name"]:
                continue
            if s.get("style") == "front":
                ax.plot(
                    s["x"],
                    s["y"],
                    linestyle="--",
                    drawstyle="steps-post",
                    color="black",
                    alpha=0.6,
                    label=s["label"],
                )
                continue
            if s.get("style") == "point":
                ax.plot(
                    s["x"],
                    s["y"],
                    marker="*",
                    markersize=14,
                    linestyle="none",
                    color="black",
                    label=s["label"],
                )
                continue
            i = labels.index(s["label"])
            ax.errorbar(
                s["x"],
                s["y"],
                yerr=s["yerr"],
                marker=MARKERS[i % len(MARKERS)],
                color=colors[(2 * i) % len(colors) + (2 * i) // len(colors) % 2],
                capsize=3,
                label=s["label"],
            )
        if plot.baseline is not None:
            ax.axhline(
                plot.baseline,
                linestyle="--",
                color="0.35",
                label=f"dense baseline ({plot.baseline:.2f})",
            )
        ax.set_title(panel["title"])
        ax.set_xlabel(panel["xlabel"])
        ax.set_ylabel(Y_LABEL)
        ax.grid(alpha=0.3)
        if not beside:
            ax.legend(fontsize="small")
    if beside:
        handles: dict[str, Any] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, handle)
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="outside right upper",
            fontsize="x-small",
            ncol=cols,
        )
    fig.suptitle(plot.title)
    return fig


def save(plot: PlotSeries, path: str | Path) -> bytes:
    """Render ``plot`` to a PNG at ``path`` (atomically); returns the PNG bytes."""
    fig = render(plot)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    fig.clear()
    data = buffer.getvalue()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return data
