"""The method catalogue: every method of the reading lists with its citation and status, and
the implemented ones runnable by id (``prunekit prune --method ID``)."""

from __future__ import annotations

from prunekit.methods import (  # noqa: F401  (importing a module registers its methods)
    criterion_based,
    deep_compression,
    gdp,
    iterative,
    lottery,
    reconstruction,
    search,
    slimming,
    soft,
    ssl,
    unstructured,
)
from prunekit.methods.base import (
    METHODS,
    Context,
    Method,
    SparsityReport,
    count_nonzero,
    get,
    iter_implemented,
    list_methods,
    register_method,
)
from prunekit.methods.catalogue import CatalogueEntry, catalogue, entry

__all__ = [
    "METHODS",
    "CatalogueEntry",
    "Context",
    "Method",
    "SparsityReport",
    "catalogue",
    "count_nonzero",
    "entry",
    "get",
    "iter_implemented",
    "list_methods",
    "register_method",
]
