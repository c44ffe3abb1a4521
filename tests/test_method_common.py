"""Shared method pieces: plain chains of the channel graph, and share-proportional widths."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit import models
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.common import chains, share_importance
from prunekit.prune import select_channels


def test_resnet_chains_are_the_inner_convs_of_each_block() -> None:
    model = models.create("resnet20", num_classes=10).eval()
    graph = build(model, torch.randn(1, 3, 32, 32))
    found = {(c.producer.name, c.consumer.name) for c in chains(graph)}
    expected = {
        (f"layer{s}.{b}.conv1", f"layer{s}.{b}.conv2") for s in (1, 2, 3) for b in (0, 1, 2)
    }
    assert found == expected  # the residual streams are coupled, not chains


def test_chain_indices_map_units_to_positions() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 6, 1)
    ).eval()
    graph = build(model, torch.randn(1, 3, 8, 8))
    (first, second) = chains(graph)
    assert (first.producer.name, first.consumer.name) == ("0", "3")
    assert first.producer_index.tolist() == [0, 1, 2, 3]
    assert first.consumer_index.tolist() == [0, 1, 2, 3]
    assert (second.producer.name, second.consumer.name) == ("3", "4")


def test_a_depthwise_conv_passes_the_chain_through() -> None:
    """expand -> depthwise -> project: the depthwise conv carries the channels on both sides,
    so the chain runs from the expand conv to the project conv."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    graph = build(model.eval(), torch.randn(1, 3, 8, 8))
    assert [(c.producer.name, c.consumer.name) for c in chains(graph)] == [("0", "2")]


def test_share_importance_spreads_removal_by_share() -> None:
    # two groups of 8 channels each; shares 1 and 3: the second loses 3x the fraction
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 1)).eval()
    graph = build(model, torch.randn(1, 1, 4, 4))
    names = [g.name for g in graph.groups]
    importance = share_importance(
        lambda g: torch.arange(g.size, 0, -1.0), {names[0]: 1.0, names[1]: 3.0}
    )
    scores = importance(graph.groups[0])
    # lowest within-score (the last unit) ranks first: score 1/8 / 1
    assert math.isclose(float(scores[-1]), 1 / 8) and math.isclose(float(scores[0]), 1.0)
    picks = select_channels(
        graph, importance=importance, scope="global", normalize=False, ratio=0.25
    )
    assert len(picks[names[0]]) == 1 and len(picks[names[1]]) == 3
    assert picks[names[0]] == [7] and picks[names[1]] == [5, 6, 7]
    zero_share = share_importance(lambda g: torch.zeros(g.size), {names[0]: 1.0})
    assert torch.isinf(zero_share(graph.groups[1])).all()


def test_a_capped_share_is_the_most_a_group_loses() -> None:
    # shares 0.25 and 0.5 of 8 channels each: at most 2 and 4 go, whatever the target
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 1)).eval()
    graph = build(model, torch.randn(1, 1, 4, 4))
    names = [g.name for g in graph.groups]
    shares = {names[0]: 0.25, names[1]: 0.5}
    capped = share_importance(lambda g: torch.arange(g.size, 0, -1.0), shares, cap=True)
    scores = capped(graph.groups[1])
    # ranks 1..4 (units 7..4) score rank / 8 / 0.5; ranks 5..8 are beyond the cap
    assert torch.equal(scores[4:], torch.tensor([0.75, 0.5, 0.25, 0.0]).add(0.25).double())
    assert torch.isinf(scores[:4]).all()
    picks = select_channels(graph, importance=capped, scope="global", normalize=False, ratio=0.375)
    assert len(picks[names[0]]) == 2 and len(picks[names[1]]) == 4  # both caps reached
    # the caps leave conv 0 six channels and conv 1 four: 6 + 6 * 4 + 4 of 80 MACs, 57.5% off
    with pytest.raises(ConfigError):
        select_channels(
            graph, importance=capped, scope="global", normalize=False, target_flops=0.66
        )
    uncapped = share_importance(lambda g: torch.arange(g.size, 0, -1.0), shares)
    picks = select_channels(
        graph, importance=uncapped, scope="global", normalize=False, target_flops=0.66
    )
    assert len(picks[names[1]]) > 4  # without the cap the second group passes its share


def test_infinite_scores_are_kept_in_layer_scope_too() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 1, 1)).eval()
    graph = build(model, torch.randn(1, 1, 4, 4))
    first = graph.groups[0].name
    keep_first = share_importance(lambda g: torch.zeros(g.size), {graph.groups[1].name: 1.0})
    picks = select_channels(graph, importance=keep_first, scope="layer", ratio=0.5)
    assert first not in picks and len(picks[graph.groups[1].name]) == 4
