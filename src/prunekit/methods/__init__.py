"""The method catalogue: every method of the reading lists with its citation and status, and
the implemented ones runnable by id (``prunekit prune --method ID``)."""

from __future__ import annotations

from prunekit.methods import criterion_based, slimming, soft  # noqa: F401  (register methods)
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
