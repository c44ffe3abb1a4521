"""``digits``: scikit-learn's bundled 8x8 handwritten digits, the project's file-free default.

The 70/15/15 split is stratified and seeded with a constant, independent of any training seed, so
every experiment on digits trains and evaluates on the same images.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from prunekit.data import prepare
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset

SPLIT_SEED = 0
NUM_CLASSES = 10


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Images (N, 1, 8, 8) in [0, 1], labels, and split name -> sorted indices."""
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.3, random_state=SPLIT_SEED, stratify=y)
    val, test = train_test_split(rest, test_size=0.5, random_state=SPLIT_SEED, stratify=y[rest])
    parts = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    parts["trainval"] = np.sort(np.concatenate([train, val]))
    for a in (x, y, *parts.values()):
        a.setflags(write=False)
    return x, y, parts


@lru_cache(maxsize=1)
def _stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the native-resolution train split: fixed, so every split shares them."""
    x, _, parts = _arrays()
    return prepare.channel_stats(torch.tensor(x[parts["train"]]))


@register("digits")
def build_digits(
    root: Path | None, split: str, image_size: prepare.ImageSize, augment: bool
) -> Dataset:
    """No files: ``root`` is ignored. No flip in augmentation (mirrored digits change meaning)."""
    x, y, parts = _arrays()
    mean, std = _stats()
    idx = parts[split]
    return prepare.build(
        "digits",
        x[idx],
        y[idx],
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        split=split,
        image_size=image_size,
        augment=augment,
        flip=False,
    )
