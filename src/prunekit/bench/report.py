"""The benchmark report: finished runs aggregated over seeds into one table per model and data set,
with plots and the published figures beside ours, written as Markdown, self-contained HTML and
JSON.

The page opens with what a reader decides from: per model and data set one matrix of top-1 after
fine-tuning (methods as rows, targets as columns, mean ± sd over seeds and baselines, the accuracy
drop beside it), the best of each column marked and every cell whose gap to that best is inside
the seed spread marked as level with it; prunekit's methods first, then the peer and reference
baselines (:mod:`prunekit.bench.peers`) set apart. Under it, prunekit's best against the peers'
best at each target, and distilled against plain fine-tuning where a spec ran both. The detail
tables, plots (a Pareto plot of accuracy against measured latency among them) and the published
figures follow.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.bench import paper as paper_mod
from prunekit.bench import plots as plots_mod
from prunekit.bench.results import Row, Stat, Table
from prunekit.errors import ConfigError
from prunekit.io import atomic_open, atomic_write_json
from prunekit.tables import markdown_table

if TYPE_CHECKING:
    from prunekit.bench.store import RunRecord

# Settings of a run that are neither its table (model, data, size) nor its row (method, target).
SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "finetune_epochs", "finetune_lr", "calib_batches")
ENV_KEYS = ("torch", "threads", "workers", "device")

# Metrics copied from a record as they are.
DIRECT_KEYS = (
    "scratch_epochs",  # pruned at initialisation: epochs from there (the baseline's)
    "from_init_epochs",  # epochs the method itself trained the network from scratch
    "method_epochs",  # epochs the method trained inside its pruning (beyond the fine-tuning)
    "acc_before",
    "acc_pruned",
    "acc_finetuned",
    "top5_before",
    "top5_pruned",
    "top5_finetuned",
    "params_before",
    "params_after",
    "flops_before",
    "flops_after",
    "latency_before_ms",
    "latency_after_ms",
    "latency_b32_before_ms",
    "latency_b32_after_ms",
    "onnx_speedup",
    "onnx_latency_before_ms",
    "onnx_latency_after_ms",
    "bytes_dense",
    "bytes_sparse",
    "bytes_result_file",
)


@dataclass
class Unfinished:
    """A run that did not finish (failed, or still running when the report was made)."""

    id: str
    status: str
    model: str
    data: str
    method: str
    target: str
    seed: Any
    error: str


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int


COLUMNS = (
    Column("acc_before", "top-1 before", 2),
    Column("acc_pruned", "top-1 pruned", 2),
    Column("acc_finetuned", "top-1 fine-tuned", 2),
    Column("acc_drop", "drop", 2),
    Column("top5_before", "top-5 before", 2),
    Column("top5_pruned", "top-5 pruned", 2),
    Column("top5_finetuned", "top-5 fine-tuned", 2),
    Column("sparsity_pct", "sparsity %", 1),
    Column("params_after", "params after", 0),
    Column("params_removed_pct", "params -%", 1),
    Column("nonzero_params_after", "non-zero params", 0),
    Column("flops_removed_pct", "FLOPs -%", 1),
    Column("latency_after_ms", "b1 ms", 3),
    Column("speedup", "b1 speedup", 2),
    Column("latency_b32_after_ms", "b32 ms", 2),
    Column("speedup_b32", "b32 speedup", 2),
    Column("onnx_speedup", "ONNX speedup", 2),
    Column("bytes_dense", "bytes dense", 0),
    Column("bytes_sparse", "bytes sparse", 0),
    Column("bytes_result_file", "bytes of its quantised file", 0),
    Column("method_epochs", "epochs in the method", 1),
    Column("prune_time_s", "prune s", 2),
    Column("finetune_time_s", "fine-tune s", 2),
)


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    html: Path
    markdown: Path
    plots: list[Path] = field(default_factory=list)
    data: Path | None = None


# --------------------------------------------------------------------------- aggregation


def number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def ratio_removed(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before <= 0:
        return None
    return 100.0 * (1.0 - after / before)


def is_unstructured(record: RunRecord) -> bool:
    return record.config.get("target_kind") == "sparsity" or "sparsity" in record.metrics


def record_values(record: RunRecord) -> dict[str, float]:
    """The figures of one run that the report aggregates, derived ones included."""
    m, t = record.metrics, record.timings
    out = {k: v for k in DIRECT_KEYS if (v := number(m.get(k))) is not None}
    get = out.get
    if "bytes_result_file" not in out:  # stores written before the runner recorded it
        old = number(m.get("bytes_deep_compression"))
        if old is None and m.get("result_file") is not None:
            old = number(m.get("bytes_after"))  # the workflow's figure for the method's file
        if old is not None:
            out["bytes_result_file"] = old
    drop = number(m.get("acc_drop"))
    if drop is None and get("acc_before") is not None and get("acc_finetuned") is not None:
        drop = out["acc_before"] - out["acc_finetuned"]
    derived: dict[str, float | None] = {
        "acc_drop": drop,
        "params_removed_pct": ratio_removed(get("params_before"), get("params_after")),
        "flops_removed_pct": ratio_removed(get("flops_before"), get("flops_after")),
        "speedup": number(m.get("speedup")),
        "speedup_b32": number(m.get("speedup_b32")),
        "prune_time_s": number(m.get("prune_time_s", t.get("prune_s"))),
        "finetune_time_s": number(m.get("finetune_time_s", t.get("finetune_s"))),
    }
    if derived["speedup"] is None and get("latency_after_ms"):
        derived["speedup"] = ratio(get("latency_before_ms"), get("latency_after_ms"))
    if derived["speedup_b32"] is None and get("latency_b32_after_ms"):
        derived["speedup_b32"] = ratio(get("latency_b32_before_ms"), get("latency_b32_after_ms"))
    if is_unstructured(record):
        nonzero = number(m.get("nonzero_params_after", m.get("nonzero_params")))
        sparsity = number(m.get("sparsity"))
        derived["nonzero_params_after"] = nonzero
        derived["sparsity_pct"] = None if sparsity is None else 100.0 * sparsity
        derived["nonzero_removed_pct"] = ratio_removed(get("params_before"), nonzero)
        if get("bytes_result_file") and get("params_before"):
            # as the paper counts it: against the dense weights stored as float32
            derived["bytes_ratio"] = 4.0 * out["params_before"] / out["bytes_result_file"]
    out.update({k: v for k, v in derived.items() if v is not None})
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def options_text(options: Any) -> str:
    if not isinstance(options, dict) or not options:
        return ""
    return ", ".join(f"{k}={options[k]}" for k in sorted(options))


def row_key(config: dict[str, Any]) -> str:
    """What puts runs in one row: their config less the seed and the data folder, and less the
    fields added since a store was written left at their defaults (a store written before
    them holds the same runs without the keys)."""
    from prunekit.bench.spec import without_later_defaults

    shared = {k: v for k, v in config.items() if k not in ("seed", "root")}
    return json.dumps(without_later_defaults(shared), sort_keys=True, default=str)


def table_env(records: Sequence[RunRecord]) -> dict[str, str]:
    env = {}
    for key in ENV_KEYS:
        values = sorted({str(r.env[key]) for r in records if r.env.get(key) is not None})
        env[key] = " / ".join(values) if values else "-"
    return env


def table_baseline(records: Sequence[RunRecord]) -> Stat | None:
    """Dense top-1 over distinct baselines (the seed and training settings that make one)."""
    by_baseline: dict[str, list[float]] = {}
    for r in records:
        acc = number(r.metrics.get("acc_before"))
        if acc is None:
            continue
        key = json.dumps(
            [r.config.get(k) for k in ("seed", "baseline", "epochs", "batch_size", "lr")]
        )
        by_baseline.setdefault(key, []).append(acc)
    means = [statistics.fmean(v) for v in by_baseline.values()]
    return Stat.of(means) if means else None


def make_rows(records: Sequence[RunRecord], varying: Sequence[str]) -> list[Row]:
    groups: dict[str, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(row_key(r.config), []).append(r)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: str(r.config.get("seed")))
        config = {k: v for k, v in members[0].config.items() if k != "seed"}
        method = str(config.get("method"))
        extras = [options_text(config.get("options"))]
        extras += [f"{k}={config.get(k)}" for k in varying]
        if config.get("distill"):
            extras.append(
                f"distilled T={config.get('distill_temperature'):g} "
                f"alpha={config.get('distill_alpha'):g}"
            )
        if config.get("round_to"):
            extras.append(f"round_to={config.get('round_to')}")
        if (config.get("steps") or 1) > 1:
            extras.append(f"{config['steps']} steps, {config.get('step_epochs', 0)} epochs between")
        extra = ", ".join(e for e in extras if e)
        values: dict[str, list[float]] = {}
        for r in members:
            for k, v in record_values(r).items():
                values.setdefault(k, []).append(v)
        rows.append(
            Row(
                method=method,
                label=f"{method} ({extra})" if extra else method,
                target_kind=str(config.get("target_kind")),
                target=float(number(config.get("target")) or 0.0),
                unstructured=any(is_unstructured(r) for r in members),
                seeds=[r.config.get("seed") for r in members],
                config=config,
                stats={k: Stat.of(v) for k, v in values.items()},
            )
        )
    rows.sort(key=lambda row: (row.method, row.label, row.target_kind, row.target))
    return rows


def aggregate(records: Sequence[RunRecord]) -> list[Table]:
    """The finished (``status == "done"``) records as one :class:`Table` per model and data set."""
    by_table: dict[tuple[str, str, Any], list[RunRecord]] = {}
    for r in records:
        if r.status != "done":
            continue
        c = r.config
        by_table.setdefault(
            (str(c.get("model")), str(c.get("data")), c.get("image_size")), []
        ).append(r)
    tables = []
    for (model, data, size), members in sorted(by_table.items(), key=lambda kv: str(kv[0])):
        settings = {k: {json.dumps(r.config.get(k)) for r in members} for k in SCHEDULE_KEYS}
        varying = [k for k in SCHEDULE_KEYS if len(settings[k]) > 1]
        schedule = {k: members[0].config.get(k) for k in SCHEDULE_KEYS if k not in varying}
        tables.append(
            Table(
                model=model,
                data=data,
                image_size=size if isinstance(size, int) else None,
                rows=make_rows(members, varying),
                env=table_env(members),
                schedule=schedule,
                baseline=table_baseline(members),
            )
        )
    return tables


def short_error(text: str | None) -> str:
    """One line of an error: a traceback's final line, else the first line (at most 300 chars)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return "-"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= 300 else line[:297] + "..."


