"""Two bench reports of the same spec side by side: each method's accuracy after fine-tuning in
the old and the new report, per target, and whether the new mean is below the reference method's
(``random_channel`` by default) by more than their spreads.

    python benchmarks/old_vs_new.py OLD/report.json NEW/report.json --out NEW/old_vs_new.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunekit.io import atomic_open
from prunekit.tables import markdown_table


def rows_by_key(report: dict[str, Any], metric: str) -> dict[tuple[str, str, float], dict]:
    """``(table title, label, target) -> {mean, sd, n}`` of ``metric`` over the seeds."""
    out = {}
    for table in report["tables"]:
        where = f"{table['model']}/{table['data']}"
        for row in table["rows"]:
            stat = row["stats"].get(metric)
            if stat is not None:
                out[where, row["label"], float(row["target"])] = stat
    return out


def cell(stat: dict | None) -> str:
    if stat is None:
        return "—"
    return f"{stat['mean']:.2f} ± {stat.get('sd') or 0.0:.2f} ({stat['n']})"


def compare(old: dict, new: dict, metric: str, reference: str) -> str:
    a, b = rows_by_key(old, metric), rows_by_key(new, metric)
    rows = []
    for key in sorted(set(a) | set(b), key=lambda k: (k[0], k[2], k[1])):
        where, label, target = key
        ref = b.get((where, reference, target))
        s, note = b.get(key), ""
        if s is not None and ref is not None and label != reference:
            gap = ref["mean"] - s["mean"]
            spread = (s.get("sd") or 0.0) + (ref.get("sd") or 0.0)
            if gap > spread:
                note = f"below {reference} by {gap:.2f}"
            elif gap > 0:
                note = "below, within spread"
        change = "—" if s is None or key not in a else f"{s['mean'] - a[key]['mean']:+.2f}"
        rows.append([where, f"{target:g}", label, cell(a.get(key)), cell(s), change, note])
    headers = ["model/data", "target", "method", "old % (seeds)", "new % (seeds)", "change", "new"]
    return markdown_table(headers, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--metric", default="acc_finetuned")
    p.add_argument("--reference", default="random_channel")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    old, new = (json.loads(path.read_text()) for path in (args.old, args.new))
    text = compare(old, new, args.metric, args.reference)
    print(text)
    if args.out is not None:
        with atomic_open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
