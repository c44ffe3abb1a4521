"""``cifar10`` and ``cifar100``: the standard CIFAR python-pickle folders.

``root`` may be the ``cifar-10-batches-py`` / ``cifar-100-python`` folder itself or its parent.
Every batch is checked (shape, dtype, label range) so a broken download fails at load, naming
the file, instead of producing a model that silently trains on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from prunekit.data import files, prepare, splits
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset
from prunekit.data.safe_pickle import load_pickle
from prunekit.errors import DataError, MissingFileError

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its batches and what its pickles hold."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def expected(self) -> str:
        return f"a folder holding {self.folder} (the CIFAR python-pickle format)"


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key=b"labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key=b"fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def find_folder(root: Path, layout: CifarLayout) -> Path:
    """The batch folder: ``root`` itself if it holds the batches, else ``root/<folder>``."""
    files.existing_root(root, layout.expected)
    if (root / layout.folder).is_dir():
        return root / layout.folder
    found = files.first_folder_with([root], (*layout.train_files, *layout.test_files))
    if found is None:
        raise MissingFileError(
            f"no {layout.folder} in {str(root)!r}: expected {layout.expected} "
            f"with files {', '.join((*layout.train_files, *layout.test_files))}"
        )
    return found


def read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """One pickle batch as uint8 images (N, 3, 32, 32) and int64 labels, validated."""
    what = f"a {layout.name} pickle dict with b'data' uint8 (N, {PIXELS}) and {layout.label_key!r}"
    batch = load_pickle(path, what)
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        raise DataError(f"{str(path)!r} is not {what}")
    data = np.asarray(batch[b"data"])
    try:
        labels = np.asarray(batch[layout.label_key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{str(path)!r} has non-integer labels; expected {what}") from e
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(f"{str(path)!r} holds data {data.dtype} {data.shape}; expected {what}")
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{str(path)!r} has {labels.size} labels for {data.shape[0]} images; expected {what}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DataError(
            f"{str(path)!r} has labels outside 0..{layout.num_classes - 1}; expected {what}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def read_part(folder: Path, names: tuple[str, ...], layout: CifarLayout) -> tuple[np.ndarray, ...]:
    """Images and labels of the named batches, cached while the files stay unchanged.

    Loading "train" and then "val" reads the pickles once; a rewritten file is read afresh.
    """
    paths = tuple(files.require_file(folder, [n], layout.expected) for n in names)
    stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _read_cached(tuple(p.resolve() for p in paths), layout, stamps)


@lru_cache(maxsize=2)
def _read_cached(
    paths: tuple[Path, ...], layout: CifarLayout, stamps: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, ...]:
    del stamps  # only part of the cache key
    parts = [read_batch(p, layout) for p in paths]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _build(
    root: Path, split: str, image_size: prepare.ImageSize, augment: bool, layout: CifarLayout
) -> Dataset:
    folder = find_folder(root, layout)
    if split == "test":
        x, y = read_part(folder, layout.test_files, layout)
    else:
        x, y = read_part(folder, layout.train_files, layout)
        idx = splits.select(split, len(y))
        x, y = x[idx], y[idx]
    return prepare.build(
        layout.name,
        x.astype(np.float32) / 255.0,
        y,
        num_classes=layout.num_classes,
        mean=layout.mean,
        std=layout.std,
        split=split,
        image_size=image_size,
        augment=augment,
        flip=True,
    )


@register("cifar10", root_help=CIFAR10.expected)
def build_cifar10(root: Path, split: str, image_size: prepare.ImageSize, augment: bool) -> Dataset:
    """CIFAR-10; val is a fixed 10% (5000) hold-out of the 50000 training images."""
    return _build(root, split, image_size, augment, CIFAR10)


@register("cifar100", root_help=CIFAR100.expected)
def build_cifar100(root: Path, split: str, image_size: prepare.ImageSize, augment: bool) -> Dataset:
    """CIFAR-100 with the 100 fine labels; same hold-out rule as CIFAR-10."""
    return _build(root, split, image_size, augment, CIFAR100)