def unfinished(records: Sequence[RunRecord]) -> list[Unfinished]:
    out = []
    for r in records:
        if r.status == "done":
            continue
        c = r.config
        method = str(c.get("method"))
        if opts := options_text(c.get("options")):
            method = f"{method} ({opts})"
        out.append(
            Unfinished(
                id=r.id,
                status=r.status,
                model=str(c.get("model")),
                data=str(c.get("data")),
                method=method,
                target=f"{c.get('target_kind')} {c.get('target')}",
                seed=c.get("seed"),
                error=short_error(r.error) if r.error else "-",
            )
        )
    out.sort(key=lambda u: (u.status, u.model, u.data, u.method, u.target, str(u.seed)))
    return out


# --------------------------------------------------------------------------- the decision matrix

KIND_TITLES = {
    "prunekit": "prunekit methods",
    "peer": "peers: other libraries' criteria (not prunekit)",
    "reference": "references (not prunekit)",
}
LEVEL_MARK = "≈"


@dataclass
class Cell:
    """One method at one target: top-1 after fine-tuning and the accuracy drop (over seeds),
    whether it is the column's best, and whether its gap to the best is inside the seed spread
    (the larger of the two standard deviations)."""

    acc: Stat | None
    drop: Stat | None
    best: bool = False
    level: bool = False
    epochs: Stat | None = None  # training epochs inside the method (beyond the fine-tuning)

    def text(self) -> str:
        if self.acc is None:
            return "-"
        drop = "" if self.drop is None else f" (drop {self.drop.mean:.2f})"
        return self.acc.format(2) + drop + (f" {LEVEL_MARK}" if self.level else "")


