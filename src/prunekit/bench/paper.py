"""Published figures of the implemented methods (``paper_results.json``) and the table that holds
our results against them.

An entry says what a paper reports: the model and data set, the metric (``top1`` accuracy or
``error`` rate, in percent) before and after pruning, the reduction it reached (FLOPs or
parameters removed, sparsity, weights left, all in percent, or a size ratio on disk) and the source.
For each method of our results with entries, :func:`paper_table` picks the entry nearest our model
and data set, and our target whose measured reduction is nearest the paper's, and says in a
sentence what differs between the two settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.errors import ConfigError

if TYPE_CHECKING:
    from prunekit.bench.results import Row, Table

REDUCTION_KINDS = ("flops", "params", "sparsity", "bytes_ratio", "weights_left")
METRICS = ("top1", "error")
FIELDS = ("method", "model", "data", "metric", "paper_before", "paper_after", "reduction")


@dataclass(frozen=True)
class Reduction:
    kind: str  # one of REDUCTION_KINDS
    value: float  # percent, except bytes_ratio (times smaller)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Reduction:
        if not isinstance(d, dict) or d.get("kind") not in REDUCTION_KINDS:
            raise ConfigError(
                f"{where}: reduction must be {{kind, value}} with kind one of "
                f"{', '.join(REDUCTION_KINDS)}, got {d!r}"
            )
        value = d.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: reduction value must be a number, got {value!r}")
        return cls(d["kind"], float(value))

    def text(self, *, nonzero: bool = False) -> str:
        if self.kind == "flops":
            return f"FLOPs -{self.value:.1f}%"
        if self.kind == "params":
            return f"{'non-zero ' if nonzero else ''}params -{self.value:.1f}%"
        if self.kind == "sparsity":
            return f"sparsity {self.value:.1f}%"
        if self.kind == "weights_left":
            return f"{self.value:.1f}% of weights left"
        return f"{self.value:.1f}x smaller on disk"


@dataclass(frozen=True)
class PaperEntry:
    """One published result."""

    method: str
    model: str
    data: str
    metric: str  # "top1" or "error", percent
    paper_before: float
    paper_after: float
    reduction: Reduction
    source: str
    setting: str
    also: tuple[Reduction, ...] = ()  # further reductions the same result reached
    reduction_text: str | None = None

    @property
    def reductions(self) -> tuple[Reduction, ...]:
        return (self.reduction, *self.also)

    @property
    def reduction_label(self) -> str:
        return self.reduction_text or ", ".join(r.text() for r in self.reductions)

    @property
    def drop(self) -> float:
        """Accuracy points lost by pruning (negative: gained)."""
        if self.metric == "error":
            return self.paper_after - self.paper_before
        return self.paper_before - self.paper_after

    @classmethod
    def from_dict(cls, d: Any, index: int) -> PaperEntry:
        where = f"paper result {index}"
        if not isinstance(d, dict) or any(k not in d for k in FIELDS):
            raise ConfigError(f"{where} must be an object with {', '.join(FIELDS)}, got {d!r}")
        if d["metric"] not in METRICS:
            raise ConfigError(f"{where}: metric must be one of {METRICS}, got {d['metric']!r}")
        for key in ("paper_before", "paper_after"):
            if isinstance(d[key], bool) or not isinstance(d[key], (int, float)):
                raise ConfigError(f"{where}: {key} must be a number, got {d[key]!r}")
        return cls(
            method=str(d["method"]),
            model=str(d["model"]),
            data=str(d["data"]),
            metric=d["metric"],
            paper_before=float(d["paper_before"]),
            paper_after=float(d["paper_after"]),
            reduction=Reduction.from_dict(d["reduction"], where),
            source=str(d.get("source", "")),
            setting=str(d.get("setting", "")),
            also=tuple(Reduction.from_dict(r, where) for r in d.get("also", [])),
            reduction_text=d.get("reduction_text"),
        )


def load_entries(path: str | Path | None = None) -> list[PaperEntry]:
    """The entries of ``path`` (default: the ``paper_results.json`` shipped with prunekit)."""
    if path is None:
        text = resources.files("prunekit.bench").joinpath("paper_results.json").read_text("utf-8")
        where = "prunekit/bench/paper_results.json"
    else:
        text, where = Path(path).read_text("utf-8"), str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must hold a list of paper results, got {type(raw).__name__}")
    return [PaperEntry.from_dict(d, i) for i, d in enumerate(raw)]


@dataclass
class PaperRow:
    """A paper's figure beside ours for one method, model and data set."""

    method: str
    source: str
    metric: str
    paper_model: str
    paper_data: str
    paper_setting: str
    paper_before: float
    paper_after: float
    paper_drop: float
    paper_reduction: str
    ours_model: str
    ours_data: str
    ours_label: str
    ours_target: str
    ours_setting: str
    ours_reduction: str
    ours_before: float | None  # in the paper's metric
    ours_after: float | None
    ours_drop: float | None
    ours_seeds: int
    differs: str


def norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def family(name: str) -> str:
    """The leading letters of a model name: ``resnet`` for ResNet-56 and resnet20."""
    n = norm(name)
    return n[: len(n) - len(n.lstrip("abcdefghijklmnopqrstuvwxyz"))] if n else ""


