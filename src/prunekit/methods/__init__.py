"""The method catalogue: every method of the reading lists with its citation and status, and
the implemented ones runnable by id (``prunekit prune --method ID``)."""

from __future__ import annotations

from prunekit.methods import (  # noqa: F401  (importing a module registers its methods)
    criterion_based,
    gdp,
    iterative,
    reconstruction,
    search,
    slimming,
    soft,
    ssl,
)
from prunekit.methods.base import (
    METHODS,
    Context,
    Method,
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
    "catalogue",
    "entry",
    "get",
    "iter_implemented",
    "list_methods",
    "register_method",
]