@dataclass
class MatrixRow:
    label: str
    kind: str  # "prunekit" | "peer" | "reference"
    cells: list[Cell]


@dataclass
class Matrix:
    """Methods as rows, targets as columns, of one :class:`Table`."""

    title: str
    columns: list[tuple[str, float]]
    rows: list[MatrixRow]
    baseline: Stat | None

    @property
    def headers(self) -> list[str]:
        return ["method", *(f"{k} -{100 * v:g}%" for k, v in self.columns)]


def method_kind(method: str) -> str:
    from prunekit.bench.peers import method_kind as kind

    return kind(method)


def spread(a: Stat, b: Stat) -> float:
    """The seed spread two results are compared within: the larger standard deviation."""
    return max(a.sd or 0.0, b.sd or 0.0)


def level_with(best: Stat, other: Stat) -> bool:
    return best.mean - other.mean <= spread(best, other)


def _kind_key(kind: str) -> int:
    order = list(KIND_TITLES)
    return order.index(kind) if kind in order else len(order)


def matrix(table: Table) -> Matrix:
    """The decision matrix of ``table``."""
    columns = sorted(
        {(r.target_kind, r.target) for r in table.rows},
        key=lambda c: (
            plots_mod.KIND_ORDER.index(c[0]) if c[0] in plots_mod.KIND_ORDER else 9,
            c[1],
        ),
    )
    by_label: dict[str, dict[tuple[str, float], Row]] = {}
    kinds: dict[str, str] = {}
    for row in table.rows:
        by_label.setdefault(row.label, {})[(row.target_kind, row.target)] = row
        kinds[row.label] = method_kind(row.method)
    rows = [
        MatrixRow(
            label,
            kinds[label],
            [
                Cell(
                    cells[c].stats.get("acc_finetuned"),
                    cells[c].stats.get("acc_drop"),
                    epochs=cells[c].stats.get("method_epochs"),
                )
                if c in cells
                else Cell(None, None)
                for c in columns
            ],
        )
        for label, cells in by_label.items()
    ]
    rows.sort(key=lambda r: (_kind_key(r.kind), r.label))
    for j in range(len(columns)):
        present = [r.cells[j] for r in rows if r.cells[j].acc is not None]
        if not present:
            continue
        top = max(present, key=lambda c: c.acc.mean)  # type: ignore[union-attr]
        for cell in present:
            cell.best = cell.acc.mean == top.acc.mean  # type: ignore[union-attr]
            cell.level = not cell.best and level_with(top.acc, cell.acc)  # type: ignore[arg-type]
    return Matrix(table.title, columns, rows, table.baseline)


