"""ThiNet and LASSO channel pruning: the greedy choice and the rescale on hand-made
contributions, the LASSO support on a synthetic target, and the end-to-end path (target met,
pruned model equal to the zeroed and refitted one, refitting reduces the output error)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.lasso_channel import lasso_select
from prunekit.methods.reconstruct import least_squares_weights
from prunekit.methods.thinet import thinet_greedy, thinet_scales
from prunekit.prune import remove_selected

# Contributions x̂ of four input channels on two samples (rows: samples).
# c0 tiny; c1 and c2 cancel each other exactly; c3 medium.
CONTRIB = torch.tensor([[0.2, 2.0, -2.0, 0.5], [0.0, 0.0, 0.0, 1.9]])


def test_thinet_greedy_removes_the_tiny_then_the_cancelling_channels() -> None:
    # step 1: costs sum_i x̂_ic^2 = 0.04, 4, 4, 0.25 + 3.61 = 3.86       -> c0
    # step 2: running sum [0.2, 0]: 4.84, 3.24, 0.49 + 3.61 = 4.10      -> c2 (opposes it)
    # step 3: running sum [-1.8, 0]: c1 gives [0.2, 0] -> 0.04; c3 6.85  -> c1 (cancels c2)
    assert thinet_greedy(CONTRIB, 1) == [0]
    assert thinet_greedy(CONTRIB, 3) == [0, 2, 1]
    # a magnitude rule (smallest sum of squared contributions) removes c0, c3, c1 instead
    magnitude = [0.04, 4.0, 4.0, 3.86]
    by_magnitude = sorted(range(4), key=lambda c: (magnitude[c], c))[:3]
    assert by_magnitude == [0, 3, 1]
    # the greedy set changes the outputs by 0.04; the magnitude set by 2.7^2 + 1.9^2
    assert torch.isclose(CONTRIB[:, [0, 2, 1]].sum(1).pow(2).sum(), torch.tensor(0.04))
    assert torch.isclose(CONTRIB[:, by_magnitude].sum(1).pow(2).sum(), torch.tensor(10.9))


def test_thinet_scales_solve_the_least_squares_in_closed_form() -> None:
    kept = torch.tensor([[1.0], [2.0], [3.0]])
    assert torch.allclose(thinet_scales(kept, 2 * kept[:, 0]), torch.tensor([2.0]).double())
    two = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = 2 * two[:, 0] + 3 * two[:, 1]  # exactly 2x the first, 3x the second
    assert torch.allclose(thinet_scales(two, target), torch.tensor([2.0, 3.0]).double())
    # not exact: one channel, w = <x̂, ŷ> / <x̂, x̂>
    assert torch.isclose(
        thinet_scales(torch.tensor([[1.0], [1.0]]), torch.tensor([1.0, 3.0]))[0],
        torch.tensor(2.0).double(),
    )


class TwoLinear(nn.Module):
    """Linear(2 -> 4) then Linear(4 -> 1). Image e1 gives the producer output
    [0.2, 2, 2, 0.5], image e2 gives [0, 0, 0, 1.9]; the consumer's weight [1, 1, -1, 1] turns
    them into the contributions ``CONTRIB``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 4, bias=False)
        self.b = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[0.2, 0.0], [2.0, 0.0], [2.0, 0.0], [0.5, 1.9]]))
            self.b.weight.copy_(torch.tensor([[1.0, 1.0, -1.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_thinet_method_on_known_contributions() -> None:
    model = TwoLinear()
    images = torch.eye(2)
    data = TensorDataset(images, torch.zeros(2, dtype=torch.long))
    # 12 params; each channel of the chain costs 2 + 1: removing 3 of 4 removes 9/12
    ctx = methods.Context(
        model, images[:1], data, data, {"target_params": 0.75}, calib_batches=1, batch_size=2
    )
    report = methods.get("thinet").prune(ctx)
    assert list(report.removed.values()) == [[0, 1, 2]]
    assert model.a.weight.tolist() == [[pytest.approx(0.5), pytest.approx(1.9)]]
    # ŷ = [0.2 + 2 - 2 + 0.5, 1.9] = [0.7, 1.9]; x̂_3 = [0.5, 1.9]: w = 3.96 / 3.86
    assert model.b.weight.item() == pytest.approx(3.96 / 3.86)


def test_lasso_recovers_the_channels_that_generate_the_target() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 8, 3, generator=g)  # 300 samples, 8 channels, 3 kernel positions
    weight = torch.randn(5, 8, 3, generator=g)
    support = [1, 4, 6]
    y = sum(x[:, c] @ weight[:, c].T for c in support)  # exactly channels 1, 4, 6
    assert lasso_select(x, weight, y, 3) == support
    refit = least_squares_weights(x[:, support], y)
    assert refit.shape == (5, 3, 3)
    recon = torch.einsum("nck,ock->no", x[:, support].double(), refit)
    assert torch.allclose(recon, y.double(), atol=1e-5)
    assert torch.allclose(refit, weight[:, support].double(), atol=1e-5)


def test_lasso_keeps_everything_when_asked_to_and_rejects_bad_counts() -> None:
    x, w = torch.randn(20, 4, 1), torch.randn(2, 4, 1)
    assert lasso_select(x, w, torch.randn(20, 2), 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="keep"):
        lasso_select(x, w, torch.randn(20, 2), 0)


def _vgg() -> nn.Sequential:
    """conv-bn-relu x3 -> max pool -> linear, with redundancy a refit can use: the second conv's
    filters (and BatchNorm) come in identical pairs, and the third conv reads the odd channel of
    each pair with half the weights of the even one. Removing an odd channel is then undone
    exactly by scaling its partner's weights by 1.5. The third conv is protected: the tests
    follow the two conv-to-conv chains (its outputs, read through the flatten, would be a third
    chain)."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1, bias=False),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 4),
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        conv, bn = model[3], model[4]
        for p in (conv.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var):
            p[1::2] = p[0::2]
        model[6].weight[:, 1::2] = 0.5 * model[6].weight[:, 0::2]
    model.protected_layers = ("6",)  # type: ignore[assignment]
    return model


def _images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.zeros(n, dtype=torch.long))


def _ctx(model: nn.Module, **options: object) -> methods.Context:
    return methods.Context(
        model,
        torch.randn(1, 3, 8, 8),
        _images(128, 1),
        _images(64, 2),
        {"target_flops": 0.4},
        batch_size=32,
        options=options,
    )


def _last_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The output of the third conv: the consumer of the last chain (the third conv's own
    outputs are protected, so it keeps all of them)."""
    seen = []
    handle = model[6].register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("method_id", ["thinet", "lasso_channel"])
def test_method_meets_the_flops_target_and_refitting_reduces_the_error(method_id: str) -> None:
    model = _vgg()
    original = copy.deepcopy(model).eval()
    x = torch.randn(1, 3, 8, 8)
    dense = measure.count_flops(model, x).flops
    model.train()
    report = methods.get(method_id).prune(_ctx(model))
    assert model.training  # the mode is restored
    model.eval()
    assert abs(report.flops_reduction - 0.4) <= 0.02
    assert measure.count_flops(model, x).flops == report.flops_after
    assert report.flops_before == dense
    assert set(report.removed) == {"0", "3"}  # the chains; the protected group is kept whole
    assert model[0].out_channels < 16 and model[3].out_channels < 24
    assert model[6].out_channels == 32 and model(x).shape == (1, 4)
    # the last pruned layer, refitted vs. its original weights on the kept channels, on
    # held-out images: both against the original model's output of that layer
    held_out = _images(64, 2).tensors[0]
    reference = _last_output(original, held_out)
    refitted = float((_last_output(model, held_out) - reference).pow(2).mean())
    kept = [c for c in range(24) if c not in report.removed["3"]]
    with torch.no_grad():
        model[6].weight.copy_(original[6].weight[:, kept])
    plain = float((_last_output(model, held_out) - reference).pow(2).mean())
    assert refitted < 0.9 * plain


def test_rescale_off_keeps_the_consumer_weights() -> None:
    model = _vgg()
    original = copy.deepcopy(model)
    report = methods.get("thinet").prune(_ctx(model, rescale=False))
    kept = [c for c in range(24) if c not in report.removed["3"]]
    assert torch.equal(model[6].weight, original[6].weight[:, kept])


def test_thinet_scale_undoes_the_removal_of_a_duplicate() -> None:
    # in _vgg an odd channel of the second conv is 0.5x its even partner for the third conv:
    # when only the odd one goes, ThiNet's least-squares scale of the partner is about 1.5
    model = _vgg()
    original = copy.deepcopy(model)
    report = methods.get("thinet").prune(_ctx(model))
    removed = set(report.removed["3"])
    kept = [c for c in range(24) if c not in removed]
    lone = [i for i, c in enumerate(kept) if c % 2 == 0 and c + 1 in removed]
    assert lone
    scale = model[6].weight[:, lone] / original[6].weight[:, [kept[i] for i in lone]]
    assert torch.allclose(scale, scale[:1].expand_as(scale))  # one scale per input channel
    assert torch.allclose(scale, torch.full_like(scale, 1.5), atol=0.2)


@pytest.mark.parametrize("method_id", ["thinet", "lasso_channel"])
def test_pruned_model_computes_the_zeroed_and_refitted_model(method_id: str) -> None:
    model = _vgg().double().eval()
    ctx = _ctx(model)
    ctx.example_input = ctx.example_input.double()
    ctx.train_set = TensorDataset(_images(128, 1).tensors[0].double(), torch.zeros(128))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = copy.deepcopy(model)
    graph = build(model, ctx.example_input)
    dense = graph.plan([])
    method = methods.get(method_id)
    picks = method.select_and_refit(ctx, graph)  # type: ignore[attr-defined]
    assert set(picks) == {"0", "3"}
    refitted = model[3].weight.detach().clone()
    assert not torch.equal(refitted, before["3.weight"])  # refitted
    x = _images(16, 7).tensors[0].double()
    with torch.no_grad():
        zeroed = model(x)
        remove_selected(graph, picks, dense)
        assert torch.allclose(model(x), zeroed, atol=1e-10)
    # the same seed gives the same channels and weights
    ctx2 = _ctx(again)
    ctx2.example_input, ctx2.train_set = ctx.example_input, ctx.train_set
    graph2 = build(again, ctx2.example_input)
    assert method.select_and_refit(ctx2, graph2) == picks  # type: ignore[attr-defined]
    assert torch.equal(again[3].weight, refitted)


def test_bad_options_and_models_are_refused() -> None:
    model = _vgg()
    with pytest.raises(ConfigError, match="samples_per_image"):
        methods.get("thinet").prune(_ctx(model, samples_per_image=0))
    no_chain = nn.Sequential(nn.Conv2d(3, 4, 1))
    with pytest.raises(ConfigError, match="chain"):
        methods.get("lasso_channel").prune(_ctx(no_chain))
