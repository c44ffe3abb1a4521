"""Build ``src/prunekit/methods/catalogue.json`` from the shared method catalogue.

Run from the repository root::

    python tools/make_catalogue.py

It reads ``../shared/METHODS.md`` (ids, types, defining computations) and the two reading lists in
``../shared/reading-lists/`` (titles, venues, years, links), matches every method to its
reading-list row by the words of its title, and writes the JSON that the package ships. The
package itself never reads ``../shared``; the JSON is committed.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
METHODS = SHARED / "METHODS.md"
READING_LISTS = (
    SHARED / "reading-lists" / "awesome-cnn-pruning.md",
    SHARED / "reading-lists" / "pruning-read-list.md",
)
OUT = REPO / "src" / "prunekit" / "methods" / "catalogue.json"

# Minimum share of a METHODS.md title's words that must appear in a reading-list title.
MIN_CONTAINMENT = 0.6

# Methods with no reading-list row. ``None`` values stay null in the JSON.
MANUAL: dict[str, dict[str, Any]] = {
    # METHODS.md: "not in the lists, expected by users".
    "slimming": {
        "title": "Learning Efficient Convolutional Networks through Network Slimming",
        "venue": "ICCV",
        "year": 2017,
        "link": "https://arxiv.org/abs/1708.06519",
    },
    # A sparsity pattern, not one paper.
    "nm_sparsity": {
        "title": "N:M semi-structured sparsity",
        "venue": None,
        "year": None,
        "link": None,
    },
}

_LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")
_YEAR = re.compile(r"\b(?:19|20)\d\d\b")
_TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Paper:
    """One paper row of a reading list."""

    title: str
    venue: str | None
    year: int | None
    link: str | None
    source: str


@dataclass(frozen=True)
class Method:
    """One row of a METHODS.md method table."""

    id: str
    type: str
    paper: str  # the title part of the "paper" cell
    venue: str | None
    year: int | None
    computation: str
    wave: int | None


def _cells(line: str) -> list[str] | None:
    """Split a markdown table row into stripped cells; ``None`` for non-rows and separators."""
    line = line.strip()
    if "|" not in line:
        return None
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    cells = [c.strip() for c in line.split("|")]
    if all(re.fullmatch(r":?-*:?", c) for c in cells):
        return None
    return cells


def _clean_title(title: str) -> str:
    title = re.sub(r"[^\x00-\x7f]+$", "", title)  # a mis-encoded footnote mark
    return re.sub(r"\s+", " ", title).strip()


def _clean_link(link: str) -> str | None:
    link = link.strip().strip("()").strip()
    return link if link.startswith("http") else None


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def _strip_code(cell: str) -> str:
    return cell.strip().strip("`").strip()


def _venue_text(cell: str) -> str:
    """A venue cell: plain text, `code`, or a [name](link) — keep the name."""
    m = _LINK.search(cell)
    return _strip_code(m.group(1) if m else cell)


def parse_reading_lists() -> list[Paper]:
    papers: list[Paper] = []
    for path in READING_LISTS:
        header: list[str] | None = None
        for line in path.read_text(encoding="utf-8").splitlines():
            cells = _cells(line)
            if cells is None:
                if not line.strip():
                    header = None
                continue
            lowered = [c.lower() for c in cells]
            if "title" in lowered:
                header = lowered
                continue
            if header is None:
                continue
            row = dict(zip(header, cells, strict=False))
            m = _LINK.search(row.get("title", ""))
            if not m:
                continue  # toolbox rows without a linked title
            title = _clean_title(m.group(1))
            link = _clean_link(m.group(2))
            if "year" in row:  # awesome-cnn-pruning: Year | Venue/Journal | Title ...
                year_m = _YEAR.search(row["year"])
                venue = _venue_text(row.get("venue", row.get("journal", "")))
            else:  # pruning-read-list: Title | Venue ("NIPS 2015 (best paper)") ...
                venue_cell = row.get("venue", "")
                year_m = _YEAR.search(venue_cell)
                venue = venue_cell[: year_m.start()] if year_m else venue_cell
                venue = _strip_code(venue)
            papers.append(
                Paper(
                    title=title,
                    venue=venue or None,
                    year=int(year_m.group(0)) if year_m else None,
                    link=link,
                    source=path.name,
                )
            )
    return papers


def _split_paper(cell: str) -> tuple[str, str | None, int | None]:
    """``"Title (VENUE 2019; note)"`` -> ``("Title", "VENUE", 2019)``."""
    m = re.match(r"^(.*?)\s*\(([^()]*)\)\s*$", cell)
    if not m:
        return cell.strip(), None, None
    title, paren = m.group(1).strip(), m.group(2)
    year_m = _YEAR.search(paren)
    if not year_m:
        return cell.strip(), None, None
    venue = paren[: year_m.start()].strip() or None
    return title, venue, int(year_m.group(0))


def parse_methods() -> list[Method]:
    text = METHODS.read_text(encoding="utf-8")
    methods: list[Method] = []
    kind: str | None = None
    for line in text.splitlines():
        heading = re.match(r"^##\s+.*\((S|U)\)\s*$", line)
        if heading:
            kind = heading.group(1)
            continue
        if line.startswith("#"):
            kind = None
            continue
        if kind is None:
            continue
        cells = _cells(line)
        if cells is None or cells[0].lower() == "id":
            continue
        has_wave = len(cells) >= 4
        method_id = _strip_code(cells[0])
        title, venue, year = _split_paper(cells[1])
        wave_m = re.search(r"\d+", cells[3]) if has_wave else None
        methods.append(
            Method(
                id=method_id,
                type=kind,
                paper=title,
                venue=venue,
                year=year,
                computation=cells[2].strip(),
                wave=int(wave_m.group(0)) if wave_m else None,
            )
        )
    return methods


def _score(method: Method, paper: Paper) -> tuple[float, float]:
    """(containment of the method's title words in the paper's, tie-break score)."""
    mine, theirs = _tokens(method.paper), _tokens(paper.title)
    if not mine:
        return 0.0, 0.0
    common = len(mine & theirs)
    containment = common / len(mine)
    jaccard = common / len(mine | theirs)
    same_year = 1.0 if method.year is not None and method.year == paper.year else 0.0
    has_link = 0.1 if paper.link else 0.0
    return containment, containment + 0.5 * jaccard + 0.25 * same_year + has_link


def match(method: Method, papers: list[Paper]) -> Paper | None:
    best: Paper | None = None
    best_key = (-1.0, -1.0)
    for paper in papers:  # earlier lists win exact ties
        containment, total = _score(method, paper)
        if containment >= MIN_CONTAINMENT and total > best_key[1]:
            best, best_key = paper, (containment, total)
    return best


def build() -> tuple[list[dict[str, Any]], list[str]]:
    papers = parse_reading_lists()
    methods = parse_methods()
    notes: list[str] = []
    entries: list[dict[str, Any]] = []
    for method in methods:
        if method.id in MANUAL:
            fields: dict[str, Any] = {
                "title": method.paper,
                "venue": method.venue,
                "year": method.year,
                "link": None,
            }
            fields.update(MANUAL[method.id])
            notes.append(f"{method.id}: manual mapping (no reading-list row)")
        else:
            paper = match(method, papers)
            if paper is None:
                notes.append(f"{method.id}: NO reading-list match for {method.paper!r}")
                fields = {
                    "title": method.paper,
                    "venue": method.venue,
                    "year": method.year,
                    "link": None,
                }
            else:
                fields = {
                    "title": paper.title,
                    "venue": paper.venue,
                    "year": paper.year,
                    "link": paper.link,
                }
                if method.year is not None and paper.year != method.year:
                    notes.append(
                        f"{method.id}: METHODS.md says {method.year}, reading list "
                        f"({paper.source}) says {paper.year}; kept the reading list"
                    )
                if paper.link is None:
                    notes.append(f"{method.id}: matched row has no usable link")
        entries.append(
            {
                "id": method.id,
                "type": method.type,
                **fields,
                "computation": method.computation,
                "wave": method.wave,
            }
        )
    return entries, notes


def main() -> int:
    entries, notes = build()
    ids = [e["id"] for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        print(f"duplicate ids: {dupes}", file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    n_s = sum(e["type"] == "S" for e in entries)
    n_u = sum(e["type"] == "U" for e in entries)
    print(f"wrote {OUT.relative_to(REPO)}: {len(entries)} entries ({n_s} S, {n_u} U)")
    for note in notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