MATRIX_NOTE = (
    "Top-1 after fine-tuning, mean ± sd over seeds (and baselines), with the accuracy drop from "
    "the dense baseline; **bold**: the best of the column; "
    f"{LEVEL_MARK}: behind the best by less than the seed spread (the larger of the two sds), "
    "so not told apart from it by these runs."
)


def matrix_md(m: Matrix) -> str:
    width = len(m.columns)
    rows: list[list[str]] = []
    kind = None
    for r in m.rows:
        if r.kind != kind:
            kind = r.kind
            rows.append([f"*{KIND_TITLES.get(kind, kind)}*", *([""] * width)])
        rows.append([r.label, *(f"**{c.text()}**" if c.best else c.text() for c in r.cells)])
    return md_table(m.headers, rows)  # md_cell leaves the bold markers alone


@dataclass
class Versus:
    """prunekit's best against the peers' best (and the width-scaled reference) at one target."""

    target: str
    ours: tuple[str, Cell] | None
    peer: tuple[str, Cell] | None
    reference: tuple[str, Cell] | None

    def verdict(self) -> str:
        if self.ours is None or self.peer is None:
            return "-"
        a, b = self.ours[1].acc, self.peer[1].acc
        assert a is not None and b is not None
        gap, sd = a.mean - b.mean, spread(a, b)
        if a.sd is None or b.sd is None:  # one seed: no spread to judge the gap by
            return f"{'ahead' if gap >= 0 else 'behind'} by {abs(gap):.2f} (one seed: no spread)"
        if abs(gap) <= sd:
            return f"level: {gap:+.2f} is inside the spread {sd:.2f}"
        return f"{'ahead' if gap > 0 else 'behind'} by {abs(gap):.2f}, beyond the spread {sd:.2f}"


def versus(m: Matrix) -> list[Versus]:
    out = []
    for j, (kind, value) in enumerate(m.columns):
        best: dict[str, tuple[str, Cell]] = {}
        for r in m.rows:
            cell = r.cells[j]
            if cell.acc is None:
                continue
            held = best.get(r.kind)
            if held is None or cell.acc.mean > held[1].acc.mean:  # type: ignore[union-attr]
                best[r.kind] = (r.label, cell)
        out.append(
            Versus(
                f"{kind} -{100 * value:g}%",
                best.get("prunekit"),
                best.get("peer"),
                best.get("reference"),
            )
        )
    return out


VERSUS_HEADERS = (
    "target",
    "prunekit's best",
    "top-1",
    "peer's best",
    "top-1",
    "verdict",
    "width-scaled reference",
)


def versus_cells(items: Sequence[Versus]) -> list[list[str]]:
    def name(x: tuple[str, Cell] | None) -> str:
        if x is None:
            return "-"
        epochs = x[1].epochs
        if epochs is None or epochs.mean <= 0:
            return x[0]
        return f"{x[0]} (+{epochs.mean:.0f} epochs in the method)"

    def acc(x: tuple[str, Cell] | None) -> str:
        return "-" if x is None else x[1].text().removesuffix(f" {LEVEL_MARK}")

    return [
        [
            v.target,
            name(v.ours),
            acc(v.ours),
            name(v.peer),
            acc(v.peer),
            v.verdict(),
            acc(v.reference),
        ]
        for v in items
    ]


RANDOM = "random_channel"  # the control a structured method has to beat (CVPR 2022)


