"""GDP against its paper (Lin et al., IJCAI 2018): the global discriminative function scores a
filter by the first-order Taylor estimate |sum W * dL/dW| of the loss change from dropping it,
compared raw across all layers; the mask is applied so that a masked channel outputs zero and
its filter still gets a finite gradient (no blow-up behind BatchNorm)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import prunekit.methods.gdp as gdp
from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.methods.base import Context
from prunekit.targets import Target


class TwoConv(nn.Module):
    """x (2 channels, 1x1) -> c1 (2->2, 1x1) -> ReLU -> c2 (2->2, 1x1) -> ReLU -> mean -> fc
    (protected). Every filter of c1 and c2 carries 4 parameters (its own 2 and the 2 that read
    it), so one filter of either layer is the same share of the model."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 2, 1, bias=False)
        self.c2 = nn.Conv2d(2, 2, 1, bias=False)
        self.fc = nn.Linear(2, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.c1.weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 0.0]]).view(2, 2, 1, 1))
            self.c2.weight.copy_(torch.tensor([[1.0, 2.0], [0.5, 0.1]]).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.eye(2))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def test_saliency_is_the_raw_taylor_term_of_each_filter_by_hand() -> None:
    # x = (1, 1), label 1. c1 outputs z1 = (3 + 0, 1 + 0) = (3, 1); c2 outputs z2 = (1*3 + 2*1, 0.5*3 + 0.1*1) =
    # (5, 1.6) = the logits. dL/dlogits = softmax - onehot = (p, -p) with p = sigmoid(5 - 1.6).
    # c2: dL/dW2[j] = g_j * z1, so sum_k W2[j,k] dL/dW2[j,k] = g_j z2_j -> (5p, 1.6p).
    # c1: dL/dz1 = W2^T g = (1p - 0.5p, 2p - 0.1p) = (0.5p, 1.9p); dL/dW1[k, c] = dL/dz1_k x_c,
    #     so sum_c W1[k, c] dL/dW1[k, c] = z1_k dL/dz1_k -> (1.5p, 1.9p).
    p = 1 / (1 + math.exp(-3.4))
    model = TwoConv()
    x = torch.ones(1, 2, 1, 1)
    pruner = gdp.GlobalDynamicPruner(model, x, {"target_params": 4 / 14})  # one filter
    by_layer = {}
    for g in pruner.graph.groups:
        layer = next(n for n in g.out_layers if n in ("c1", "c2"))
        by_layer[layer] = g
    pruner.calibrate([(x, torch.tensor([1]))])
    sal = pruner.saliency()
    assert sal is not None
    torch.testing.assert_close(sal[by_layer["c1"].name].float(), torch.tensor([1.5 * p, 1.9 * p]))
    torch.testing.assert_close(sal[by_layer["c2"].name].float(), torch.tensor([5 * p, 1.6 * p]))
    pruner.detach()


def test_first_mask_is_the_lowest_raw_saliency_across_layers() -> None:
    # raw saliency: c1 (1.5p, 1.9p), c2 (5p, 1.6p): the global minimum is c1's filter 0, the
    # filter of largest magnitude in c1. Magnitude (global L1 min: c2's filter 1, |0.5|+|0.1|)
    # and per-layer normalised saliency (c2's filter 1: 1.6/5.25 < 1.5/2.42) pick another one.
    model = TwoConv()
    x = torch.ones(1, 2, 1, 1)
    pruner = gdp.GlobalDynamicPruner(model, x, Target("params", 4 / 14))  # one filter
    c1 = next(g for g in pruner.graph.groups if "c1" in g.out_layers)
    picks = pruner.calibrate([(x, torch.tensor([1]))])
    pruner.detach()
    assert picks == {c1.name: [0]}


def _raw_weight(module: nn.Module) -> torch.Tensor:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original  # type: ignore[union-attr,index]
    return module.weight  # type: ignore[return-value]


def test_masked_filters_behind_batchnorm_do_not_blow_up() -> None:
    torch.manual_seed(0)
    model = ConvBNNet((8, 12))
    with torch.no_grad():  # BatchNorm shifts of a trained network: a zeroed channel is not dead
        model.b1.bias.uniform_(0.2, 0.6)
        model.b2.bias.uniform_(0.2, 0.6)
    first: dict[str, torch.Tensor] = {}
    peak: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            if not module.training:
                return
            norms = _raw_weight(module).detach().flatten(1).norm(dim=1)
            first.setdefault(name, norms.clone())
            peak[name] = torch.maximum(peak.get(name, norms), norms)

        return hook

    for name in ("c1", "c2"):
        getattr(model, name).register_forward_pre_hook(hook_for(name))
    ctx = Context(
        model,
        torch.randn(2, 3, 8, 8),
        random_data(64),
        random_data(16, seed=2),
        {"target_flops": 0.5},
        batch_size=16,
        options={"epochs": 3, "lr": 0.1, "mask_interval": 2, "progress": False},
    )
    methods.get("gdp").prune(ctx)
    for name in ("c1", "c2"):
        growth = peak[name] / first[name]
        # SGD at lr 0.1 for 12 steps moves a filter by a fraction of its norm; a masked filter
        # fed the 1/sqrt(eps) gradient of a zero-variance BatchNorm channel grows many-fold
        assert float(growth.max()) < 3.0, (name, growth)
