"""The method catalogue: every method of the reading lists with its citation and status, and
the implemented ones runnable by id (``prunekit prune --method ID``).

Each implemented method is one module, ``prunekit/methods/<id>.py``, named by its catalogue id;
importing this package imports every such module, which registers its method. Shared machinery
lives in modules whose names are not catalogue ids (:mod:`~prunekit.methods.base`,
:mod:`~prunekit.methods.retraining`, :mod:`~prunekit.methods.reconstruct`, ...).
"""

from __future__ import annotations

import importlib
import pkgutil

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


def _import_methods() -> None:
    ids = {e.id for e in catalogue()}
    for info in pkgutil.iter_modules(__path__):
        if info.name in ids:
            importlib.import_module(f"{__name__}.{info.name}")


_import_methods()

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