def against_random(m: Matrix) -> tuple[list[str], list[list[str]], list[str]]:
    """Every prunekit row against random channels at each target: the gap in top-1 after
    fine-tuning, marked ``≈`` where it is inside the seed spread (the larger sd), and the rows
    that are ahead beyond the spread at no target (no rows when the matrix has no
    random-channel row or nothing to compare)."""
    base = next((r for r in m.rows if r.label == RANDOM), None)
    if base is None:
        return [], [], []
    rows, never = [], []
    for r in m.rows:
        if r.kind != "prunekit" or r is base:
            continue
        cells, ahead, seen = [], False, False
        for c, b in zip(r.cells, base.cells, strict=True):
            if c.acc is None or b.acc is None:
                cells.append("-")
                continue
            seen = True
            gap = c.acc.mean - b.acc.mean
            inside = abs(gap) <= spread(c.acc, b.acc)
            ahead |= gap > 0 and not inside
            cells.append(f"{gap:+.2f}" + (f" {LEVEL_MARK}" if inside else ""))
        if seen:
            rows.append([r.label, *cells])
            if not ahead:
                never.append(r.label)
    return ["method", *m.headers[1:]], rows, never


RANDOM_NOTE = (
    "Each prunekit method's top-1 after fine-tuning minus random channels' (random_channel: "
    "random layer widths and random channels, the control of Li et al., CVPR 2022), in points; "
    f"{LEVEL_MARK}: inside the seed spread."
)


def random_text(never: Sequence[str]) -> str:
    if not never:
        return "Every method is ahead of random channels, beyond the spread, at some target."
    return "Not ahead of random channels beyond the spread at any target: " + ", ".join(never) + "."


DISTILL_HEADERS = ("method", "target", "plain fine-tuning", "distilled", "distilled - plain")


def distill_pairs(table: Table) -> list[list[str]]:
    """Rows that differ only in distillation: plain and distilled fine-tuning side by side."""
    drop = ("distill", "distill_temperature", "distill_alpha")
    plain: dict[str, Row] = {}
    distilled: list[Row] = []
    for row in table.rows:
        key = json.dumps(
            {k: v for k, v in row.config.items() if k not in drop}, sort_keys=True, default=str
        )
        if row.config.get("distill"):
            distilled.append(row)
        else:
            plain[key] = row
    out = []
    for row in distilled:
        key = json.dumps(
            {k: v for k, v in row.config.items() if k not in drop}, sort_keys=True, default=str
        )
        base = plain.get(key)
        a, b = row.stats.get("acc_finetuned"), base.stats.get("acc_finetuned") if base else None
        if base is None or a is None or b is None:
            continue
        gap, sd = a.mean - b.mean, spread(a, b)
        mark = f" {LEVEL_MARK}" if abs(gap) <= sd else ""
        out.append(
            [
                base.label,
                base.target_text,
                Cell(b, base.stats.get("acc_drop")).text(),
                Cell(a, row.stats.get("acc_drop")).text(),
                f"{gap:+.2f}{mark}",
            ]
        )
    return out


# --------------------------------------------------------------------------- cells


def columns_of(table: Table) -> list[Column]:
    """The columns that at least one row of ``table`` has a value for."""
    return [c for c in COLUMNS if any(c.key in row.stats for row in table.rows)]


def table_cells(table: Table) -> tuple[list[str], list[list[str]]]:
    columns = columns_of(table)
    headers = ["method", "target", "seeds", *(c.header for c in columns)]
    rows = []
    for row in table.rows:
        cells = [row.label, row.target_text, str(len(row.seeds))]
        for c in columns:
            stat = row.stats.get(c.key)
            cells.append("-" if stat is None else stat.format(c.digits))
        rows.append(cells)
    return headers, rows


def env_text(table: Table) -> str:
    e = table.env
    return (
        f"torch {e['torch']}, {e['threads']} torch thread(s) per run, {e['workers']} run(s) at "
        f"a time (latency is timed while they share the machine), device {e['device']}"
    )


def from_init_text(table: Table) -> str:
    """Which rows trained the network from the architecture's initialisation, and how many
    epochs (so a reader sees the budget behind them); empty when none did."""
    at_init: dict[str, float] = {}
    own: dict[str, float] = {}
    for row in table.rows:
        for key, into in (("scratch_epochs", at_init), ("from_init_epochs", own)):
            if (stat := row.stats.get(key)) is not None:
                into[row.label] = max(into.get(row.label, 0.0), stat.mean)
    parts = []
    if at_init:
        names = ", ".join(sorted(at_init))
        epochs = "/".join(sorted({f"{v:g}" for v in at_init.values()}))
        parts.append(
            f"{names} pruned at initialisation, then trained {epochs} epochs (the baseline's "
            "schedule)"
        )
    if own:
        parts.append(
            "; ".join(
                f"{k} trained {v:g} epochs from scratch itself" for k, v in sorted(own.items())
            )
        )
    if not parts:
        return ""
    return (
        "From the architecture's initialisation: "
        + "; ".join(parts)
        + "; every row then gets the same fine-tuning."
    )


