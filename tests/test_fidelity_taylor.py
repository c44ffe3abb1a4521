"""Iterative Taylor pruning at a bounded cost: the graph is traced once and updated in place,
scores come from the fine-tuning updates, and the defaults take about ``iterations`` steps."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

import prunekit
import prunekit.methods
import prunekit.methods.taylor as taylor_method
from nets import ConvBNNet, random_data
from prunekit.criteria.taylor import Taylor
from prunekit.methods.retraining import batch_stream


def _ctx(model: nn.Module, data, target: dict, **options) -> prunekit.methods.Context:  # type: ignore[no-untyped-def]
    return prunekit.methods.Context(
        model,
        data.tensors[0][:1].clone(),
        data,
        data,
        target,
        calib_batches=2,
        batch_size=8,
        options={"progress": False, **options},
    )


def test_scores_from_the_updates_match_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = ConvBNNet((6, 5), classes=3).double()
    data = random_data(32, classes=3)
    data = torch.utils.data.TensorDataset(data.tensors[0].double(), data.tensors[1])
    ctx = _ctx(model, data, {"target_flops": 0.3})
    reference = copy.deepcopy(model).train()
    graph = prunekit.graph.build(model.eval(), data.tensors[0][:1])
    crit = Taylor([data.tensors])
    got = taylor_method.scores_from_updates(ctx, graph, crit, batch_stream(data, 8, 5), 1, 1e-3)
    # by hand: the one training minibatch, train mode, mean cross-entropy
    x, y = next(batch_stream(data, 8, 5))
    z = torch.relu(reference.b1(reference.c1(x))).detach().requires_grad_(True)
    out = reference.fc(torch.relu(reference.b2(reference.c2(z))).mean((2, 3)))
    (g,) = torch.autograd.grad(F.cross_entropy(out, y), z)
    raw = (z * g).flatten(2).mean(2).abs().mean(0).detach()
    torch.testing.assert_close(got["c1"], raw / raw.norm())
    assert not torch.equal(model.c1.weight, reference.c1.weight)  # the update did happen


class Wide(nn.Module):
    """a (1->64, 1x1) -relu- pool -> fc (protected): FLOPs linear in a's width."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 64, 1, bias=False)
        self.fc = nn.Linear(64, 2)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.a(x)).mean((2, 3)))


def test_defaults_take_about_iterations_steps_on_one_traced_graph(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    builds = []
    real_build = taylor_method.build
    monkeypatch.setattr(
        taylor_method, "build", lambda *a, **k: builds.append(1) or real_build(*a, **k)
    )
    model = Wide()
    method = prunekit.methods.get("taylor")
    report = method.prune(_ctx(model, random_data(32, (1, 2, 2), 2), {"target_flops": 0.5}))
    assert abs(report.flops_reduction - 0.5) <= 0.01
    assert model.a.out_channels == 32
    # 32 channels to remove in about 10 iterations: 4 per step (the paper's 1 would take 32)
    assert {sum(len(v) for v in step.values()) for step in method.history[:-1]} == {4}
    assert len(method.history) == 8
    assert len(builds) == 1  # traced once, updated in place by every removal


def test_maps_per_step_one_is_the_papers_procedure() -> None:
    torch.manual_seed(0)
    model = Wide()
    method = prunekit.methods.get("taylor")
    ctx = _ctx(model, random_data(32, (1, 2, 2), 2), {"target_flops": 0.25}, maps_per_step=1)
    method.prune(ctx)
    assert [sum(len(v) for v in step.values()) for step in method.history] == [1] * 16
