"""Mask files: save and load ``{parameter name: Mask}`` without risk of half-written files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from prunekit.errors import CheckpointError, ConfigError
from prunekit.io import PathLike, atomic_torch_save, load_tagged
from prunekit.masks.mask import Mask

FORMAT, VERSION = "prunekit-masks", 1
EXPECTED = "expected a mask file written by prunekit.masks.save_masks"


def save_masks(masks: Mapping[str, Mask], path: PathLike) -> None:
    """Write ``masks`` to ``path`` atomically (tensors and plain data only)."""
    for name, mask in masks.items():
        if not isinstance(mask, Mask):
            raise ConfigError(f"masks[{name!r}] must be a Mask, got {type(mask).__name__}")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "masks": {name: mask.state_dict() for name, mask in masks.items()},
    }
    atomic_torch_save(payload, path)


def load_masks(path: PathLike) -> dict[str, Mask]:
    """Read a mask file; MissingFileError if absent, CheckpointError (naming it) if unreadable."""
    obj = load_tagged(path, fmt=FORMAT, version=VERSION, what="mask file", expected=EXPECTED)
    entries = obj.get("masks")
    if not isinstance(entries, dict):
        raise CheckpointError(f"{Path(path)} has no 'masks' table: {EXPECTED}")
    try:
        return {str(name): Mask.from_state_dict(state) for name, state in entries.items()}
    except ConfigError as e:
        raise CheckpointError(f"{Path(path)} holds a bad mask: {e}") from e
