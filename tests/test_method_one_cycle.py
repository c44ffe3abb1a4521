"""One-Cycle Pruning: the sparsity after every optimizer step follows the logistic one-cycle ramp
worked out by hand, the network trains from its initialisation, masks only grow, and a rerun in
the same run folder restores the finished cycle instead of training it again."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.methods.base import Context


class Dense(nn.Linear):
    """A library's layer: a subclass of the standard one."""


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = Dense(6, 10)
        self.fc2 = Dense(10, 10)
        self.head = Dense(10, 3)
        self.protected_layers = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _data(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))


def _ctx(model: nn.Module, **options) -> Context:
    data = _data()
    return Context(
        model,
        data[0][0].unsqueeze(0),
        data,
        data,
        {"target_sparsity": 0.5},
        batch_size=8,  # 4 steps per epoch
        options={"progress": False, **options},
    )


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_sparsity_follows_the_one_cycle_ramp_step_by_step() -> None:
    torch.manual_seed(0)
    model = MLP()
    method = methods.get("one_cycle")
    report = method.prune(_ctx(model, epochs=2))  # T = 8 steps
    # the pruned layers hold 160 of the 190 weights; 95 zeros must all come from them
    share = 95 / 160
    lo, hi = _sigmoid(-6.0), _sigmoid(14.0 - 6.0)
    want = [share * (_sigmoid(14 * t / 8 - 6) - lo) / (hi - lo) for t in range(1, 9)]
    got = [target for _, target, _ in method.history]
    assert [t for t, _, _ in method.history] == list(range(1, 9))
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    # by hand at the midpoint: (sigma(1) - sigma(-6)) / (sigma(8) - sigma(-6)) = 0.73064
    assert abs(got[3] / share - 0.73064) < 1e-4
    # after the first of 8 steps the ramp is at 1.2% (a cubic schedule would be at 33%)
    assert got[0] < 0.02 * share and got[-1] == share
    assert abs(report.sparsity - 0.5) < 1e-9


def test_masks_only_grow_during_the_cycle(monkeypatch) -> None:
    torch.manual_seed(0)
    model = MLP()
    seen: list[dict[str, torch.Tensor]] = []
    original = masks.ScheduledMagnitudePruner.prune_to

    def spy(self, t, sparsity):
        original(self, t, sparsity)
        seen.append({n: m.data.clone() for n, m in masks.get_masks(self.model).items()})

    monkeypatch.setattr(masks.ScheduledMagnitudePruner, "prune_to", spy)
    methods.get("one_cycle").prune(_ctx(model, epochs=2))
    assert len(seen) == 8
    for before, after in itertools.pairwise(seen):
        for name in before:
            assert not (after[name] & ~before[name]).any(), "a pruned weight came back"


def test_trains_from_the_architecture_initialisation_not_the_given_weights() -> None:
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # a "trained" model: every weight equal, magnitude cannot rank them
    method = methods.get("one_cycle")
    method.prune(_ctx(model, epochs=0))
    w = masks.finalize(model).fc1.weight
    kept = w[w != 0]
    assert method.at_initialisation
    assert kept.std() > 0.05  # re-drawn by nn.Linear's own initialisation
    assert kept.abs().max() <= 1 / math.sqrt(6) + 1e-6  # its bound 1 / sqrt(fan_in)

    torch.manual_seed(0)
    given = MLP()
    with torch.no_grad():
        given.fc1.weight.copy_(torch.arange(60.0).reshape(10, 6) / 60)
    method = methods.get("one_cycle")
    method.prune(_ctx(given, epochs=0, init="none"))
    assert not method.at_initialisation
    kept = masks.finalize(given).fc1.weight
    assert (kept[kept != 0] >= 0).all()  # the given weights, pruned by magnitude


def test_a_rerun_in_the_same_folder_restores_the_finished_cycle(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    first = MLP()
    ctx = _ctx(first, epochs=1)
    ctx.work_dir = tmp_path
    methods.get("one_cycle").prune(ctx)
    assert (tmp_path / "one_cycle.pt").exists() and (tmp_path / "one_cycle.state.pt").exists()

    torch.manual_seed(5)
    second = MLP()
    ctx = _ctx(second, epochs=1)
    ctx.work_dir = tmp_path
    calls: list[int] = []
    original = masks.ScheduledMagnitudePruner.step
    monkeypatch.setattr(
        masks.ScheduledMagnitudePruner, "step", lambda self, t: calls.append(t) or original(self, t)
    )
    methods.get("one_cycle").prune(ctx)
    assert calls == []  # the cycle and its masks restored from the checkpoint, not rerun
    a, b = masks.finalize(first), masks.finalize(second)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
