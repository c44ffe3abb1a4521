"""``mnist1d``: MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package.

Only ``make_dataset`` is used, never the package's download path. With the default options
(5000 samples, seed 42) the result is the official data. Generation takes about a second, so
arrays are cached per option set.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from prunekit.data import prepare, splits
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset
from prunekit.errors import ConfigError

NUM_CLASSES = 10


@lru_cache(maxsize=4)
def generate(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` with x as float32 (N, 1, L), read-only.

    The generator reseeds Python's and numpy's global RNGs; their states are restored afterwards
    so loading data never changes the randomness of the caller.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = num_samples
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    out = (
        np.asarray(data["x"], dtype=np.float32)[:, None],
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32)[:, None],
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for a in out:
        a.setflags(write=False)
    return out


def _int_option(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"mnist1d option {name} must be an int >= {low}, got {value!r}")
    return int(value)


@register("mnist1d", options=("seed", "num_samples"))
def build_mnist1d(
    root: Path | None,
    split: str,
    image_size: prepare.ImageSize,
    augment: bool,
    *,
    seed: int = 42,
    num_samples: int = 5000,
) -> Dataset:
    """val is a fixed 10% of the official train part; no flip (a mirrored signal is another digit)."""
    seed = _int_option("seed", seed, 0)
    num_samples = _int_option("num_samples", num_samples, 20)
    x_train, y_train, x_test, y_test = generate(seed, num_samples)
    idx = splits.select(split, len(y_train))
    x, y = (x_test, y_test) if idx is None else (x_train[idx], y_train[idx])
    train_idx = splits.select("train", len(y_train))
    mean, std = prepare.channel_stats(torch.tensor(x_train[train_idx]))
    return prepare.build(
        "mnist1d",
        x,
        y,
        num_classes=NUM_CLASSES,
        mean=mean,
        std=std,
        split=split,
        image_size=image_size,
        augment=augment,
        flip=False,
    )


LARGE_SAMPLES = 20_000


@register("mnist1d_20k", options=("seed",))
def build_mnist1d_20k(
    root: Path | None, split: str, image_size: prepare.ImageSize, augment: bool, *, seed: int = 42
) -> Dataset:
    """MNIST-1D from the same generator at 20,000 samples (16,000 train + val, 4,000 test):
    four times the official set, so benchmark estimates tighten; ``mnist1d`` with
    ``num_samples=20000`` under a name a spec or the CLI can give."""
    return build_mnist1d(root, split, image_size, augment, seed=seed, num_samples=LARGE_SAMPLES)
