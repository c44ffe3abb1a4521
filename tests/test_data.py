"""Tests of prunekit.data: every loader reads small files written here in its real format."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit import data
from prunekit.data import transforms as T
from prunekit.errors import ConfigError, DataError, MissingFileError, UnknownNameError

# ---------------------------------------------------------------- writers of the real formats


def write_cifar10(parent: Path, per_batch: int = 4, n_test: int = 5, seed: int = 0) -> dict:
    """A tiny cifar-10-batches-py folder; returns the images (N, 3, 32, 32) and labels written."""
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written: dict[str, list] = {"train_x": [], "train_y": []}
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch).tolist()
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": x, b"labels": y}, f, protocol=2)
        written["train_x"].append(x)
        written["train_y"] += y
    tx = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    ty = rng.integers(0, 10, n_test).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": tx, b"labels": ty}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=2)
    return {
        "folder": folder,
        "train_x": np.concatenate(written["train_x"]).reshape(-1, 3, 32, 32),
        "train_y": np.array(written["train_y"]),
        "test_x": tx.reshape(-1, 3, 32, 32),
        "test_y": np.array(ty),
    }


def write_cifar100(parent: Path, n_train: int = 20, n_test: int = 6) -> dict:
    rng = np.random.default_rng(1)
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {"folder": folder}
    for part, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        with open(folder / part, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": fine, b"coarse_labels": coarse}, f)
        out[f"{part}_x"], out[f"{part}_y"] = x.reshape(-1, 3, 32, 32), np.array(fine)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [], b"coarse_label_names": []}, f)
    return out


def idx_bytes(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_set(folder: Path, n_train: int = 20, n_test: int = 7, gz: bool = False) -> dict:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


COLORS = {"blue": (0, 0, 255), "red": (255, 0, 0)}


def write_imagefolder(root: Path) -> None:
    """train/ and val/ with solid-colour PNG and JPEG images of two classes, non-square."""
    for split, count in (("train", 3), ("val", 2)):
        for cls, color in COLORS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                img = Image.new("RGB", (20, 12), color)
                ext = "png" if i % 2 == 0 else "jpg"
                img.save(folder / f"{i}.{ext}")


def denorm(x: torch.Tensor, info: data.DataInfo) -> torch.Tensor:
    """Undo the loader's normalisation; works on one sample or a batch (channels broadcast)."""
    shape = (-1,) + (1,) * (len(info.input_shape) - 1)
    mean = torch.tensor(info.mean).view(shape)
    std = torch.tensor(info.std).view(shape)
    return x * std + mean


# ---------------------------------------------------------------- registry, API, errors


def test_list_datasets_names_every_loader():
    names = data.list_datasets()
    for n in ("digits", "mnist1d", "cifar10", "cifar100", "mnist", "fashion_mnist"):
        assert n in names
    assert {"imagefolder", "synthetic"} <= set(names)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as e:
        data.load("cifar11")
    assert "cifar11" in str(e.value) and "digits" in str(e.value)


def test_bad_split_names_value_and_allowed():
    with pytest.raises(ConfigError) as e:
        data.load("digits", split="bogus")
    msg = str(e.value)
    assert "bogus" in msg and "trainval" in msg and "test" in msg


def test_unknown_option_is_config_error():
    with pytest.raises(ConfigError, match="colour"):
        data.load("digits", colour=3)


def test_bad_image_size_is_config_error():
    with pytest.raises(ConfigError):
        data.load("digits", image_size=(32, 32, 32))
    with pytest.raises(ConfigError):
        data.load("digits", image_size=0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion_mnist", "FashionMNIST"),
        ("imagefolder", "ImageFolder"),
    ],
)
def test_missing_root_is_config_error(name, expected):
    with pytest.raises(ConfigError) as e:
        data.load(name)
    assert f"data set '{name}' needs root=DIR" in str(e.value)
    assert expected in str(e.value)


def test_cifar_missing_root_message_is_exact():
    with pytest.raises(ConfigError) as e:
        data.load("cifar10")
    assert str(e.value) == (
        "data set 'cifar10' needs root=DIR: a folder holding cifar-10-batches-py "
        "(the CIFAR python-pickle format)"
    )


