"""Energy-constrained compression: the Eyeriss-based energy model's costs, the weighted sparse
projection, layer input masks folded into the weights, and the method end to end."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.methods.energy import (
    Hardware,
    LayerGeometry,
    cost_tensor,
    energy_projection,
    fold_input_mask,
    input_energy,
    l0_keep,
    layer_geometry,
    weight_costs,
)

CONV = LayerGeometry(d=4, g=1, positions=64, inputs=128, unfolded=1152, conv=True)
FC = LayerGeometry(d=3, g=1, positions=1, inputs=4, unfolded=4, conv=False)


def test_weight_costs_by_hand() -> None:
    # conv, 64 output positions: e_mem + ceil(64/12) e_cache + 64 e_rf + 64 e_mac
    assert weight_costs(CONV) == (200 + 6 * 6 + 64 + 3 * 64, 5 * 200)
    assert weight_costs(FC) == (200 + 6 + 1 + 3, 0.0)


def test_projection_ranks_by_energy_not_magnitude() -> None:
    weights = {"conv": torch.tensor([1.0, 0.9]), "fc": torch.tensor([0.8, 0.3])}
    costs = {n: cost_tensor(w, CONV if n == "conv" else FC) for n, w in weights.items()}
    # w^2 / cost: fc[0] 0.64/210 > conv[0] 1/492 > conv[1] 0.81/492 > fc[1] 0.09/210
    keep = energy_projection(weights, costs, count=2)
    assert keep["conv"].tolist() == [True, False] and keep["fc"].tolist() == [True, False]
    # magnitude would keep both conv weights
    by_budget = energy_projection(weights, costs, budget=210 + 492)
    assert [k.tolist() for k in by_budget.values()] == [[True, False], [True, False]]
    tight = energy_projection(weights, costs, budget=210 + 491)
    assert [k.tolist() for k in tight.values()] == [[False, False], [True, False]]
    forced = energy_projection(weights, costs, count=2, forced={"fc": torch.tensor([True, False])})
    assert forced["conv"].tolist() == [True, True] and not forced["fc"].any()


def test_weights_beyond_the_kernel_cache_pay_more() -> None:
    hw = Hardware(s2=2)
    w = torch.tensor([[[[0.5, -0.1], [0.05, 2.0]]]])
    costs = cost_tensor(w, CONV, hw).reshape(-1)
    base, extra = weight_costs(CONV, hw)
    assert costs.tolist() == [base, base + extra, base + extra, base]


def test_input_energy_by_hand() -> None:
    # Linear d=3, 4 inputs: ceil(3/14) e_cache x + 3 e_rf x + e_mem x + e_mem d
    assert input_energy(FC) == 6 * 4 + 3 * 4 + 200 * 4 + 200 * 3
    assert input_energy(FC, 0.5) == 6 * 2 + 3 * 2 + 200 * 2 + 200 * 3


def test_l0_keep_rounds_toward_keeping() -> None:
    values = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.6, 0.2, 0.8, 0.4, 1.0])
    assert l0_keep(values, 0.9).tolist() == [i != 1 for i in range(10)]
    assert l0_keep(torch.tensor([0.2, 0.1, 0.3]), 0.9).all()


def test_input_masks_fold_into_the_weights() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    m = torch.tensor([1.0, 0.0, 0.5, 0.25], dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    expected = lin(x * m)
    fold_input_mask(lin, m)
    assert torch.allclose(lin(x), expected, atol=1e-12)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2).double()
    xc = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    expected = conv(xc * m.reshape(1, -1, 1, 1))
    fold_input_mask(conv, m)
    assert torch.allclose(conv(xc), expected, atol=1e-12)


def test_layer_geometry() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(F.relu(self.conv(x)), 1))

    net = Net()
    geo = layer_geometry(
        net, {"conv.weight": net.conv, "fc.weight": net.fc}, torch.zeros(1, 2, 8, 8)
    )
    assert (geo["conv.weight"].positions, geo["conv.weight"].inputs) == (64, 128)
    assert geo["conv.weight"].unfolded == 2 * 9 * 64
    assert (geo["fc.weight"].d, geo["fc.weight"].inputs, geo["fc.weight"].conv) == (3, 256, False)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 4, 3)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc(torch.flatten(x, 1))


def test_method_meets_the_target_and_lowers_the_energy(tmp_path) -> None:
    torch.manual_seed(0)
    model = Net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,)))
    ctx = methods.Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_sparsity": 0.4},
        batch_size=8,
        options={"epochs": 1, "mask_epochs": 1, "x_budget": 0.5, "progress": False},
        work_dir=tmp_path / "work",
    )
    method = methods.get("energy")
    report = method.prune(ctx)
    masks.finalize(model)
    assert abs(report.sparsity - 0.4) < 0.01
    assert method.energy["after"] < method.energy["before"]
    assert method.input_kept["conv1.weight"] == 1.0  # one input channel: floor(0.5) = 0 dropped
    assert method.input_kept["conv2.weight"] == 0.5  # 4 channels: 2 dropped
    dropped = (model.conv2.weight == 0).all(dim=(0, 2, 3))  # their weights stayed zero
    assert int(dropped.sum()) >= 2
