"""Deep Compression: Huffman coding, weight sharing, trained quantisation, the file format and
the ``deep_compression`` method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks
from prunekit.compress.deep_compression import (
    SharedWeights,
    compress_model,
    gaps_with_fillers,
    kmeans_codebook,
    linear_init,
    load_deep_compressed,
    positions_from_gaps,
    quantize_model,
    read_deep_compressed,
    save_deep_compressed,
    shared_weights,
)
from prunekit.compress.huffman import HuffmanCode, code_lengths
from prunekit.errors import CheckpointError, ConfigError, MissingFileError
from prunekit.methods import Context, get
from prunekit.targets import Target

TEXTBOOK = {"a": 45, "b": 13, "c": 12, "d": 16, "e": 9, "f": 5}

# ------------------------------------------------------------------------------ Huffman


def test_huffman_textbook_lengths_and_total_bits() -> None:
    lengths = code_lengths(TEXTBOOK)
    assert lengths == {"a": 1, "b": 3, "c": 3, "d": 3, "e": 4, "f": 4}
    assert sum(TEXTBOOK[s] * n for s, n in lengths.items()) == 224


def test_huffman_canonical_codes() -> None:
    code = HuffmanCode.from_frequencies(TEXTBOOK)
    # canonical: by (length, symbol), each code the previous plus one, shifted as lengths grow
    assert {s: code.code_string(s) for s in "abcdef"} == {
        "a": "0",
        "b": "100",
        "c": "101",
        "d": "110",
        "e": "1110",
        "f": "1111",
    }


def test_huffman_textbook_stream_roundtrip() -> None:
    seq = [s for s, f in TEXTBOOK.items() for _ in range(f)]
    code = HuffmanCode.from_frequencies(TEXTBOOK)
    data = code.encode(seq)
    assert code.bit_length(seq) == 224
    assert len(data) == 28  # 224 bits
    assert code.decode(data, len(seq)) == seq


def test_huffman_dyadic_frequencies_meet_entropy() -> None:
    freqs = {0: 8, 1: 4, 2: 2, 3: 1, 4: 1}
    assert code_lengths(freqs) == {0: 1, 1: 2, 2: 3, 3: 4, 4: 4}
    # entropy of (1/2, 1/4, 1/8, 1/16, 1/16) is 1.875 bits; 16 symbols -> 30 bits exactly
    seq = np.array([s for s, f in freqs.items() for _ in range(f)])
    assert HuffmanCode.from_frequencies(freqs).bit_length(seq) == 30


def test_huffman_random_within_entropy_bound_and_exact() -> None:
    rng = np.random.default_rng(0)
    seq = rng.geometric(0.35, size=5000)
    code = HuffmanCode.for_symbols(seq)
    _, counts = np.unique(seq, return_counts=True)
    p = counts / counts.sum()
    entropy = float(-(p * np.log2(p)).sum())
    average = code.bit_length(seq) / seq.size
    assert entropy <= average < entropy + 1
    assert np.array_equal(code.decode(code.encode(seq), seq.size), seq)


def test_huffman_single_symbol() -> None:
    code = HuffmanCode.for_symbols(np.array([7, 7, 7, 7, 7]))
    assert code.lengths == {7: 1}
    data = code.encode(np.array([7] * 5))
    assert data == b"\x00"
    assert code.decode(data, 5).tolist() == [7] * 5


def test_huffman_bad_input() -> None:
    with pytest.raises(ConfigError, match="Kraft"):
        HuffmanCode({0: 1, 1: 1, 2: 1})
    code = HuffmanCode({0: 1, 1: 2, 2: 2})
    with pytest.raises(ValueError, match="ends"):
        code.decode(b"\x00", 9)  # 8 bits hold only 8 symbols
    with pytest.raises(ConfigError, match="no code"):
        code.encode(np.array([3]))


# ------------------------------------------------------------------------------ weight sharing


def test_linear_init_evenly_spaced() -> None:
    assert linear_init(np.array([3.0, -1.0, 0.5]), 5).tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0]


def test_kmeans_codebook_hand_case() -> None:
    # linear init [0.1, 5.0]: {0.1, 0.2, 1.0, 1.1} -> 0.6, {5.0} -> 5.0, already stable
    centroids, labels = kmeans_codebook(torch.tensor([0.1, 0.2, 1.0, 1.1, 5.0]), 2)
    assert torch.allclose(centroids, torch.tensor([0.6, 5.0]))
    assert labels.tolist() == [0, 0, 0, 0, 1]


def test_kmeans_codebook_few_values_kept_exactly() -> None:
    centroids, labels = kmeans_codebook(torch.tensor([0.3, -2.0, 0.3]), 4)
    assert centroids.tolist() == pytest.approx([-2.0, 0.3])
    assert labels.tolist() == [1, 0, 1]


def test_shared_gradient_is_sum_over_cluster() -> None:
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 0.2, 3.0, 0.0]]))
    quantize_model(layer, bits_fc=1)  # 2 centroids: {0.1, 0.2} -> 0.15, {3.0}; 0.0 pruned
    shared = shared_weights(layer)["weight"]
    assert torch.allclose(shared.centroids.detach(), torch.tensor([0.15, 3.0]))
    x = torch.tensor([[1.0, 2.0, 5.0, 4.0]])
    out = layer(x).sum()
    assert out.item() == pytest.approx(0.15 * 3 + 3.0 * 5)
    out.backward()
    # d out / d w = x; cluster 0 holds inputs 1 and 2, cluster 1 input 5; the pruned one nothing
    assert shared.centroids.grad.tolist() == [3.0, 5.0]
    assert layer.parametrizations.weight.original.grad is None


def test_quantize_keeps_mask_and_sharing_under_training() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    masks.prune(layer, 0.5)
    quantize_model(layer, bits_fc=2)
    assert isinstance(masks.get_masks(layer)["weight"], masks.Mask)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(4, 6)).pow(2).sum().backward()
        opt.step()
    masks.finalize(layer)
    w = layer.weight.detach()
    assert int((w != 0).sum()) == 15
    assert torch.unique(w[w != 0]).numel() <= 4


# ------------------------------------------------------------------------------ relative indices


def test_gaps_with_fillers_hand_case() -> None:
    # span 7: distances 2, 2, 17 from position -1; 17 = 7 + 7 + 3 -> two fillers at 10 and 17
    gaps, filler = gaps_with_fillers(np.array([1, 3, 20]), 3)
    assert gaps.tolist() == [2, 2, 7, 7, 3]
    assert filler.tolist() == [False, False, True, True, False]
    assert positions_from_gaps(gaps).tolist() == [1, 3, 10, 17, 20]
    assert gaps_with_fillers(np.array([6]), 3)[0].tolist() == [7]  # exactly the span: no filler
    assert gaps_with_fillers(np.array([7]), 3)[0].tolist() == [7, 1]


# ------------------------------------------------------------------------------ the file


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def _quantised_convnet() -> nn.Module:
    model = _convnet()
    masks.prune(model, 0.8, scope="global")
    quantize_model(model, bits_conv=3, bits_fc=2)
    with torch.no_grad():  # move the codebooks off their k-means values, as fine-tuning would
        for p in shared_weights(model).values():
            p.centroids.add_(0.01)
    return model.eval()


def test_save_load_outputs_equal(tmp_path) -> None:
    model = _quantised_convnet()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    report = save_deep_compressed(model, tmp_path / "m.dc")
    assert report.bytes_written == (tmp_path / "m.dc").stat().st_size
    assert set(report.layers) == {"0.weight", "3.weight", "6.weight"}
    assert report.layers["6.weight"]["codebook"] == 4
    loaded = load_deep_compressed(tmp_path / "m.dc", _convnet)
    assert torch.equal(loaded(x), expected)
    state = read_deep_compressed(tmp_path / "m.dc")
    assert torch.equal(state["3.weight"], model[3].weight)
    assert torch.equal(state["1.running_var"], model[1].running_var)


def test_compress_after_finalize_is_exact(tmp_path) -> None:
    model = _quantised_convnet()
    masks.finalize(model)
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    compress_model(model, tmp_path / "m.dc", bits_conv=3, bits_fc=2)
    assert torch.equal(load_deep_compressed(tmp_path / "m.dc", _convnet)(x), expected)


def test_fp16_plain_values(tmp_path) -> None:
    model = _quantised_convnet()
    save_deep_compressed(model, tmp_path / "m.dc", value_dtype="fp16")
    state = read_deep_compressed(tmp_path / "m.dc")
    assert state["6.bias"].dtype == torch.float32
    assert torch.equal(state["6.bias"], model[6].bias.detach().half().float())
    assert torch.equal(state["6.weight"], model[6].weight)  # codebooks stay fp32


def test_mlp_ratio_above_10x_and_exact(tmp_path) -> None:
    torch.manual_seed(0)

    def mlp() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    model = mlp()
    masks.prune(model, 0.9, scope="global")
    x = torch.randn(5, 64)
    report = compress_model(model, tmp_path / "mlp.dc", bits_fc=5, gap_bits_fc=5)
    expected = model.eval()(x)
    weights = 64 * 256 + 256 * 10
    assert report.dense_bytes == 4 * (weights + 256 + 10)
    assert report.ratio > 10
    assert torch.equal(load_deep_compressed(tmp_path / "mlp.dc", mlp)(x), expected)


def test_bad_files(tmp_path) -> None:
    path = tmp_path / "m.dc"
    save_deep_compressed(_quantised_convnet(), path)
    data = path.read_bytes()
    bad = tmp_path / "bad.dc"
    bad.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"bad\.dc.*truncated"):
        load_deep_compressed(bad, _convnet)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"bad\.dc.*checksum"):
        load_deep_compressed(bad, _convnet)
    bad.write_bytes(b"not a model file at all")
    with pytest.raises(CheckpointError, match=r"bad\.dc.*not a prunekit"):
        load_deep_compressed(bad, _convnet)
    with pytest.raises(MissingFileError):
        load_deep_compressed(tmp_path / "absent.dc", _convnet)


def test_bad_arguments(tmp_path) -> None:
    with pytest.raises(ConfigError, match="bits_fc"):
        quantize_model(nn.Linear(2, 2), bits_fc=0)
    with pytest.raises(ConfigError, match="value_dtype"):
        save_deep_compressed(nn.Linear(2, 2), tmp_path / "x.dc", value_dtype="int8")
    with pytest.raises(ConfigError, match="quantise it first"):
        save_deep_compressed(nn.Linear(300, 300), tmp_path / "x.dc")


# ------------------------------------------------------------------------------ the method


def _ctx(model: nn.Module, target: float, shape: tuple[int, ...], **options) -> Context:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, *shape, generator=g)
    y = torch.randint(0, 10 if len(shape) > 1 else 2, (64,), generator=g)
    data = TensorDataset(x, y)
    return Context(
        model=model,
        example_input=x[:2],
        train_set=data,
        val_set=data,
        target={"target_sparsity": target},
        batch_size=16,
        options={"progress": False, **options},
    )


def test_method_std_thresholds_hand_case() -> None:
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 9.0).reshape(2, 4))  # std 2.449
        model[1].weight.copy_(torch.tensor([[10.0, 20.0], [30.0, 40.0]]))  # std 12.91
    # scores |w| / std: A 0.41 0.82 1.22 1.63 2.04 2.45 2.86 3.27, B 0.77 1.55 2.32 3.10;
    # removing 6 of 12 drops A 1-4 and B 10, 20 (one q for both layers)
    ctx = _ctx(model, 0.5, (4,), prune_epochs=0, quant_epochs=0, bits_fc=3)
    report = get("deep_compression").prune(ctx)
    assert report.sparsity == pytest.approx(0.5)
    assert model[0].weight.detach().flatten().tolist() == [0, 0, 0, 0, 5, 6, 7, 8]
    assert model[1].weight.detach().flatten().tolist() == [0, 0, 30, 40]

    glob = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False))
    glob.load_state_dict(
        {
            "0.weight": torch.arange(1.0, 9.0).reshape(2, 4),
            "1.weight": torch.tensor([[10.0, 20.0], [30.0, 40.0]]),
        }
    )
    ctx = _ctx(glob, 0.5, (4,), pruning="global", prune_epochs=0, quant_epochs=0, bits_fc=3)
    get("deep_compression").prune(ctx)
    assert glob[0].weight.detach().flatten().tolist() == [0, 0, 0, 0, 0, 0, 7, 8]
    assert glob[1].weight.detach().flatten().tolist() == [10, 20, 30, 40]


def test_method_end_to_end(tmp_path) -> None:
    model = _convnet()
    ctx = _ctx(model, 0.7, (3, 8, 8), bits_conv=3, bits_fc=2, prune_iterations=2)
    report = get("deep_compression").prune(ctx)
    assert abs(report.sparsity - 0.7) < 0.01
    assert set(shared_weights(model)) == {"0.weight", "3.weight", "6.weight"}
    for name, module in masks.prunable_layers(model).items():
        w = module.weight.detach()
        k = 4 if isinstance(module, nn.Linear) else 8
        assert torch.unique(w[w != 0]).numel() <= k, name
    # the runner's fine-tune and finalize keep zeros and sharing
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for x, y in ctx.calibration():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks.finalize(model)
    assert abs(masks.report(model)["overall"]["sparsity"] - 0.7) < 0.01
    assert not any(isinstance(m, SharedWeights) for m in model.modules())
    x = torch.randn(2, 3, 8, 8)
    expected = model.eval()(x)
    assert torch.isfinite(expected).all()
    compress_model(model, tmp_path / "m.dc", bits_conv=3, bits_fc=2)
    assert torch.equal(load_deep_compressed(tmp_path / "m.dc", _convnet)(x), expected)


def test_method_bad_options() -> None:
    with pytest.raises(ConfigError, match="pruning"):
        get("deep_compression").prune(_ctx(nn.Linear(4, 2), 0.5, (4,), pruning="random"))
    ctx = _ctx(nn.Linear(4, 2), 0.5, (4,))
    ctx.target = Target("flops", 0.5)
    with pytest.raises(ConfigError, match="target_sparsity"):
        get("deep_compression").prune(ctx)
    with pytest.raises(ConfigError, match="bits_conv"):
        get("deep_compression").prune(_ctx(nn.Linear(4, 2), 0.5, (4,), bits_conv=0))


def test_compress_command_and_load_dispatch(tmp_path, capsys) -> None:
    from prunekit import load, models, save
    from prunekit.cli import main
    from prunekit.compress import deep_compression as dc

    torch.manual_seed(0)
    model = models.create("lenet_300_100", num_classes=10, in_channels=1, input_size=(8, 8))
    masks.prune(model, 0.9, scope="global")
    masks.finalize(model)
    save(model, tmp_path / "m.pt")
    assert main(["compress", str(tmp_path / "m.pt"), str(tmp_path / "m.dc")]) == 0
    out = capsys.readouterr().out
    assert "m.dc" in out and "x smaller" in out
    x = torch.randn(3, 1, 8, 8)
    expected = load(tmp_path / "m.pt")
    dc.quantize_model(expected, bits_conv=8, bits_fc=5, seed=0)
    got = load(tmp_path / "m.dc")  # the one loader reads both formats
    assert torch.equal(got(x), expected.eval()(x))
    assert main(["compress", str(tmp_path / "missing.pt"), str(tmp_path / "o.dc")]) == 1
    assert "missing.pt" in capsys.readouterr().err
