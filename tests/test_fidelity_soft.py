"""SFP and FPGM against their official code (he-y/soft-filter-pruning,
he-y/filter-pruning-geometric-median): the first selection is zeroed before the first epoch;
FPGM masks the gradients of the zeroed filters at every iteration, so they stay zero for the
epoch and the selection is stable from one epoch to the next; SFP does not, so its zeroed
filters are updated and can come back."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.methods.base import Context

N, BATCH, EPOCHS = 64, 16, 3
STEPS = N // BATCH  # optimizer steps per epoch


class ZeroRecorder:
    """Records, at every training-mode forward of each conv, which of its filters are exactly
    zero (the soft selection as the network sees it while it trains)."""

    def __init__(self, model: nn.Module) -> None:
        self.seen: dict[str, list[frozenset[int]]] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Conv2d, args: Any) -> None:
            if module.training:
                norms = module.weight.detach().flatten(1).abs().sum(1)
                zero = frozenset(torch.nonzero(norms == 0).flatten().tolist())
                self.seen.setdefault(name, []).append(zero)

        return hook


def _run(method_id: str, seed: int = 0) -> ZeroRecorder:
    torch.manual_seed(seed)
    model = ConvBNNet((8, 12))
    with torch.no_grad():  # BatchNorm shifts of a trained network: a zeroed channel is not dead
        model.b1.bias.uniform_(0.2, 0.6)
        model.b2.bias.uniform_(0.2, 0.6)
    rec = ZeroRecorder(model)
    ctx = Context(
        model,
        torch.randn(2, 3, 8, 8),
        random_data(N),
        random_data(16, seed=2),
        {"target_flops": 0.5},
        batch_size=BATCH,
        seed=seed,
        options={"epochs": EPOCHS, "lr": 0.1, "progress": False},
    )
    methods.get(method_id).prune(ctx)
    return rec


@pytest.mark.parametrize("method_id", ["sfp", "fpgm"])
def test_first_selection_is_zeroed_before_the_first_epoch(method_id: str) -> None:
    rec = _run(method_id)
    for name, seen in rec.seen.items():
        assert len(seen) == EPOCHS * STEPS, name
        assert seen[0], f"{method_id}: {name} trains its first step with no filter zeroed"


def test_fpgm_zeroed_filters_stay_zero_through_each_epoch() -> None:
    rec = _run("fpgm")
    for name, seen in rec.seen.items():
        for epoch in range(EPOCHS):
            steps = seen[epoch * STEPS : (epoch + 1) * STEPS]
            for k, zero in enumerate(steps):
                # the filters zeroed at the epoch's start are still exactly zero at every step
                assert steps[0] <= zero, (name, epoch, k)


def test_fpgm_selection_is_stable_across_epochs() -> None:
    rec = _run("fpgm")
    for name, seen in rec.seen.items():
        starts = [seen[e * STEPS] for e in range(EPOCHS)]
        assert starts[0] and all(s == starts[0] for s in starts), (name, starts)


def test_sfp_zeroed_filters_are_updated_during_the_epoch() -> None:
    # the official SFP code steps the optimizer on every weight: a zeroed filter moves at once
    rec = _run("sfp")
    for name, seen in rec.seen.items():
        first, second = seen[0], seen[1]
        assert first and not (first & second), (name, first, second)
