"""Dual lottery ticket / RST (Bai et al., ICLR 2022): the random choice of the weights to remove,
the growing penalty and its gradient worked out by hand, and the method end to end (the
penalty drains the chosen weights, the target is met, an interrupted run resumes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import small_net, sparse_context
from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.methods.base import Context
from prunekit.methods.dlth import (
    DLTHOptions,
    GrowingPenalty,
    penalty_at,
    random_removal,
    regularised_gradient,
    smallest_removal,
)


def test_the_removed_set_ignores_the_weights_values() -> None:
    big_first = torch.tensor([[100.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    chosen = random_removal(big_first.shape, 0.5, torch.Generator().manual_seed(3))
    assert int(chosen.sum()) == 4
    # the same draw whatever the weights are
    again = random_removal(big_first.shape, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(chosen, again)
    # over draws, the largest weight is chosen for removal about half of the time, which a
    # magnitude rule (here: smallest_removal) never does
    g = torch.Generator().manual_seed(0)
    hits = sum(bool(random_removal(big_first.shape, 0.5, g)[0, 0]) for _ in range(200))
    assert 70 < hits < 130
    assert not bool(smallest_removal(big_first, 0.5)[0, 0])
    assert torch.equal(
        smallest_removal(big_first, 0.5), torch.tensor([[False] + [True] * 4 + [False] * 3])
    )


def test_penalty_grows_by_eta_every_k_steps_up_to_its_limit() -> None:
    # eta 0.25 every 2 steps, capped at 0.6
    assert [penalty_at(t, 0.25, 0.6, 2) for t in range(7)] == [
        0.25,
        0.25,
        0.5,
        0.5,
        0.6,
        0.6,
        0.6,
    ]


def test_regularised_gradient_touches_only_the_removed_entries() -> None:
    grad = torch.tensor([1.0, 1.0, 1.0])
    w = torch.tensor([2.0, -4.0, 8.0])
    removed = torch.tensor([False, True, True])
    out = regularised_gradient(grad, w, removed, 0.5)
    assert torch.equal(out, torch.tensor([1.0, 1.0 - 2.0, 1.0 + 4.0]))


def test_hooks_add_the_penalty_in_backward_and_resume_their_count() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 5.0]]))
    removed = {"w": torch.tensor([[False, True]])}
    opts = DLTHOptions(reg_upper=1.0, update_every=1)
    pen = GrowingPenalty({"w": layer}, removed, eta=0.5, opts=opts)
    pen.attach()
    pen.steps = 1  # lambda = min(1, 0.5 * 2) = 1
    layer(torch.tensor([[1.0, 1.0]])).sum().backward()
    # loss gradient [1, 1]; + 1 * 5 on the removed entry
    assert torch.equal(layer.weight.grad, torch.tensor([[1.0, 6.0]]))
    pen.detach()
    other = GrowingPenalty({"w": layer}, removed, eta=0.5, opts=opts)
    other.load_state_dict(pen.state_dict())
    assert other.lam == 1.0


def _ctx(model: nn.Module, tmp_path, **options) -> Context:  # type: ignore[no-untyped-def]
    return sparse_context(model, tmp_path, n=48, **options)


def test_the_penalty_drains_the_chosen_weights_not_the_kept_ones(tmp_path) -> None:
    model = small_net()
    layers = {"0.weight": model[0], "3.weight": model[3]}
    g = torch.Generator().manual_seed(0)
    removed = {n: random_removal(m.weight.shape, 0.6, g) for n, m in layers.items()}
    start = {n: m.weight.detach().clone() for n, m in layers.items()}
    opts = DLTHOptions(reg_upper=5.0, update_every=1)
    pen = GrowingPenalty(layers, removed, eta=5.0 / 6, opts=opts)  # at 5 after 6 of 12 steps
    pen.attach()
    _ctx(model, None).train(model, 2, 0.05, name="x", callbacks=[pen], schedule="constant")
    pen.detach()
    assert pen.steps == 12 and pen.lam == 5.0
    for n, r in removed.items():
        w = layers[n].weight.detach()
        shrink_removed = w[r].abs().mean() / start[n][r].abs().mean()
        shrink_kept = w[~r].abs().mean() / start[n][~r].abs().mean()
        assert shrink_removed < 0.5 * shrink_kept


def test_dlth_removes_its_random_choice(tmp_path) -> None:
    model = small_net()
    method = methods.get("dlth")
    method.prune(_ctx(model, tmp_path, epochs=1, train_epochs=1))
    masks.finalize(model)
    for n, r in method.removed.items():
        w = model.get_submodule(n.rsplit(".", 1)[0]).weight
        assert torch.all(w[r] == 0) and torch.all(w[~r] != 0)
    assert method.final_lambda == pytest.approx(1.0)


def test_dlth_meets_the_target_and_resumes(tmp_path) -> None:
    model = small_net()
    options = {"epochs": 1, "train_epochs": 1}
    report = methods.get("dlth").prune(_ctx(model, tmp_path / "r", **options))
    assert abs(report.sparsity - 0.6) < 0.01
    again = small_net()
    methods.get("dlth").prune(_ctx(again, tmp_path / "r", **options))
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_dlth_refuses_a_masked_model(tmp_path) -> None:
    model = small_net()
    masks.prune(model, 0.5)
    with pytest.raises(ConfigError, match="dense model"):
        methods.get("dlth").prune(_ctx(model, tmp_path))
