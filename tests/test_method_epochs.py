"""The training budget a method spends inside its pruning: counted by fit() and recorded by a run
as ``method_epochs``, beside the fine-tuning every run gets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import workflow
from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, epochs_trained, fit


def test_fit_counts_its_epochs_and_a_resumed_finished_fit_counts_them_again(tmp_path):
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 3, (16,)))
    model = nn.Linear(4, 3)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.1)
    start = epochs_trained()
    fit(model, data, config, checkpoint=tmp_path / "c.pt", progress=False)
    assert epochs_trained() - start == 2
    fit(model, data, config, checkpoint=tmp_path / "c.pt", progress=False)  # restored, finished
    assert epochs_trained() - start == 4  # the phase's budget is spent whether run or restored


def run(method: str, *options: str, **fields: int) -> dict:
    config = workflow.PruneConfig(
        model="lenet5",
        epochs=1,
        finetune_epochs=1,
        method=method,
        target_flops=0.5,
        option=options,
        **fields,  # type: ignore[arg-type]
    )
    return workflow.run_pruning(config, progress=False, latency=False)


def test_a_run_records_the_epochs_its_method_trained_but_not_the_fine_tuning():
    assert run("sfp", "epochs=2")["method_epochs"] == 2  # its soft phase
    assert run("l1_filter")["method_epochs"] == 0  # one-shot: only the common fine-tuning


def test_a_method_pruned_in_steps_meets_its_target_and_counts_the_epochs_between():
    """l1_filter in 3 steps with 2 fine-tuning epochs between: 4 epochs in the method, the
    FLOPs target met within 1% of the dense model's figure."""
    m = run("l1_filter", steps=3, step_epochs=2)
    assert m["method_epochs"] == 4
    assert abs(1 - m["flops_after"] / m["flops_before"] - 0.5) <= 0.01


def test_steps_too_small_to_remove_anything_are_refused_before_training():
    config = workflow.PruneConfig(
        model="lenet5", epochs=1, method="l1_filter", target_flops=0.002, steps=4
    )
    with pytest.raises(ConfigError, match=r"0\.1%"):
        workflow.prune_in_steps(config, None, lambda *_: None, None)  # type: ignore[arg-type]
