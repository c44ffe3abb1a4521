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


def check_resume(method_cls, options, tmp_path, monkeypatch, kill_after: int = 3):  # type: ignore[no-untyped-def]
    """Run ``method_cls`` cleanly, then killed after ``kill_after`` evaluations and resumed in
    the same run folder; assert the resumed run evaluates only what was left and prunes the
    same channels. Returns the clean and the resumed method."""
    import copy

    import prunekit.methods.search as search_mod

    torch.manual_seed(0)
    base = ConvBNNet(widths=(8, 12, 16)).eval()
    data = random_data(32)

    def ctx(model, folder):  # type: ignore[no-untyped-def]
        return Context(
            model,
            data.tensors[0][:2],
            data,
            data,
            {"target_flops": 0.4},
            batch_size=8,
            options={"progress": False, **options},
            work_dir=folder,
        )

    real = search_mod.score_picks
    calls = {"n": 0, "die_after": 10**9}

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] >= calls["die_after"]:
            raise KeyboardInterrupt  # the process is killed here
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(search_mod, "score_picks", counting)
    clean = method_cls()
    clean_report = clean.prune(ctx(copy.deepcopy(base), tmp_path / "clean"))
    total = calls["n"]
    assert total > kill_after
    calls.update(n=0, die_after=kill_after)
    with pytest.raises(KeyboardInterrupt):
        method_cls().prune(ctx(copy.deepcopy(base), tmp_path / "killed"))
    calls.update(n=0, die_after=10**9)
    resumed = method_cls()
    report = resumed.prune(ctx(copy.deepcopy(base), tmp_path / "killed"))
    assert calls["n"] == total - kill_after  # only the evaluations left were run
    assert report.removed == clean_report.removed
    return clean, resumed


def test_search_budget_flag_sets_the_method_option() -> None:
    from prunekit.workflow import PruneConfig

    assert PruneConfig(method="legr", search_budget="90s").options() == {"search_budget": "90s"}
    # an explicit --option wins over the flag
    both = PruneConfig(method="amc", search_budget="5", option=("search_budget=7",))
    assert both.options() == {"search_budget": "7"}
    with pytest.raises(ConfigError, match="--search-budget needs --method"):
        PruneConfig(search_budget="5").options()
    with pytest.raises(ConfigError, match="has no option 'search_budget'"):
        PruneConfig(method="l1_filter", search_budget="5").validate()


def test_search_setup_restores_the_models_modes_and_names_what_is_wrong(tmp_path) -> None:
    from prunekit.methods.bo_rates import BORatesOptions
    from prunekit.methods.search import search_setup

    ctx = _ctx(tmp_path)
    ctx.model.train()
    ctx.model.b1.eval()  # a part the caller keeps in eval mode
    opts = BORatesOptions(search_budget="3", progress=False)
    with (
        pytest.raises(RuntimeError, match="inside the search"),
        search_setup("bo_rates", ctx, opts) as setup,
    ):
        assert not ctx.model.training  # the search sees the model in eval mode
        assert setup.names == ["c1", "c2"] and setup.budget.evaluations == 3
        assert setup.keywords == {"target_flops": 0.3}
        raise RuntimeError("inside the search")
    assert ctx.model.training and not ctx.model.b1.training  # every mode as it was

    # a target kind the method does not take, and a model with nothing to allocate, are named
    with (
        pytest.raises(ConfigError, match="metapruning"),
        search_setup("metapruning", _params_ctx(tmp_path), opts, kinds=("flops",)),
    ):
        pass
    ctx.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    with (
        pytest.raises(ConfigError, match="bo_rates found no prunable groups"),
        search_setup("bo_rates", ctx, opts),
    ):
        pass


def _params_ctx(work_dir) -> Context:  # type: ignore[no-untyped-def]
    ctx = _ctx(work_dir)
    return Context(
        ctx.model,
        ctx.example_input,
        ctx.train_set,
        ctx.val_set,
        {"target_params": 0.3},
        batch_size=8,
        seed=0,
        work_dir=work_dir,
    )
