"""HRank (Lin et al., CVPR 2020) on feature maps whose ranks are known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.criteria.activations import channel_dim, collect, readers
from prunekit.criteria.hrank import HRank, feature_map_ranks

SIDE = 5


def known_rank_images(n: int) -> torch.Tensor:
    """``(n, 3, SIDE, SIDE)``: channel 0 rank 1, channel 1 rank 2, channel 2 full rank, all
    non-negative (a ReLU leaves them as they are)."""
    x = torch.empty(n, 3, SIDE, SIDE)
    for i in range(n):
        u, v = torch.randn(2, SIDE, 2).abs()
        x[i, 0] = torch.outer(u[:, 0], v[:, 0])
        x[i, 1] = u @ v.T
        x[i, 2] = torch.randn(SIDE, SIDE).abs()
    return x


class Select(nn.Module):
    """1x1 conv a (3->3) whose weight is the identity: channel c outputs input channel c."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3) if bn else nn.Identity()
        self.b = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2 * SIDE * SIDE, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.eye(3).view(3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu(self.bn(self.a(x)))), 1))


def test_ranks_of_maps() -> None:
    x = known_rank_images(4)
    assert feature_map_ranks(x).tolist() == [[1, 2, SIDE]] * 4
    # Linear features: each is a 1x1 map, rank 1 unless zero
    assert feature_map_ranks(torch.tensor([[0.0, 2.0, -1.0]])).tolist() == [[0, 1, 1]]


def test_scores_are_the_known_ranks_and_lowest_rank_is_pruned() -> None:
    model = Select()
    batches = [known_rank_images(4) for _ in range(3)]
    graph = prunekit.graph.build(model, batches[0][:1])
    group = graph.group("a")
    assert group.out_layers == ["a"]
    scores = HRank(batches)(group)
    assert scores.dtype == torch.float64
    assert scores.tolist() == [1.0, 2.0, float(SIDE)]

    report = prunekit.prune_channels(
        model, batches[0][:1], ratio=1 / 3, importance=HRank([(x, None) for x in batches])
    )
    assert report.removed["a"] == [0]
    assert model.a.out_channels == 2


def test_conv_and_bn_of_a_group_are_ranked_once_at_the_map_read() -> None:
    """conv -> BN -> ReLU -> b: both layers carry the channel; the one map ranked is the one b
    reads (BN in eval mode with a zero shift keeps the rank)."""
    model = Select(bn=True)
    with torch.no_grad():
        model.bn.bias.zero_()
    x = known_rank_images(6)
    group = prunekit.graph.build(model, x[:1]).group("a")
    assert sorted(group.out_layers) == ["a", "bn"]
    assert HRank([x])(group).tolist() == [1.0, 2.0, float(SIDE)]


def test_max_batches_generator_and_one_pass_per_graph() -> None:
    model = Select()
    calls = []

    def stream():  # a generator: consumed once, kept as a list
        for i in range(10):
            calls.append(i)
            yield known_rank_images(2)

    crit = HRank(stream(), max_batches=2)
    assert len(calls) == 2
    graph = prunekit.graph.build(model, torch.randn(1, 3, SIDE, SIDE))
    passes = []
    gather = crit.gather
    crit.gather = lambda m, taps: passes.append(sorted(t.key for t in taps)) or gather(m, taps)  # type: ignore[method-assign]
    for g in graph.groups:
        assert crit(g).shape == (g.size,)
    assert passes == [["b:in", "fc:in"]]  # the maps b and fc read
    crit(graph.group("a"))
    assert len(passes) == 1
    graph.group("a").prune([0])  # widths changed: gathered again
    assert crit(graph.group("a")).tolist() == [2.0, float(SIDE)]
    assert len(passes) == 2


def test_mode_restored_and_hooks_removed() -> None:
    model = Select(bn=True)
    group = prunekit.graph.build(model, torch.randn(1, 3, SIDE, SIDE)).group("a")
    model.train()
    model.b.eval()  # a mixed state: each module's own mode comes back
    seen = []
    model.bn.register_forward_hook(lambda m, a, o: seen.append(m.training))
    own = dict(model.bn._forward_hooks)
    HRank([torch.randn(2, 3, SIDE, SIDE)])(group)
    assert seen == [False]  # statistics are taken in eval mode
    assert model.training and model.a.training and model.bn.training and not model.b.training
    assert dict(model.bn._forward_hooks) == own
    for m in model.modules():
        if m is not model.bn:
            assert not m._forward_hooks and not m._backward_hooks


def test_hooks_removed_when_the_pass_fails() -> None:
    model = Select()
    taps = readers(prunekit.graph.build(model, torch.randn(1, 3, SIDE, SIDE)))
    with pytest.raises(RuntimeError):
        collect(model, taps, [torch.randn(1, 7, SIDE, SIDE)], feature_map_ranks)
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_channel_dim() -> None:
    assert channel_dim(nn.Conv2d(3, 4, 1), torch.zeros(2, 4, 4, 4), 4) == 1
    assert channel_dim(nn.Linear(3, 4), torch.zeros(2, 4, 4), 4) == 2
    with pytest.raises(ValueError, match="no dimension of 5"):
        channel_dim(nn.Conv2d(3, 4, 1), torch.zeros(2, 4, 3, 3), 5)
