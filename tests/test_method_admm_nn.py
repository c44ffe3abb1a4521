"""ADMM-NN: hardware-aware per-layer rates (MACs per weight, break-even sparsity), the
equal-interval levels of the ADMM quantisation, and the file the run reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import prunekit
from prunekit import masks, methods
from prunekit.methods.admm_nn import (
    break_even_sparsity,
    fit_interval,
    hardware_rates,
    macs_per_weight,
    project_levels,
)


def test_rates_follow_computation_and_respect_break_even() -> None:
    sizes = {"a": 100, "b": 100, "c": 100}
    macs = {"a": 64.0, "b": 16.0, "c": 1.0}
    # fill a and b to 0.9 (180), 20 left for c = 0.2 < 0.5: c rises to 0.5 and a, b give 15 each
    rates = hardware_rates(sizes, macs, 200, 0.9, 0.5)
    assert rates == {"a": 0.75, "b": 0.75, "c": 0.5}
    # no partial layer below break-even: the rates as filled
    assert hardware_rates(sizes, macs, 150, 0.9, 0.5) == {"a": 0.9, "b": 0.6, "c": 0.0}


def test_hardware_rates_prune_where_magnitude_would_not() -> None:
    # layer a holds the largest weights but the most MACs per weight: it is pruned most
    torch.manual_seed(0)
    w = {"a": 10 * torch.randn(100), "b": torch.randn(100)}
    rates = hardware_rates({"a": 100, "b": 100}, {"a": 64.0, "b": 1.0}, 80, 0.9, 0.5)
    assert rates == {"a": 0.8, "b": 0.0}
    everything = torch.cat([w["a"], w["b"]]).abs()
    threshold = everything.sort().values[79]
    magnitude_a = float((w["a"].abs() <= threshold).float().mean())
    assert magnitude_a < 0.2  # global magnitude would prune mostly b


def test_break_even_and_macs_per_weight() -> None:
    assert break_even_sparsity(4, 4) == 0.5
    assert break_even_sparsity(5, 4) == 4 / 9

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.down = nn.Conv2d(2, 2, 3, stride=2, padding=1)
            self.fc = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.down(F.relu(self.conv(x))), 1))

    macs = macs_per_weight(Net(), torch.zeros(2, 1, 8, 8))
    assert macs == {"conv.weight": 64.0, "down.weight": 16.0, "fc.weight": 1.0}


def test_levels_and_interval_by_hand() -> None:
    values = torch.tensor([0.1, -0.2, 0.7, 2.0, -0.8])
    # q = 0.5, 3 bits: levels +-{0.5, 1.0, 1.5}, never 0
    assert project_levels(values, 0.5, 3).tolist() == [0.5, -0.5, 0.5, 1.5, -1.0]
    # from q = max/3 = 1: levels 1, 2, 3 -> least squares q = (0.9 + 4.2 + 9) / 14
    q = fit_interval(torch.tensor([0.9, 2.1, 3.0], dtype=torch.float64), 3)
    assert abs(q - 14.1 / 14) < 1e-12


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 16, 3)
        self.protected_layers = ("fc",)

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
        {"target_sparsity": 0.03},
        batch_size=8,
        options={"admm_iterations": 1, "quant_iterations": 1, "progress": False},
        work_dir=tmp_path / "work",
    )
    method = methods.get("admm_nn")
    report = method.prune(ctx)
    masks.finalize(model)
    assert abs(report.sparsity - 0.03) < 0.005
    # one pruned layer: nothing can give back the difference to break-even, the target wins
    assert round(method.rates["conv.weight"] * 72) == round(0.03 * (72 + 384))
    for name, module in (("conv.weight", model.conv), ("fc.weight", model.fc)):
        level = method.levels[name]
        kept = module.weight[module.weight != 0]
        steps = kept / level["interval"]
        assert torch.allclose(steps, steps.round(), atol=1e-4)
        assert steps.abs().max() <= 2 ** (level["bits"] - 1) - 1 + 1e-4
    model.eval()
    path = tmp_path / "model.deepc"
    method.write_result(model, path, {})
    loaded = prunekit.load(path, model=Net)
    x = torch.randn(5, 1, 4, 4)
    assert torch.equal(loaded(x), model(x))