def schedule_text(table: Table) -> str:
    s = table.schedule
    parts = [f"{k.replace('_', ' ')} {s[k]}" for k in SCHEDULE_KEYS if k in s]
    base = f"dense top-1 {table.baseline.format(2)}" if table.baseline else "dense top-1 -"
    return "; ".join([base, *parts])


PAPER_HEADERS = (
    "method",
    "source",
    "paper",
    "paper before",
    "paper after",
    "paper drop",
    "ours",
    "ours before",
    "ours after",
    "ours drop",
    "what differs",
)


def paper_cells(rows: Sequence[paper_mod.PaperRow]) -> list[list[str]]:
    out = []
    for p in rows:
        prefix = "err " if p.metric == "error" else ""
        out.append(
            [
                p.method,
                p.source,
                p.paper_setting,
                f"{prefix}{p.paper_before:.2f}",
                f"{prefix}{p.paper_after:.2f}",
                f"{p.paper_drop:.2f}",
                p.ours_setting,
                f"{prefix}{p.ours_before:.2f}" if p.ours_before is not None else "-",
                f"{prefix}{p.ours_after:.2f}" if p.ours_after is not None else "-",
                f"{p.ours_drop:.2f}" if p.ours_drop is not None else "-",
                p.differs,
            ]
        )
    return out


UNFINISHED_HEADERS = ("id", "status", "model", "data", "method", "target", "seed", "error")


def unfinished_cells(items: Sequence[Unfinished]) -> list[list[str]]:
    return [
        [u.id, u.status, u.model, u.data, u.method, u.target, str(u.seed), u.error] for u in items
    ]


# --------------------------------------------------------------------------- rendering


