"""The lottery heroes (RISE): the mask comes from the ticket trained from the early network W^k,
not from the weights given or from W^k; while the heroes train, every other weight stays at its
W^k value (update rule (2)), weight decay included; with ``final="zero"`` those weights go and
the target sparsity is met; a rerun in the same folder restores every phase."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.methods.base import Context
from prunekit.methods.zero_shot import lock_outside, unlock


class Dense(nn.Linear):
    pass


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = Dense(6, 12)
        self.fc2 = Dense(12, 12)
        self.head = Dense(12, 3)
        self.protected_layers = ("head",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _ctx(model: nn.Module, work_dir=None, **options) -> Context:
    g = torch.Generator().manual_seed(4)
    data = TensorDataset(torch.randn(48, 6, generator=g), torch.randint(0, 3, (48,), generator=g))
    return Context(
        model,
        data[0][0].unsqueeze(0),
        data,
        data,
        {"target_sparsity": 0.6},
        batch_size=8,
        options={"progress": False, "warmup_epochs": 1, "epochs": 1, **options},
        work_dir=work_dir,
    )


def test_lock_holds_the_locked_entries_through_sgd_with_weight_decay() -> None:
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.25, -1.0]]))
    start = layer.weight.detach().clone()
    heroes = torch.tensor([[True, False, False], [False, True, True]])
    lock_outside(layer, {"weight": heroes})
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.ones(4, 3)).pow(2).sum().backward()
        opt.step()
    unlock(layer, ["weight"])
    w = layer.weight.detach()
    assert torch.equal(w[~heroes], start[~heroes])  # held exactly, in spite of weight decay
    assert (w[heroes] != start[heroes]).all()  # the heroes trained


def test_mask_from_the_trained_ticket_and_others_held_at_w_k() -> None:
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.2)  # "trained" weights the method must discard
    method = methods.get("zero_shot")
    report = method.prune(_ctx(model, final="keep"))
    ticket, rewind, heroes = (method.record[k] for k in ("ticket", "rewind", "heroes"))
    assert set(heroes) == {"fc1.weight", "fc2.weight"}
    # the global top 40% of |W^f| over the pruned layers (72 + 144 weights; 60% of all 252
    # weights is 151.2 zeros, all from those layers: 151 pruned, 65 kept)
    flat = torch.cat([ticket[n].abs().flatten() for n in heroes])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(65).indices] = True
    assert torch.equal(torch.cat([heroes[n].flatten() for n in heroes]), keep)
    # magnitude at W^k would have chosen another mask
    at_k = torch.cat([rewind[n].abs().flatten() for n in heroes])
    by_k = torch.zeros_like(keep)
    by_k[at_k.topk(65).indices] = True
    assert not torch.equal(by_k, keep)
    # update rule (2): outside the mask every weight is still its W^k value; heroes moved
    for name, mask in heroes.items():
        w = model.get_parameter(name).detach()
        assert torch.equal(w[~mask], rewind[name][~mask])
        assert (w[mask] != rewind[name][mask]).float().mean() > 0.9
    assert report.sparsity < 0.01  # final="keep": nothing is zero
    assert method.at_initialisation
    assert rewind["fc1.weight"].std() > 0.05  # drawn afresh, not the constant given weights


def test_final_zero_removes_the_locked_weights_and_meets_the_target() -> None:
    torch.manual_seed(0)
    kept = MLP()
    methods.get("zero_shot").prune(_ctx(kept, final="keep"))
    torch.manual_seed(0)
    model = MLP()
    method = methods.get("zero_shot")
    report = method.prune(_ctx(model))
    assert report.sparsity == pytest.approx(151 / 252, abs=1e-9)
    model = masks.finalize(model)
    for name, mask in method.record["heroes"].items():
        w = model.get_parameter(name).detach()
        assert (w[~mask] == 0).all()
        assert torch.equal(w[mask], kept.get_parameter(name).detach()[mask])


def test_a_rerun_in_the_same_folder_restores_every_phase(tmp_path) -> None:
    torch.manual_seed(0)
    first = MLP()
    methods.get("zero_shot").prune(_ctx(first, work_dir=tmp_path))
    assert sorted(p.name for p in tmp_path.glob("phase*.pt")) == [
        "phase1.pt",
        "phase2.pt",
        "phase3.pt",
    ]
    torch.manual_seed(3)
    second = MLP()
    method = methods.get("zero_shot")
    steps: list[int] = []
    method.callbacks = [lambda event, state: steps.append(1) if event == "step_end" else None]
    method.prune(_ctx(second, work_dir=tmp_path))
    assert steps == []  # every phase restored from its checkpoint, none trained again
    a, b = masks.finalize(first).state_dict(), masks.finalize(second).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
