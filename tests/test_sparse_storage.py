"""prunekit.compress sparse storage: every encoding round-trips bit-exactly, fp16 gives exactly the
fp16-rounded values, the files are much smaller than dense ones, and bad files fail clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.compress import load_sparse, load_sparse_model, save_sparse
from prunekit.compress.sparse import FORMAT, VERSION
from prunekit.errors import CheckpointError, ConfigError, MissingFileError
from prunekit.models import create

FMTS = ("auto", "bitmask", "csr", "dense")
SPARSITIES = (0.0, 0.5, 0.9, 0.98, 1.0)


def _sparse_tensor(shape: tuple[int, ...], sparsity: float) -> torch.Tensor:
    """A random tensor with exactly round(sparsity * numel) zeros at random places."""
    t = torch.randn(shape)
    t[t == 0] = 1.0  # so the zero count is exactly what we ask for
    flat = t.view(-1)
    n_zero = round(sparsity * flat.numel())
    flat[torch.randperm(flat.numel())[:n_zero]] = 0.0
    return t


def _prune_by_magnitude(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude ``sparsity`` of every conv/linear weight, per layer."""
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks.prune(model, sparsity, scope="layer", include=layers)
    masks.finalize(model)


def _assert_bit_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(
            a[key].reshape(-1).view(torch.uint8), b[key].reshape(-1).view(torch.uint8)
        ), key


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_round_trip_is_bit_exact(tmp_path: Path, fmt: str, sparsity: float) -> None:
    state = {
        "conv": _sparse_tensor((16, 8, 3, 3), sparsity),
        "vec": _sparse_tensor((37,), sparsity),
        "scalar": torch.tensor(0.0 if sparsity == 1.0 else 2.5),
        "double": _sparse_tensor((5, 7), sparsity).double(),
        "count": torch.tensor(12, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    report = save_sparse(state, tmp_path / "s.pks", fmt=fmt)
    _assert_bit_equal(load_sparse(tmp_path / "s.pks"), state)
    if fmt != "auto":
        assert set(report.formats.values()) == {fmt}


def test_negative_zero_and_nan_survive(tmp_path: Path) -> None:
    t = torch.tensor([0.0, -0.0, float("nan"), 0.0, float("inf"), 0.0, 0.0, 0.0, 0.0, 0.0])
    for fmt in FMTS:
        save_sparse({"t": t}, tmp_path / "s.pks", fmt=fmt)
        _assert_bit_equal(load_sparse(tmp_path / "s.pks"), {"t": t})


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("sparsity", (0.0, 0.9, 1.0))
def test_fp16_gives_the_fp16_rounded_values(tmp_path: Path, fmt: str, sparsity: float) -> None:
    t = _sparse_tensor((64, 33), sparsity) * 1e-3  # small values: fp16 really rounds them
    ints = torch.arange(10, dtype=torch.int32)
    save_sparse({"t": t, "i": ints}, tmp_path / "s.pks", fmt=fmt, dtype="fp16")
    back = load_sparse(tmp_path / "s.pks")
    assert back["t"].dtype == torch.float32
    assert torch.equal(back["t"], t.half().float())
    assert torch.equal(back["i"], ints)  # integers are never rounded


def test_fp16_refuses_values_it_would_turn_into_inf(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 range"):
        save_sparse({"big": torch.tensor([1e6, 0.0])}, tmp_path / "s.pks", dtype="fp16")
    assert not (tmp_path / "s.pks").exists()


@pytest.mark.parametrize(
    ("numel", "gap", "expected"),
    [
        (1000, 200, "uint8"),
        (70000, 300, "uint16"),
        (70000, 256, "uint16"),
        (200_000, 70_000, "uint32"),
    ],
)
def test_csr_index_width_is_the_smallest_that_fits(
    tmp_path: Path, numel: int, gap: int, expected: str
) -> None:
    t = torch.zeros(numel)
    t[::gap] = 1.5
    report = save_sparse({"t": t}, tmp_path / "s.pks", fmt="csr")
    assert report.index_dtypes == {"t": expected}
    _assert_bit_equal(load_sparse(tmp_path / "s.pks"), {"t": t})


def test_auto_picks_the_smallest_encoding(tmp_path: Path) -> None:
    state = {
        "dense": _sparse_tensor((4096,), 0.1),  # below min_sparsity
        "mid": _sparse_tensor((4096,), 0.6),  # bitmask: 512 B of bits < one index byte each
        "high": _sparse_tensor((4096,), 0.99),  # csr: a few indices beat 512 bytes of bits
    }
    report = save_sparse(state, tmp_path / "s.pks")
    assert report.formats["dense"] == "dense"
    assert report.formats["mid"] == "bitmask"
    assert report.formats["high"] == "csr"
    # with no sparsity floor, auto is at least as small as any single encoding
    smallest = save_sparse(state, tmp_path / "any.pks", min_sparsity=0.0)
    assert smallest.formats["dense"] == "bitmask"
    for fmt in ("bitmask", "csr", "dense"):
        forced = save_sparse(state, tmp_path / f"{fmt}.pks", fmt=fmt)
        assert smallest.bytes_written <= forced.bytes_written


def test_resnet20_at_90_percent_reloads_with_identical_outputs(tmp_path: Path) -> None:
    model = create("resnet20").eval()
    _prune_by_magnitude(model, 0.9)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)

    report = save_sparse(model, tmp_path / "r.pks", extra={"note": "90%"})
    _assert_bit_equal(load_sparse(tmp_path / "r.pks"), model.state_dict())
    loaded = load_sparse_model(tmp_path / "r.pks")
    assert loaded.prunekit_extra == {"note": "90%"}
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    # size: bitmask + fp32 under a quarter of the dense file, fp16 smaller again
    bitmask = save_sparse(model, tmp_path / "b.pks", fmt="bitmask")
    assert bitmask.bytes_written < 0.25 * bitmask.dense_bytes
    half = save_sparse(model, tmp_path / "h.pks", dtype="fp16")
    assert half.bytes_written < report.bytes_written < bitmask.dense_bytes
    assert report.dense_bytes == bitmask.dense_bytes
    assert report.ratio == pytest.approx(report.bytes_written / report.dense_bytes)


class _Mask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def test_masked_model_stores_its_effective_weights(tmp_path: Path) -> None:
    model = create("resnet20").eval()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mask = (torch.rand_like(m.weight) > 0.8).float()
            parametrize.register_parametrization(m, "weight", _Mask(mask))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)

    report = save_sparse(model, tmp_path / "m.pks")
    assert not any("parametrizations" in k for k in report.formats)
    assert set(report.formats) == set(create("resnet20").state_dict())
    loaded = load_sparse_model(tmp_path / "m.pks")
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)

    with pytest.raises(ConfigError, match="parametrized"):
        save_sparse(model.state_dict(), tmp_path / "sd.pks")


