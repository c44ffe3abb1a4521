"""Interspace pruning (Wimmer et al., CVPR 2022): coefficients of kernels in a per-layer filter
basis, pruned by their magnitude, with the basis learned jointly. Hand-worked: a layer whose
filters share one pattern keeps one coefficient per filter in a basis holding that pattern
(spatial magnitude pruning at that sparsity cannot); the basis learns such a pattern when only
one coefficient per filter is left; the method end to end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import small_data, small_net, sparse_context
from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.masks.basis import attach_basis, basis_of, coefficients, dct_basis
from prunekit.methods.base import Context
from prunekit.methods.interspace import coefficient_keep


def _pattern_basis() -> tuple[torch.Tensor, torch.Tensor]:
    """The pattern p = [1, 2, 0, 0, 0, 0, 0, 0, 2] / 3 (unit length) and an orthonormal 9x9
    basis whose first column is p: the Householder reflection taking e1 to p."""
    p = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]) / 3.0
    v = torch.eye(9)[0] - p
    return p, torch.eye(9) - 2 * torch.outer(v, v) / (v @ v)


def test_coefficients_in_an_adapted_basis_keep_one_entry_per_filter() -> None:
    p, basis = _pattern_basis()
    conv = nn.Conv2d(1, 2, 3, bias=False)
    with torch.no_grad():  # filters 3p and -1.5p
        conv.weight.copy_(torch.stack([3 * p, -1.5 * p]).reshape(2, 1, 3, 3))
    x = torch.randn(4, 1, 5, 5)
    dense = conv(x)
    param = attach_basis(conv, basis, learn_basis=True)
    c = conv.parametrizations["weight"].original.detach().reshape(2, 9)
    # lambda = B^-1 F: [3, 0, ..., 0] and [-1.5, 0, ..., 0]
    assert torch.allclose(c[:, 0], torch.tensor([3.0, -1.5]), atol=1e-5)
    assert torch.allclose(c[:, 1:], torch.zeros(2, 8), atol=1e-5)
    keep = coefficient_keep({"w": coefficients(conv).abs()}, 8 / 9, "layer")["w"]
    param.set_mask(keep)
    assert int(keep.sum()) == 2
    assert torch.allclose(conv(x), dense, atol=1e-5)  # exact at 8/9 coefficient sparsity
    assert masks.report(conv)["overall"]["sparsity"] == pytest.approx(8 / 9)
    # spatial magnitude pruning at 8/9 keeps one weight of each filter: not the filters
    w = torch.stack([3 * p, -1.5 * p])
    spatial = torch.zeros_like(w)
    top = w.abs().argmax(dim=1)
    spatial[torch.arange(2), top] = w[torch.arange(2), top]
    assert not torch.allclose(spatial, w, atol=1e-3)


def test_the_basis_is_learned_and_pruned_coefficients_get_no_gradient() -> None:
    torch.manual_seed(0)
    pattern = torch.randn(9)
    # four filters, all multiples of one pattern that is no DCT basis kernel
    target = (torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None] * pattern).reshape(4, 1, 3, 3)

    def fit(learn: bool) -> float:
        conv = nn.Conv2d(1, 4, 3, bias=False)
        param = attach_basis(conv, learn_basis=learn)  # starts from the DCT basis
        keep = torch.zeros(4, 1, 3, 3, dtype=torch.bool)
        keep[..., 0, 0] = True  # one coefficient per filter
        param.set_mask(keep)
        opt = torch.optim.Adam(conv.parameters(), lr=0.05)
        for _ in range(300):
            opt.zero_grad()
            ((conv.weight - target) ** 2).sum().backward()
            stored = conv.parametrizations["weight"].original
            assert torch.all(stored.grad[~keep] == 0)
            opt.step()
        with torch.no_grad():
            return float(((conv.weight - target) ** 2).sum() / (target**2).sum())

    fixed, learned = fit(False), fit(True)
    assert learned < 0.01 < fixed


def _ctx(model: nn.Module, tmp_path, **options) -> Context:  # type: ignore[no-untyped-def]
    return sparse_context(model, tmp_path, n=32, **{**{"epochs": 1, "frequency": 1}, **options})


def test_interspace_prunes_coefficients_and_trains_the_bases(tmp_path) -> None:
    model = small_net()
    method = methods.get("interspace")
    report = method.prune(_ctx(model, tmp_path / "a"))
    assert abs(report.sparsity - 0.6) < 0.01
    assert [h[1] for h in method.history] == sorted(h[1] for h in method.history)
    conv = model[3]
    assert not torch.allclose(basis_of(conv).basis.detach(), dct_basis((3, 3)))  # learned
    assert int((coefficients(conv) != 0).sum()) == pytest.approx(0.4 * conv.weight.numel(), abs=1)
    x = small_data(32).tensors[0][:4]
    model.eval()
    with torch.no_grad():
        before = model(x)
        masks.finalize(model)
        assert torch.allclose(model(x), before, atol=1e-5)
    again = small_net()
    methods.get("interspace").prune(_ctx(again, tmp_path / "a"))
    masks.finalize(again)
    again.eval()
    with torch.no_grad():
        assert torch.allclose(again(x), before, atol=1e-5)


def test_interspace_refuses_a_masked_model(tmp_path) -> None:
    model = small_net()
    masks.prune(model, 0.5)
    with pytest.raises(ConfigError, match="dense model"):
        methods.get("interspace").prune(_ctx(model, tmp_path))
