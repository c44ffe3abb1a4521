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


ORPHAN_SUFFIX = ".tmp"


def remove_orphan_temps(folder: PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_open` left in ``folder`` when its process was
    killed mid-write (``.<name>.<random>.tmp``); returns the paths removed.

    Call it only where no other process may be writing at the same moment (a run folder at the
    start of its run): a temporary file still being written looks the same.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.glob(".*" + ORPHAN_SUFFIX):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(path)
    return removed


# What a file prunekit reads turns out to be, by its ``format`` tag: the kind of file and the
# commands that read it.
KNOWN_FORMATS = {
    "prunekit-model": (
        "a prunekit model file (prunekit.save, a run's pruned.pt)",
        "prunekit eval --checkpoint, prunekit export, prunekit compress and prunekit.load read it",
    ),
    "prunekit.train.checkpoint": (
        "a training checkpoint (prunekit train)",
        "prunekit eval --checkpoint evaluates it and prunekit train --out resumes it",
    ),
    "prunekit-sparse": (
        "a sparse model file (prunekit.compress.sparse.save_sparse)",
        "prunekit.compress.sparse.load_sparse_model reads it",
    ),
}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x80", "a Python pickle (prunekit never unpickles code)"),
    (b"\x7fELF", "an executable"),
)


def sniff(path: PathLike) -> str | None:
    """What the first bytes of ``path`` say it is ("a PNG image" ...), or ``None`` if they do
    not match a kind prunekit knows."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file"
    from prunekit.compress.deep_compression import MAGIC  # lazily: compress imports this module

    if head.startswith(MAGIC):
        return "a Deep Compression file (prunekit compress; prunekit.load reads it)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if head.lstrip()[:1] in (b"{", b"["):
        return "a JSON or text file"
    return None


def _load_failure(path: Path, e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused ``path``, in words that never suggest
    loading it unsafely."""
    kind = sniff(path)
    if kind == "a zip archive":
        text = str(e)
        if "Weights only load failed" in text or "Unsupported global" in text:
            return (
                "it holds Python objects other than tensors and plain data, which prunekit does "
                "not load (unpickling them could run code)"
            )
        return "it is a zip archive but not a complete file torch.save wrote"
    if kind is not None:
        return f"it is {kind}, not a file torch.save wrote"
    return "its bytes are not a file torch.save wrote (corrupt, truncated or another format)"


def describe_format(path: PathLike, found: Any) -> str:
    """``path is <kind>; <the commands that read it>`` for a file whose ``format`` tag is
    ``found``, or a plain description if prunekit does not know the tag."""
    if isinstance(found, str) and found in KNOWN_FORMATS:
        kind, readers = KNOWN_FORMATS[found]
        return f"{path} is {kind}: {readers}"
    return f"{path} is a torch file that prunekit did not write"


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
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a folder, not a file: {expected}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files; all mean the same here
        raise CheckpointError(
            f"cannot read {what} {path}: {_load_failure(path, e)}; {expected}"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else None
        raise CheckpointError(f"{describe_format(path, found)}, not a prunekit {what}: {expected}")
    found = obj.get("version")
    if not isinstance(found, int) or found > version:
        raise CheckpointError(
            f"{path} has {what} format version {found!r}, this prunekit reads up to {version}: {expected}"
        )
    return obj
