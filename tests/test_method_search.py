"""L1-filter (sensitivity analysis, tolerance-proportional widths) and random channel pruning
(random shares rescaled to the budget, best candidate applied), plus their shared SGD loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from nets import ConvBNNet, random_data
from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.methods.l1_filter import sensitivity_curves, tolerance
from prunekit.methods.random_channel import RandomChannel, sample_shares, widths_for
from prunekit.methods.retraining import batch_stream, sgd_steps
from prunekit.train import evaluate

RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


class Redundant(nn.Module):
    """One-hot class inputs. ``a`` (4->8): channels 0-3 copy input c with weight 1 + 0.1c (L1
    1.0-1.3); channels 4-7 have tiny filters (L1 0.04) that ``b`` ignores: redundant. ``b``
    (8->4): channel c = (c+1) * a_c: every channel needed. ``fc`` (protected): identity plus the
    bias [-0.3, -0.2, -0.1, 0], so a sample whose evidence is zeroed is classed 3."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 8, 1, bias=False)
        self.b = nn.Conv2d(8, 4, 1, bias=False)
        self.fc = nn.Linear(4, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.zero_()
            self.b.weight.zero_()
            for c in range(4):
                self.a.weight[c, c] = 1 + 0.1 * c
                self.b.weight[c, c] = c + 1
            self.a.weight[4:] = 0.01
            self.fc.weight.copy_(torch.eye(4))
            self.fc.bias.copy_(torch.tensor([-0.3, -0.2, -0.1, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def _one_hot_data(per_class: int = 2) -> TensorDataset:
    y = torch.arange(4).repeat(per_class)
    x = F.one_hot(y, 4).float()[:, :, None, None].expand(-1, -1, 2, 2).contiguous()
    return TensorDataset(x, y)


def _acc(k_zeroed_classes: int) -> float:
    """Samples of the first k classes lose their evidence and are classed 3."""
    return 100.0 * (4 - k_zeroed_classes) / 4


def test_sensitivity_curves_are_exact_and_weights_restored() -> None:
    model = Redundant().eval()
    graph = build(model, torch.zeros(1, 4, 2, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base, curves = sensitivity_curves(model, graph.groups, _one_hot_data(), RATIOS, batch_size=3)
    assert base == 100.0
    # a (8 channels): floor(8r) zeroed, the 4 redundant (lowest L1) first
    zeroed_a = [0, 1, 2, 3, 4, 4, 5, 6, 7]
    assert curves["a"] == [(r, _acc(max(0, z - 4))) for r, z in zip(RATIOS, zeroed_a, strict=True)]
    assert [acc for _, acc in curves["a"]] == [100] * 6 + [75, 50, 25]
    # b (4 channels): floor(4r) zeroed, every one carries a class
    zeroed_b = [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert curves["b"] == [(r, _acc(z)) for r, z in zip(RATIOS, zeroed_b, strict=True)]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # restored exactly


def test_tolerance_is_the_longest_flat_prefix() -> None:
    curve = [(0.1, 99.0), (0.2, 98.5), (0.3, 97.0), (0.4, 98.9)]
    assert tolerance(curve, 100.0, 2.0) == 0.2  # stops at the first drop beyond 2 points
    assert tolerance(curve, 100.0, 0.5) == 0.0  # none within: a sensitive layer, skipped
    assert tolerance(curve, 100.0, 5.0) == 0.4


def test_l1_filter_gives_the_sensitive_layer_the_smaller_share() -> None:
    model = Redundant()
    original = copy.deepcopy(model)
    data = _one_hot_data()
    # dense FLOPs (batch 1, 2x2): a 2*4*8*4 = 256, b 2*8*4*4 = 256, fc 2*4*4 = 32: 544.
    # One channel of a saves 2*4*4 (a) + 2*4*4 (b's input) = 64, so 4 channels = 256/544.
    ctx = Context(
        model,
        torch.zeros(1, 4, 2, 2),
        data,
        data,
        {"target_flops": 256 / 544},
        batch_size=3,
        options={"max_drop": 2.0, "progress": False},
    )
    method = methods.get("l1_filter")
    report = method.prune(ctx)
    assert method.tolerances == {"a": 0.6, "b": 0.2}  # b is sensitive
    # shares 0.6 vs 0.2: a's 4th unit ranks 4/8/0.6 = 0.83 < b's first 1/4/0.2 = 1.25
    assert report.removed == {"a": [4, 5, 6, 7]}  # the redundant, lowest-L1 filters
    assert report.flops_before == 544 and report.flops_after == 288
    assert model.a.out_channels == 4 and model.b.out_channels == 4
    assert torch.equal(model.a.weight, original.a.weight[:4])  # no change but removal
    assert evaluate(model, data)["top1"] == 100.0  # redundant channels cost nothing


class TinyResidual(nn.Module):
    """stem conv-bn (8), one basic block (conv1 8->16 -bn-relu- conv2 16->8 -bn + identity),
    pool, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.relu(x + y).mean((2, 3)))


def _ctx(model: nn.Module, target: dict[str, float], **options) -> Context:  # type: ignore[no-untyped-def]
    data = random_data(48)
    return Context(
        model,
        torch.randn(1, 3, 8, 8),
        data,
        data,
        target,
        batch_size=16,
        options={"progress": False, **options},
    )


@pytest.mark.parametrize("target", [{"target_flops": 0.4}, {"target_params": 0.3}])
def test_l1_filter_end_to_end(target: dict[str, float]) -> None:
    model = ConvBNNet((16, 32, 64))
    model.train()
    report = methods.get("l1_filter").prune(_ctx(model, target))
    key = next(iter(target))
    achieved = report.flops_reduction if key == "target_flops" else report.params_reduction
    assert abs(achieved - target[key]) <= 0.02
    x = torch.randn(2, 3, 8, 8)
    assert measure.count_flops(model.eval(), x[:1]).flops == report.flops_after
    assert model(x).shape == (2, 4)


def test_l1_filter_prunes_only_inner_convs_of_residual_blocks() -> None:
    model = TinyResidual()
    method = methods.get("l1_filter")
    # FLOPs on 8x8, batch 1: stem 2*3*8*9*64 = 27648, conv1 = conv2 = 2*8*16*9*64 = 147456,
    # fc 2*8*4 = 64. One inner channel saves 2*8*9*64 (conv1) + the same (conv2) = 18432.
    dense = 27648 + 2 * 147456 + 64
    report = method.prune(_ctx(model, {"target_flops": 6 * 18432 / dense}))
    assert report.flops_before == dense and report.flops_after == dense - 6 * 18432
    assert set(method.sensitivity) == {"conv1"}  # the stream (stem, conv2) is no chain
    assert model.stem.out_channels == 8 and model.conv2.out_channels == 8
    assert model.conv1.out_channels == 10
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_l1_filter_bad_options() -> None:
    with pytest.raises(ConfigError, match="sensitivity_ratios"):
        methods.get("l1_filter").prune(
            _ctx(ConvBNNet((16, 32, 64)), {"target_flops": 0.3}, sensitivity_ratios="0.5,0.2")
        )
    with pytest.raises(ConfigError, match="val_batches"):
        methods.get("l1_filter").prune(
            _ctx(ConvBNNet((16, 32, 64)), {"target_flops": 0.3}, val_batches=-1)
        )


# --------------------------------------------------------------------------- random channel
def test_shares_map_to_widths_by_hand() -> None:
    # 1x1 convs 1 -> 8 -> 8 -> 1: FLOPs per pixel proportional to w0 + w0*w1 + w1 (dense 80).
    model = nn.Sequential(
        nn.Conv2d(1, 8, 1, bias=False), nn.Conv2d(8, 8, 1, bias=False), nn.Conv2d(8, 1, 1)
    ).eval()
    graph = build(model, torch.randn(1, 1, 2, 2))
    # shares 1.0 and 0.3: unit k of "0" ranks (k+1)/8, of "1" (k+1)/2.4, so the order is
    # 0,0,0,1,0,... and four steps give widths 5 and 7: 5 + 35 + 7 = 47 = 80 * (1 - 0.4125)
    picks, widths = widths_for(
        graph,
        {"0": 1.0, "1": 0.3},
        {"target_flops": 0.4125},
        within=lambda g: torch.arange(g.size, dtype=torch.float64),
    )
    assert widths == {"0": 5, "1": 7}  # the last conv's output is the model's: no group
    assert picks == {"0": [0, 1, 2], "1": [0]}  # the lowest within-group scores


def test_sample_shares_are_seeded_and_in_range() -> None:
    a = sample_shares(["x", "y", "z"], 5, seed=0)
    assert a == sample_shares(["x", "y", "z"], 5, seed=0)
    assert a != sample_shares(["x", "y", "z"], 5, seed=1)
    assert all(0 < v <= 1 for shares in a for v in shares.values())
    assert len({tuple(s.values()) for s in a}) == 5


def test_random_channel_candidates_meet_target_and_best_is_applied() -> None:
    model = ConvBNNet((16, 32, 64))
    original = copy.deepcopy(model)
    method = methods.get("random_channel")
    report = method.prune(_ctx(model, {"target_flops": 0.5}, candidates=4, candidate_steps=2))
    assert len(method.candidates) == 4
    for cand in method.candidates:
        assert abs(cand.flops_reduction - 0.5) <= 0.01
    scores = [c.score for c in method.candidates]
    assert scores[method.best] == max(scores)
    best = method.candidates[method.best]
    assert {g.name: g.after for g in report.groups} == best.widths
    assert report.removed == best.picks
    assert abs(report.flops_reduction - best.flops_reduction) < 1e-12
    assert model.c1.out_channels == best.widths["c1"]
    # the candidates were fine-tuned on copies: the model itself only lost channels
    kept = [i for i in range(16) if i not in best.picks.get("c1", [])]
    assert torch.equal(model.c1.weight, original.c1.weight[kept])
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


class _WidestC3(RandomChannel):
    """Scores a candidate by how many channels c3 keeps (a known preference)."""

    def _score(self, ctx, opts, cand):  # type: ignore[no-untyped-def]
        cand = super()._score(ctx, opts, cand)
        cand.score = float(cand.widths["c3"])
        return cand


def test_the_best_scoring_candidate_is_applied() -> None:
    model = ConvBNNet((16, 32, 64))
    method = _WidestC3()
    method.id = "random_channel"
    method.prune(_ctx(model, {"target_flops": 0.5}, candidates=5, candidate_steps=0))
    widest = max(c.widths["c3"] for c in method.candidates)
    assert len({c.widths["c3"] for c in method.candidates}) > 1  # the candidates differ
    assert model.c3.out_channels == widest
    assert method.best == next(
        i for i, c in enumerate(method.candidates) if c.widths["c3"] == widest
    )


def test_random_channel_seeds() -> None:
    def shares(seed: int) -> list[dict[str, float]]:
        m = methods.get("random_channel")
        ctx = _ctx(ConvBNNet((16, 32, 64)), {"target_flops": 0.4}, candidates=2, candidate_steps=0)
        ctx.seed = seed
        m.prune(ctx)
        return [c.shares for c in m.candidates]

    assert shares(0) == shares(0)
    assert shares(0) != shares(1)


def test_random_channel_bad_options() -> None:
    with pytest.raises(ConfigError, match="within"):
        methods.get("random_channel").prune(
            _ctx(ConvBNNet((16, 32, 64)), {"target_flops": 0.3}, within="x")
        )
    with pytest.raises(ConfigError, match="candidates"):
        methods.get("random_channel").prune(
            _ctx(ConvBNNet((16, 32, 64)), {"target_flops": 0.3}, candidates=0)
        )


# --------------------------------------------------------------------------- shared loops
def test_sgd_step_is_the_hand_computed_update_and_restores_mode() -> None:
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    model = nn.Sequential(lin).eval()
    x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    # logits (1, 0): softmax p = (e/(e+1), 1/(e+1)); dL/dW = (p - onehot(1))^T x
    e = torch.e
    p = torch.tensor([e / (e + 1), 1 / (e + 1)])
    grad = torch.outer(p - torch.tensor([0.0, 1.0]), x[0])
    expected = torch.eye(2) - 0.5 * grad  # first momentum step = plain gradient step
    sgd_steps(model, iter([(x, y)]), 1, 0.5)
    torch.testing.assert_close(lin.weight.detach(), expected)
    assert not model.training and lin.weight.grad is None


def test_batch_stream_starts_with_the_calibration_batches() -> None:
    data = random_data(20)
    ctx = Context(
        ConvBNNet((16, 32, 64)),
        torch.randn(1, 3, 8, 8),
        data,
        data,
        {"target_flops": 0.5},
        calib_batches=2,
        batch_size=8,
    )
    stream = batch_stream(data, 8, 0)
    for (xa, ya), (xb, yb) in zip(ctx.calibration(), [next(stream), next(stream)], strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert sum(len(next(stream)[1]) for _ in range(3)) == 4 + 8 + 8  # then a new shuffle
