"""Behaviour of prunekit.masks: patterns, scopes, exact zeros under training, persistence, interop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunekit import masks
from prunekit.errors import CheckpointError, ConfigError, MissingFileError, UnknownNameError
from prunekit.masks import granularity as G
from prunekit.masks import scope as S


class Tiny(nn.Module):
    """conv(3->8) -> conv(8->8) -> linear classifier (protected)."""

    protected_layers = ("classifier",)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.classifier = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.classifier(x.mean((2, 3)))


@pytest.fixture
def tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


OPTS = G.PatternOptions()


def test_element_keeps_exact_top_k() -> None:
    w = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 4.0]])
    keep, _ = G.element(w.abs(), 0.5, "w", OPTS)
    assert keep.tolist() == [[False, True, False], [True, False, True]]


def test_global_threshold_across_two_layers() -> None:
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 0.5, 20.0, 30.0])}
    plan = S.global_(scores, 3 / 7, None)
    assert plan["a"].tolist() == [False, False, True]  # pruned: 0.5, 1, 2
    assert plan["b"].tolist() == [True, False, True, True]


def test_lamp_scores_by_hand() -> None:
    # w^2 = 1, 4, 9, 16; denominators are the sums over weights at least as large: 30, 29, 25, 16
    got = S.lamp_scores(torch.tensor([1.0, -2.0, 3.0, 4.0]))
    assert torch.allclose(got, torch.tensor([1 / 30, 4 / 29, 9 / 25, 1.0], dtype=got.dtype))
    tied = S.lamp_scores(torch.tensor([2.0, 2.0]))  # ties share one denominator
    assert torch.allclose(tied, torch.tensor([0.5, 0.5], dtype=tied.dtype))


def test_lamp_scope_spares_small_layer() -> None:
    scores = {"big": torch.full((100,), 5.0) + torch.rand(100), "small": torch.full((4,), 0.01)}
    plan = S.lamp(scores, 0.5, None)
    assert plan["small"].any()  # global magnitude would wipe the small layer out
    assert int(plan["big"].sum() + plan["small"].sum()) == 52


def test_erk_densities_by_hand() -> None:
    # a: 10x10 linear -> raw 20/100 = 0.2; b: 10x10x3x3 conv -> raw 26/900; total 1000 weights.
    # 50% density: eps * (0.2 * 100 + 26/900 * 900) = 500 -> eps = 500 / 46; a would pass 1, so
    # a is dense and b gets the remaining 400 / 900.
    d = S.erk_densities({"a": torch.Size([10, 10]), "b": torch.Size([10, 10, 3, 3])}, 0.5)
    assert d["a"] == 1.0
    assert d["b"] == pytest.approx(400 / 900)
    d = S.erk_densities({"a": torch.Size([10, 10]), "b": torch.Size([10, 10, 3, 3])}, 0.9)
    eps = 100 / 46
    assert d["a"] == pytest.approx(eps * 0.2) and d["b"] == pytest.approx(eps * 26 / 900)


def test_kernel_masks_zero_whole_kernels(tiny: Tiny) -> None:
    m = masks.prune(tiny, 0.5, granularity="kernel")["conv2.weight"].data
    per_kernel = m.reshape(8, 8, 9)
    assert bool((per_kernel.all(-1) | ~per_kernel.any(-1)).all())
    assert int(per_kernel.all(-1).sum()) == 32


def test_channel_masks_zero_whole_filters(tiny: Tiny) -> None:
    m = masks.prune(tiny, 0.25, granularity="channel")["conv2.weight"].data
    rows = m.reshape(8, -1)
    assert bool((rows.all(1) | ~rows.any(1)).all()) and int(rows.all(1).sum()) == 6
    w = tiny.conv2.weight.detach().reshape(8, -1).norm(dim=1)
    assert w[~rows.all(1)].max() == 0


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4)])
def test_n_of_m_keeps_n_in_every_group(n: int, m: int) -> None:
    torch.manual_seed(1)
    layer = nn.Conv2d(8, 4, 3)
    mask = masks.prune(layer, 1 - n / m, granularity="n:m", n=n, m=m, include=["weight"])["weight"]
    groups = mask.data.movedim(1, -1).reshape(4, 3, 3, 8 // m, m)
    assert bool((groups.sum(-1) == n).all())
    w = layer.parametrizations.weight.original.detach().abs().movedim(1, -1).reshape(4, 3, 3, -1, m)
    kept = torch.where(groups, w, torch.inf).amin(-1)
    dropped = torch.where(groups, -torch.inf, w).amax(-1)
    assert bool((dropped <= kept).all()) or n == m


def test_n_of_m_errors() -> None:
    layer = nn.Linear(6, 2)
    with pytest.raises(ConfigError, match="divisible"):
        masks.prune(layer, 0.5, granularity="n:m", include=["weight"])
    with pytest.raises(ConfigError, match="sparsity"):
        masks.prune(nn.Linear(8, 2), 0.3, granularity="n:m", include=["weight"])
    with pytest.raises(ConfigError, match="n < m"):
        masks.prune(nn.Linear(8, 2), 0.0, granularity="n:m", n=4, m=4, include=["weight"])


def test_one_by_n_blocks_share_pattern_and_permutation_by_l1() -> None:
    torch.manual_seed(2)
    layer = nn.Conv2d(6, 8, 3)
    w0 = layer.weight.detach().clone()
    mask = masks.prune(layer, 0.5, granularity="1xn", block=4, include=["weight"])["weight"]
    perm = mask.meta["permutation"]
    l1 = w0.abs().sum((1, 2, 3))
    assert torch.equal(perm, torch.argsort(l1, descending=True, stable=True))
    kernels = mask.data.reshape(8, 6, 9)
    assert bool((kernels.all(-1) | ~kernels.any(-1)).all())  # whole kernels
    rows = kernels.all(-1)[perm]
    for b in range(2):
        block = rows[4 * b : 4 * b + 4]
        assert bool((block == block[0]).all())
    assert int(rows.sum()) == 24  # 12 block-kernels of 24 prune at 50%, 4 rows each


def test_protected_classifier_untouched(tiny: Tiny) -> None:
    before = tiny.classifier.weight.detach().clone()
    got = masks.prune(tiny, 0.9)
    assert set(got) == {"conv1.weight", "conv2.weight"}
    assert not parametrize.is_parametrized(tiny.classifier)
    assert torch.equal(tiny.classifier.weight, before)
    assert "classifier.weight" in masks.prune(tiny, 0.5, include=["classifier"])


def test_uniform_skips_first_conv(tiny: Tiny) -> None:
    got = masks.prune(tiny, 0.5, scope="uniform")
    assert set(got) == {"conv2.weight"}


def test_masks_combine_with_and(tiny: Tiny) -> None:
    first = masks.prune(tiny, 0.5)["conv2.weight"]
    later = masks.prune(tiny, 0.75)["conv2.weight"]
    assert bool((later.data <= first.data).all())
    assert later.sparsity == pytest.approx(0.75, abs=1 / 576)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-4),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_pruned_weights_stay_exactly_zero(tiny: Tiny, make_opt) -> None:
    got = masks.prune(tiny, 0.7)
    opt = make_opt(tiny.parameters())
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(tiny(x), y).backward()
        assert tiny.parametrizations.weight.original.grad if False else True
        opt.step()
    for name, mask in got.items():
        module = tiny.get_submodule(name.rsplit(".", 1)[0])
        assert bool((module.weight[~mask.data] == 0).all())
        assert bool((module.weight[mask.data] != 0).any())  # training did move kept weights
    masks.finalize(tiny)
    for name, mask in got.items():
        weight = tiny.get_submodule(name.rsplit(".", 1)[0]).weight
        assert bool((weight[~mask.data] == 0).all())


def test_gradients_of_pruned_weights_are_zero(tiny: Tiny) -> None:
    mask = masks.prune(tiny, 0.5)["conv1.weight"]
    F.cross_entropy(tiny(torch.randn(2, 3, 8, 8)), torch.tensor([0, 1])).backward()
    grad = tiny.conv1.parametrizations.weight.original.grad
    assert bool((grad[~mask.data] == 0).all())


def test_finalize_removes_parametrizations_and_keeps_outputs(tiny: Tiny) -> None:
    masks.prune(tiny, 0.8)
    x = torch.randn(2, 3, 8, 8)
    tiny.eval()
    before = tiny(x)
    masks.finalize(tiny)
    assert not any(parametrize.is_parametrized(m) for m in tiny.modules())
    assert "conv1.weight" in tiny.state_dict() and masks.get_masks(tiny) == {}
    assert torch.equal(tiny(x), before)
    assert masks.report(tiny)["layers"]["conv1.weight"]["sparsity"] == pytest.approx(0.8, abs=0.01)


def test_finalizing_a_copy_leaves_the_masked_original_working(tiny: Tiny) -> None:
    masks.prune(tiny, 0.5)
    x = torch.randn(2, 3, 8, 8)
    tiny.eval()
    before = tiny(x)
    clone = copy.deepcopy(tiny)
    masks.finalize(clone)
    assert torch.equal(clone(x), before)
    assert torch.equal(tiny(x), before)  # the original keeps its parametrized weight
    assert set(masks.get_masks(tiny)) == {"conv1.weight", "conv2.weight"}


def test_save_load_round_trip(tiny: Tiny, tmp_path) -> None:
    got = masks.prune(tiny, 0.5, granularity="1xn", block=4)
    path = tmp_path / "m.pt"
    masks.save_masks(got, path)
    loaded = masks.load_masks(path)
    assert loaded == got
    assert torch.equal(
        loaded["conv2.weight"].meta["permutation"], got["conv2.weight"].meta["permutation"]
    )
    other = Tiny()
    masks.apply_masks(other, loaded)
    assert masks.get_masks(other) == got


def test_load_errors(tmp_path) -> None:
    with pytest.raises(MissingFileError, match=r"nope\.pt"):
        masks.load_masks(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt"):
        masks.load_masks(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something"}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt"):
        masks.load_masks(other)


def test_apply_shape_mismatch_names_parameter(tiny: Tiny) -> None:
    with pytest.raises(ConfigError, match=r"conv2\.weight"):
        masks.apply_masks(tiny, {"conv2.weight": masks.Mask(torch.ones(3, 3))})
    assert not parametrize.is_parametrized(tiny.conv2)


def test_state_dict_round_trip(tiny: Tiny) -> None:
    masks.prune(tiny, 0.6)
    state = tiny.state_dict()
    other = Tiny()
    masks.apply_masks(
        other, {n: masks.Mask(torch.ones_like(m.data)) for n, m in masks.get_masks(tiny).items()}
    )
    other.load_state_dict(state)
    x = torch.randn(2, 3, 8, 8)
    tiny.eval(), other.eval()
    assert torch.equal(tiny(x), other(x))
    assert masks.get_masks(other) == masks.get_masks(tiny)


def test_torch_prune_round_trip(tiny: Tiny) -> None:
    torch_prune.l1_unstructured(tiny.conv1, "weight", amount=0.5)
    expected = tiny.conv1.weight_mask.bool().clone()
    x = torch.randn(2, 3, 8, 8)
    tiny.eval()
    before = tiny(x)
    got = masks.from_torch_prune(tiny)
    assert set(got) == {"conv1.weight"} and torch.equal(got["conv1.weight"].data, expected)
    assert not hasattr(tiny.conv1, "weight_mask") and not tiny.conv1._forward_pre_hooks
    assert torch.equal(tiny(x), before)
    masks.prune(tiny, 0.5, include=["conv2"])
    masked_out = tiny(x)
    exported = masks.to_torch_prune(tiny)
    assert set(exported) == {"conv1.weight", "conv2.weight"}
    assert torch.equal(tiny.conv2.weight_mask.bool(), exported["conv2.weight"].data)
    assert not any(parametrize.is_parametrized(m) for m in tiny.modules())
    assert torch.equal(tiny(x), masked_out) and torch.equal(tiny.conv1.weight_mask.bool(), expected)


def test_report_by_hand() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        model[1].weight.copy_(torch.tensor([[3.0, 4.0]]))
    r = masks.report(model)
    assert r["layers"]["0.weight"] == {"params": 4, "nonzero": 1, "sparsity": 0.75}
    assert r["overall"] == {"params": 6, "nonzero": 3, "sparsity": 0.5}


def test_custom_importance(tiny: Tiny) -> None:
    w = tiny.conv1.weight.detach().abs().clone()
    got = masks.prune(tiny, 0.5, include=["conv1"], importance=lambda p: -p.detach().abs())
    keep = got["conv1.weight"].data
    assert w[keep].max() <= w[~keep].min()  # the smallest weights were the most important
    with pytest.raises(ConfigError, match="importance"):
        masks.prune(tiny, 0.5, importance=lambda p: torch.zeros(3))


def test_mask_validation() -> None:
    m = masks.Mask(torch.tensor([1.0, 0.0, 1.0, 1.0]))
    assert m.data.dtype == torch.bool and m.sparsity == 0.25
    assert masks.Mask.from_state_dict(m.state_dict()) == m
    with pytest.raises(ConfigError):
        masks.Mask(torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, True, "0.5"])
def test_bad_sparsity(tiny: Tiny, bad) -> None:
    with pytest.raises(ConfigError):
        masks.prune(tiny, bad)


def test_unknown_names_and_unsupported_combinations(tiny: Tiny) -> None:
    with pytest.raises(UnknownNameError, match="element"):
        masks.prune(tiny, 0.5, granularity="blocky")
    with pytest.raises(UnknownNameError, match="lamp"):
        masks.prune(tiny, 0.5, scope="everywhere")
    with pytest.raises(ConfigError, match="element"):
        masks.prune(tiny, 0.5, granularity="kernel", scope="global")
    with pytest.raises(ConfigError, match="conv9"):
        masks.prune(tiny, 0.5, exclude=["conv9"])


def test_pruned_entries_are_positive_zero_after_finalize(tmp_path) -> None:
    """w * 0 is -0.0 for negative w; a finalized model must hold +0.0 so bit-level sparse
    storage sees the pruned entries as zero."""
    from prunekit.compress import save_sparse

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].weight[:, :8] = -2.0  # the largest magnitudes survive
    masks.prune(model, 0.875, include=["0"])
    masks.finalize(model)
    w = model[0].weight
    pruned = w == 0
    assert pruned.sum() == 64 * 56
    assert not torch.signbit(w[pruned]).any()
    # 512 kept fp32 values + 1-byte index deltas, plus the small dense tensors: a few KB; the
    # 3584 pruned entries stored as -0.0 would add over 14 KB
    report = save_sparse(model, tmp_path / "m.sparse", fmt="csr")
    assert report.bytes_written < 8000
