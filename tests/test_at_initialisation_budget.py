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


def test_the_runner_gives_sfw_the_baseline_epochs(epochs_seen):  # type: ignore[no-untyped-def]
    config = workflow.PruneConfig(
        model="lenet5", epochs=2, finetune_epochs=1, method="sfw", target_sparsity=0.8
    )
    metrics = workflow.run_pruning(config, progress=False, latency=False)
    # SFW trains the network from scratch for the baseline's 2 epochs inside its prune step
    # (not the 3 of a run without a baseline); only the common fine-tuning follows
    assert epochs_seen == [2, 1] and "at_initialisation" not in metrics
    assert metrics["from_init_epochs"] == 2


@pytest.mark.parametrize(
    ("method", "phases"),
    [
        ("sfw", {"sfw": 2}),
        ("one_cycle", {"one_cycle": 2}),
        ("dlth", {"dlth_regularise": 2, "dlth_train": 2}),
        ("zero_shot", {"phase1": 1, "phase2": 2, "phase3": 2}),
    ],
)
def test_a_method_that_trains_from_scratch_gets_the_runs_scratch_epochs(
    method, phases, monkeypatch, tmp_path
):  # type: ignore[no-untyped-def]
    from nets import small_net, sparse_context
    from prunekit import methods
    from prunekit.methods.base import Context

    trained: dict[str, int] = {}
    real_train = Context.train

    def counting_train(self, model, epochs, lr, *, name, **kw):  # type: ignore[no-untyped-def]
        trained[name] = epochs
        return real_train(self, model, epochs, lr, name=name, **kw)

    monkeypatch.setattr(Context, "train", counting_train)
    ctx = sparse_context(small_net(), tmp_path)
    ctx.scratch_epochs = 2
    report = methods.get(method).prune(ctx)
    assert trained == phases  # each phase from initialisation: the run's 2 epochs, not 3
    assert report.from_init_epochs == sum(phases.values())


def test_an_epochs_option_set_by_the_user_wins_over_the_baseline():  # type: ignore[no-untyped-def]
    from prunekit.methods.base import SCRATCH_FALLBACK, Context, scratch_epochs

    ctx = Context.__new__(Context)
    ctx.scratch_epochs = 7
    assert scratch_epochs(None, ctx) == 7 and scratch_epochs(1, ctx) == 1
    ctx.scratch_epochs = None
    assert scratch_epochs(None, ctx) == SCRATCH_FALLBACK == 3