def test_user_model_loads_into_a_given_architecture(tmp_path: Path) -> None:
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))

    model = build()
    _prune_by_magnitude(model, 0.5)
    save_sparse(model, tmp_path / "u.pks")
    with pytest.raises(CheckpointError, match="does not record its architecture"):
        load_sparse_model(tmp_path / "u.pks")
    loaded = load_sparse_model(tmp_path / "u.pks", build)
    _assert_bit_equal(loaded.state_dict(), model.state_dict())


def test_bad_arguments_are_config_errors(tmp_path: Path) -> None:
    state = {"t": torch.zeros(3)}
    with pytest.raises(ConfigError, match="fmt"):
        save_sparse(state, tmp_path / "s.pks", fmt="coo")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dtype"):
        save_sparse(state, tmp_path / "s.pks", dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="min_sparsity"):
        save_sparse(state, tmp_path / "s.pks", min_sparsity=1.5)
    with pytest.raises(ConfigError, match="JSON"):
        save_sparse(state, tmp_path / "s.pks", extra=object())
    with pytest.raises(ConfigError, match="not a tensor"):
        save_sparse({"t": 3}, tmp_path / "s.pks")  # type: ignore[dict-item]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match=r"nope\.pks"):
        load_sparse(tmp_path / "nope.pks")


@pytest.fixture
def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "good.pks"
    state = {"a": _sparse_tensor((64, 64), 0.9), "b": _sparse_tensor((100,), 0.5)}
    save_sparse(state, path)
    return path


def test_truncated_file_is_a_checkpoint_error(good_file: Path) -> None:
    data = good_file.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 10):
        good_file.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(good_file.name)):
            load_sparse(good_file)


def test_flipped_bytes_are_a_checkpoint_error(good_file: Path) -> None:
    expected = load_sparse(good_file)
    data = bytearray(good_file.read_bytes())
    rng = np.random.default_rng(0)
    failures = 0
    for pos in rng.integers(0, len(data), size=40):
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        good_file.write_bytes(bytes(bad))
        try:
            back = load_sparse(good_file)
        except CheckpointError as e:
            assert good_file.name in str(e)
            failures += 1
        else:  # a flip in zip padding may be harmless; it must then give the same tensors
            _assert_bit_equal(back, expected)
    assert failures > 0


def test_payload_corruption_is_caught_by_the_checksum(good_file: Path) -> None:
    ckpt = torch.load(good_file, weights_only=True)
    ckpt["blob"][5] ^= 1
    torch.save(ckpt, good_file)
    with pytest.raises(CheckpointError, match="checksum"):
        load_sparse(good_file)


def test_inconsistent_entry_is_a_checkpoint_error(good_file: Path) -> None:
    ckpt = torch.load(good_file, weights_only=True)
    ckpt["tensors"]["a"]["shape"] = [8, 8]  # the nonzeros no longer fit
    torch.save(ckpt, good_file)
    with pytest.raises(CheckpointError, match=r"corrupt.*'a'"):
        load_sparse(good_file)


def test_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(3)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a prunekit sparse file"):
        load_sparse(tmp_path / "plain.pt")
    torch.save({"format": FORMAT, "version": VERSION + 1}, tmp_path / "new.pks")
    with pytest.raises(CheckpointError, match="version"):
        load_sparse(tmp_path / "new.pks")
    (tmp_path / "text.pks").write_text("hello")
    with pytest.raises(CheckpointError, match=r"text\.pks"):
        load_sparse(tmp_path / "text.pks")


def test_crash_mid_write_leaves_the_old_file(
    good_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = good_file.read_bytes()

    def crash(obj: object, f: object) -> None:
        f.write(b"half a file")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_sparse({"x": torch.ones(10)}, good_file)
    monkeypatch.undo()
    assert good_file.read_bytes() == before
    assert [p.name for p in good_file.parent.iterdir()] == [good_file.name]
    assert set(load_sparse(good_file)) == {"a", "b"}