def md_cell(text: str) -> str:
    """``text`` safe in a Markdown table cell: no pipes, no line breaks, no raw HTML tags."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markdown_table([md_cell(h) for h in headers], [[md_cell(c) for c in r] for r in rows])


def render_markdown(
    title: str,
    tables: Sequence[Table],
    plots: dict[str, list[plots_mod.PlotSeries]],
    paper_rows: Sequence[paper_mod.PaperRow],
    pending: Sequence[Unfinished],
    counts: tuple[int, int],
) -> str:
    parts = [f"# {md_cell(title)}", "", summary_text(counts), ""]
    if tables:
        parts += ["## Decision matrix", "", MATRIX_NOTE, ""]
    for table in tables:
        m = matrix(table)
        base = table.baseline.format(2) if table.baseline else "-"
        parts += [f"### Matrix: {md_cell(table.title)}", "", f"Dense baseline top-1: {base}.", ""]
        if note := from_init_text(table):
            parts += [md_cell(note), ""]
        parts += [matrix_md(m), ""]
        parts += ["prunekit's best against the peers' best:", ""]
        parts += [md_table(VERSUS_HEADERS, versus_cells(versus(m))), ""]
        headers, rows, never = against_random(m)
        if rows:
            parts += ["Against random channels:", "", RANDOM_NOTE, ""]
            parts += [md_table(headers, rows), "", random_text(never), ""]
        if pairs := distill_pairs(table):
            parts += [
                "Distilled against plain fine-tuning:",
                "",
                md_table(DISTILL_HEADERS, pairs),
                "",
            ]
    for table in tables:
        headers, rows = table_cells(table)
        parts += [f"## {md_cell(table.title)}", ""]
        parts += [f"Environment: {md_cell(env_text(table))}.", ""]
        parts += [f"Setting: {md_cell(schedule_text(table))}.", ""]
        parts += [md_table(headers, rows), ""]
        for plot in plots.get(table.slug, []):
            parts += [f"![{md_cell(plot.title)}]({plot.file})", ""]
    parts += ["## Paper vs ours", ""]
    if paper_rows:
        parts += [PAPER_NOTE, "", md_table(PAPER_HEADERS, paper_cells(paper_rows)), ""]
    else:
        parts += ["No method of these results has published figures on file.", ""]
    parts += ["## Not finished", ""]
    if pending:
        parts += [md_table(UNFINISHED_HEADERS, unfinished_cells(pending)), ""]
    else:
        parts += ["Every run finished.", ""]
    return "\n".join(parts)


PAPER_NOTE = (
    "Paper figures beside ours at our target closest to the paper's reduction. "
    "Drops are top-1 points lost by pruning; error rates are 100 - top-1."
)

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th { background: #f0f0f0; }
td:first-child, th:first-child, td.text { text-align: left; }
p.meta { color: #555; margin: 0.2em 0; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; }
img { max-width: 100%; border: 1px solid #eee; }
.scroll { overflow-x: auto; }
tr.sep td { background: #fafafa; border-top: 2px solid #999; }
"""


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], text_cols: int = 1) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="text">{esc(c)}</td>' if i < text_cols else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def render_html(
    title: str,
    tables: Sequence[Table],
    plots: dict[str, list[plots_mod.PlotSeries]],
    images: dict[str, bytes],
    paper_rows: Sequence[paper_mod.PaperRow],
    pending: Sequence[Unfinished],
    counts: tuple[int, int],
) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(summary_text(counts))}</p>',
    ]
    if tables:
        out += ["<section><h2>Decision matrix</h2>", f'<p class="meta">{esc(MATRIX_NOTE)}</p>']
    for table in tables:
        m = matrix(table)
        base = table.baseline.format(2) if table.baseline else "-"
        out += [
            f"<h3>Matrix: {esc(table.title)}</h3>",
            f'<p class="meta">Dense baseline top-1: {esc(base)}.</p>',
            *([f'<p class="meta">{esc(note)}</p>'] if (note := from_init_text(table)) else []),
            matrix_html(m),
            "<p>prunekit's best against the peers' best:</p>",
            html_table(VERSUS_HEADERS, versus_cells(versus(m)), text_cols=2),
        ]
        headers, rows, never = against_random(m)
        if rows:
            out += [
                "<p>Against random channels:</p>",
                f'<p class="meta">{esc(RANDOM_NOTE)}</p>',
                html_table(headers, rows),
                f"<p>{esc(random_text(never))}</p>",
            ]
        if pairs := distill_pairs(table):
            out += [
                "<p>Distilled against plain fine-tuning:</p>",
                html_table(DISTILL_HEADERS, pairs, 2),
            ]
    if tables:
        out.append("</section>")
    for table in tables:
        headers, rows = table_cells(table)
        out += [
            f"<section><h2>{esc(table.title)}</h2>",
            f'<p class="meta">Environment: {esc(env_text(table))}.</p>',
            f'<p class="meta">Setting: {esc(schedule_text(table))}.</p>',
            html_table(headers, rows, text_cols=2),
        ]
        for plot in plots.get(table.slug, []):
            data = base64.b64encode(images[plot.file]).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{esc(plot.title)}">'
                f"<figcaption>{esc(plot.title)}</figcaption></figure>"
            )
        out.append("</section>")
    out.append("<section><h2>Paper vs ours</h2>")
    if paper_rows:
        out.append(f'<p class="meta">{esc(PAPER_NOTE)}</p>')
        out.append(html_table(PAPER_HEADERS, paper_cells(paper_rows), text_cols=3))
    else:
        out.append("<p>No method of these results has published figures on file.</p>")
    out.append("</section><section><h2>Not finished</h2>")
    if pending:
        out.append(html_table(UNFINISHED_HEADERS, unfinished_cells(pending), text_cols=8))
    else:
        out.append("<p>Every run finished.</p>")
    out.append("</section></body></html>")
    return "\n".join(out) + "\n"


