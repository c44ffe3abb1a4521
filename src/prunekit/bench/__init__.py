"""Benchmarks: a YAML spec of models x data sets x methods x targets x seeds, run resumably into a
SQLite result store (``prunekit bench run``)."""

from __future__ import annotations

from prunekit.bench.runner import RunSummary, run_spec
from prunekit.bench.spec import RunConfig, Spec, expand, load_spec, parse_spec
from prunekit.bench.store import RunRecord, Store, load_records

__all__ = [
    "RunConfig",
    "RunRecord",
    "RunSummary",
    "Spec",
    "Store",
    "expand",
    "load_records",
    "load_spec",
    "parse_spec",
    "run_spec",
]