@pytest.mark.parametrize("name", ["cifar10", "mnist", "imagefolder"])
def test_nonexistent_root_names_path(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingFileError) as e:
        data.load(name, missing)
    assert str(missing) in str(e.value)


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_add_up():
    sizes = {s: len(data.load("digits", split=s)) for s in data.SPLITS}
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    assert sizes["trainval"] == sizes["train"] + sizes["val"]
    assert sizes["train"] == pytest.approx(0.7 * 1797, abs=2)
    assert sizes["val"] == pytest.approx(0.15 * 1797, abs=2)


def test_digits_items_and_info():
    ds = data.load("digits")
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert y.dtype == torch.int64 and y.dim() == 0
    info = ds.info
    assert info == data.DataInfo("digits", 10, (1, 8, 8), False, info.mean, info.std)
    assert info.in_channels == 1 and info.dims == 2 and not info.synthetic
    xs, ys = ds.tensors
    assert xs.shape == (len(ds), 1, 8, 8) and ys.dtype == torch.int64
    # normalised with the train split's own statistics
    assert float(xs.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(xs.std()) == pytest.approx(1.0, abs=1e-3)
    raw = denorm(xs, info)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def test_digits_pixels_match_sklearn():
    from sklearn.datasets import load_digits

    ds = data.load("digits", split="trainval")
    xs, ys = ds.tensors
    ref = load_digits()
    # every loaded image is an sklearn image scaled by 1/16
    raw = denorm(xs, ds.info)[:, 0].numpy()
    table = {bytes(im.astype(np.uint8)): t for im, t in zip(ref.images, ref.target, strict=True)}
    for im, label in zip(raw[:50], ys[:50].tolist(), strict=True):
        key = bytes(np.rint(im * 16).astype(np.uint8))
        assert table[key] == label


def test_digits_stratified_deterministic_disjoint():
    from prunekit.data.digits import _arrays

    a, b = data.load("digits", split="test"), data.load("digits", split="test")
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    torch.manual_seed(123)  # a training seed must not move the split
    c = data.load("digits", split="test")
    assert torch.equal(a.tensors[1], c.tensors[1])
    _, y, parts = _arrays()
    assert not set(parts["train"]) & set(parts["val"])
    assert not set(parts["train"]) & set(parts["test"])
    assert not set(parts["val"]) & set(parts["test"])
    overall = np.bincount(y, minlength=10) / len(y)
    for split in ("train", "val", "test"):
        counts = np.bincount(data.load("digits", split=split).tensors[1].numpy(), minlength=10)
        assert np.allclose(counts / counts.sum(), overall, atol=0.01)


def test_digits_resize_to_32():
    ds = data.load("digits", image_size=32)
    assert ds[0][0].shape == (1, 32, 32)
    assert ds.info.input_shape == (1, 32, 32)
    ds2 = data.load("digits", image_size=(16, 24))
    assert ds2.tensors[0].shape[1:] == (1, 16, 24)


def test_digits_augment_only_on_train_and_reproducible():
    val = data.load("digits", split="val", augment=True)
    assert all(torch.equal(val[i][0], val.tensors[0][i]) for i in range(20))
    train = data.load("digits", split="train", augment=True, image_size=32)
    xs = train.tensors[0]
    changed = sum(not torch.equal(train[i][0], xs[i]) for i in range(40))
    assert changed > 20
    torch.manual_seed(7)
    first = torch.stack([train[i][0] for i in range(8)])
    torch.manual_seed(7)
    second = torch.stack([train[i][0] for i in range(8)])
    assert torch.equal(first, second)
    assert first.shape == (8, 1, 32, 32)


def test_digits_augment_has_no_flip():
    train = data.load("digits", split="train", augment=True)
    steps = train.transform.transforms
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in steps)
    assert any(isinstance(t, T.RandomCrop) and t.padding == 1 for t in steps)


def test_dataloader_batches():
    loader = torch.utils.data.DataLoader(data.load("digits"), batch_size=16)
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,) and y.dtype == torch.int64


# ---------------------------------------------------------------- mnist1d


