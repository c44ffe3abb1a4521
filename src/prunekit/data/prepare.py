"""Turn raw arrays into a ready :class:`InMemoryDataset`: resize, normalise, pick augmentation.

Every in-memory loader ends here, so the resize rule, the normalisation and the training
augmentation are the same for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from prunekit.data import transforms as T
from prunekit.data.dataset import InMemoryDataset
from prunekit.data.info import DataInfo
from prunekit.data.splits import TRAINING_SPLITS
from prunekit.errors import ConfigError

ImageSize = int | Sequence[int] | None
_CHUNK = 2048


def parse_image_size(image_size: ImageSize, dims: int) -> tuple[int, ...] | None:
    """``None`` keeps the native size; an int is a square image (or a signal length); else (H, W)."""
    if image_size is None:
        return None
    if isinstance(image_size, bool):
        raise ConfigError(f"image_size must be an int or (H, W), got {image_size!r}")
    if isinstance(image_size, int):
        size: tuple[int, ...] = (image_size,) * dims
    else:
        try:
            size = tuple(int(s) for s in image_size)
        except (TypeError, ValueError):
            raise ConfigError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    if len(size) != dims or any(s <= 0 for s in size):
        want = "a positive int (the signal length)" if dims == 1 else "a positive int or (H, W)"
        raise ConfigError(f"image_size {image_size!r} does not fit this data set: expected {want}")
    return size


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a batch ``(N, C, ...)``, computed in float64 for accuracy."""
    xc = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    std = xc.std(dim=1).clamp_min(1e-8)
    return tuple(xc.mean(dim=1).tolist()), tuple(std.tolist())


def resize_all(x: Tensor, size: tuple[int, ...] | None) -> Tensor:
    """Resize a whole batch once, in chunks so large sets never need a second full-size copy."""
    if size is None or tuple(x.shape[2:]) == size:
        return x
    return torch.cat([T.resize(x[i : i + _CHUNK], size) for i in range(0, len(x), _CHUNK)])


def train_augmentation(
    input_shape: tuple[int, ...], mean: Sequence[float], std: Sequence[float], flip: bool
) -> T.Transform:
    """The standard small-image recipe: shift by random crop with padding, optionally mirror.

    Padding is 4 pixels (1 for tiny inputs such as native 8x8 digits) and fills with the
    normalised value of zero, i.e. what black padding becomes after normalisation.
    """
    spatial = input_shape[1:]
    padding = 4 if min(spatial) >= 16 else 1
    fill = [-m / s for m, s in zip(mean, std, strict=True)]
    steps: list[T.Transform] = [T.RandomCrop(tuple(spatial), padding=padding, fill=fill)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def _writable(a: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """Cached arrays are read-only; torch wants to own writable memory, so copy those."""
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        return a.copy()
    return a


def build(
    name: str,
    x: np.ndarray | Tensor,
    y: np.ndarray | Tensor,
    *,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    split: str,
    image_size: ImageSize,
    augment: bool,
    flip: bool,
    synthetic: bool = False,
) -> InMemoryDataset:
    """Build the data set from raw float samples ``x`` (N, C, ...) on their native scale.

    ``mean``/``std`` are the constants of the raw scale; augmentation is used only when asked for
    and only on a training split, so evaluation never sees random crops.
    """
    xt = torch.as_tensor(_writable(x), dtype=torch.float32)
    yt = torch.as_tensor(_writable(y), dtype=torch.int64)
    size = parse_image_size(image_size, xt.dim() - 2)
    xt = resize_all(xt, size)
    shape = (1, -1) + (1,) * (xt.dim() - 2)
    xt = (xt - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    info = DataInfo(
        name=name,
        num_classes=num_classes,
        input_shape=tuple(xt.shape[1:]),
        synthetic=synthetic,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    transform = None
    if augment and split in TRAINING_SPLITS:
        transform = train_augmentation(info.input_shape, mean, std, flip)
    return InMemoryDataset(xt, yt, info, transform)
