"""The aggregated results a report is made of: :class:`Stat` (a metric over seeds), :class:`Row`
(one method at one target) and :class:`Table` (one model on one data set). The report, the
paper comparison and the plots all read them; this module imports none of those.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "Stat", "Table", "slug"]


def slug(text: str) -> str:
    """``text`` as a safe file-name part."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (None for a single value) and count of a metric."""

    mean: float
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        values = list(values)
        sd = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), sd, len(values))

    def format(self, digits: int) -> str:
        mean = f"{self.mean:,.{digits}f}"
        return mean if self.sd is None else f"{mean} ± {self.sd:,.{digits}f}"


@dataclass
class Row:
    """The runs of one method at one target in one table, over their seeds."""

    method: str
    label: str
    target_kind: str
    target: float
    unstructured: bool
    seeds: list[int]
    config: dict[str, Any]  # what the runs share (seed left out)
    stats: dict[str, Stat]

    def mean(self, key: str) -> float | None:
        stat = self.stats.get(key)
        return None if stat is None else stat.mean

    @property
    def target_text(self) -> str:
        return f"{self.target_kind} {self.target:g}"


@dataclass
class Table:
    """Every finished run of one model on one data set (at one input size)."""

    model: str
    data: str
    image_size: int | None
    rows: list[Row]
    env: dict[str, str]
    schedule: dict[str, Any]  # settings every row shares
    baseline: Stat | None  # dense top-1, one value per distinct baseline

    @property
    def title(self) -> str:
        size = f" at {self.image_size}x{self.image_size}" if self.image_size else ""
        return f"{self.model} on {self.data}{size}"

    @property
    def slug(self) -> str:
        size = f"-{self.image_size}" if self.image_size else ""
        return slug(f"{self.model}-{self.data}{size}")