def test_mnist1d_official_split():
    train = data.load("mnist1d", split="train")
    val = data.load("mnist1d", split="val")
    test = data.load("mnist1d", split="test")
    trainval = data.load("mnist1d", split="trainval")
    assert len(train) + len(val) == len(trainval) == 4000
    assert len(val) == 400 and len(test) == 1000
    x, y = train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert train.info.input_shape == (1, 40) and train.info.dims == 1
    assert set(test.tensors[1].tolist()) == set(range(10))


def test_mnist1d_deterministic_and_leaves_global_rng_alone():
    state = np.random.get_state()
    a = data.load("mnist1d", split="val", seed=3, num_samples=200)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1])
    b = data.load("mnist1d", split="val", seed=3, num_samples=200)
    assert torch.equal(a.tensors[0], b.tensors[0])
    c = data.load("mnist1d", split="val", seed=4, num_samples=200)
    assert not torch.equal(a.tensors[0], c.tensors[0])
    assert len(data.load("mnist1d", split="test", seed=3, num_samples=200)) == 40


def test_mnist1d_resize_length():
    ds = data.load("mnist1d", split="test", image_size=64)
    assert ds.tensors[0].shape[1:] == (1, 64)
    with pytest.raises(ConfigError):
        data.load("mnist1d", split="test", image_size=(8, 8))


def test_mnist1d_bad_option():
    with pytest.raises(ConfigError, match="num_samples"):
        data.load("mnist1d", num_samples=-5)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_pixels_and_labels(tmp_path, use_parent):
    w = write_cifar10(tmp_path)
    root = tmp_path if use_parent else w["folder"]
    ds = data.load("cifar10", root, split="trainval")
    xs, ys = ds.tensors
    assert xs.shape == (20, 3, 32, 32) and xs.dtype == torch.float32
    assert ys.tolist() == w["train_y"].tolist()
    raw = denorm(xs, ds.info)
    expected = torch.from_numpy(w["train_x"]).float() / 255
    assert torch.allclose(raw, expected, atol=1e-5)
    assert ds.info.num_classes == 10 and ds.info.mean == (0.4914, 0.4822, 0.4465)
    test = data.load("cifar10", root, split="test")
    assert len(test) == 5 and test.tensors[1].tolist() == w["test_y"].tolist()
    assert torch.allclose(denorm(test.tensors[0], test.info), torch.from_numpy(w["test_x"]) / 255)


def test_cifar10_val_fixed_and_disjoint(tmp_path):
    w = write_cifar10(tmp_path, per_batch=10)  # 50 images -> 5 val
    train = data.load("cifar10", tmp_path, split="train")
    val = data.load("cifar10", tmp_path, split="val")
    assert len(train) == 45 and len(val) == 5
    torch.manual_seed(99)
    val2 = data.load("cifar10", tmp_path, split="val")
    assert torch.equal(val.tensors[0], val2.tensors[0])
    all_imgs = {bytes(im): i for i, im in enumerate(w["train_x"])}

    def indices(ds):
        raw = denorm(ds.tensors[0], ds.info).mul(255).round().to(torch.uint8).numpy()
        return {all_imgs[bytes(im)] for im in raw}

    tr, va = indices(train), indices(val)
    assert not tr & va and tr | va == set(range(50))


