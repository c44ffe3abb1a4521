"""The data set registry and :func:`load`, the one entry point other modules and the CLI use.

Each loader module registers a builder here with the options it accepts and, for file-based sets,
a one-line description of the folder it needs, so every misuse gets a precise message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prunekit.data.dataset import Dataset
from prunekit.data.splits import check_split
from prunekit.errors import ConfigError
from prunekit.registry import Registry

Builder = Callable[..., Dataset]

DATASETS: Registry[Builder] = Registry("data set")


def register(
    name: str, *, options: Sequence[str] = (), root_help: str | None = None
) -> Callable[[Builder], Builder]:
    """Register a builder ``(root, split, image_size, augment, **options) -> Dataset``.

    ``root_help`` (file-based sets only) completes "needs root=DIR: ..." when no root is given.
    """
    return DATASETS.register(name, options=tuple(options), root_help=root_help)


def list_datasets() -> list[str]:
    """The registered data set names, sorted."""
    return DATASETS.names()


def check_root(name: str, root: str | os.PathLike[str] | None) -> None:
    """Refuse, before any work, a data set that needs ``root`` without one, or a ``root`` that is
    not a folder (the loaders look at the files inside it when they load)."""
    from prunekit.data.files import existing_root

    root_help = DATASETS.entry(name).meta["root_help"]
    if root_help is None:
        return
    if root is None:
        raise ConfigError(f"data set {name!r} needs root=DIR: {root_help}")
    existing_root(Path(root).expanduser(), root_help)


def load(
    name: str,
    root: str | os.PathLike[str] | None = None,
    split: str = "train",
    *,
    image_size: int | Sequence[int] | None = None,
    augment: bool = False,
    **options: Any,
) -> Dataset:
    """Load split ``split`` of data set ``name`` as a torch data set with an ``info`` attribute.

    ``image_size`` resizes samples (so e.g. 32x32 models run on 8x8 digits); ``augment`` turns on
    the data set's standard training augmentation on training splits. Normalisation is always on.
    """
    entry = DATASETS.entry(name)
    check_split(split)
    allowed = entry.meta["options"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        known = ", ".join(allowed) or "none"
        raise ConfigError(
            f"data set {name!r} has no option(s) {', '.join(unknown)}; known: {known}"
        )
    check_root(name, root)
    path = Path(root).expanduser() if root is not None else None
    return entry.obj(path, split, image_size, bool(augment), **options)
