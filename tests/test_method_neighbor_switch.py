"""neighbor_switch (MFP, He et al. TNNLS 2022): at every soft step the network switches to the
neighbour (the network one criterion of the set would make of it) with the lowest loss, so the
criterion can change from step to step; the last selection is removed through the structural
core and meets the target."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.errors import ConfigError
from prunekit.methods.neighbor_switch import (
    CRITERIA_SET,
    NeighborSwitchMethod,
    NeighborSwitchPruner,
    distance_sums,
    neighbour_loss,
)
from target_check import prune_net
from test_every_method import NETS

FILTERS = [1.0, 2.0, 3.0, 4.0, 20.0]


class Line(nn.Module):
    """One 1x1 conv with five one-weight filters 1, 2, 3, 4, 20, then a protected Linear head
    whose class-0 row is ``head`` (class 1: all zero) with bias ``bias`` on class 0.

    Fed x = 1, the conv outputs h = (1, 2, 3, 4, 20), and with label 0 the loss is
    ``softplus(-(head . h + bias))``. Removing one filter (3 of the 17 params) lets each
    criterion pick one:

    * l1, l2 (norms): filter 0, the smallest;
    * l1_distance, l2_distance (1-D filters: both equal), summed distances to the others:
      0: 1+2+3+19 = 25, 1: 1+1+2+18 = 22, 2: 2+1+1+17 = 21, 3: 3+2+1+16 = 22, 4: 70, so
      filter 2, nearest the median."""

    def __init__(self, head: list[float], bias: float) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 5, 1, bias=False)
        self.fc = nn.Linear(5, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor(FILTERS).view(5, 1, 1, 1))
            self.set_head(head, bias)

    def set_head(self, head: list[float], bias: float) -> None:
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[0] = torch.tensor(head)
            self.fc.bias.copy_(torch.tensor([bias, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.a(x), 1))


# Case A: head (1, 1, 1, 1, 1), bias -27.5. Norm neighbour (filter 0 zeroed): 29 - 27.5 = 1.5,
# loss softplus(-1.5) = 0.201; distance neighbour (filter 2 zeroed): 27 - 27.5 = -0.5, loss
# softplus(0.5) = 0.974. The norm neighbour is better: l1 (listed before l2) is chosen.
CASE_A = ([1.0, 1.0, 1.0, 1.0, 1.0], -27.5)
# Case B: head (10, 1, 1, 1, 1), bias -33. Norm neighbour: 2 + 3 + 4 + 20 - 33 = -4, loss
# softplus(4) = 4.018; distance neighbour: 10 + 2 + 4 + 20 - 33 = 3, loss softplus(-3) = 0.049.
# The distance neighbour is better: l1_distance is chosen, and filter 2 goes although filter 0
# has the smallest norm (a magnitude rule removes filter 0 here).
CASE_B = ([10.0, 1.0, 1.0, 1.0, 1.0], -33.0)
TARGET = {"target_params": 3 / 17}


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def _ones(n: int = 8) -> TensorDataset:
    return TensorDataset(torch.ones(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))


def _method() -> NeighborSwitchMethod:
    method = methods.get("neighbor_switch")
    assert isinstance(method, NeighborSwitchMethod)
    return method


def _run(case: tuple[list[float], float], **options: object) -> tuple[Line, NeighborSwitchMethod]:
    model = Line(*case)
    data = _ones()
    ctx = methods.Context(
        model,
        data.tensors[0][:1],
        data,
        data,
        TARGET,
        calib_batches=1,
        batch_size=8,
        options={"epochs": 0, "progress": False, **options},
    )
    method = _method()
    report = method.prune(ctx)
    assert report.params_after == 14
    return model, method


def test_distance_sums_by_hand() -> None:
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # L2: 0 -> 5 + 10, 1 -> 5 + 5, 2 -> 10 + 5; L1: 0 -> 7 + 14, 1 -> 7 + 7, 2 -> 14 + 7
    assert distance_sums(w, 2.0).tolist() == [15.0, 10.0, 15.0]
    assert distance_sums(w, 1.0).tolist() == [21.0, 14.0, 21.0]


def test_the_lower_loss_neighbour_is_chosen_and_a_weight_change_switches_it() -> None:
    model, method = _run(CASE_A)
    assert model.a.weight.flatten().tolist() == [2.0, 3.0, 4.0, 20.0]  # filter 0 went
    assert method.criteria_used == ["l1"]
    (attrs,) = method.attributes
    assert attrs["l1"] == attrs["l2"] == pytest.approx(softplus(-1.5), rel=1e-5)
    assert attrs["l1_distance"] == attrs["l2_distance"] == pytest.approx(softplus(0.5), rel=1e-5)

    model, method = _run(CASE_B)
    assert model.a.weight.flatten().tolist() == [1.0, 2.0, 4.0, 20.0]  # filter 2 went
    assert method.criteria_used == ["l1_distance"]
    (attrs,) = method.attributes
    assert attrs["l1"] == pytest.approx(softplus(4.0), rel=1e-5)
    assert attrs["l2_distance"] == pytest.approx(softplus(-3.0), rel=1e-4)

    # the single-criterion runs are SFP-like (norm) and FPGM-like (distance): B needs the switch
    norm_only, _ = _run(CASE_B, criteria="l2")
    assert norm_only.a.weight.flatten().tolist() == [2.0, 3.0, 4.0, 20.0]


def test_one_pruner_switches_between_steps() -> None:
    model = Line(*CASE_A)
    pruner = NeighborSwitchPruner(model, torch.ones(1, 1, 1, 1), TARGET, [_ones().tensors])
    (group,) = [g.name for g in pruner.graph.groups if g.size == 5]
    assert pruner.step() == {group: [0]}
    assert model.a.weight.flatten().tolist() == [0.0, 2.0, 3.0, 4.0, 20.0]  # zeroed, kept
    with torch.no_grad():  # the network moves on: filter 0 back, a head that needs it
        model.a.weight.copy_(torch.tensor(FILTERS).view(5, 1, 1, 1))
        model.set_head(*CASE_B)
    assert pruner.step() == {group: [2]}
    assert pruner.criteria_used == ["l1", "l1_distance"]
    assert pruner.history == [{group: [0]}, {group: [2]}]
    state = pruner.state_dict()
    again = NeighborSwitchPruner(model, torch.ones(1, 1, 1, 1), TARGET, [_ones().tensors])
    again.load_state_dict(state)
    assert again.criteria_used == pruner.criteria_used and again.picks == {group: [2]}
    assert again.attributes == pruner.attributes


def test_neighbour_loss_leaves_the_model_as_it_was() -> None:
    model = ConvBNNet((8, 12)).train()
    pruner = NeighborSwitchPruner(model, torch.randn(2, 3, 8, 8), {"target_flops": 0.5}, [])
    data = random_data(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    picks = pruner.neighbours()["l2"]
    loss = neighbour_loss(model, pruner.graph, picks, [data.tensors])
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name, idx in picks.items():  # the reference: the same filters zeroed by hand
        pruner.graph.group(name).zero(idx, filters_only=True)
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model.eval()(data.tensors[0]), data.tensors[1])
    assert loss == pytest.approx(float(ref), rel=1e-6)
    with pytest.raises(ConfigError, match="calibration batches"):
        neighbour_loss(model, pruner.graph, picks, [])


def test_removal_computes_what_the_zeroed_neighbour_computes() -> None:
    build, shape, classes = NETS["resnet"]
    model = build().double()
    x = torch.randn(4, *shape, dtype=torch.float64)
    batches = [(x, torch.randint(0, classes, (4,)))]
    pruner = NeighborSwitchPruner(model, x, {"target_flops": 0.3}, batches)
    picks = pruner.step()
    assert pruner.criteria_used[0] in CRITERIA_SET
    for name, idx in picks.items():
        pruner.graph.group(name).zero(idx)
    with torch.no_grad():
        zeroed = model.eval()(x)
    report = pruner.finish()
    assert report.removed == picks
    with torch.no_grad():
        assert torch.allclose(model(x), zeroed, atol=1e-10)


@pytest.mark.parametrize("net", ["resnet", "depthwise"])
def test_flops_target_met_within_one_percent(net: str) -> None:
    report, measured = prune_net("neighbor_switch", net, 0.3, epochs=1)
    assert abs(measured - 0.3) <= 0.01
    assert abs(report.flops_reduction - measured) <= 1e-9


def test_the_method_records_each_step_and_its_model_saves(tmp_path) -> None:
    build, shape, classes = NETS["resnet"]
    model = build()
    data = random_data(32, shape, classes)
    ctx = methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": 0.3},
        calib_batches=1,
        batch_size=16,
        options={"epochs": 2, "progress": False},
    )
    method = _method()
    method.prune(ctx)
    assert len(method.history) == 3  # before training and after each epoch
    assert len(method.criteria_used) == len(method.attributes) == 3
    for used, attrs in zip(method.criteria_used, method.attributes, strict=True):
        assert set(attrs) == set(CRITERIA_SET) and attrs[used] == min(attrs.values())
    prunekit.save(model.eval(), tmp_path / "pruned.pt")
    loaded = prunekit.load(tmp_path / "pruned.pt", model=build).eval()
    with torch.no_grad():
        assert torch.equal(model(data.tensors[0][:4]), loaded(data.tensors[0][:4]))


def test_unknown_criterion_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="l1_distance"):
        _run(CASE_A, criteria="l2,median")
