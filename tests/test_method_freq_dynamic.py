"""Frequency-domain dynamic pruning (Liu et al., NeurIPS 2018) and the basis masks it rests on:
the DCT of a 3x3 kernel and its bands worked out by hand, a kernel that one kept coefficient
rebuilds exactly (which no single spatial weight can), band rates, coefficient counting, and the
method end to end."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from nets import small_data, small_net, sparse_context
from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.masks.basis import (
    attach_basis,
    basis_layers,
    coefficients,
    dct_basis,
    dct_matrix,
    frequency_bands,
)
from prunekit.methods.base import Context
from prunekit.methods.freq_dynamic import band_rates, exact_band_keep


def _dct2(kernel: torch.Tensor) -> torch.Tensor:
    """2-D DCT through the basis matrix (what the method stores)."""
    b = dct_basis(tuple(kernel.shape), torch.float64)
    return (b.T @ kernel.reshape(-1)).reshape(kernel.shape)


def test_dct_of_3x3_kernels_by_hand() -> None:
    # a constant kernel has only the DC coefficient: (1/sqrt 3)^2 * 9 = 3
    ones = _dct2(torch.ones(3, 3, dtype=torch.float64))
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 0] = 3.0
    assert torch.allclose(ones, expected, atol=1e-12)
    # rows [1, 0, -1]: vertically constant (sqrt 3), horizontally
    # sqrt(2/3) (cos(pi/6) - cos(5pi/6)) = sqrt 2 at frequency 1 and 0 at frequency 2
    edge = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=torch.float64)
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[0, 1] = math.sqrt(6.0)
    assert torch.allclose(_dct2(edge), expected, atol=1e-12)
    d = dct_matrix(3)
    assert torch.allclose(d @ d.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert frequency_bands((3, 3)).tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]


def test_one_kept_coefficient_rebuilds_the_kernel_where_one_weight_cannot() -> None:
    conv = nn.Conv2d(1, 1, 3, bias=False)
    edge = torch.tensor([[1.0, 0.0, -1.0]] * 3)
    with torch.no_grad():
        conv.weight.copy_(edge.reshape(1, 1, 3, 3))
    x = torch.randn(2, 1, 5, 5)
    dense = conv(x)
    param = attach_basis(conv)
    assert torch.allclose(conv.weight, edge.reshape(1, 1, 3, 3), atol=1e-6)
    coeffs = conv.parametrizations["weight"].original.detach()
    # keep the largest coefficient only: 1 of 9, the kernel is rebuilt exactly
    keep = exact_band_keep(
        coeffs,
        torch.ones_like(coeffs, dtype=torch.bool),
        torch.zeros_like(coeffs, dtype=torch.long),
        [8 / 9],
    )
    param.set_mask(keep)
    assert int(keep.sum()) == 1 and bool(keep[0, 0, 0, 1])
    assert torch.allclose(conv(x), dense, atol=1e-5)
    assert masks.report(conv)["overall"]["nonzero"] == 1  # counted in coefficients
    # spatial magnitude pruning keeping 1 of 9 weights cannot
    spatial = edge.clone().reshape(-1)
    spatial[spatial.abs().argsort()[:-1]] = 0
    assert not torch.allclose(spatial.reshape(3, 3), edge)
    # finalize bakes the rebuilt spatial kernel: dense in space, same outputs
    masks.finalize(conv)
    assert not basis_layers(conv) and torch.allclose(conv(x), dense, atol=1e-5)
    assert masks.report(conv)["overall"]["nonzero"] >= 6  # the zero column is only ~0


def test_band_rates_rise_with_frequency_and_average_to_the_share() -> None:
    counts = [1, 2, 3, 2, 1]  # a 3x3 kernel's bands
    rates = band_rates(counts, 0.5, 0.5)
    assert rates == pytest.approx([0.25, 0.375, 0.5, 0.625, 0.75])
    clipped = band_rates(counts, 0.9, 1.0)
    assert all(a <= b for a, b in itertools.pairwise(clipped))
    assert sum(n * r for n, r in zip(counts, clipped, strict=True)) / 9 == pytest.approx(0.9)
    assert clipped[-1] == 1.0
    assert band_rates(counts, 0.3, 0.0) == [0.3] * 5


def test_exact_band_keep_prefers_the_surgery_then_magnitude() -> None:
    coeffs = torch.tensor([5.0, 4.0, 0.1, 0.2])
    keep = torch.tensor([False, True, True, True])
    bands = torch.tensor([0, 0, 1, 1])
    out = exact_band_keep(coeffs, keep, bands, [0.5, 0.5])
    # band 0: entry 1 is kept by the surgery even though entry 0 is larger
    assert out.tolist() == [False, True, False, True]


def _ctx(model: nn.Module, tmp_path, **options) -> Context:  # type: ignore[no-untyped-def]
    return sparse_context(model, tmp_path, n=32, **{**{"epochs": 1}, **options})


def test_freq_dynamic_counts_coefficients_and_computes_with_the_pruned_kernels(tmp_path) -> None:
    model = small_net()
    method = methods.get("freq_dynamic")
    report = method.prune(_ctx(model, tmp_path / "a"))
    assert abs(report.sparsity - 0.6) < 0.01
    assert method.history and method.history[0]["step"] == 0
    conv = model[0]
    coeffs = coefficients(conv)
    bands = frequency_bands((3, 3)).expand(coeffs.shape)
    # low bands keep more of their coefficients than high ones
    kept = [float((coeffs[bands == b] != 0).float().mean()) for b in range(5)]
    assert kept[0] > kept[4]
    # the effective weight is the inverse DCT of the kept coefficients
    b = dct_basis((3, 3))
    rebuilt = (coeffs.reshape(-1, 9) @ b.T).reshape(conv.weight.shape)
    assert torch.allclose(conv.weight, rebuilt, atol=1e-6)
    x = small_data(32).tensors[0][:4]
    model.eval()
    with torch.no_grad():
        before = model(x)
        masks.finalize(model)
        assert torch.allclose(model(x), before, atol=1e-5)
    # an interrupted run resumes: the same folder gives the same model
    again = small_net()
    methods.get("freq_dynamic").prune(_ctx(again, tmp_path / "a"))
    masks.finalize(again)
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), before, atol=1e-5)


def test_freq_dynamic_refuses_a_masked_model(tmp_path) -> None:
    model = small_net()
    masks.prune(model, 0.5)
    with pytest.raises(ConfigError, match="dense model"):
        methods.get("freq_dynamic").prune(_ctx(model, tmp_path))
