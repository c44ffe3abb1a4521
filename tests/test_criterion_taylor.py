"""Taylor (Molchanov et al., ICLR 2017) against an independent autograd computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.criteria.taylor import Taylor


class Tiny(nn.Module):
    """conv a (2->3, 3x3) -> in-place ReLU -> conv b (3->2) -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2 * 4 * 4, 3)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.b(torch.relu_(self.a(x))), 1))


def by_hand(model: Tiny, batches: list[tuple[torch.Tensor, torch.Tensor]], per_example: bool):
    """Per channel of a: mean over examples of |mean_hw(a * dL/da)| (or |mean of the means|).
    With respect to the conv output or to the ReLU output b reads, ``z * dL/dz`` is the same."""
    terms = []
    for x, y in batches:
        z = model.a(x).detach().requires_grad_(True)
        out = model.fc(torch.flatten(model.b(torch.relu(z)), 1))
        (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), z)
        terms.append((z * g).double().mean((2, 3)))
    t = torch.cat(terms)
    return t.abs().mean(0) if per_example else t.mean(0).abs()


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    model = Tiny()
    batches = [(torch.randn(5, 2, 4, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    graph = prunekit.graph.build(model, batches[0][0][:1])
    return model, batches, graph


@pytest.mark.parametrize("per_example", [True, False])
def test_scores_match_autograd(setup, per_example: bool) -> None:  # type: ignore[no-untyped-def]
    model, batches, graph = setup
    expected = by_hand(model, batches, per_example)
    crit = Taylor(batches, normalize=False, per_example=per_example)
    got = crit(graph.group("a"))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # parameter grads untouched


def test_normalisation_divides_by_the_group_norm(setup) -> None:  # type: ignore[no-untyped-def]
    _, batches, graph = setup
    assert set(Taylor(batches).stats(graph)) == {"a", "b"}  # one vector per group
    for group in graph.groups:
        raw = Taylor(batches, normalize=False)(group)
        normed = Taylor(batches)(group)
        torch.testing.assert_close(normed, raw / raw.norm())
        torch.testing.assert_close(normed.norm(), torch.tensor(1.0, dtype=torch.float64))


def test_lowest_score_pruned_mode_and_hooks(setup) -> None:  # type: ignore[no-untyped-def]
    model, batches, _ = setup
    model.train()
    expected = by_hand(model, batches, True)
    report = prunekit.prune_channels(
        model, batches[0][0][:1], ratio=1 / 3, importance=Taylor(batches)
    )
    assert report.removed["a"] == [int(expected.argmin())]
    assert all(m.training for m in model.modules())
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks


def test_needs_labels(setup) -> None:  # type: ignore[no-untyped-def]
    _, batches, graph = setup
    with pytest.raises(ValueError, match="labelled"):
        Taylor([x for x, _ in batches])(graph.group("a"))
