"""SOSP-H: the Gauss-Newton-vector product against an explicit Jacobian, the saliency
``|-gᵀθ_s + ½ θ_sᵀ H θ|`` worked by hand on a net where the largest filter matters least (a
magnitude rule removes the wrong channel), and the end-to-end path on a residual and a depthwise
net."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.criteria.hessian import gauss_newton_product
from prunekit.graph import build
from prunekit.methods.sosp import sosp_saliencies
from test_every_method import TinyMobileNet, TinyResNet


class TwoUnits(nn.Module):
    """x -> Linear(1 -> 2, no bias) -> Linear(2 -> 2 classes) (protected). Unit 0 has the large
    weight 3 but reaches the logits through 0.1; unit 1 has 0.5 and reaches them through 4.
    The classifier's bias puts the logits of x = 1 at 0 (p = [0.5, 0.5])."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 2, bias=False)
        self.fc = nn.Linear(2, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[3.0], [0.5]]))
            self.fc.weight.copy_(torch.tensor([[0.1, 4.0], [-0.1, -4.0]]))
            self.fc.bias.copy_(torch.tensor([-2.3, 2.3]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.a(x))


BATCH = [(torch.ones(1, 1), torch.zeros(1, dtype=torch.long))]


def test_saliency_by_hand() -> None:
    model = TwoUnits().eval()
    graph = build(model, torch.ones(1, 1))
    (group,) = graph.groups
    # J θ_0 = 0.1·3·[1, -1], J θ_1 = 4·0.5·[1, -1], J θ = 2.3·[1, -1];
    # H_z = diag(p) - ppᵀ at p = [.5, .5]: [1, -1] H_z [1, -1]ᵀ = 1
    # ½ θ_sᵀ H θ = ½ · 0.3 · 2.3 = 0.345 and ½ · 2 · 2.3 = 2.3
    second = sosp_saliencies(model, graph, BATCH, first_order=False)[group.name]
    assert torch.allclose(second, torch.tensor([0.345, 2.3], dtype=torch.float64), atol=1e-6)
    # dL/dz = p - onehot(0) = [-.5, .5]: g_0 = -0.1, g_1 = -4; -gᵀθ_s = 0.3 and 2
    both = sosp_saliencies(model, graph, BATCH, first_order=True)[group.name]
    assert torch.allclose(both, torch.tensor([0.645, 4.3], dtype=torch.float64), atol=1e-6)
    # SOSP removes the unit of the largest filter; a magnitude rule would remove unit 1
    assert int(both.argmin()) == 0
    assert int(model.a.weight.abs().flatten().argmin()) == 1


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def test_gauss_newton_product_equals_the_explicit_matrix() -> None:
    torch.manual_seed(0)
    model = Small().double()
    x = torch.randn(5, 3, dtype=torch.float64)
    params = list(model.parameters())
    vec = [torch.randn_like(p) for p in params]
    got = torch.cat([t.reshape(-1) for t in gauss_newton_product(model, params, vec, [(x, None)])])

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    shapes = [p.shape for p in params]

    def logits(theta: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        parts, off = [], 0
        for s in shapes:
            n = int(torch.tensor(s).prod())
            parts.append(theta[off : off + n].reshape(s))
            off += n
        h = torch.tanh(xi @ parts[0].T + parts[1])
        return h @ parts[2].T + parts[3]

    v = torch.cat([t.reshape(-1) for t in vec])
    want = torch.zeros_like(flat)
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t, xi=xi: logits(t, xi), flat)  # 3 x P
        p = torch.softmax(logits(flat, xi), -1)
        hz = torch.diag(p) - torch.outer(p, p)
        want += jac.T @ hz @ jac @ v
    assert torch.allclose(got, want / len(x), atol=1e-10)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_end_to_end_meets_the_flops_target(net) -> None:
    torch.manual_seed(0)
    model = net()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,)))
    x = data.tensors[0][:2]
    ctx = methods.Context(model, x, data, data, {"target_flops": 0.3}, batch_size=8)
    report = methods.get("sosp").prune(ctx)
    assert abs(report.flops_reduction - 0.3) <= 0.01
    dense = measure.count_flops(net(), x).flops
    assert abs(1 - measure.count_flops(model, x).flops / dense - 0.3) <= 0.01