def test_cifar10_augment_crops_and_flips(tmp_path):
    write_cifar10(tmp_path)
    ds = data.load("cifar10", tmp_path, augment=True)
    names = [type(t).__name__ for t in ds.transform.transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip"]
    assert ds.transform.transforms[0].padding == 4
    assert data.load("cifar10", tmp_path, split="test", augment=True).transform is None


def test_cifar10_resize(tmp_path):
    write_cifar10(tmp_path)
    ds = data.load("cifar10", tmp_path, split="test", image_size=16)
    assert ds[0][0].shape == (3, 16, 16) and ds.info.input_shape == (3, 16, 16)


def test_cifar100_fine_labels(tmp_path):
    w = write_cifar100(tmp_path)
    ds = data.load("cifar100", tmp_path, split="trainval")
    assert ds.info.num_classes == 100
    assert ds.tensors[1].tolist() == w["train_y"].tolist()
    assert torch.allclose(denorm(ds.tensors[0], ds.info), torch.from_numpy(w["train_x"]) / 255)
    assert len(data.load("cifar100", w["folder"], split="test")) == 6
    assert len(data.load("cifar100", tmp_path, split="val")) == 2


def test_cifar_pickle_from_numpy_1_layout(tmp_path):
    """Real CIFAR files name numpy.core.multiarray (numpy < 2); they must still load."""
    w = write_cifar10(tmp_path)
    path = w["folder"] / "test_batch"
    legacy = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    path.write_bytes(legacy)
    ds = data.load("cifar10", tmp_path, split="test")
    assert torch.allclose(denorm(ds.tensors[0], ds.info), torch.from_numpy(w["test_x"]) / 255)


def test_cifar_missing_file_names_it(tmp_path):
    w = write_cifar10(tmp_path)
    (w["folder"] / "data_batch_3").unlink()
    with pytest.raises(MissingFileError) as e:
        data.load("cifar10", tmp_path)
    assert "data_batch_3" in str(e.value) and "CIFAR python-pickle" in str(e.value)
    assert len(data.load("cifar10", tmp_path, split="test")) == 5  # test needs no train batch


def test_cifar_folder_without_batches(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(MissingFileError) as e:
        data.load("cifar10", tmp_path)
    assert "cifar-10-batches-py" in str(e.value) and str(tmp_path) in str(e.value)


def test_cifar_truncated_pickle(tmp_path):
    w = write_cifar10(tmp_path)
    path = w["folder"] / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError) as e:
        data.load("cifar10", tmp_path)
    assert "data_batch_2" in str(e.value) and "pickle" in str(e.value)
    assert e.value.__cause__ is not None


def test_cifar_corrupt_pickle(tmp_path):
    w = write_cifar10(tmp_path)
    (w["folder"] / "test_batch").write_bytes(b"\x80\x02garbage that is not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        data.load("cifar10", tmp_path, split="test")


def test_cifar_pickle_cannot_run_code(tmp_path):
    w = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with open(w["folder"] / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DataError, match="test_batch"):
        data.load("cifar10", tmp_path, split="test")
    assert not marker.exists()


def test_cifar_wrong_shape_and_bad_labels(tmp_path):
    w = write_cifar10(tmp_path)
    with open(w["folder"] / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"test_batch.*3072"):
        data.load("cifar10", tmp_path, split="test")
    with open(w["folder"] / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, f)
    with pytest.raises(DataError, match=r"test_batch.*labels outside 0\.\.9"):
        data.load("cifar10", tmp_path, split="test")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST (IDX)


@pytest.mark.parametrize(
    ("name", "sub", "gz"),
    [
        ("mnist", "", False),
        ("mnist", "MNIST/raw", True),
        ("fashion_mnist", "FashionMNIST/raw", False),
    ],
)
def test_idx_sets_read_back(tmp_path, name, sub, gz):
    arrays = write_idx_set(tmp_path / sub if sub else tmp_path, gz=gz)
    ds = data.load(name, tmp_path, split="trainval")
    xs, ys = ds.tensors
    assert xs.shape == (20, 1, 28, 28) and xs.dtype == torch.float32
    assert ys.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255
    assert torch.allclose(denorm(xs, ds.info), expected, atol=1e-5)
    assert ds.info.name == name and ds.info.input_shape == (1, 28, 28)
    test = data.load(name, tmp_path, split="test")
    assert len(test) == 7 and test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train, val = data.load(name, tmp_path), data.load(name, tmp_path, split="val")
    assert len(train) == 18 and len(val) == 2


def test_mnist_mean_std_constants(tmp_path):
    write_idx_set(tmp_path)
    assert data.load("mnist", tmp_path).info.mean == (0.1307,)
    assert data.load("mnist", tmp_path).info.std == (0.3081,)


def test_mnist_augment_no_flip(tmp_path):
    write_idx_set(tmp_path)
    ds = data.load("mnist", tmp_path, augment=True)
    assert [type(t).__name__ for t in ds.transform.transforms] == ["RandomCrop"]


def test_idx_truncated(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as e:
        data.load("mnist", tmp_path, split="test")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "truncated" in msg and "expected IDX" in msg


def test_idx_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz") as e:
        data.load("mnist", tmp_path, split="test")
    assert e.value.__cause__ is not None


def test_idx_bad_magic(tmp_path):
    write_idx_set(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0] = 0x1F
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        data.load("mnist", tmp_path)
    assert "train-labels-idx1-ubyte" in str(e.value) and "magic" in str(e.value)
    assert "expected IDX" in str(e.value)


def test_idx_wrong_dims_and_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    labels = np.zeros((7, 2), np.uint8)  # labels must be 1-D
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        data.load("mnist", tmp_path, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataError, match="6 labels"):
        data.load("mnist", tmp_path, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(7, 12, np.uint8)))
    with pytest.raises(DataError, match="labels outside"):
        data.load("mnist", tmp_path, split="test")


def test_idx_missing_file(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(MissingFileError) as e:
        data.load("mnist", tmp_path)
    assert "train-labels-idx1-ubyte" in str(e.value) and "IDX" in str(e.value)


def test_idx_no_files_at_all(tmp_path):
    with pytest.raises(MissingFileError, match="MNIST/raw"):
        data.load("mnist", tmp_path)


# ---------------------------------------------------------------- ImageFolder


def test_imagefolder_reads_classes_and_pixels(tmp_path):
    write_imagefolder(tmp_path)
    ds = data.load("imagefolder", tmp_path, split="train", image_size=16)
    assert len(ds) == 6 and ds.classes == ["blue", "red"]
    assert ds.info.num_classes == 2 and ds.info.input_shape == (3, 16, 16)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        color = torch.tensor(COLORS[ds.classes[int(y)]], dtype=torch.float32) / 255
        assert torch.allclose(denorm(x, ds.info), color.view(3, 1, 1).expand(3, 16, 16), atol=0.03)
    assert len(data.load("imagefolder", tmp_path, split="val", image_size=16)) == 4
    assert len(data.load("imagefolder", tmp_path, split="test", image_size=16)) == 4
    assert len(data.load("imagefolder", tmp_path, split="trainval", image_size=16)) == 10


def test_imagefolder_default_size_and_augment(tmp_path):
    write_imagefolder(tmp_path)
    ds = data.load("imagefolder", tmp_path, split="val")
    assert ds[0][0].shape == (3, 224, 224)
    train = data.load("imagefolder", tmp_path, augment=True, image_size=12)
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip"]
    torch.manual_seed(0)
    a = train[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, train[0][0]) and a.shape == (3, 12, 12)


def test_imagefolder_undecodable_image(tmp_path):
    write_imagefolder(tmp_path)
    bad = tmp_path / "val" / "red" / "zzz_bad.png"
    bad.write_bytes(b"this is not a png")
    ds = data.load("imagefolder", tmp_path, split="val", image_size=8)
    index = next(i for i, (p, _) in enumerate(ds.samples) if p == bad)
    with pytest.raises(DataError) as e:
        ds[index]
    assert "zzz_bad.png" in str(e.value) and e.value.__cause__ is not None


def test_imagefolder_truncated_png(tmp_path):
    write_imagefolder(tmp_path)
    good = tmp_path / "train" / "red" / "0.png"
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), np.uint8))
    noisy.save(good)
    good.write_bytes(good.read_bytes()[:200])
    ds = data.load("imagefolder", tmp_path, image_size=8)
    index = next(i for i, (p, _) in enumerate(ds.samples) if p == good)
    with pytest.raises(DataError, match=r"0\.png"):
        ds[index]


