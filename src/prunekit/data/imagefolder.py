"""``imagefolder``: a ``ROOT/<split>/<class>/<image>`` tree decoded lazily with Pillow.

Large image sets do not fit in memory, so only file paths are listed at load time and each image
is decoded when it is indexed. Class indices come from the sorted class folders of ``train``
(when present), so every split labels a class the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from prunekit.data import files, prepare
from prunekit.data import transforms as T
from prunekit.data.catalog import register
from prunekit.data.dataset import Dataset
from prunekit.data.info import DataInfo
from prunekit.errors import DataError, MissingFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
EXPECTED = "an ImageFolder tree ROOT/train/<class>/*.jpg|png and ROOT/val/<class>/*.jpg|png"
DEFAULT_SIZE = 224
SPLIT_FOLDERS = {"train": ("train",), "val": ("val",), "trainval": ("train", "val")}


def class_names(folder: Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (hidden ones skipped)."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """``(path, class index)`` of every image file under ``folder/<class>/``, in a fixed order."""
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[Path, int]] = []
    for name in class_names(folder):
        if name not in index:
            raise DataError(
                f"class folder {str(folder / name)!r} is not among the train classes; expected "
                f"the same class folders in every split of {EXPECTED}"
            )
        found = [
            (path, index[name])
            for path in sorted((folder / name).rglob("*"))
            if path.is_file() and path.suffix.lower() in EXTENSIONS
        ]
        if not found:
            raise DataError(
                f"class folder {str(folder / name)!r} holds no image files "
                f"({', '.join(sorted(EXTENSIONS))}); fill it or remove it: expected {EXPECTED}"
            )
        samples += found
    return samples


def decode(path: Path) -> Tensor:
    """An RGB image as float32 (3, H, W) in [0, 1]; a file Pillow cannot read is a DataError."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image {str(path)!r}: expected a JPEG/PNG/... ({e})") from e
    array = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(Dataset):
    """Lazily decoded images; ``transform`` does resizing/cropping, then normalisation follows."""

    def __init__(
        self,
        samples: list[tuple[Path, int]],
        classes: Sequence[str],
        info: DataInfo,
        transform: T.Transform,
    ) -> None:
        self.samples = samples
        self.classes = list(classes)
        self.info = info
        self.transform = transform
        self.normalize = T.Normalize(info.mean, info.std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        path, label = self.samples[index]
        x = self.normalize(self.transform(decode(path)))
        return x.contiguous(), torch.tensor(label, dtype=torch.int64)

    def __repr__(self) -> str:
        return f"ImageFolderDataset(n={len(self)}, classes={len(self.classes)})"


def _split_folders(root: Path, split: str) -> list[Path]:
    if split == "test":
        names: tuple[str, ...] = ("test",) if (root / "test").is_dir() else ("val",)
    else:
        names = SPLIT_FOLDERS[split]
    folders = [root / n for n in names]
    for folder in folders:
        if not folder.is_dir():
            raise MissingFileError(f"missing split folder {str(folder)!r}; expected {EXPECTED}")
    return folders


@register("imagefolder", root_help=EXPECTED)
def build_imagefolder(
    root: Path, split: str, image_size: prepare.ImageSize, augment: bool
) -> Dataset:
    """Eval: resize the shorter side to ``size * 256 / 224``, centre-crop ``size`` (default 224).
    Training with ``augment``: random resized crop plus horizontal flip."""
    files.existing_root(root, EXPECTED)
    size = prepare.parse_image_size(DEFAULT_SIZE if image_size is None else image_size, 2)
    assert size is not None
    folders = _split_folders(root, split)
    class_source = root / "train" if (root / "train").is_dir() else folders[0]
    classes = class_names(class_source)
    if not classes:
        raise DataError(f"no class folders in {str(class_source)!r}; expected {EXPECTED}")
    samples = [s for folder in folders for s in list_images(folder, classes)]
    if not samples:
        shown = ", ".join(repr(str(f)) for f in folders)
        raise DataError(f"no image files under {shown}; expected {EXPECTED}")
    if augment and split in ("train", "trainval"):
        transform: T.Transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
    else:
        short = round(min(size) * 256 / 224)
        transform = T.Compose([T.Resize(short), T.CenterCrop(size)])
    info = DataInfo(
        name="imagefolder",
        num_classes=len(classes),
        input_shape=(3, *size),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    return ImageFolderDataset(samples, classes, info, transform)
