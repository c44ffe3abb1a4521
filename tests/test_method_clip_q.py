"""CLIP-Q: clipping by sign, linear partitioning, quantisation to interval means, the Bayesian
optimisation of (p, bits), the rate scaling to the target, and the file the run reports."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from prunekit import masks, methods
from prunekit.methods.clip_q import (
    ClipQuantize,
    bayes_opt,
    clip_mask,
    clip_quantize,
    compression_benefit,
    partition,
    scale_rates,
)

W = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.9, -5.0, -6.0, -7.5])


def test_clipping_takes_a_fraction_of_each_sign_not_the_smallest_magnitudes() -> None:
    keep = clip_mask(W, 0.25)  # 5 positives -> 1 clipped, 3 negatives -> round(0.75) = 1
    assert keep.tolist() == [False, True, True, True, True, False, True, True]
    magnitude = W.abs() > W.abs().sort().values[1]  # 2 smallest magnitudes: 0.1 and 0.2
    assert not torch.equal(magnitude, keep)


def test_partition_and_interval_means_by_hand() -> None:
    keep = clip_mask(W, 0.25)
    # kept: negatives [-7.5, -6] (length 1.5), positives [0.2 .. 0.9] (length 0.7); 3 intervals:
    # round(3 * 1.5 / 2.2) = 2 for the negatives (width 0.75), 1 for the positives
    index = partition(W, keep, 2)
    assert index.tolist() == [-1, 2, 2, 2, 2, -1, 1, 0]
    values, keep2 = clip_quantize(W, 0.25, 2)
    assert torch.equal(keep, keep2)
    assert torch.allclose(values, torch.tensor([0, 0.4375, 0.4375, 0.4375, 0.4375, 0, -6, -7.5]))


def test_straight_through_gradient_reaches_every_weight() -> None:
    w = W.clone().requires_grad_(True)
    out = ClipQuantize(0.25, 2)(w)
    assert torch.allclose(out.detach(), clip_quantize(W, 0.25, 2)[0])
    (out * torch.arange(8.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(8.0))  # clipped weights too (they may come back)


def test_compression_benefit_and_rate_scaling() -> None:
    assert compression_benefit(100, 400, 0.5, 4) == 100 * (32 - 2) / (32 * 400)
    fewer = scale_rates({"a": 0.2, "b": 0.4}, {"a": 100, "b": 100}, 30, 1.0)
    assert abs(fewer["a"] - 0.1) < 1e-9 and abs(fewer["b"] - 0.2) < 1e-9  # halved
    # more: each moves 3/14 of the way to the cap (30 more weights over 140 of room)
    more = scale_rates({"a": 0.2, "b": 0.4}, {"a": 100, "b": 100}, 90, 1.0)
    assert abs(more["a"] - (0.2 + 0.8 * 3 / 14)) < 1e-9
    assert abs(more["b"] - (0.4 + 0.6 * 3 / 14)) < 1e-9
    zero = scale_rates({"a": 0.0, "b": 0.0}, {"a": 100, "b": 300}, 200, 0.99)
    assert abs(zero["a"] - 0.5) < 1e-9 and abs(zero["b"] - 0.5) < 1e-9


def test_bayesian_optimisation_finds_the_minimum_of_a_smooth_objective() -> None:
    calls = []

    def objective(p: float, b: int) -> float:
        calls.append((p, b))
        return (p - 0.5) ** 2 + 0.01 * (b - 4) ** 2

    p_grid = np.round(np.linspace(0, 1, 11), 6)
    p, b, history = bayes_opt(objective, p_grid, np.arange(2, 9), init=3, iterations=12, seed=0)
    assert len(history) == len(calls) == 15 and len(set(calls)) == 15  # no point twice
    assert abs(p - 0.5) <= 0.1 and 3 <= b <= 5


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 16, 3)
        self.protected_layers = ("conv",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


def test_method_writes_the_file_of_the_model_it_quantised(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 1, 4, 4, generator=g), torch.randint(0, 3, (24,)))
    options = {"epochs": 1, "bo_init": 2, "bo_iterations": 2, "calib_batches": 1}
    ctx = methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_sparsity": 0.4},
        batch_size=8,
        options={**options, "progress": False},
        work_dir=tmp_path / "work",
    )
    method = methods.get("clip_q")
    report = method.prune(ctx)
    assert abs(report.sparsity - 0.4) < 0.02
    assert (tmp_path / "work" / "clip_q_search.json").exists()  # a resumed run reuses it
    assert method.theta["conv.weight"]["p"] == 0.0  # protected: quantised, not clipped
    masks.finalize(model)
    for name, module in (("conv.weight", model.conv), ("fc.weight", model.fc)):
        bits = method.theta[name]["bits"]
        distinct = torch.unique(module.weight[module.weight != 0])
        assert distinct.numel() <= 2**bits - 1
    model.eval()
    path = tmp_path / "model.deepc"
    method.write_result(model, path, {})
    loaded = prunekit.load(path, model=Net)
    x = torch.randn(5, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