def test_imagefolder_missing_split_folder(tmp_path):
    write_imagefolder(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "val")
    with pytest.raises(MissingFileError) as e:
        data.load("imagefolder", tmp_path, split="val")
    assert str(tmp_path / "val") in str(e.value) and "ImageFolder" in str(e.value)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_marked():
    ds = data.load("synthetic", shape=(3, 16, 16), num_classes=5, num_samples=12, seed=1)
    assert ds.info.synthetic and "synthetic" in ds.info.name
    assert len(ds) == 12 and ds[0][0].shape == (3, 16, 16) and ds.info.num_classes == 5
    assert int(ds.tensors[1].max()) < 5
    again = data.load("synthetic", shape=(3, 16, 16), num_classes=5, num_samples=12, seed=1)
    assert torch.equal(ds.tensors[0], again.tensors[0])
    assert data.load("synthetic", image_size=8).info.input_shape == (3, 8, 8)
    assert data.load("synthetic", shape=(2, 50)).info.dims == 1


# ---------------------------------------------------------------- transforms


def test_random_crop_keeps_size_and_shifts_content():
    x = torch.arange(2 * 6 * 6, dtype=torch.float32).view(2, 6, 6) + 1
    crop = T.RandomCrop(6, padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    torch.manual_seed(0)
    outs = [crop(x) for _ in range(30)]
    assert all(o.shape == x.shape for o in outs)
    assert any(not torch.equal(o, x) for o in outs)
    for o in outs:  # every output is a window of the zero-padded input
        assert any(
            torch.equal(o, padded[:, i : i + 6, j : j + 6]) for i in range(5) for j in range(5)
        )


def test_random_crop_fill_per_channel_and_1d():
    x = torch.ones(2, 4, 4)
    crop = T.RandomCrop(4, padding=3, fill=[-1.0, -2.0])
    torch.manual_seed(1)
    out = torch.stack([crop(x) for _ in range(20)])
    assert set(out[:, 0].unique().tolist()) <= {1.0, -1.0}
    assert set(out[:, 1].unique().tolist()) <= {1.0, -2.0}
    assert (out == -1).any()
    sig = torch.arange(10, dtype=torch.float32).view(1, 10)
    assert T.RandomCrop(10, padding=2)(sig).shape == (1, 10)


def test_flip():
    x = torch.arange(12, dtype=torch.float32).view(1, 3, 4)
    assert torch.equal(T.RandomHorizontalFlip(p=1.0)(x), x.flip(-1))
    assert torch.equal(T.RandomHorizontalFlip(p=0.0)(x), x)
    assert T.RandomHorizontalFlip(p=1.0)(x)[0, 0, 0] == 3


def test_normalize_math():
    x = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 1.0)])
    out = T.Normalize([0.25, 0.0], [0.5, 2.0])(x)
    assert torch.allclose(out[0], torch.full((2, 2), 0.5))
    assert torch.allclose(out[1], torch.full((2, 2), 0.5))
    with pytest.raises(ConfigError):
        T.Normalize([0.0], [0.0])


