"""Bayesian Compression (group normal-Jeffreys): dropout-rate pruning, posterior moments, bit
precision from the posterior variance, and the file the run reports."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from prunekit import masks, methods
from prunekit.methods.bayesian import (
    GroupNJ,
    _variational_forward,
    layer_bits,
    posterior,
    prune_by_dropout,
    round_to_bits,
    significant_bits,
)


def test_groups_go_by_dropout_rate_not_by_magnitude() -> None:
    # a Linear 2x3: groups are its input columns; column 1 holds the largest weights but the
    # highest dropout rate, so it goes first; column 2 (size 2) would pass the count of 3, so the
    # last weight is the kept one of highest weight log-alpha (row 0 of column 0).
    weight = torch.tensor([[0.1, 5.0, 0.2], [0.3, 4.0, 0.05]])
    group_alpha = {"fc.weight": torch.tensor([-5.0, 2.0, -1.0])}
    weight_alpha = {"fc.weight": torch.tensor([[3.0, 0.0, -4.0], [-2.0, 0.0, -3.0]])}
    keep = prune_by_dropout(group_alpha, weight_alpha, {"fc.weight": 1}, 3)
    expected = torch.tensor([[False, False, True], [True, False, True]])
    assert torch.equal(keep["fc.weight"], expected)
    # magnitude pruning of 3 would have removed 0.05, 0.1 and 0.2 and kept column 1
    magnitude_keep = weight.abs() > weight.abs().reshape(-1).sort().values[2]
    assert not torch.equal(magnitude_keep, expected)


def test_group_order_spans_layers() -> None:
    group_alpha = {"a.weight": torch.tensor([0.0, 1.0]), "b.weight": torch.tensor([3.0])}
    weight_alpha = {"a.weight": torch.zeros(2, 2), "b.weight": torch.zeros(1, 2)}
    keep = prune_by_dropout(group_alpha, weight_alpha, {"a.weight": 0, "b.weight": 0}, 4)
    assert not keep["b.weight"].any()  # log alpha 3: first
    assert torch.equal(keep["a.weight"], torch.tensor([[True, True], [False, False]]))


def test_significant_bits_from_variance() -> None:
    # t bits while 2^-t > 2 v: v = 2^-10 -> 2v = 2^-9 -> t = 1..8
    v = torch.tensor([2.0**-10, 2.0**-12, 1.0, 2.0**-40])
    assert significant_bits(v).tolist() == [8, 10, 0, 23]
    keep = torch.tensor([True, True, False, False])
    assert layer_bits(v, keep) == 9  # ceil(mean(8, 10))
    assert layer_bits(torch.tensor([2.0**-10, 2.0**-11]), torch.tensor([True, True])) == 9


def test_round_to_bits_keeps_kept_weights_non_zero() -> None:
    values = torch.tensor([0.3, -0.0001, 0.0001, 0.13, 0.12, -0.4])
    keep = torch.tensor([True, True, False, True, True, True])
    out = round_to_bits(values, 2, keep)  # grid step 0.25
    assert out.tolist() == [0.25, -0.25, 0.0, 0.25, 0.25, -0.5]


def test_posterior_moments_and_dropout_rate() -> None:
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -1.0]]))
    q = GroupNJ(layer, -9.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        q.z_mu.copy_(torch.tensor([0.5, 2.0]))
        q.z_logvar.copy_(torch.log(torch.tensor([0.25, 1.0])))
        q.w_logvar.copy_(torch.log(torch.tensor([[0.1, 0.2]])))
    mean, var = posterior(layer, q)
    assert torch.allclose(mean, torch.tensor([[1.0, -2.0]]))
    # mu_z^2 var_w + var_z mu_w^2 + var_z var_w
    assert torch.allclose(var, torch.tensor([[0.25 * 0.1 + 0.25 * 4 + 0.025, 4 * 0.2 + 1 + 0.2]]))
    assert torch.allclose(
        q.log_alpha(), torch.log(torch.tensor([0.25 / 0.25, 1.0 / 4.0])), atol=1e-6
    )


def test_variational_forward_means_in_eval() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    q = GroupNJ(lin, -9.0, torch.Generator().manual_seed(0))
    lin.add_module("bayes_q", q)
    h = lin.register_forward_hook(_variational_forward(q))
    x = torch.randn(4, 3)
    lin.eval()
    assert torch.allclose(lin(x), F.linear(x * q.z_mu, lin.weight, lin.bias))
    lin.train()
    assert not torch.allclose(lin(x), lin(x))  # sampled
    h.remove()
    conv = nn.Conv1d(2, 3, 3)
    qc = GroupNJ(conv, -9.0, torch.Generator().manual_seed(0))
    h = conv.register_forward_hook(_variational_forward(qc))
    conv.eval()
    xc = torch.randn(2, 2, 7)
    plain = F.conv1d(xc, conv.weight, conv.bias)
    assert torch.allclose(conv(xc), plain * qc.z_mu.reshape(1, -1, 1))
    h.remove()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


def test_method_writes_the_file_of_the_model_it_quantised(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 1, 4, 4, generator=g), torch.randint(0, 3, (24,)))
    ctx = methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_sparsity": 0.6},
        batch_size=8,
        options={"epochs": 1, "progress": False},
        work_dir=tmp_path / "work",
    )
    method = methods.get("bayesian")
    report = method.prune(ctx)
    assert abs(report.sparsity - 0.6) < 0.01
    masks.finalize(model)
    for name, module in (("conv.weight", model.conv), ("fc.weight", model.fc)):
        bits = method.bits[name]
        w = module.weight.detach()
        steps = w / 2.0**-bits
        assert torch.equal(steps, steps.round())  # on the layer's fixed-point grid
    model.eval()
    path = tmp_path / "model.deepc"
    method.write_result(model, path, {})
    loaded = prunekit.load(path, model=Net)
    x = torch.randn(5, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
    dense = sum(p.numel() * 4 for p in Net().state_dict().values())
    assert path.stat().st_size < dense
    assert math.isfinite(sum(sum(v) for v in method.log_alpha.values()))


def test_a_finished_variational_phase_is_restored_not_retrained(tmp_path, monkeypatch) -> None:
    torch.manual_seed(0)
    initial = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,)))

    def run(model: nn.Module) -> nn.Module:
        ctx = methods.Context(
            model,
            data.tensors[0][:2],
            data,
            data,
            {"target_sparsity": 0.5},
            batch_size=8,
            options={"epochs": 1, "progress": False},
            work_dir=tmp_path / "work",
        )
        methods.get("bayesian").prune(ctx)
        masks.finalize(model)
        return model

    first = run(copy.deepcopy(initial))
    assert (tmp_path / "work" / "variational.pt").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the finished phase was trained again")

    monkeypatch.setattr("prunekit.train.loop._train_epoch", no_training)
    second = run(copy.deepcopy(initial))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
