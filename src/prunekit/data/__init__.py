"""Data sets for pruning experiments: one :func:`load` for every registered data set.

``load("digits")`` needs no files (the project's embedded default); file-based sets (CIFAR, MNIST,
Fashion-MNIST, ImageFolder) take ``root=DIR``. Every data set yields ``(x: float32, y: int64)``
normalised samples and carries a :class:`DataInfo` describing shape, classes and normalisation.
Importing the loader modules below is what registers them.
"""

from __future__ import annotations

from prunekit.data import cifar, digits, imagefolder, mnist, mnist_1d, synthetic, transforms
from prunekit.data.catalog import DATASETS, check_root, list_datasets, load
from prunekit.data.dataset import Dataset, InMemoryDataset
from prunekit.data.imagefolder import ImageFolderDataset
from prunekit.data.info import DataInfo
from prunekit.data.splits import SPLITS

__all__ = [
    "DATASETS",
    "SPLITS",
    "DataInfo",
    "Dataset",
    "ImageFolderDataset",
    "InMemoryDataset",
    "check_root",
    "cifar",
    "digits",
    "imagefolder",
    "list_datasets",
    "load",
    "mnist",
    "mnist_1d",
    "synthetic",
    "transforms",
]