def closeness(entry: PaperEntry, table: Table) -> int:
    """How near the paper's model and data set are to ours (higher is nearer)."""
    score = 0
    if norm(entry.model) == norm(table.model):
        score += 4
    elif family(entry.model) and family(entry.model) == family(table.model):
        score += 2
    if norm(entry.data) == norm(table.data):
        score += 1
    return score


def our_measure(row: Row, kind: str) -> float | None:
    """Our run's measured reduction in the paper's terms (percent, or a ratio for bytes)."""
    if kind == "flops":
        return row.mean("flops_removed_pct")
    if kind == "params":
        return row.mean("nonzero_removed_pct" if row.unstructured else "params_removed_pct")
    if kind == "sparsity":
        return row.mean("sparsity_pct")
    if kind == "weights_left":
        removed = row.mean("sparsity_pct" if row.unstructured else "params_removed_pct")
        return None if removed is None else 100.0 - removed
    return row.mean("bytes_ratio")


def pick(entry: PaperEntry, rows: Sequence[Row]) -> tuple[Row, Reduction | None, float | None]:
    """Our row and the paper reduction to hold it against: the reduction kind our runs target
    first, then any kind we measured; among our targets the one measured nearest the paper."""
    kinds = {r.target_kind for r in rows}
    ordered = sorted(entry.reductions, key=lambda red: red.kind not in kinds)
    for red in ordered:
        measured = [(r, v) for r in rows if (v := our_measure(r, red.kind)) is not None]
        if measured:
            row, value = min(measured, key=lambda rv: (abs(rv[1] - red.value), -rv[0].target))
            return row, red, value
    return max(rows, key=lambda r: r.target), None, None


def schedule_text(row: Row) -> str:
    c = row.config
    return f"baseline {c.get('epochs')} epochs + {c.get('finetune_epochs')} fine-tuning epochs"


def as_metric(acc: float | None, metric: str) -> float | None:
    if acc is None:
        return None
    return 100.0 - acc if metric == "error" else acc


def compare(entry: PaperEntry, table: Table, rows: Sequence[Row]) -> PaperRow:
    row, red, value = pick(entry, rows)
    if red is not None and value is not None:
        ours_red = Reduction(red.kind, value).text(nonzero=row.unstructured)
        headline = red.kind == entry.reduction.kind and entry.reduction_text
        paper_red = entry.reduction_text if headline else red.text()
    else:
        ours_red = "reduction not measured"
        paper_red = entry.reduction_label
    if red is not None and red.kind == "bytes_ratio" and value is not None:
        ours_red += " (Deep Compression file vs float32 weights)"
    size = f" at {table.image_size}x{table.image_size}" if table.image_size else ""
    seeds = len(row.seeds)
    paper_side = f"paper: {entry.model} on {entry.data}, {paper_red}, {entry.setting}"
    ours_side = (
        f"ours: {table.model} on {table.data}{size}, {ours_red} (target {row.target_text}), "
        f"{schedule_text(row)}, {seeds} seed{'s' if seeds != 1 else ''}"
    )
    differs = f"{paper_side}; {ours_side}"
    if entry.metric == "error":
        differs += "; the paper reports error rates, ours are 100 - top-1"
    return PaperRow(
        method=entry.method,
        source=entry.source,
        metric=entry.metric,
        paper_model=entry.model,
        paper_data=entry.data,
        paper_setting=f"{entry.model} on {entry.data}, {entry.reduction_label}, {entry.setting}",
        paper_before=entry.paper_before,
        paper_after=entry.paper_after,
        paper_drop=entry.drop,
        paper_reduction=entry.reduction_label,
        ours_model=table.model,
        ours_data=table.data,
        ours_label=row.label,
        ours_target=row.target_text,
        ours_setting=f"{table.model} on {table.data}{size}, {row.label} at {row.target_text}",
        ours_reduction=ours_red,
        ours_before=as_metric(row.mean("acc_before"), entry.metric),
        ours_after=as_metric(row.mean("acc_finetuned"), entry.metric),
        ours_drop=row.mean("acc_drop"),
        ours_seeds=seeds,
        differs=differs,
    )


def _gap(entry: PaperEntry, rows: Sequence[Row]) -> float:
    _, red, value = pick(entry, rows)
    return float("inf") if red is None or value is None else abs(value - red.value)


def paper_table(
    tables: Sequence[Table], entries: Sequence[PaperEntry] | None = None
) -> list[PaperRow]:
    """For each method of the report ``tables`` (:func:`prunekit.bench.report.aggregate` of the
    run records) that has paper entries, and each model and data set it ran on: the nearest
    paper entry beside our target nearest the paper's reduction."""
    entries = load_entries() if entries is None else list(entries)
    by_method: dict[str, list[PaperEntry]] = {}
    for e in entries:
        by_method.setdefault(e.method, []).append(e)
    out = []
    for table in tables:
        methods = sorted({r.method for r in table.rows})
        for method in methods:
            candidates = by_method.get(method)
            if not candidates:
                continue
            rows = [r for r in table.rows if r.method == method]
            nearest = max(closeness(e, table) for e in candidates)
            # among the entries nearest our model and data: the one nearest our measured budget
            best = min(
                (e for e in candidates if closeness(e, table) == nearest),
                key=lambda e: _gap(e, rows),
            )
            out.append(compare(best, table, rows))
    out.sort(key=lambda p: (p.method, p.ours_model, p.ours_data))
    return out
