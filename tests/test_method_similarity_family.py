"""Filter-similarity methods (similarity, fpfs, msvfp) and feature-map information methods (fmi,
ezcrop): each defining computation on a case worked out by hand that a magnitude rule gets
wrong, and each method end to end through the structural core on a residual and a depthwise
net, meeting a FLOPs target within 1%."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from prunekit import criteria, methods
from prunekit.criteria.filter_similarity import (
    cosine_redundancy,
    distance_weighted_redundancy,
    greedy_removal_order,
)
from test_every_method import TinyMobileNet, TinyResNet


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions run an order of magnitude faster on one thread than on a loaded
    machine's default thread pool (MSVFP runs hundreds of trial forwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TwoD(nn.Module):
    """A 1x1 conv ``a`` over 2 input channels (each filter a point of the plane) -> ReLU -> a
    1x1 conv ``b`` -> flatten -> protected fc."""

    def __init__(self, filters: list[tuple[float, float]]) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, len(filters), 1, bias=False)
        self.b = nn.Conv2d(len(filters), 2, 1, bias=False)
        self.fc = nn.Linear(2 * 9, 3)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor(filters).view(len(filters), 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu(self.a(x))), 1))


def _group(model: nn.Module, name: str = "a"):
    return prunekit.graph.build(model, torch.randn(1, 2, 3, 3)).group(name)


def _l1_first(model: nn.Module) -> int:
    return int(torch.argmin(criteria.l1_norm(_group(model))))


# ----------------------------------------------------------------------------- similarity
# A = (4, 0), B = (2, 0.1), C = (0, 1), D = (1, 1). By hand:
#   cos(A,B) = 8 / (4 * sqrt(4.01)) = 0.99875, cos(A,C) = 0, cos(A,D) = 0.70711,
#   cos(B,C) = 0.1 / sqrt(4.01) = 0.04994, cos(B,D) = 2.1 / (sqrt(4.01) sqrt(2)) = 0.74153,
#   cos(C,D) = 0.70711. Norms: A 4, B 2.0025, C 1, D 1.41421.
# Step 1: the most similar pair is (A, B); B is the weaker -> B goes.
# Step 2 (A, C, D): the best similarity of each is 0.70711 (pairs A-D and C-D); the weakest of
#   them, C, goes. Step 3 (A, D): D is weaker -> D goes; A stays last.
# L1 norms are A 4, B 2.1, C 1, D 2: L1 removes C, then D.
SIM_FILTERS = [(4.0, 0.0), (2.0, 0.1), (0.0, 1.0), (1.0, 1.0)]


def test_cosine_greedy_order_by_hand() -> None:
    model = TwoD(SIM_FILTERS)
    scores = cosine_redundancy(_group(model))
    assert scores.tolist() == [4.0, 1.0, 2.0, 3.0]  # B, C, D, A
    assert _l1_first(model) == 2
    assert int(torch.argsort(criteria.l1_norm(_group(model)))[1]) == 3  # L1: C, then D

    report = prunekit.prune_channels(
        model, torch.randn(1, 2, 3, 3), ratio=0.5, importance=cosine_redundancy
    )
    assert report.removed["a"] == [1, 2]  # L1 would remove [2, 3]
    kept = model.a.weight.detach().view(2, 2)
    assert torch.equal(kept, torch.tensor([SIM_FILTERS[0], SIM_FILTERS[3]]))


def test_greedy_rechecks_after_each_removal() -> None:
    """Two exact copies and a third filter: the weaker copy goes, then the other copy is unique
    and the weaker of the last pair goes."""
    sim = torch.tensor([[1.0, 1.0, 0.2], [1.0, 1.0, 0.3], [0.2, 0.3, 1.0]])
    assert greedy_removal_order(sim, torch.tensor([2.0, 1.0, 3.0])) == [1, 0, 2]
    assert greedy_removal_order(sim, torch.tensor([1.0, 2.0, 0.5])) == [0, 2, 1]


def test_zero_filter_is_a_copy_of_every_filter() -> None:
    model = TwoD([(3.0, 0.0), (0.0, 0.0), (0.0, 2.0)])
    assert int(torch.argmin(cosine_redundancy(_group(model)))) == 1


# ----------------------------------------------------------------------------- fpfs
def _fpfs_by_hand(filters: list[tuple[float, float]]) -> list[float]:
    """sum_j (1 - exp(-d_ij / mean d) cos_ij), written out pair by pair."""
    n = len(filters)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    dist = {p: math.dist(filters[p[0]], filters[p[1]]) for p in pairs}
    mean = sum(dist.values()) / len(pairs)
    out = []
    for i in range(n):
        total = 0.0
        for j in range(n):
            if i == j:
                continue
            (a, b), (c, d) = filters[i], filters[j]
            cos = (a * c + b * d) / (math.hypot(a, b) * math.hypot(c, d))
            total += 1 - math.exp(-dist[i, j] / mean) * cos
        out.append(total)
    return out


def test_fpfs_scores_by_hand_and_against_magnitude() -> None:
    # A and C nearly coincide (large norm), B is small and alone:
    #   d(A,C) = 0.1, d(A,B) = 3.041, d(B,C) = 3.023, mean d = 2.055; cos(A,C) = 0.99944,
    #   cos(A,B) = 0, cos(B,C) = 0.03331: A scores 1 + (1 - 0.95248) = 1.048, C 1.040, B 1.992.
    #   The near-copies are the redundant ones; B, the smallest filter, stays
    filters = [(3.0, 0.0), (0.0, 0.5), (3.0, 0.1)]
    model = TwoD(filters)
    scores = distance_weighted_redundancy(_group(model))
    assert scores.tolist() == pytest.approx(_fpfs_by_hand(filters), rel=1e-6)
    assert int(torch.argmax(scores)) == 1
    assert int(torch.argmin(scores)) in (0, 2)
    assert _l1_first(model) == 1  # magnitude removes the unique small filter


def test_fpfs_distance_weight_separates_scaled_copies() -> None:
    """F and 10 F have cosine 1: the plain cosine rule calls them copies; FPFS weights their
    similarity by exp(-d / mean d) and removes the filter that is both aligned and close."""
    filters = [(1.0, 0.0), (10.0, 0.0), (1.0, 0.3)]
    model = TwoD(filters)
    fpfs = distance_weighted_redundancy(_group(model))
    assert fpfs.tolist() == pytest.approx(_fpfs_by_hand(filters), rel=1e-6)
    assert int(torch.argmin(fpfs)) == 0  # (1, 0) sits close to (1, 0.3) and aligned with 10 F
    assert int(torch.argmax(fpfs)) == 1  # 10 F is far from both
    cos_first = int(torch.argmin(cosine_redundancy(_group(model))))
    assert cos_first in (0, 1)  # the cosine rule sees (1, 0) and (10, 0) as the copies


# ----------------------------------------------------------------------------- end to end
NETS = {"resnet": TinyResNet, "depthwise": TinyMobileNet}


def _ctx(model: nn.Module, target: float, options: dict, tmp_path) -> methods.Context:
    g = torch.Generator().manual_seed(3)
    data = TensorDataset(
        torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 4, (48,), generator=g)
    )
    return methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": target},
        calib_batches=2,
        batch_size=16,
        options={"progress": False, **options},
        work_dir=tmp_path / "work",
    )


FAST = {"msvfp": {"epochs": 0}}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("method_id", ["similarity", "fpfs", "fmi", "ezcrop", "msvfp"])
def test_meets_flops_target_within_one_percent(method_id: str, net: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = NETS[net]()
    ctx = _ctx(model, 0.5, FAST.get(method_id, {}), tmp_path)
    dense = prunekit.measure.count_flops(NETS[net](), ctx.example_input).flops
    report = methods.get(method_id).prune(ctx)
    after = prunekit.measure.count_flops(model, ctx.example_input).flops
    assert abs(report.flops_reduction - 0.5) <= 0.01
    assert abs(1 - after / dense - 0.5) <= 0.01


# ----------------------------------------------------------------------------- fmi, ezcrop
class Scale(nn.Module):
    """A 1x1 conv ``a`` (3 -> 3) scaling input channel c by ``SCALES[c]`` -> ReLU -> conv ``b``
    reads the maps -> flatten -> protected fc. Filter L1 norms are the scales: a magnitude rule
    removes channel 2 first."""

    SCALES = (3.0, 1.0, 0.5)

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 3, 1, bias=False)
        self.b = nn.Conv2d(3, 2, 1, bias=False)
        self.fc = nn.Linear(2 * 16, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.diag(torch.tensor(self.SCALES)).view(3, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu(self.a(x))), 1))


def _images(*maps: torch.Tensor, n: int = 2) -> torch.Tensor:
    return torch.stack(maps).unsqueeze(0).repeat(n, 1, 1, 1)


def test_fmi_entropies_by_hand() -> None:
    """4x4 maps, 4 bins. Channel 0: a constant (the largest filter) -> 0 bits. Channel 1: the
    values 0..15, four per bin over [0, 15] -> 2 bits. Channel 2: half 0, half 1 -> 1 bit.
    Normalised by the largest: 0, 1, 0.5; FMI removes channel 0, a magnitude rule channel 2."""
    from prunekit.criteria.feature_information import FeatureEntropy

    ramp = torch.arange(16.0).view(4, 4)
    half = torch.tensor([0.0, 1.0]).repeat(8).view(4, 4)
    x = _images(torch.full((4, 4), 7.0), ramp, half)
    model = Scale()
    group = prunekit.graph.build(model, x[:1]).group("a")
    raw = FeatureEntropy([x], bins=4, normalize=False)(group)
    assert raw.tolist() == pytest.approx([0.0, 2.0, 1.0], abs=1e-12)
    assert FeatureEntropy([x], bins=4)(group).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert int(torch.argmin(criteria.l1_norm(group))) == 2

    crit = FeatureEntropy([(x, torch.zeros(2, dtype=torch.long))], bins=4)
    report = prunekit.prune_channels(model, x[:1], ratio=1 / 3, importance=crit)
    assert report.removed["a"] == [0]


def test_entropy_of_single_values_is_taken_over_the_batch() -> None:
    from prunekit.criteria.feature_information import map_entropy

    maps = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])  # (N=4, U=2)
    assert map_entropy(maps, bins=4).tolist() == [[2.0, 0.0]] * 4


def test_ezcrop_energy_ratios_by_hand() -> None:
    """4x4 maps, alpha 1/4: the zone is rows and columns 1..3 of the shifted spectrum
    (centre 2, step ceil(1 x 1/4) = 1). Channel 0: a constant -> only the zero frequency -> 0.
    Channel 1: a 0/1 checkerboard -> |F| = 8 at (0, 0) and (2, 2), which the shift moves to
    (2, 2) (in the zone) and (0, 0) (outside): 1 - log 9 / (2 log 9) = 0.5. Channel 2: the top
    row 1 -> |F(k, 0)| equal for k = 0..3 (scaled by 0.5 in the layer), shifted to rows 2, 3, 0,
    1 of column 2; row 0 is outside: 1 - 3/4 = 0.25."""
    from prunekit.criteria.feature_information import EnergyZone, energy_zone_ratio

    checker = (torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)).remainder(2).double()
    top = torch.zeros(4, 4)
    top[0] = 1.0
    x = _images(torch.full((4, 4), 2.0), checker.float(), top)
    assert energy_zone_ratio(x.double()).tolist()[0] == pytest.approx([0.0, 0.5, 0.25], abs=1e-12)

    model = Scale()
    group = prunekit.graph.build(model, x[:1]).group("a")
    scores = EnergyZone([x])(group)
    assert scores.tolist() == pytest.approx([0.0, 0.5, 0.25], abs=1e-6)
    assert int(torch.argmin(criteria.l1_norm(group))) == 2  # magnitude: channel 2
    report = prunekit.prune_channels(model, x[:1], ratio=2 / 3, importance=EnergyZone([x]))
    assert report.removed["a"] == [0, 2]


def test_ezcrop_zone_step_follows_the_official_rule() -> None:
    from prunekit.criteria.feature_information import zone_step

    assert zone_step((4, 4), 0.25) == 1
    assert zone_step((3, 3), 0.25) == 0  # centre 1: the zero frequency alone
    assert zone_step((2, 8), 0.25) == 0
    assert zone_step((32, 32), 0.25) == 4  # ceil(15 / 4)
    assert zone_step((1, 40), 0.25) == 5  # a 1-D map: ceil(19 / 4)


# ----------------------------------------------------------------------------- msvfp
class Chain(nn.Module):
    """c1 (3 -> 10) -> BN -> ReLU -> c2 (10 -> 10) -> BN -> ReLU -> mean -> protected fc, set up
    so the loss is known by hand: c2's weights are zero and its BatchNorm shift is 1, so every
    c2 channel outputs the constant 1 whatever c1 does; the fc gives class 0 the sum of the c2
    channels and the other classes 0. Every label is 0: the dense loss is log(1 + 3 e^-10);
    without one c2 channel it is log(1 + 3 e^-9); without c1 channels it does not change."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 10, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(10)
        self.c2 = nn.Conv2d(10, 10, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(10)
        self.fc = nn.Linear(10, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.c2.weight.zero_()
            self.b2.bias.fill_(1.0)
            self.fc.weight.zero_()
            self.fc.weight[0] = 1.0
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def _chain_ctx(target: float, options: dict, tmp_path) -> tuple[nn.Module, methods.Context]:
    torch.manual_seed(0)
    model = Chain().eval()
    g = torch.Generator().manual_seed(5)
    data = TensorDataset(torch.randn(32, 3, 6, 6, generator=g), torch.zeros(32, dtype=torch.long))
    ctx = methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": target},
        calib_batches=2,
        batch_size=16,
        options={"progress": False, "epochs": 0, **options},
        work_dir=tmp_path / "work",
    )
    return model, ctx


def test_msvfp_step_goes_to_the_group_whose_pruning_hurts_least(tmp_path) -> None:
    """One c1 channel is 10% of the FLOPs, one c2 channel 7.7% (the graph's plan). At a 10%
    target both groups are candidates of the first (L2) step: c1 would lose round(0.1 x 10) = 1
    filter, the smallest, at no cost in loss; c2 would lose one channel and raise the loss to
    log(1 + 3 e^-9). MSVFP prunes c1 alone; a uniform magnitude rule would cut both layers."""
    model, ctx = _chain_ctx(0.1, {}, tmp_path)
    method = methods.get("msvfp")
    report = method.prune(ctx)
    assert len(method.history) == 1
    first = method.history[0]
    assert first.group == "c1" and first.count == 1 and first.criterion == "l2"
    assert first.losses["c1"] == pytest.approx(math.log1p(3 * math.exp(-10)), rel=1e-3)
    assert first.losses["c2"] == pytest.approx(math.log1p(3 * math.exp(-9)), rel=1e-3)
    assert model.c2.out_channels == 10 and model.c1.out_channels == 9
    torch.manual_seed(0)
    norms = Chain().c1.weight.detach().flatten(1).norm(dim=1)  # the same initial weights
    assert report.removed["c1"] == [int(torch.argmin(norms))]
    assert abs(report.flops_reduction - 0.1) <= 0.01


def test_msvfp_trial_loss_equals_the_loss_of_the_pruned_model(tmp_path) -> None:
    import copy

    from prunekit.methods.msvfp import MSVFP
    from prunekit.train import evaluate

    model, ctx = _chain_ctx(0.3, {}, tmp_path)
    data = MSVFP._loss_subset(ctx, None)
    graph = prunekit.graph.build(model, ctx.example_input)
    before = copy.deepcopy(model.state_dict())
    trial = MSVFP._trial_loss(ctx, graph.group("c2"), [2, 5], data)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # weights put back
    graph.group("c2").prune([2, 5])
    assert trial == pytest.approx(float(evaluate(model, data, batch_size=16)["loss"]), rel=1e-6)


def test_msvfp_switches_from_magnitude_to_similarity_halfway(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    ctx = _ctx(model, 0.5, {"epochs": 0}, tmp_path)
    method = methods.get("msvfp")
    report = method.prune(ctx)
    kinds = [s.criterion for s in method.history]
    switch = kinds.index("distance")
    assert set(kinds[:switch]) == {"l2"} and set(kinds[switch:]) == {"distance"}
    # the criterion of a step is decided by the reduction before it: half of the 50% target
    assert method.history[switch - 1].reduction >= 0.25
    assert all(s.reduction < 0.25 for s in method.history[: switch - 1])
    assert abs(report.flops_reduction - 0.5) <= 0.01
    sizes = {g.name: (g.before, g.after) for g in report.groups}
    rates = {n: 1 - a / b for n, (b, a) in sizes.items()}
    assert len({round(r, 3) for r in rates.values()}) > 1  # variable per-layer rates


def test_msvfp_recovers_every_three_percent(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyResNet()
    ctx = _ctx(model, 0.3, {"epochs": 1}, tmp_path)
    method = methods.get("msvfp")
    method.prune(ctx)
    assert method.recoveries
    assert all(
        b - a > 0.03 for a, b in zip([0.0, *method.recoveries], method.recoveries, strict=False)
    )
    assert sorted(p.name for p in (tmp_path / "work").glob("recover*.pt")) == [
        f"recover{i}.pt" for i in range(1, len(method.recoveries) + 1)
    ]
