"""The search machinery: budgets, allocation of a rate vector to the target, a checkpoint that
refuses another search, time budgets replayed, and parallel evaluation equal to serial."""

from __future__ import annotations

import pytest
import torch

from nets import ConvBNNet, random_data
from prunekit.errors import CheckpointError, ConfigError
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.methods.search import Search, SearchBudget, allocate, rates_of
from prunekit.targets import Target


def test_budget_parses_evaluations_and_times() -> None:
    assert SearchBudget.parse("200") == SearchBudget(evaluations=200)
    assert SearchBudget.parse("90s") == SearchBudget(seconds=90.0)
    assert SearchBudget.parse("10m") == SearchBudget(seconds=600.0)
    assert SearchBudget.parse("1.5h") == SearchBudget(seconds=5400.0)
    for bad in ("0", "-3", "ten", "2.5", "5d"):
        with pytest.raises(ConfigError, match="search_budget"):
            SearchBudget.parse(bad)


def test_allocate_follows_the_rates_and_meets_the_target() -> None:
    net = ConvBNNet(widths=(16, 32, 64)).eval()
    graph = build(net, torch.randn(1, 3, 8, 8))
    dense = graph.plan([]).flops
    picks = allocate(graph, {"c1": 0.0, "c2": 0.2, "c3": 0.6}, Target("flops", 0.3))
    from prunekit.prune import selection_roots

    reached = 1 - graph.plan(selection_roots(graph, picks)).flops / dense
    assert abs(reached - 0.3) <= 0.01
    rates = rates_of(graph, picks)
    assert rates["c1"] == 0.0  # rate 0: kept whole
    assert rates["c3"] == pytest.approx(3 * rates["c2"], abs=1 / 32)  # proportional to the rates
    with pytest.raises(ConfigError, match="positive rate"):
        allocate(graph, {"c1": 0.0}, Target("flops", 0.3))


def _ctx(work_dir, seed: int = 0) -> Context:  # type: ignore[no-untyped-def]
    data = random_data(24)
    model = ConvBNNet(widths=(16, 24)).eval()
    return Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": 0.3},
        batch_size=8,
        seed=seed,
        work_dir=work_dir,
    )


def _candidates(ctx: Context) -> list[dict[str, list[int]]]:
    graph = build(ctx.model, ctx.example_input)
    return [allocate(graph, {"c1": a, "c2": 1 - a}, ctx.target) for a in (0.3, 0.5, 0.7)]


def test_checkpoint_of_another_search_is_refused(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    with Search(ctx, "s", SearchBudget(evaluations=2), {"a": 1}, progress=False) as s:
        s.evaluate(_candidates(ctx)[:2])
    with pytest.raises(CheckpointError, match="another search"):
        Search(ctx, "s", SearchBudget(evaluations=2), {"a": 2}, progress=False)
    # same identity, other candidates: refused at the first one that differs
    with (
        Search(ctx, "s", SearchBudget(evaluations=2), {"a": 1}, progress=False) as s,
        pytest.raises(CheckpointError, match="evaluation 1"),
    ):
        s.evaluate(_candidates(ctx)[1:])


def test_budget_caps_the_evaluations_and_replay_serves_stored_results(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    cands = _candidates(ctx)
    with Search(ctx, "s", SearchBudget(evaluations=2), {}, progress=False) as s:
        first = s.evaluate(cands)
        assert len(first) == 2 and s.exhausted and s.evaluate(cands[2:]) == []
    # a longer budget resumes: the two stored results are served, the third evaluated
    with Search(ctx, "s", SearchBudget(evaluations=3), {}, progress=False) as s:
        again = s.evaluate(cands)
    assert again[:2] == first and len(again) == 3
    assert s.best == max(range(3), key=lambda i: again[i].key)


def test_time_budget_replays_the_recorded_clock(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    cands = _candidates(ctx)
    with Search(ctx, "s", SearchBudget(evaluations=3), {}, progress=False) as s:
        s.evaluate(cands)
    stored = torch.load(tmp_path / "s.search.pt", weights_only=True)["records"]
    cutoff = stored[1]["elapsed"]  # a time budget that ran out after the second evaluation
    with Search(ctx, "s", SearchBudget(seconds=cutoff), {}, progress=False) as s:
        served = []
        while not s.exhausted:
            served += s.evaluate([cands[len(served)]])
    assert len(served) == 2


def test_parallel_evaluation_equals_serial() -> None:
    ctx = _ctx(None)
    cands = _candidates(ctx)
    with Search(ctx, "s", SearchBudget(evaluations=3), {}, steps=2, progress=False) as s:
        serial = s.evaluate(cands)
    with Search(ctx, "s", SearchBudget(evaluations=3), {}, steps=2, workers=2, progress=False) as s:
        parallel = s.evaluate(cands)
    assert [t.key for t in parallel] == [t.key for t in serial]
    assert [t.flops_reduction for t in parallel] == [t.flops_reduction for t in serial]
