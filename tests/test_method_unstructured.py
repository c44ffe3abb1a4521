"""Unstructured methods: magnitude (Han et al.), DNS, GMP, SNIP, N:M and 1xN — each rule on a case
worked out by hand, and each method end to end on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.methods.base import Context
from prunekit.methods.dns import (
    attach_surgery,
    dense_weight,
    dns_thresholds,
    surgery_update,
    update_probability,
)
from prunekit.methods.magnitude import layer_std, quality_for, threshold_keep
from prunekit.methods.snip import sensitivity, weight_gradients
from prunekit.targets import Target


def _convnet(in_channels: int = 3) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _images(n: int = 32, channels: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, channels, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)
    )


def _ctx(model: nn.Module, data: TensorDataset, sparsity: float, **options) -> Context:
    x = data.tensors[0][:2]
    return Context(
        model=model,
        example_input=x,
        train_set=data,
        val_set=data,
        target={"target_sparsity": sparsity},
        batch_size=8,
        calib_batches=1,
        options={"progress": False, **options},
    )


def _end_to_end(method_id: str, sparsity: float, channels: int = 3, **options) -> None:
    model = _convnet(channels)
    data = _images(channels=channels)
    ctx = _ctx(model, data, sparsity, **options)
    report = methods.get(method_id).prune(ctx)
    assert report.sparsity == pytest.approx(sparsity, abs=0.01)
    assert masks.get_masks(model), "masks stay attached for the fine-tuning"
    measured = masks.report(model)["overall"]["sparsity"]
    assert measured == pytest.approx(report.sparsity)
    out = model(data.tensors[0][:4])
    assert out.shape == (4, 4) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- magnitude


def test_magnitude_threshold_is_quality_times_layer_std() -> None:
    # both layers hold weights of magnitude 1.5; A's std is 1.5, B's is sqrt(19.125) ~ 4.373
    a = torch.tensor([-1.5, 1.5, -1.5, 1.5])
    b = torch.tensor([-1.5, 1.5, -6.0, 6.0])
    stds = {"a": layer_std(a), "b": layer_std(b)}
    assert stds["a"] == pytest.approx(1.5)
    assert stds["b"] == pytest.approx(math.sqrt(19.125))
    keep = threshold_keep({"a": a, "b": b}, 0.8, stds)
    # A: threshold 1.2, all kept; B: threshold 3.50, the +-1.5 are pruned
    assert keep["a"].tolist() == [True, True, True, True]
    assert keep["b"].tolist() == [False, False, True, True]


def test_magnitude_one_quality_meets_the_round_target() -> None:
    a = torch.tensor([-3.0, -1.0, 1.0, 3.0])  # std sqrt(5)
    b = torch.tensor([-6.0, -1.0, 1.0, 6.0])  # std sqrt(18.5)
    weights = {"a": a, "b": b}
    stds = {"a": layer_std(a), "b": layer_std(b)}
    full = {n: torch.ones(4, dtype=torch.bool) for n in weights}
    q, keep = quality_for(weights, full, stds, 0.25)
    # normalised magnitudes: A 1/sqrt5, 3/sqrt5; B 1/sqrt18.5, 6/sqrt18.5; two go: B's +-1
    assert keep["a"].tolist() == [True, True, True, True]
    assert keep["b"].tolist() == [True, False, False, True]
    assert q == pytest.approx(1 / math.sqrt(5))
    # the threshold rule with that q gives the same masks
    rule = threshold_keep(weights, q, stds)
    assert all(torch.equal(rule[n], keep[n]) for n in weights)
    # next round: entries already pruned stay pruned and count towards the target
    q2, keep2 = quality_for(weights, keep, stds, 0.5)
    assert keep2["a"].tolist() == [True, False, False, True]
    assert keep2["b"].tolist() == [True, False, False, True]
    assert q2 == pytest.approx(3 / math.sqrt(5))  # A's +-1 went next


def test_magnitude_end_to_end() -> None:
    method = methods.get("magnitude")
    model = _convnet()
    data = _images()
    report = method.prune(_ctx(model, data, 0.6, rounds=2, retrain_epochs=1))
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    assert len(method.qualities) == 2 and method.qualities[0] < method.qualities[1]
    assert torch.isfinite(model(data.tensors[0][:2])).all()


def test_magnitude_refuses_a_structured_target() -> None:
    ctx = _ctx(_convnet(), _images(), 0.5)
    ctx.target = Target("flops", 0.5)
    with pytest.raises(ConfigError, match="target_sparsity"):
        methods.get("magnitude").prune(ctx)
    with pytest.raises(ConfigError, match="rounds"):
        methods.get("magnitude").prune(_ctx(_convnet(), _images(), 0.5, rounds=0))


# ----------------------------------------------------------------------------- DNS


def test_dns_update_prunes_below_a_splices_above_b_keeps_between() -> None:
    weight = torch.tensor([0.05, 0.5, 0.15, 0.15, 0.3])
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    new = surgery_update(weight, mask, 0.1, 0.2)
    # below a -> 0; above b -> 1 (spliced back); between a and b -> as before
    assert new.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]


def test_dns_thresholds_from_mean_and_std_of_abs_weights() -> None:
    # |w| = 1, 2, 3, 4: mu 2.5; half below a puts a between 2 and 3: a = 2.5 = 0.9 r,
    # r = 2.5 / 0.9 (c = (r - mu) / sigma = 0.248), b = 1.1 r = 3.056
    a, b, mu, sigma = dns_thresholds({"w": torch.tensor([-1.0, 2.0, -3.0, 4.0])}, 0.5, 0.1)["w"]
    assert mu == pytest.approx(2.5) and sigma == pytest.approx(math.sqrt(1.25))
    assert (a, b) == (pytest.approx(2.5), pytest.approx(1.1 * 2.5 / 0.9))


def test_dns_pruned_weights_learn_and_are_spliced_back() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.1, 2.0]]))
    surgery = attach_surgery(layer, 0.5, 1.0)
    surgery.update(dense_weight(layer))
    assert surgery.mask.tolist() == [[0.0, 1.0]]
    out = layer(torch.tensor([[3.0, 4.0]]))
    assert out.item() == pytest.approx(8.0)  # forward uses w * T
    (-out.sum()).backward()
    grad = dense_weight(layer).grad
    assert grad.tolist() == [[-3.0, -4.0]]  # the pruned weight gets its gradient too
    with torch.no_grad():
        dense_weight(layer).sub_(0.5 * grad)  # w0: 0.1 -> 1.6, above b
    surgery.update(dense_weight(layer))
    assert surgery.mask.tolist() == [[1.0, 1.0]]


def test_dns_update_probability_decays() -> None:
    assert update_probability(0, 1e-4, 1.0) == 1.0
    assert update_probability(10000, 1e-4, 1.0) == pytest.approx(0.5)
    assert update_probability(10000, 1e-4, 2.0) == pytest.approx(0.25)


def test_dns_end_to_end() -> None:
    _end_to_end("dns", 0.7, epochs=1, update_every=2)


# ----------------------------------------------------------------------------- GMP


def test_gmp_follows_the_cubic_schedule() -> None:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g))
    ctx = _ctx(model, data, 0.5, epochs=2, frequency=2, end=0.75)
    method = methods.get("gmp")
    report = method.prune(ctx)
    # 4 steps an epoch, 8 in all; pruning ends at step 6 = t0 + n dt with dt = 2, n = 3;
    # s_t = 0.5 (1 - (1 - t/6)^3): 0.5 * 19/27, 0.5 * 26/27, 0.5 -> 35, 48, 50 of 100 per layer
    assert [h[0] for h in method.history] == [2, 4, 6]
    assert [h[1] for h in method.history] == [
        pytest.approx(0.5 * 19 / 27),
        pytest.approx(0.5 * 26 / 27),
        0.5,
    ]
    assert [h[2] for h in method.history] == [pytest.approx(v) for v in (0.35, 0.48, 0.5)]
    assert report.sparsity == pytest.approx(0.5)
    assert all(v == pytest.approx(0.5) for v in report.layers.values())


def test_gmp_end_to_end() -> None:
    _end_to_end("gmp", 0.8, epochs=1, frequency=1)


def test_gmp_bad_scope() -> None:
    with pytest.raises(ConfigError, match="scope"):
        methods.get("gmp").prune(_ctx(_convnet(), _images(), 0.5, scope="lamp"))
    with pytest.raises(ConfigError, match="begin < end"):
        methods.get("gmp").prune(_ctx(_convnet(), _images(), 0.5, begin=0.5, end=0.5))


# ----------------------------------------------------------------------------- SNIP


def test_snip_scores_are_normalised_abs_grad_times_weight() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    batch = [(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))]
    # loss = sum of outputs: dL/dW[i, j] = x_j
    grads = weight_gradients(layer, {"weight": layer}, batch, lambda out, y: out.sum())
    assert grads["weight"].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    scores = sensitivity(grads, {"weight": layer.weight})
    expected = torch.tensor([[1 / 9, 4 / 9], [3 / 9, 1 / 9]], dtype=torch.float64)
    assert torch.allclose(scores["weight"], expected)
    assert layer.weight.grad is None


def test_snip_keeps_the_global_top_k() -> None:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
    data = TensorDataset(torch.tensor([[1.0, 2.0]]), torch.tensor([0]))
    ctx = _ctx(layer, data, 0.5, init="none")  # the hand-worked weights, as given
    methods.get("snip").prune(ctx)
    # cross-entropy gradients differ by row, worked out: dL/dW = (softmax(z) - onehot) x^T,
    # z = W x = (-3, 4), p = softmax(z); row 0 grad = (p0 - 1) x, row 1 = p1 x
    z = torch.tensor([-3.0, 4.0])
    p = torch.softmax(z, 0)
    g = torch.stack([(p[0] - 1) * torch.tensor([1.0, 2.0]), p[1] * torch.tensor([1.0, 2.0])])
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    s = (g * w).abs().reshape(-1)
    expected = torch.zeros(4, dtype=torch.bool)
    expected[s.argsort(descending=True)[:2]] = True
    assert masks.get_masks(layer)["weight"].data.reshape(-1).tolist() == expected.tolist()


def test_snip_end_to_end_with_reinit() -> None:
    _end_to_end("snip", 0.9)
    _end_to_end("snip", 0.5, init="architecture", calib_batches=2)


# ----------------------------------------------------------------------------- N:M


def test_nm_keeps_n_largest_of_every_m() -> None:
    layer = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -5.0, 3.0, 2.0, 0.1, -0.2, 4.0, -3.0]]))
    data = TensorDataset(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    report = methods.get("nm_sparsity").prune(_ctx(layer, data, 0.5))
    assert layer.weight.tolist() == [[0.0, -5.0, 3.0, 0.0, 0.0, 0.0, 4.0, -3.0]]
    assert report.sparsity == 0.5


def test_nm_target_must_match_and_odd_layers_are_skipped() -> None:
    with pytest.raises(ConfigError, match=r"target_sparsity=0\.5"):  # 2:4 set, 0.6 asked
        methods.get("nm_sparsity").prune(_ctx(_convnet(4), _images(channels=4), 0.6, n=2, m=4))
    method = methods.get("nm_sparsity")
    method.prune(_ctx(_convnet(3), _images(), 0.75, n=1, m=4))
    assert method.skipped == ["0.weight"]  # 3 input channels
    layer = nn.Linear(6, 2)
    data = TensorDataset(torch.randn(4, 6), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"divisible by m=4 \(input sizes: 6\)"):
        methods.get("nm_sparsity").prune(_ctx(layer, data, 0.75, n=1, m=4))


def test_nm_pattern_follows_the_target_when_unset() -> None:
    from prunekit.methods.nm_sparsity import pattern_for

    # the smallest M from 4 up with (1 - s) * M whole
    assert pattern_for(0.5, None, None) == (2, 4)
    assert pattern_for(0.75, None, None) == (1, 4)
    assert pattern_for(0.8, None, None) == (1, 5)
    assert pattern_for(0.9, None, None) == (1, 10)
    assert pattern_for(0.95, None, None) == (1, 20)
    assert pattern_for(0.7, None, None) == (3, 10)
    assert pattern_for(0.75, None, 8) == (2, 8) and pattern_for(0.75, 2, None) == (2, 8)
    assert pattern_for(0.5, 2, 4) == (2, 4)
    with pytest.raises(ConfigError, match=r"no N makes N:3 keep 0\.5"):
        pattern_for(0.5, None, 3)
    with pytest.raises(ConfigError, match="no N:M pattern with M <= 128"):
        pattern_for(0.123456, None, None)
    # the layers' input sizes choose among the patterns: 2:8 divides 8 and 16, 1:4 is smaller
    assert pattern_for(0.75, None, None, [3, 16, 32]) == (1, 4)
    assert pattern_for(0.7, None, None, [20, 40]) == (3, 10)  # 3:10 divides both
    with pytest.raises(ConfigError, match=r"divides a layer's input size \(16, 32\)"):
        pattern_for(0.8, None, None, [16, 32])  # M = 5, 10, 15 ... none a power of two
    # through the method: 1:5 at 80%, the largest of every five kept
    layer = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -5.0, 3.0, 2.0, 0.1, -0.2, 4.0, -3.0, 0.5, 0.3]]))
    data = TensorDataset(torch.randn(4, 10), torch.zeros(4, dtype=torch.long))
    method = methods.get("nm_sparsity")
    report = method.prune(_ctx(layer, data, 0.8))
    assert method.pattern == (1, 5) and report.sparsity == 0.8
    assert layer.weight.tolist() == [[0.0, -5.0, 0.0, 0.0, 0.0, 0.0, 4.0, 0.0, 0.0, 0.0]]


def test_nm_end_to_end() -> None:
    _end_to_end("nm_sparsity", 0.5, channels=4)


# ----------------------------------------------------------------------------- 1xN


def _one_by_n_layer() -> nn.Sequential:
    """A stem (kept dense by 1xN), the layer under test ``[1]`` and a 1x1 conv reading it (the
    model's outputs keep their order, so the last layer is never rearranged)."""
    layer = nn.Conv2d(2, 4, 1, bias=False)
    with torch.no_grad():
        # L1 per filter: 2, 4.5, 6, 0.3 -> order 2, 1, 0, 3 -> blocks {2, 1} and {0, 3}
        w = torch.tensor([[1.0, 1.0], [4.0, 0.5], [3.0, 3.0], [0.2, 0.1]])
        layer.weight.copy_(w.reshape(4, 2, 1, 1))
    return nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), layer, nn.Conv2d(4, 2, 1, bias=False))


