"""Finding the files of a file-based data set, with errors that say what was expected where."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prunekit.errors import DataError, MissingFileError


def existing_root(root: Path, expected: str) -> Path:
    """``root`` if it is a folder, else an error naming it, what it is, and ``expected``."""
    if root.is_file():
        raise DataError(f"data folder {str(root)!r} is a file, not a folder; expected {expected}")
    if not root.is_dir():
        raise MissingFileError(f"data folder {str(root)!r} does not exist; expected {expected}")
    return root


def first_folder_with(candidates: Sequence[Path], marker_names: Sequence[str]) -> Path | None:
    """The first of ``candidates`` that holds any of ``marker_names``, or ``None``."""
    for folder in candidates:
        if any((folder / m).exists() for m in marker_names):
            return folder
    return None


def require_file(folder: Path, names: Sequence[str], expected: str) -> Path:
    """The first of ``names`` present in ``folder``, else a :class:`MissingFileError`."""
    for n in names:
        path = folder / n
        if path.is_file():
            return path
    shown = " or ".join(str(folder / n) for n in names)
    raise MissingFileError(f"missing file {shown}; expected {expected}")
