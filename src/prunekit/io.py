"""File writes that never leave a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

from prunekit.errors import CheckpointError, MissingFileError

PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    If the body raises (or the process dies), the previous content of ``path`` is untouched.
    The file gets the permissions a plain ``open`` would give it (``0o666`` less the umask), not
    the owner-only mode of a temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_json(obj: Any, path: PathLike) -> None:
    """Write ``obj`` as indented JSON through :func:`atomic_open`."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def load_tagged(
    path: PathLike, *, fmt: str, version: int, what: str, expected: str
) -> dict[str, Any]:
    """``torch.load`` (tensors and plain data only) a dict that prunekit wrote with a ``format``
    tag and a ``version``, refusing anything else with an error that names the file.

    ``what`` names the kind of file in messages ("checkpoint", "model file"); ``expected`` says
    what a good file is.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{what} {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files; all mean the same here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {what} {path}: {expected}; {reason}") from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise CheckpointError(f"{path} is not a prunekit {what}: {expected}")
    found = obj.get("version")
    if not isinstance(found, int) or found > version:
        raise CheckpointError(
            f"{path} has {what} format version {found!r}, this prunekit reads up to {version}: {expected}"
        )
    return obj