def matrix_html(m: Matrix) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in m.headers)
    body, kind = [], None
    for r in m.rows:
        if r.kind != kind:
            kind = r.kind
            title = esc(KIND_TITLES.get(kind, kind))
            body.append(
                f'<tr class="sep"><td class="text" colspan="{len(m.headers)}"><em>{title}</em></td></tr>'
            )
        cells = "".join(
            f"<td><strong>{esc(c.text())}</strong></td>" if c.best else f"<td>{esc(c.text())}</td>"
            for c in r.cells
        )
        body.append(f'<tr><td class="text">{esc(r.label)}</td>{cells}</tr>')
    return (
        f'<div class="scroll"><table class="matrix"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def summary_text(counts: tuple[int, int]) -> str:
    done, pending = counts
    return f"{done} finished runs reported; {pending} not finished."


# --------------------------------------------------------------------------- writing


def table_json(table: Table) -> dict[str, Any]:
    def stat(s: Stat | None) -> dict[str, Any] | None:
        return None if s is None else dataclasses.asdict(s)

    return {
        "model": table.model,
        "data": table.data,
        "image_size": table.image_size,
        "env": table.env,
        "schedule": table.schedule,
        "baseline": stat(table.baseline),
        "rows": [
            {
                "method": r.method,
                "label": r.label,
                "target_kind": r.target_kind,
                "target": r.target,
                "unstructured": r.unstructured,
                "seeds": r.seeds,
                "config": r.config,
                "stats": {k: stat(v) for k, v in sorted(r.stats.items())},
            }
            for r in table.rows
        ],
    }


def matrix_json(m: Matrix) -> dict[str, Any]:
    def stat(s: Stat | None) -> dict[str, Any] | None:
        return None if s is None else dataclasses.asdict(s)

    _, random_rows, never = against_random(m)
    return {
        "title": m.title,
        "against_random": {"rows": random_rows, "not_ahead": never},
        "columns": [{"kind": k, "target": v} for k, v in m.columns],
        "rows": [
            {
                "label": r.label,
                "kind": r.kind,
                "cells": [
                    {
                        "acc": stat(c.acc),
                        "drop": stat(c.drop),
                        "method_epochs": stat(c.epochs),
                        "best": c.best,
                        "level": c.level,
                    }
                    for c in r.cells
                ],
            }
            for r in m.rows
        ],
    }


def matrix_from_json(data: dict[str, Any]) -> Matrix:
    """The :class:`Matrix` a report's JSON holds (:func:`matrix_json`), so committed reports can
    be compared with one another without their stores (the baseline is not in the JSON)."""

    def stat(d: dict[str, Any] | None) -> Stat | None:
        return None if d is None else Stat(float(d["mean"]), d.get("sd"), int(d["n"]))

    try:
        return Matrix(
            str(data["title"]),
            [(str(c["kind"]), float(c["target"])) for c in data["columns"]],
            [
                MatrixRow(
                    str(r["label"]),
                    str(r["kind"]),
                    [
                        Cell(
                            stat(c["acc"]),
                            stat(c["drop"]),
                            best=bool(c["best"]),
                            level=bool(c["level"]),
                            epochs=stat(c.get("method_epochs")),
                        )
                        for c in r["cells"]
                    ],
                )
                for r in data["rows"]
            ],
            None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a report matrix (as report.json's 'matrices' hold): {e!r}") from e


def write_report(
    records: Sequence[RunRecord], out_dir: str | Path, *, title: str = "prunekit benchmark"
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` (self-contained), ``report.json`` and the plots under
    ``out_dir/plots`` for ``records``. Only finished runs enter the tables; the others are listed
    under "Not finished" with their error."""
    out_dir = Path(out_dir)
    tables = aggregate(records)
    pending = unfinished(records)
    counts = (sum(r.status == "done" for r in records), len(pending))
    plots: dict[str, list[plots_mod.PlotSeries]] = {}
    images: dict[str, bytes] = {}
    plot_files = []
    for table in tables:
        described = plots_mod.describe(table)
        plots[table.slug] = described
        for plot in described:
            images[plot.file] = plots_mod.save(plot, out_dir / plot.file)
            plot_files.append(out_dir / plot.file)
    paper_rows = paper_mod.paper_table(tables)

    files = ReportFiles(
        html=out_dir / "report.html",
        markdown=out_dir / "report.md",
        plots=plot_files,
        data=out_dir / "report.json",
    )
    markdown = render_markdown(title, tables, plots, paper_rows, pending, counts)
    with atomic_open(files.markdown, "w") as f:
        f.write(markdown)
    page = render_html(title, tables, plots, images, paper_rows, pending, counts)
    with atomic_open(files.html, "w") as f:
        f.write(page)
    atomic_write_json(
        {
            "title": title,
            "tables": [table_json(t) for t in tables],
            "matrices": [matrix_json(matrix(t)) for t in tables],
            "plots": [dataclasses.asdict(p) for ps in plots.values() for p in ps],
            "paper": [dataclasses.asdict(p) for p in paper_rows],
            "not_finished": [dataclasses.asdict(u) for u in pending],
        },
        files.data,
    )
    return files


def report_from_stores(paths: Sequence[str | Path], out_dir: str | Path, **kw: Any) -> ReportFiles:
    """:func:`write_report` for every record in the store files (or folders of them) ``paths``."""
    from prunekit.bench.store import load_records

    records = load_records(paths)
    if not records:
        names = ", ".join(str(p) for p in paths) or "(none given)"
        raise ConfigError(f"no run records in {names}: expected benchmark store files with runs")
    return write_report(records, out_dir, **kw)
