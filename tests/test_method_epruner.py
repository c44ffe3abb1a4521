"""EPruner: the preference worked out by hand, affinity propagation keeping one of two near-equal
large filters and both small distinct ones (a magnitude rule removes a small one), the method
removing that duplicate, and the target met within 1% by tuning the preference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import methods
from prunekit.methods.epruner import exemplars, preference, removal_order
from target_check import prune_net

# two large, nearly equal filters and two small, distinct ones
FILTERS = np.array([[3.0, 0, 0], [3.0, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])


def test_preference_is_beta_times_the_median_similarity() -> None:
    # squared distances from filter 0: 0, 0.01, 10, 10 -> median of the negatives -5.005;
    # from filter 3: 10, 10.01, 2, 0 -> median -(2 + 10) / 2
    pref = preference(FILTERS, 1.0)
    assert pref[0] == pytest.approx(-(0.01 + 10) / 2)
    assert pref[3] == pytest.approx(-(2 + 10) / 2)
    assert preference(FILTERS, 0.45) == pytest.approx(0.45 * pref)


def test_affinity_propagation_merges_the_duplicates_not_the_small_filters() -> None:
    centers, labels = exemplars(FILTERS, 0.3)
    assert len(centers) == 3  # the number of exemplars is the layer's width
    assert labels[0] == labels[1]  # the near-equal pair forms one cluster
    assert len({labels[1], labels[2], labels[3]}) == 3
    # an L1 rule would remove filter 2 or 3 (norm 1), never 0 or 1 (norm 3)
    removed = sorted(set(range(4)) - set(centers.tolist()))
    assert removed in ([0], [1])
    order = removal_order(FILTERS, centers, labels)
    assert int(torch.argmin(order)) == removed[0]
    # a larger beta (lower preferences) leaves fewer exemplars
    assert len(exemplars(FILTERS, 2.0)[0]) < 3


class Chain(nn.Module):
    """a (3 -> 4, 1x1) -relu- b (4 -> 2, 1x1); a's filters are FILTERS."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1, bias=False)
        self.b = nn.Conv2d(4, 2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.from_numpy(FILTERS).float()[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_method_removes_the_duplicate_filter() -> None:
    model = Chain()
    data = TensorDataset(torch.randn(8, 3, 4, 4), torch.zeros(8, dtype=torch.long))
    # one of a's 4 channels is 3 + 2 of the 12 + 8 MACs per position: 25% of the FLOPs
    ctx = methods.Context(
        model, data.tensors[0][:1], data, data, {"target_flops": 0.25}, options={"progress": False}
    )
    report = methods.get("epruner").prune(ctx)
    assert report.removed == {"a": [0]} or report.removed == {"a": [1]}
    assert model.a.out_channels == 3


@pytest.mark.parametrize(
    ("net", "target"),
    [
        ("resnet", 0.3),
        pytest.param("resnet", 0.5, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.3, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.5, marks=pytest.mark.slow),
    ],
)
def test_target_met_within_one_percent(net: str, target: float) -> None:
    report, measured = prune_net("epruner", net, target, tune_steps=12)
    assert abs(measured - target) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9