def test_resize_center_crop_and_compose():
    x = torch.rand(3, 10, 20)
    assert T.Resize(5)(x).shape == (3, 5, 10)  # int sets the shorter side
    assert T.Resize((7, 9))(x).shape == (3, 7, 9)
    assert T.Resize(10)(x).shape == x.shape
    const = torch.full((1, 9, 9), 0.3)
    assert torch.allclose(T.Resize(4)(const), torch.full((1, 4, 4), 0.3))  # antialiased down
    assert T.Resize(80)(torch.rand(1, 40)).shape == (1, 80)
    grid = torch.arange(36, dtype=torch.float32).view(1, 6, 6)
    assert torch.equal(T.CenterCrop(2)(grid), grid[:, 2:4, 2:4])
    assert T.CenterCrop(8)(grid).shape == (1, 8, 8)
    assert torch.equal(
        T.CenterCrop(4)(torch.arange(8.0).view(1, 8)), torch.arange(2.0, 6).view(1, 4)
    )
    both = T.Compose([T.Resize(12), T.CenterCrop(12)])
    assert both(x).shape == (3, 12, 12)


def test_random_resized_crop():
    x = torch.rand(3, 16, 16)
    full = T.RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(full(x), x)
    rrc = T.RandomResizedCrop(8)
    torch.manual_seed(3)
    a = [rrc(x) for _ in range(5)]
    torch.manual_seed(3)
    b = [rrc(x) for _ in range(5)]
    assert all(o.shape == (3, 8, 8) for o in a)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    top, left, h, w = rrc.window(16, 16)
    assert 0 <= top <= 16 - h and 0 <= left <= 16 - w


def test_mnist1d_20k_is_the_generator_at_20000_samples():
    large = data.load("mnist1d_20k", split="test")
    same = data.load("mnist1d", split="test", num_samples=20_000)
    assert len(large) == 4000 and len(data.load("mnist1d_20k", split="trainval")) == 16000
    assert torch.equal(large.tensors[0], same.tensors[0])
    assert not torch.equal(large.tensors[0][:1000], data.load("mnist1d", split="test").tensors[0])
