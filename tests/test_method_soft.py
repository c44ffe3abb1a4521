"""SFP and FPGM: the soft step zeroes exactly the selection, zeroed filters keep training, the
final removal preserves the soft-pruned model's outputs and meets the target."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nets import ConvBNNet, random_data
from prunekit import measure, methods
from prunekit.methods.soft_pruning import SoftPruner
from prunekit.train import TrainConfig, fit


def _config(epochs: int, lr: float = 0.05) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=lr, batch_size=16, device="cpu", seed=0)


def _layers(pruner: SoftPruner, name: str) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    modules = dict(pruner.model.named_modules())
    conv = next(modules[n] for n in pruner.graph.group(name).out_layers if n.startswith("c"))
    bn = next(modules[n] for n in pruner.graph.group(name).out_layers if n.startswith("b"))
    return conv, bn  # type: ignore[return-value]


def test_step_zeroes_exactly_the_selected_filters() -> None:
    model = ConvBNNet((8, 12))
    x = torch.randn(2, 3, 8, 8)
    pruner = SoftPruner(model, x, {"target_flops": 0.4}, "l2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    picks = pruner.step()
    assert picks and pruner.history == [picks]
    sizes = {len(v) / pruner.graph.group(n).size for n, v in picks.items()}
    assert max(sizes) - min(sizes) <= 0.25  # one rate per layer, up to single-filter rounding
    touched: set[str] = set()
    for name, idx in picks.items():
        conv, bn = _layers(pruner, name)
        keep = [i for i in range(conv.out_channels) if i not in idx]
        norms = before[f"{_name(model, conv)}.weight"].flatten(1).norm(dim=1)
        assert norms[idx].max() <= norms[keep].min()  # lowest L2 norms go
        key = f"{_name(model, conv)}.weight"  # the filters only: BatchNorm is left alone
        touched.add(key)
        assert torch.all(conv.weight[idx] == 0)
        assert torch.equal(conv.weight[keep], before[key][keep])
        assert torch.equal(bn.weight, before[f"{_name(model, bn)}.weight"])
    for key, value in model.state_dict().items():
        if key not in touched:
            assert torch.equal(value, before[key]), key


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


def test_zeroed_filters_keep_training_and_can_recover() -> None:
    model = ConvBNNet((8, 12))
    pruner = SoftPruner(model, torch.randn(2, 3, 8, 8), {"target_flops": 0.4}, "l2")
    seen: dict[str, Any] = {}

    def probe(event: str, state: dict[str, Any]) -> None:
        # first step of epoch 2: look at the filters zeroed at the end of epoch 1
        if event == "step_end" and state["epoch"] == 2 and "after" not in seen:
            picks = pruner.history[0]
            seen["after"] = {
                n: _layers(pruner, n)[0].weight[idx].detach().abs().sum().item()
                for n, idx in picks.items()
            }

    fit(model, random_data(64), _config(2), progress=False, callbacks=[pruner.callback, probe])
    assert len(pruner.history) == 2
    assert all(v > 0 for v in seen["after"].values())  # updated after being zeroed


def test_final_model_is_smaller_and_computes_the_zeroed_model_outputs() -> None:
    model = ConvBNNet((8, 12)).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    pruner = SoftPruner(model, x, {"target_flops": 0.5}, "l2")
    picks = pruner.step()
    for name, idx in picks.items():  # the reference: the final selection zeroed whole
        pruner.graph.group(name).zero(idx)
    model.eval()
    soft_out = model(x)
    report = pruner.finish()
    assert report.removed == picks  # zeroed filters score lowest, so the selection is stable
    for change in report.groups:
        assert change.after == change.before - len(report.removed.get(change.name, []))
    assert sorted(c.after for c in report.groups) == sorted(
        (model.c1.out_channels, model.c2.out_channels)
    )
    assert model.c1.out_channels < 8 and model.c2.out_channels < 12
    assert torch.all(model.c1.weight.flatten(1).norm(dim=1) > 0)  # the zeroed ones are gone
    assert torch.allclose(model(x), soft_out, atol=1e-12)
    assert measure.count_params(model).total == report.params_after


def test_sfp_method_meets_the_flops_target() -> None:
    model = ConvBNNet((8, 12))
    x = torch.randn(1, 3, 8, 8)
    dense = measure.count_flops(model, x).flops
    ctx = methods.Context(
        model,
        x,
        random_data(64),
        random_data(16),
        {"target_flops": 0.5},
        batch_size=16,
        options={"soft_epochs": 1, "progress": False},
    )
    report = methods.get("sfp").prune(ctx)
    measured = measure.count_flops(model, x).flops
    assert measured == report.flops_after
    assert abs(measured / dense - 0.5) <= 0.02
    assert model(x).shape == (1, 4)


class Line(nn.Module):
    """One 1x1 conv with five one-weight filters 1, 2, 3, 4, 20 and a protected classifier.

    L2 removes the smallest filter (1); FPGM the one nearest the median (3)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 5, 1, bias=False)
        self.fc = nn.Linear(5, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0, 20.0]).view(5, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.a(x), 1))


def test_fpgm_method_uses_the_geometric_median_and_sfp_the_norm() -> None:
    kept = {}
    for method in ("sfp", "fpgm"):
        model = Line()
        x = torch.randn(1, 1, 1, 1)
        # 17 params: a 5, fc 12; one filter of a costs 3 of them
        ctx = methods.Context(
            model,
            x,
            random_data(64),
            random_data(64),
            {"target_params": 3 / 17},
            options={"soft_epochs": 0},
        )
        report = methods.get(method).prune(ctx)
        assert report.params_after == 14
        kept[method] = model.a.weight.flatten().tolist()
    assert kept["sfp"] == [2.0, 3.0, 4.0, 20.0]
    assert kept["fpgm"] == [1.0, 2.0, 4.0, 20.0]
