"""Network Slimming and SSL at their defaults: the sparsity phase actually sparsifies (the L1
penalty pulls BatchNorm scales toward zero, the group-Lasso penalty drives whole groups to
exactly zero), slimming's lambda follows the paper per model family, and SSL removes the groups
that reached zero first."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nets import ConvBNNet, random_data
from prunekit import methods
from prunekit.methods import slimming
from prunekit.methods.base import Context
from prunekit.models import create

N, BATCH = 128, 16


def _model(seed: int = 0) -> ConvBNNet:
    torch.manual_seed(seed)
    model = ConvBNNet((32, 32))
    with torch.no_grad():  # scales and shifts of a trained network
        for bn in (model.b1, model.b2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        # channels of very different strength, as training leaves them: c1's filter i and the
        # input channel i of c2 that reads it scaled by one factor
        f = torch.empty(32).uniform_(0.05, 1.0)
        model.c1.weight.mul_(f.view(-1, 1, 1, 1))
        model.c2.weight.mul_(f.view(1, -1, 1, 1))
    return model


def _ctx(model: nn.Module, target: float, options: dict[str, Any]) -> Context:
    return Context(
        model,
        torch.randn(2, 3, 8, 8),
        random_data(N),
        random_data(16, seed=2),
        {"target_flops": target},
        batch_size=BATCH,
        options={"progress": False, **options},
    )


class GammaRecorder:
    """|gamma| of every BatchNorm at the last training-mode forward."""

    def __init__(self, model: nn.Module) -> None:
        self.last: dict[str, torch.Tensor] = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_pre_hook(self._hook(name))

    def _hook(self, name: str) -> Any:
        def hook(module: nn.BatchNorm2d, args: Any) -> None:
            if module.training:
                self.last[name] = module.weight.detach().abs().clone()

        return hook

    def mean(self) -> float:
        return float(torch.cat(list(self.last.values())).mean())


def test_slimming_penalty_pulls_gamma_toward_zero_at_the_defaults() -> None:
    means = {}
    for penalty in ("default", "off"):
        model = _model()
        rec = GammaRecorder(model)
        options = {} if penalty == "default" else {"penalty": 0.0}
        methods.get("slimming").prune(_ctx(model, 0.3, options))
        means[penalty] = rec.mean()
    # the same training with and without the penalty: the penalty alone takes |gamma| down by
    # a large share of its size (mean |gamma| starts near 1)
    assert means["off"] - means["default"] > 0.2, means


def test_slimming_lambda_follows_the_paper_per_model_family() -> None:
    # official code (Eric-mingjie/network-slimming README): 1e-4 for VGG, 1e-5 for ResNet and
    # DenseNet
    plain = ConvBNNet((8, 12))
    resnet = create("resnet20", num_classes=10)
    assert slimming.paper_lambda(plain, torch.randn(1, 3, 8, 8)) == 1e-4
    assert slimming.paper_lambda(resnet, torch.randn(1, 3, 32, 32)) == 1e-5


def test_ssl_penalty_drives_groups_to_exactly_zero_at_the_defaults() -> None:
    model = _model()
    method = methods.get("ssl")
    method.prune(_ctx(model, 0.3, {}))
    zero = sum(len(v) for v in method.zero_groups.values())
    assert zero > 0
    for name, idx in method.zero_groups.items():
        assert torch.all(method.norms[name][idx] == 0), name


def test_ssl_removes_the_zero_groups_first() -> None:
    for target in (0.15, 0.8):  # more zero groups than the target needs, or fewer
        model = _model()
        method = methods.get("ssl")
        report = method.prune(_ctx(model, target, {}))
        zero = {(g, i) for g, idx in method.zero_groups.items() for i in idx}
        removed = {(g, i) for g, idx in report.removed.items() for i in idx}
        assert zero and removed
        # all zero groups go before any other unit (the target then stops the walk inside them,
        # or continues it past them)
        assert zero <= removed or removed <= zero, (target, zero, removed)
        assert (zero <= removed) == (target == 0.8), target
