"""SFP, FPGM and GDP prune while they train: a run killed inside that phase resumes from its
last epoch with the pruner's selections, and ends where the uninterrupted run ends (the same
selections, the same pruned weights)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.methods.base import Context
from prunekit.methods.gdp import GlobalDynamicPruner
from prunekit.methods.soft_pruning import SoftPruner

N, BATCH, EPOCHS = 48, 16, 3
STEPS = N // BATCH


class _Killed(Exception):
    pass


def _ctx(model: torch.nn.Module, options: dict[str, Any], work_dir: Path | None) -> Context:
    data = random_data(N, seed=3)
    return Context(
        model,
        data[0][0][None],
        data,
        data,
        {"target_flops": 0.4},
        batch_size=BATCH,
        calib_batches=2,
        options={"progress": False, **options},
        work_dir=work_dir,
    )


CASES = {
    "sfp": (SoftPruner, {"epochs": EPOCHS}),
    "fpgm": (SoftPruner, {"epochs": EPOCHS}),
    "gdp": (GlobalDynamicPruner, {"epochs": EPOCHS, "mask_interval": 2}),
}


@pytest.mark.parametrize("method_id", sorted(CASES))
def test_a_killed_phase_resumes_with_the_pruners_selections(
    method_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pruner_class, options = CASES[method_id]
    torch.manual_seed(0)
    dense = ConvBNNet()

    reference_model = copy.deepcopy(dense)
    reference = methods.get(method_id)
    reference.prune(_ctx(reference_model, options, None))

    original = pruner_class.callback
    calls = {"steps": 0}

    def dying(self: Any, event: str, state: dict[str, Any]) -> None:
        if event == "step_end":
            calls["steps"] += 1
            if calls["steps"] == STEPS + 2:  # inside epoch 2, after epoch 1's checkpoint
                raise _Killed
        original(self, event, state)

    monkeypatch.setattr(pruner_class, "callback", dying)
    with pytest.raises(_Killed):
        methods.get(method_id).prune(_ctx(copy.deepcopy(dense), options, tmp_path))
    monkeypatch.setattr(pruner_class, "callback", original)
    assert any(tmp_path.glob("*.state.pt")), "the pruner's state was not saved with the epoch"

    resumed_model = copy.deepcopy(dense)
    resumed = methods.get(method_id)
    resumed.prune(_ctx(resumed_model, options, tmp_path))

    assert resumed.history == reference.history
    a, b = reference_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_lottery_ticket_killed_after_its_rewind_point_resumes_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rewinding point theta_k (after step 1) is kept with the first round's checkpoint: a
    # run killed in that round's second epoch resumes with it and ends where the whole run ends
    from prunekit.methods.lth import RewindPoint

    options = {"epochs": 2, "rewind_steps": 1, "rate_per_round": 0.5}

    def ctx(model: torch.nn.Module, work_dir: Path | None) -> Context:
        data = random_data(N, seed=3)
        return Context(
            model,
            data[0][0][None],
            data,
            data,
            {"target_sparsity": 0.5},
            batch_size=BATCH,
            options={"progress": False, **options},
            work_dir=work_dir,
        )

    torch.manual_seed(0)
    dense = ConvBNNet()
    reference_model = copy.deepcopy(dense)
    methods.get("lth").prune(ctx(reference_model, None))

    original = RewindPoint.__call__
    calls = {"steps": 0}

    def dying(self: Any, event: str, state: dict[str, Any]) -> None:
        if event == "step_end":
            calls["steps"] += 1
            if calls["steps"] == STEPS + 2:  # inside epoch 2 of round 0, past the point
                raise _Killed
        original(self, event, state)

    monkeypatch.setattr(RewindPoint, "__call__", dying)
    with pytest.raises(_Killed):
        methods.get("lth").prune(ctx(copy.deepcopy(dense), tmp_path))
    monkeypatch.setattr(RewindPoint, "__call__", original)

    resumed_model = copy.deepcopy(dense)
    methods.get("lth").prune(ctx(resumed_model, tmp_path))
    a, b = reference_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
