"""Unpickling data files without letting them run code.

A pickle can name any importable callable; a data file only ever needs numpy arrays and a few
builtins. This unpickler refuses everything else, and turns every way a pickle can be broken
into a :class:`DataError` that names the file.
"""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.errors import DataError

_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
    }
)


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]  # numpy 2 moved numpy.core
        return super().find_class(module, name)


def load_pickle(path: Path, expected: str) -> Any:
    """Read one pickle written by Python 2 or 3 (bytes keys kept as bytes)."""
    try:
        with path.open("rb") as f:
            return _DataUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        zlib.error,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
        MemoryError,
    ) as e:
        raise DataError(f"cannot read {str(path)!r}: expected {expected} ({e})") from e