def test_one_by_n_blocks_from_norm_order_smallest_first() -> None:
    data = TensorDataset(torch.randn(4, 2, 3, 3), torch.zeros(4, dtype=torch.long))
    model = _one_by_n_layer()
    # 20 weights, the stem's 4 dense: overall 0.2 is a quarter of the others, one group of 2
    methods.get("one_by_n").prune(_ctx(model, data, 0.2, block=2))
    # group L1s: block {2,1}: in0 7, in1 3.5; block {0,3}: in0 1.2, in1 1.1 -> (0,3) x in1 goes
    # (blocks by index, {0,1} / {2,3}, would have pruned {0,1} x in1, 1.5 < 3.1)
    assert model[1].weight.reshape(4, 2).tolist() == [
        [1.0, 0.0],
        [4.0, 0.5],
        [3.0, 3.0],
        [pytest.approx(0.2), 0.0],
    ]
    found = masks.get_masks(model)
    assert set(found) == {"1.weight", "2.weight"}  # the stem stays dense
    assert found["1.weight"].meta["permutation"].tolist() == [2, 1, 0, 3]
    model = _one_by_n_layer()
    methods.get("one_by_n").prune(_ctx(model, data, 0.4, block=2))
    keep = masks.get_masks(model)["1.weight"].data.reshape(4, 2)
    assert keep.tolist() == [[False, False], [True, True], [True, True], [False, False]]


def test_one_by_n_refuses_a_model_of_stem_only() -> None:
    data = TensorDataset(torch.randn(4, 2, 3, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match="keeps dense"):
        methods.get("one_by_n").prune(_ctx(nn.Conv2d(2, 4, 1), data, 0.25))


def test_one_by_n_blocks_share_one_pattern() -> None:
    model = _convnet()
    data = _images()
    methods.get("one_by_n").prune(_ctx(model, data, 0.5, block=4))
    for mask in masks.get_masks(model).values():
        perm = mask.meta["permutation"]
        rows = mask.data.reshape(mask.shape[0], mask.shape[1], -1)[perm]
        for start in range(0, rows.shape[0], 4):
            block = rows[start : start + 4]
            assert (block == block[:1]).all()


def test_one_by_n_end_to_end() -> None:
    _end_to_end("one_by_n", 0.5, block=4)
