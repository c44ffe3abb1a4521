"""``mnist`` and ``fashion_mnist``: the four IDX files, raw or ``.gz``.

Files are looked up in ``root`` and in the torchvision layout ``root/MNIST/raw`` or
``root/FashionMNIST/raw``. Only the files a split needs are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from prunekit.data import files, prepare, splits
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset
from prunekit.data.idx import read_idx
from prunekit.errors import DataError, MissingFileError

NUM_CLASSES = 10
PARTS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxLayout:
    """Name, torchvision sub-folder and normalisation constants of one IDX data set."""

    name: str
    subfolder: str
    mean: float
    std: float

    @property
    def expected(self) -> str:
        names = ", ".join(n for pair in PARTS.values() for n in pair)
        return (
            f"a folder holding the {self.name} IDX files ({names}; raw or .gz) directly "
            f"or under {self.subfolder}/raw"
        )


MNIST = IdxLayout("mnist", "MNIST", 0.1307, 0.3081)
FASHION = IdxLayout("fashion_mnist", "FashionMNIST", 0.2860, 0.3530)


def find_folder(root: Path, layout: IdxLayout) -> Path:
    """The first of ``root`` and ``root/<subfolder>/raw`` that holds any of the IDX files."""
    files.existing_root(root, layout.expected)
    names = [n + ext for pair in PARTS.values() for n in pair for ext in ("", ".gz")]
    found = files.first_folder_with([root, root / layout.subfolder / "raw"], names)
    if found is None:
        raise MissingFileError(
            f"no {layout.name} IDX files in {str(root)!r}; expected {layout.expected}"
        )
    return found


def read_pair(folder: Path, part: str, layout: IdxLayout) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels of ``part`` ("train" or "test"), validated."""
    paths = [files.require_file(folder, [n, n + ".gz"], layout.expected) for n in PARTS[part]]
    stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in paths)
    return _read_cached(paths[0].resolve(), paths[1].resolve(), stamps)


@lru_cache(maxsize=2)
def _read_cached(
    image_path: Path, label_path: Path, stamps: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray]:
    del stamps  # only part of the cache key, so rewritten files are read afresh
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{str(image_path)!r} holds {images.dtype} {images.shape}; expected IDX uint8 "
            "images (N, H, W)"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{str(label_path)!r} holds {labels.dtype} {labels.shape}; expected IDX uint8 labels (N,)"
        )
    if len(images) == 0:
        raise DataError(
            f"{str(image_path)!r} holds no samples (its header gives {images.shape}); expected "
            "IDX images with at least one sample"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{str(label_path)!r} has {len(labels)} labels but {str(image_path)!r} has "
            f"{len(images)} images; expected one label per image"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{str(label_path)!r} has labels outside 0..{NUM_CLASSES - 1}; expected IDX class labels"
        )
    images, labels = images[:, None], labels.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def _build(
    root: Path, split: str, image_size: prepare.ImageSize, augment: bool, layout: IdxLayout
) -> Dataset:
    folder = find_folder(root, layout)
    if split == "test":
        x, y = read_pair(folder, "test", layout)
    else:
        x, y = read_pair(folder, "train", layout)
        idx = splits.select(split, len(y))
        x, y = x[idx], y[idx]
    return prepare.build(
        layout.name,
        x.astype(np.float32) / 255.0,
        y,
        num_classes=NUM_CLASSES,
        mean=(layout.mean,),
        std=(layout.std,),
        split=split,
        image_size=image_size,
        augment=augment,
        flip=False,
    )


@register("mnist", root_help=MNIST.expected)
def build_mnist(root: Path, split: str, image_size: prepare.ImageSize, augment: bool) -> Dataset:
    """MNIST; val is a fixed 10% (6000) hold-out of the training images; no flip."""
    return _build(root, split, image_size, augment, MNIST)


@register("fashion_mnist", root_help=FASHION.expected)
def build_fashion(root: Path, split: str, image_size: prepare.ImageSize, augment: bool) -> Dataset:
    """Fashion-MNIST; same rules as MNIST (no flip, to keep one policy for IDX sets)."""
    return _build(root, split, image_size, augment, FASHION)
