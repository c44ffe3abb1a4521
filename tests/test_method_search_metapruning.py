"""MetaPruning: the PruningNet's weights for a width vector (encoding by hand, masked channels,
equal to the physically pruned network carrying them), the evolution's children, and a killed
search that resumes to the same result."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nets import ConvBNNet, random_data
from prunekit.graph import build
from prunekit.methods.base import Context
from prunekit.methods.metapruning import MaskMaker, MetaPruning, PruningNet, tail_picks
from prunekit.prune import remove_selected


def _pruning_net(widths=(4, 4)):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = ConvBNNet(widths=widths).eval()
    x = torch.randn(2, 3, 6, 6)
    graph = build(model, x)
    sizes = {g.name: g.size for g in graph.groups}
    return model, x, graph, PruningNet(model, graph, MaskMaker(model, x), sizes, 8, 0)


def test_encoding_of_each_layer_by_hand() -> None:
    # c1: 3 -> 4 channels, c2: 4 -> 4, fc: 4 -> 4 (its outputs not prunable). With widths
    # c1 = 2 of 4 and c2 = 3 of 4 the encodings (out kept, in kept) are c1 (0.5, 1),
    # c2 (0.75, 0.5) and fc (1, 0.75).
    _, _, _, net = _pruning_net()
    seen = {}
    for key, block in net.blocks.items():
        block.register_forward_hook(
            lambda m, inp, out, key=key: seen.__setitem__(key, inp[0].tolist())
        )
    net.parameters_for({"c1": 2, "c2": 3})
    assert seen == {"c1": [0.5, 1.0], "c2": [0.75, 0.5], "fc": [1.0, 0.75]}


def test_generated_weights_mask_the_channels_beyond_each_width() -> None:
    _, _, _, net = _pruning_net()
    params = net.parameters_for({"c1": 2, "c2": 3})
    assert params["c1.weight"][2:].abs().sum() == 0 and params["c1.weight"][:2].abs().sum() > 0
    assert params["b1.weight"][2:].abs().sum() == 0 and params["b1.bias"][2:].abs().sum() == 0
    assert params["c2.weight"][3:].abs().sum() == 0
    # the generator depends on the encoding: another width vector, other weights
    other = net.parameters_for({"c1": 4, "c2": 3})
    assert not torch.allclose(other["c2.weight"][:3], params["c2.weight"][:3])


def test_pruning_net_equals_the_pruned_network_with_its_weights() -> None:
    model, x, _, net = _pruning_net(widths=(6, 5))
    net.eval()
    net.widths = {"c1": 4, "c2": 2}
    with torch.no_grad():
        expected = net(x)
        pruned = copy.deepcopy(model)
        for name, p in pruned.named_parameters():
            p.copy_(net.parameters_for(net.widths)[name])
        g = build(pruned, x)
        report = remove_selected(g, tail_picks(g, net.widths), g.plan([]))
        assert [(c.name, c.after) for c in report.groups] == [("c1", 4), ("c2", 2)]
        torch.testing.assert_close(pruned(x), expected, rtol=0, atol=1e-5)


def test_training_draws_reproducible_widths_per_step() -> None:
    _, _, _, net = _pruning_net()
    assert net.draw(5) == net.draw(5)
    drawn = [net.draw(s) for s in range(20)]
    assert all(1 <= w[n] <= 4 for w in drawn for n in w)
    assert len({tuple(sorted(w.items())) for w in drawn}) > 5  # random vectors, not one


def _ctx(model, work_dir):  # type: ignore[no-untyped-def]
    data = random_data(32)
    return Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_flops": 0.4},
        batch_size=8,
        options={"progress": False, **SMALL},
        work_dir=work_dir,
    )


SMALL = {
    "search_budget": "8",
    "population": 4,
    "top": 2,
    "mutations": 2,
    "crossovers": 2,
    "pruningnet_epochs": 1,
    "hidden": 4,
    "recal_batches": 1,
}


def test_killed_search_resumes_to_the_same_result(tmp_path, monkeypatch) -> None:
    import prunekit.methods.metapruning as mp

    torch.manual_seed(0)
    base = ConvBNNet(widths=(8, 12, 16)).eval()
    real = mp.recalibrate
    calls = {"n": 0, "die_after": 10**9}

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if calls["n"] >= calls["die_after"]:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(mp, "recalibrate", counting)
    clean = MetaPruning()
    clean_model = copy.deepcopy(base)
    clean_report = clean.prune(_ctx(clean_model, tmp_path / "clean"))
    total = calls["n"]  # one per evaluation, one for the winner
    assert total == len(clean.trials) + 1 and len(clean.trials) > 3

    calls.update(n=0, die_after=3)
    with pytest.raises(KeyboardInterrupt):
        MetaPruning().prune(_ctx(copy.deepcopy(base), tmp_path / "killed"))
    calls.update(n=0, die_after=10**9)
    resumed = MetaPruning()
    model = copy.deepcopy(base)
    report = resumed.prune(_ctx(model, tmp_path / "killed"))
    assert calls["n"] == total - 3
    assert resumed.candidates == clean.candidates and resumed.best == clean.best
    assert report.removed == clean_report.removed
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), clean_model(x))


def test_children_meet_the_constraint() -> None:
    from prunekit.methods.metapruning import MetaPruningOptions, _Evolution
    from prunekit.targets import Target

    model = ConvBNNet(widths=(16, 32, 64)).eval()
    graph = build(model, torch.randn(1, 3, 8, 8))
    sizes = {g.name: g.size for g in graph.groups}
    dense = graph.plan([]).flops
    from prunekit.prune import selection_roots

    def reduction(w):  # type: ignore[no-untyped-def]
        return 1 - graph.plan(selection_roots(graph, tail_picks(graph, w))).flops / dense

    evo = _Evolution(
        graph,
        list(sizes),
        sizes,
        Target("flops", 0.5),
        MetaPruningOptions(population=6),
        np.random.default_rng(0),
        reduction,
    )
    first = evo.first()
    assert len(first) == 6 and all(abs(reduction(w) - 0.5) <= 0.01 for w in first)
    children = evo.next(first, [_trial(i) for i in range(6)])
    assert children and all(abs(reduction(w) - 0.5) <= 0.02 for w in children)
    assert not any(c in first for c in children)


def _trial(i: int):  # type: ignore[no-untyped-def]
    from prunekit.methods.search import Trial

    return Trial(accuracy=float(i), loss=1.0)
