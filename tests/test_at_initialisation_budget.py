"""A method that prunes at initialisation returns an untrained sparse network: the runner trains
it with the baseline's schedule (the width-scaled reference's budget), masks kept, before the
common fine-tuning, and the metrics say so."""

from __future__ import annotations

import pytest

from prunekit import workflow


@pytest.fixture
def epochs_seen(monkeypatch):  # type: ignore[no-untyped-def]
    """The epochs of every training the runner starts, in order."""
    seen: list[int] = []
    real_fit = workflow.fit

    def counting_fit(model, train_set, cfg, **kw):  # type: ignore[no-untyped-def]
        seen.append(cfg.epochs)
        return real_fit(model, train_set, cfg, **kw)

    monkeypatch.setattr(workflow, "fit", counting_fit)
    return seen


@pytest.mark.parametrize("method", ["snip", "ramanujan"])
def test_pruned_at_init_trains_with_the_baseline_schedule(method, epochs_seen):
    config = workflow.PruneConfig(
        model="lenet5",
        epochs=2,
        finetune_epochs=1,
        method=method,
        target_sparsity=0.8,
    )
    metrics = workflow.run_pruning(config, progress=False, latency=False)
    # baseline (2 epochs), the pruned network from its initialisation (2), fine-tuning (1)
    assert epochs_seen == [2, 2, 1]
    assert metrics["at_initialisation"] is True and metrics["scratch_epochs"] == 2
    assert metrics["acc_pruned"] < 30  # an untrained network on ten classes
    if method == "snip":  # variance scaling trains in two epochs; LeNet-5's own init at 80%
        # random sparsity barely moves in two (a property of that init, not of the runner)
        assert metrics["acc_scratch"] > metrics["acc_pruned"] + 30
    assert abs(metrics["sparsity"] - 0.8) < 0.01  # the masks held through that training


def test_a_method_that_prunes_a_trained_model_gets_no_extra_training(epochs_seen):
    config = workflow.PruneConfig(
        model="lenet5", epochs=2, finetune_epochs=1, method="magnitude", target_sparsity=0.8
    )
    metrics = workflow.run_pruning(config, progress=False, latency=False)
    assert epochs_seen == [2, 1] and "at_initialisation" not in metrics
