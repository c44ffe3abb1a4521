"""HRel: the matrix-based mutual information worked out by hand on four images of two classes
(a small map that separates the classes carries 1 bit, a large one that does not carries 0), the
criterion and the method removing the large, label-blind channel a magnitude rule keeps, and the
target met within 1%."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import methods
from prunekit.criteria.hrel import (
    HRel,
    label_kernel,
    matrix_entropy,
    mutual_information,
    relevance,
)
from prunekit.graph import build
from target_check import prune_net

LABELS = torch.tensor([0, 0, 1, 1])


def test_entropies_by_hand() -> None:
    # K / tr K = I / 4: four eigenvalues 1/4 -> 2 bits; two equal 2x2 blocks of ones -> 1 bit
    assert float(matrix_entropy(torch.eye(4, dtype=torch.float64))) == pytest.approx(2.0)
    k_y = label_kernel(LABELS)
    assert float(k_y[0, 2]) == pytest.approx(math.exp(-200))
    assert float(matrix_entropy(k_y)) == pytest.approx(1.0)


def test_mutual_information_of_a_class_map_and_a_blind_map() -> None:
    sigma = 0.01  # narrow: maps 0.1 apart are already "different" (exp(-100))
    k_y = label_kernel(LABELS)
    small_by_class = torch.tensor([[0.1], [0.1], [0.2], [0.2]], dtype=torch.float64)
    large_by_parity = torch.tensor([[5.0], [6.0], [5.0], [6.0]], dtype=torch.float64)
    k_a = torch.exp(-(torch.cdist(small_by_class, small_by_class) ** 2) / sigma**2)
    k_b = torch.exp(-(torch.cdist(large_by_parity, large_by_parity) ** 2) / sigma**2)
    # A: S(K_A) = 1, S(K_Y) = 1, K_A ∘ K_Y = K_A -> 1 + 1 - 1 = 1 bit
    assert float(mutual_information(k_a, k_y)) == pytest.approx(1.0, abs=1e-9)
    # B: S(K_B) = 1 (blocks by parity), K_B ∘ K_Y = I -> 2 bits: 1 + 1 - 2 = 0
    assert float(mutual_information(k_b, k_y)) == pytest.approx(0.0, abs=1e-9)


def test_relevance_ranks_the_class_map_above_the_larger_blind_one() -> None:
    maps = torch.stack(
        [torch.tensor([0.0, 0.0, 1.0, 1.0]), torch.tensor([5.0, 8.0, 5.0, 8.0])], dim=1
    )[:, :, None, None]  # N x U x 1 x 1
    rel = relevance(maps, LABELS)
    # the blind map shares no information with the labels; the class map some (the layer's
    # kernel width, set mostly by the larger map, blurs it); a magnitude rule ranks them the
    # other way
    assert abs(float(rel[1])) < 1e-9 < float(rel[0])


class ClassAndNoise(nn.Module):
    """a (2 -> 2, 1x1, diag(1, 3)) -relu- b (2 -> 2): channel 0 carries the label, channel 1
    (the larger filter and map) the parity of the sample index."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.diag(torch.tensor([1.0, 3.0]))[:, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).mean((2, 3))


def _data() -> TensorDataset:
    y = (torch.arange(16) // 2) % 2  # 0 0 1 1 0 0 1 1 ...
    parity = torch.arange(16) % 2
    x = torch.stack([y.float(), 5.0 + 3.0 * parity.float()], dim=1)[:, :, None, None]
    return TensorDataset(x.expand(-1, -1, 2, 2).contiguous(), y)


def test_criterion_and_method_remove_the_blind_channel() -> None:
    data = _data()
    model = ClassAndNoise()
    graph = build(model, data.tensors[0][:1])
    scores = HRel([(data.tensors[0][:8], data.tensors[1][:8])])(graph.groups[0])
    assert scores[0] > scores[1]
    ctx = methods.Context(
        model,
        data.tensors[0][:1],
        data,
        data,
        {"target_flops": 0.5},  # one of two channels
        calib_batches=2,
        batch_size=8,
        options={"progress": False},
    )
    report = methods.get("hrel").prune(ctx)
    assert report.removed == {"a": [1]}


def test_labels_are_required() -> None:
    from prunekit.errors import DataError

    model = ClassAndNoise()
    graph = build(model, torch.randn(1, 2, 2, 2))
    with pytest.raises(DataError, match="labels"):
        HRel([torch.randn(4, 2, 2, 2)])(graph.groups[0])


@pytest.mark.parametrize(
    ("net", "target"),
    [
        ("depthwise", 0.3),
        pytest.param("resnet", 0.3, marks=pytest.mark.slow),
        pytest.param("resnet", 0.5, marks=pytest.mark.slow),
        pytest.param("depthwise", 0.5, marks=pytest.mark.slow),
    ],
)
def test_target_met_within_one_percent(net: str, target: float) -> None:
    report, measured = prune_net("hrel", net, target)
    assert abs(measured - target) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9


def test_rounds_retrain_between_and_meet_the_target(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prunekit import measure
    from test_every_method import NETS

    build_net, shape, classes = NETS["resnet"]
    torch.manual_seed(0)
    model = build_net()
    data = TensorDataset(torch.randn(32, *shape), torch.randint(0, classes, (32,)))
    example = data.tensors[0][:2]
    ctx = methods.Context(
        model, example, data, data, {"target_flops": 0.5}, calib_batches=2, batch_size=16,
        options={"progress": False, "rounds": 3, "epochs": 1}, work_dir=tmp_path,
    )  # fmt: skip
    report = methods.get("hrel").prune(ctx)
    # two retraining phases, none after the last round (the runner fine-tunes)
    assert sorted(p.name for p in tmp_path.glob("hrel_round*.pt")) == [
        "hrel_round1.pt",
        "hrel_round2.pt",
    ]
    measured = (
        1
        - measure.count_flops(model, example).flops
        / measure.count_flops(build_net(), example).flops
    )
    assert abs(measured - 0.5) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9
    # indices refer to the original groups
    assert all(g.after == g.before - len(report.removed.get(g.name, [])) for g in report.groups)
