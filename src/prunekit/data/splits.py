"""Split names and the fixed hold-out that carves a validation set out of an official train set.

The hold-out uses its own constant seed so the validation images never depend on a training seed:
every run, every method and every machine evaluates on the same images.
"""

from __future__ import annotations

import numpy as np

from prunekit.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test", "trainval")
TRAINING_SPLITS: frozenset[str] = frozenset({"train", "trainval"})
HOLDOUT_SEED = 20240601
HOLDOUT_FRACTION = 0.1


def check_split(split: str) -> str:
    """Return ``split`` if it is one of :data:`SPLITS`, else raise a :class:`ConfigError`."""
    if split not in SPLITS:
        allowed = ", ".join(SPLITS)
        raise ConfigError(f"unknown split {split!r}; allowed: {allowed}")
    return split


def holdout(n: int, fraction: float = HOLDOUT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of a fixed random ``fraction`` hold-out of ``n`` items, each sorted.

    Depends only on ``n`` and ``fraction``, so repeated loads agree and the parts never overlap.
    """
    n_val = round(n * fraction)
    order = np.random.default_rng(HOLDOUT_SEED).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def select(split: str, n_train: int) -> np.ndarray | None:
    """Indices into an official train part for ``split`` ("train", "val", "trainval").

    Returns ``None`` for "test", which reads the official test part instead.
    """
    check_split(split)
    if split == "test":
        return None
    if split == "trainval":
        return np.arange(n_train)
    train, val = holdout(n_train)
    return train if split == "train" else val
