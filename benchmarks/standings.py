"""Where prunekit stands against the peers, over every committed comparison: one row per report,
data set and target with prunekit's best method, the peers' best criterion, the verdict (ahead,
level or behind, against the seed spread), the training epochs each spent inside its pruning and
the width-scaled net trained from scratch. It reads the ``report.json`` each ``prunekit bench
report`` writes (its decision matrices), so it needs no store and reruns nothing.

    python benchmarks/standings.py                      # every benchmarks/results/*/report.json
    python benchmarks/standings.py A/report.json B/report.json --out standings.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prunekit.bench.report import VERSUS_HEADERS, matrix_from_json, versus, versus_cells
from prunekit.errors import ConfigError
from prunekit.io import atomic_open
from prunekit.tables import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "standings.md"


def standings(paths: list[Path]) -> tuple[list[str], list[list[str]]]:
    """The rows of every target where a report has both a prunekit row and a peer row."""
    headers = ["report", "model / data", *VERSUS_HEADERS]
    rows: list[list[str]] = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            matrices = [matrix_from_json(m) for m in data.get("matrices", [])]
        except (OSError, json.JSONDecodeError, AttributeError, ConfigError) as e:
            raise ConfigError(f"{path}: not a readable bench report.json ({e})") from e
        for m in matrices:
            items = [v for v in versus(m) if v.ours is not None and v.peer is not None]
            for cells in versus_cells(items):
                rows.append([path.parent.name, m.title, *cells])
    return headers, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="*", type=Path, help="report.json files (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown file to write")
    args = parser.parse_args(argv)
    paths = args.reports or sorted(RESULTS.glob("*/report.json"))
    if not paths:
        raise SystemExit(f"no report.json under {RESULTS}")
    try:
        headers, rows = standings(paths)
    except ConfigError as e:
        raise SystemExit(f"standings: {e}") from e
    table = markdown_table(headers, rows)
    print(table)
    with atomic_open(args.out, "w") as f:
        f.write(
            "# prunekit's best against the peers' best, every committed comparison\n\n"
            f"Command: `python benchmarks/standings.py`. Rows: the targets where a report has both "
            f"prunekit methods and peer rows. 'level': the gap is inside the seed spread (the "
            f"larger sd). '+N epochs in the method': training inside the pruning, before the "
            f"same fine-tuning every row gets.\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
