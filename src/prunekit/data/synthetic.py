"""``synthetic``: random tensors for speed measurement only, never for accuracy.

The name in its ``DataInfo`` always contains "synthetic" and ``synthetic`` is True, so any table
or report built from it shows that the numbers are not from real data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from prunekit.data import prepare
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset, InMemoryDataset
from prunekit.data.info import DataInfo
from prunekit.errors import ConfigError

SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2, "trainval": 3}


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"synthetic option {name} must be a positive int, got {value!r}")
    return value


@register("synthetic", options=("shape", "num_classes", "num_samples", "seed"))
def build_synthetic(
    root: Path | None,
    split: str,
    image_size: prepare.ImageSize,
    augment: bool,
    *,
    shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    num_samples: int = 512,
    seed: int = 0,
) -> Dataset:
    """Standard-normal samples of ``shape`` (``image_size`` replaces its spatial part) and
    uniform labels; each split draws from its own seed. ``augment`` is ignored (nothing to learn)."""
    dims = tuple(_positive("shape", s) for s in shape)
    if len(dims) not in (2, 3):
        raise ConfigError(f"synthetic shape must be (C, L) or (C, H, W), got {tuple(shape)!r}")
    size = prepare.parse_image_size(image_size, len(dims) - 1)
    if size is not None:
        dims = (dims[0], *size)
    num_classes = _positive("num_classes", num_classes)
    num_samples = _positive("num_samples", num_samples)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synthetic option seed must be an int >= 0, got {seed!r}")
    gen = torch.Generator().manual_seed(seed * 4 + SPLIT_OFFSET[split])
    x = torch.randn((num_samples, *dims), generator=gen)
    y = torch.randint(0, num_classes, (num_samples,), generator=gen)
    info = DataInfo(
        name="synthetic",
        num_classes=num_classes,
        input_shape=dims,
        synthetic=True,
        mean=(0.0,) * dims[0],
        std=(1.0,) * dims[0],
    )
    return InMemoryDataset(x, y, info)
