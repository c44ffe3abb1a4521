"""Lottery tickets (reset / rewind / random control), ADMM (projection, dual step, penalty
gradient), budgeted retraining (linear decay per step) and BIMP with ALLR: hand-worked cases and
each method end to end."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods
from prunekit.errors import ConfigError
from prunekit.methods.admm import admm_dual_update, admm_penalty_hooks, admm_project
from prunekit.methods.base import Context
from prunekit.methods.bimp import BudgetedIMP, allr_initial_lr, bimp_schedule, relative_norm_drop
from prunekit.methods.lth import lth_schedule
from prunekit.train import TrainConfig, fit


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )  # weights 108 + 144 + 12 = 264


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 10), nn.ReLU(), nn.Linear(10, 4))  # weights 80 + 40


def _images(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )


def _vectors(n: int = 32, dim: int = 8, classes: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(2)
    return TensorDataset(
        torch.randn(n, dim, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def _ctx(model: nn.Module, data: TensorDataset, sparsity: float, **options) -> Context:
    return Context(
        model=model,
        example_input=data[0][0].unsqueeze(0),
        train_set=data,
        val_set=data,
        target={"target_sparsity": sparsity},
        batch_size=16,  # 32 samples: 2 optimizer steps per epoch
        seed=0,
        options={"progress": False, **options},
    )


def _reset_by_hand(model: nn.Module, seed: int) -> nn.Module:
    """theta_0 as documented: reset_parameters() of each module in order under manual_seed."""
    ref = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in ref.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return ref


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _assert_ticket_equals(pruned: nn.Module, ref_state: dict[str, torch.Tensor]) -> None:
    """Surviving weights equal ``ref_state`` exactly, pruned ones are 0; every other parameter
    and buffer equals ``ref_state`` exactly."""
    found = masks.get_masks(pruned)
    for name, layer in _layers(pruned).items():
        keep = found[f"{name}.weight"].data
        expected = torch.where(keep, ref_state[f"{name}.weight"], torch.zeros(()))
        assert torch.equal(layer.weight.detach(), expected)
        assert bool((layer.weight.detach()[~keep] == 0).all())
        assert torch.equal(layer.bias.detach(), ref_state[f"{name}.bias"])
    bn = pruned[1]
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(bn, key).detach(), ref_state[f"1.{key}"])


# ------------------------------------------------------------------------------ lth


def test_lth_schedule_by_hand() -> None:
    # 1 - 0.5^r: 0.5, 0.75, 0.875; the next (0.9375) passes 0.9, so the last round is 0.9
    assert lth_schedule(0.9, 0.5) == pytest.approx([0.5, 0.75, 0.875, 0.9])
    assert lth_schedule(0.5, 0.2) == pytest.approx([0.2, 0.36, 0.488, 0.5])
    assert lth_schedule(0.2, 0.2) == pytest.approx([0.2])
    assert lth_schedule(0.0, 0.2) == []


def test_lth_rounds_follow_geometric_sparsity_and_end_at_target(tmp_path) -> None:
    method = methods.get("lth")
    ctx = _ctx(_mlp(), _vectors(), 0.9, rate_per_round=0.5, round_epochs=1, lr=0.01)
    report = method.prune(ctx)
    # 120 weights: 60, 90, 105 pruned after rounds 1-3 (1 - 0.5^r), 108 (0.9) after the last
    kept = [120, 60, 30, 15, 12]
    assert [r["round"] for r in method.rounds] == [0, 1, 2, 3, 4]
    assert [r["sparsity"] for r in method.rounds] == pytest.approx([1 - k / 120 for k in kept])
    assert [sum(int(m.sum()) for m in r["masks"].values()) for r in method.rounds[1:]] == kept[1:]
    for prev, cur in zip(method.rounds[1:], method.rounds[2:], strict=False):
        for name, m in cur["masks"].items():  # a pruned weight never comes back
            assert not bool((m & ~prev["masks"][name]).any())
    assert all(isinstance(r["val_top1"], float) for r in method.rounds)
    assert report.sparsity == pytest.approx(0.9)
    assert ctx.model(torch.randn(2, 8)).shape == (2, 4)

    path = tmp_path / "rounds.json"
    method.save_rounds(path)
    saved = json.loads(path.read_text())
    assert saved["method"] == "lth"
    assert [r["round"] for r in saved["rounds"]] == [0, 1, 2, 3, 4]
    assert saved["rounds"][4]["masks"]["0.weight"]["total"] == 80
    assert sum(m["kept"] for m in saved["rounds"][4]["masks"].values()) == 12


def test_lth_reset_init_gives_exact_initial_values() -> None:
    model = _conv()
    theta_0 = _reset_by_hand(model, seed=0).state_dict()
    ctx = _ctx(model, _images(), 0.5, rate_per_round=0.5, round_epochs=1, lr=0.01)
    ctx.options.update(reset="init", train_final=False)
    report = methods.get("lth").prune(ctx)
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    _assert_ticket_equals(ctx.model, theta_0)


def test_lth_rewind_restores_values_at_step_k() -> None:
    model = _conv()
    theta_0 = _reset_by_hand(model, seed=0).state_dict()
    # the values after k = 1 step of the first training, from an independent run of fit with
    # the training documented for lth (SGD, momentum 0.9, weight decay 1e-4, step schedule)
    ref = _reset_by_hand(model, seed=0)
    at_k: dict[str, torch.Tensor] = {}

    def capture(event: str, state: dict) -> None:
        if event == "step_end" and state["step"] == 1:
            at_k.update({k: v.detach().clone() for k, v in state["model"].state_dict().items()})

    config = TrainConfig(
        epochs=1, batch_size=16, lr=0.01, weight_decay=1e-4, schedule="step", seed=0
    )
    fit(ref, _images(), config, progress=False, callbacks=[capture])

    ctx = _ctx(model, _images(), 0.5, rate_per_round=0.5, round_epochs=1, lr=0.01)
    ctx.options.update(reset="rewind", rewind_steps=1, train_final=False)
    methods.get("lth").prune(ctx)
    _assert_ticket_equals(ctx.model, at_k)
    assert not torch.equal(at_k["0.weight"], theta_0["0.weight"])  # k steps did move it


def test_lth_random_reinit_keeps_mask_with_new_values() -> None:
    model = _conv()
    runs = {}
    for control in (False, True):
        ctx = _ctx(copy.deepcopy(model), _images(), 0.5, rate_per_round=0.5, round_epochs=1)
        ctx.options.update(reset="init", random_control=control, train_final=False, lr=0.01)
        methods.get("lth").prune(ctx)
        runs["random" if control else "init"] = ctx.model
    mask_init, mask_random = masks.get_masks(runs["init"]), masks.get_masks(runs["random"])
    assert mask_init.keys() == mask_random.keys()
    assert all(mask_init[n] == mask_random[n] for n in mask_init)  # same ticket structure
    theta_0 = _reset_by_hand(model, seed=0).state_dict()
    fresh = _reset_by_hand(model, seed=1).state_dict()  # documented: drawn under seed + 1
    _assert_ticket_equals(runs["random"], fresh)
    for name, layer in _layers(runs["random"]).items():
        keep = mask_random[f"{name}.weight"].data
        assert not bool((layer.weight.detach()[keep] == theta_0[f"{name}.weight"][keep]).any())


def test_lth_bad_options() -> None:
    with pytest.raises(ConfigError, match="reset"):
        methods.get("lth").prune(_ctx(_mlp(), _vectors(), 0.5, reset="bogus"))
    with pytest.raises(ConfigError, match="reset"):  # the control is random_control=True
        methods.get("lth").prune(_ctx(_mlp(), _vectors(), 0.5, reset="random"))
    with pytest.raises(ConfigError, match="rate_per_round"):
        methods.get("lth").prune(_ctx(_mlp(), _vectors(), 0.5, rate_per_round=1.0))
    ctx = _ctx(_mlp(), _vectors(), 0.5, reset="rewind", rewind_steps=50, round_epochs=1)
    with pytest.raises(ConfigError, match="rewind_steps"):  # one round is 2 steps
        methods.get("lth").prune(ctx)
    with pytest.raises(ConfigError, match="target_sparsity"):
        methods.get("lth").prune(_ctx(_mlp(), _vectors(), 1.0))


# ------------------------------------------------------------------------------ admm


def test_admm_projection_keeps_top_k_ties_by_position() -> None:
    t = {"a": torch.tensor([[1.0, -2.0, 2.0, 3.0]])}
    z, keep = admm_project(t, 0.5, "layer")
    # k = 2: 3 and one of the tied |2|s survive; the earlier tied entry (index 1) is dropped
    assert keep["a"].tolist() == [[False, False, True, True]]
    assert z["a"].tolist() == [[0.0, 0.0, 2.0, 3.0]]
    # global: one k = 2 over [2, 1 | 2, 5]: drop 1, then the first 2
    z, keep = admm_project(
        {"a": torch.tensor([2.0, 1.0]), "b": torch.tensor([-2.0, 5.0])}, 0.5, "global"
    )
    assert keep["a"].tolist() == [False, False]
    assert keep["b"].tolist() == [True, True]
    assert z["b"].tolist() == [-2.0, 5.0]


def test_admm_dual_update_by_hand() -> None:
    u = {"w": torch.tensor([0.5, -1.0])}
    w = {"w": torch.tensor([2.0, 3.0])}
    z = {"w": torch.tensor([2.0, 0.0])}
    assert admm_dual_update(u, w, z)["w"].tolist() == [0.5, 2.0]  # U + W - Z


def test_admm_penalty_gradient_is_rho_w_minus_z_plus_u() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    z = {"w": torch.tensor([1.0, 0.0, 3.0])}
    u = {"w": torch.tensor([0.5, 0.5, -1.0])}
    handles = admm_penalty_hooks({"w": w}, z, u, lambda: 0.1)
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    # [1, 2, 3] + 0.1 * ([1, 2, 3] - [1, 0, 3] + [0.5, 0.5, -1]) = [1.05, 2.25, 2.9]
    assert w.grad.tolist() == pytest.approx([1.05, 2.25, 2.9])
    for h in handles:
        h.remove()
    w.grad = None
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0]


def test_admm_end_to_end() -> None:
    method = methods.get("admm")
    ctx = _ctx(_conv(), _images(), 0.5, admm_iterations=2)
    report = method.prune(ctx)
    assert abs(report.sparsity - 0.5) <= 0.01
    assert all(s == pytest.approx(0.5, abs=0.01) for s in report.layers.values())  # layer scope
    assert [h["rho"] for h in method.history] == pytest.approx([1e-3, 2e-3])
    assert set(masks.get_masks(ctx.model)) == {"0.weight", "3.weight", "6.weight"}
    assert ctx.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="rho"):
        methods.get("admm").prune(_ctx(_conv(), _images(), 0.5, rho=0.0))


# ------------------------------------------------------------------------------ budgeted


def test_budgeted_lr_decays_linearly_to_zero_over_the_budget() -> None:
    method = methods.get("budgeted")
    seen: list[tuple[int, float]] = []
    method.callbacks.append(
        lambda event, state: (
            seen.append((state["step"], state["optimizer"].param_groups[0]["lr"]))
            if event == "step_end"
            else None
        )
    )
    ctx = _ctx(_mlp(), _vectors(), 0.5, budget_epochs=2, lr=0.01)
    report = method.prune(ctx)
    # T = 2 epochs x 2 steps = 4; after step n the rate for the next step is 0.01 * (1 - n / 4)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [lr for _, lr in seen] == pytest.approx([0.0075, 0.005, 0.0025, 0.0])
    assert abs(report.sparsity - 0.5) <= 0.01


def test_budgeted_end_to_end() -> None:
    ctx = _ctx(_conv(), _images(), 0.6, budget_epochs=1, scope="layer")
    report = methods.get("budgeted").prune(ctx)
    assert abs(report.sparsity - 0.6) <= 0.01
    assert masks.get_masks(ctx.model)  # attached for the runner's fine-tuning
    assert ctx.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="'epochs'"):
        methods.get("budgeted").prune(_ctx(_conv(), _images(), 0.6, budget_epochs=0))


# ------------------------------------------------------------------------------ bimp


def test_bimp_cycle_sparsities_and_epochs_by_hand() -> None:
    # 1 - 0.125^(j/3): 1 - 0.5, 1 - 0.25, 1 - 0.125
    assert bimp_schedule(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    assert bimp_schedule(0.3, 1) == [0.3]
    assert BudgetedIMP.cycle_epochs(5, 3) == [1, 2, 2]
    assert BudgetedIMP.cycle_epochs(3, 3) == [1, 1, 1]


def test_allr_initial_lr_by_hand() -> None:
    before = {"a": torch.tensor([3.0, 4.0])}
    after = {"a": torch.tensor([0.0, 4.0])}
    assert relative_norm_drop(before, after) == pytest.approx(0.6)  # 3 / 5
    # d = 0.6 / sqrt(0.5) = 0.848528...; lr0 = 0.1 * d inside [0.001, 0.1]
    assert allr_initial_lr(0.6, 0.5, 0.1, 0.01) == pytest.approx(0.0848528137)
    assert allr_initial_lr(0.9, 0.25, 0.1, 0.01) == pytest.approx(0.1)  # d = 1.8, capped
    assert allr_initial_lr(0.01, 0.5, 0.1, 0.5) == pytest.approx(0.05)  # floor 0.5 * 0.1
    assert allr_initial_lr(0.0, 0.0, 0.1, 0.02) == pytest.approx(0.002)


def test_bimp_allr_start_for_a_crafted_weight_and_linear_decay() -> None:
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    method = methods.get("bimp")
    seen: list[float] = []
    method.callbacks.append(
        lambda event, state: (
            seen.append(state["optimizer"].param_groups[0]["lr"]) if event == "step_end" else None
        )
    )
    ctx = _ctx(model, _vectors(dim=2, classes=2), 0.75, cycles=2, budget_epochs=2)
    report = method.prune(ctx)
    # cycle 1 prunes half (1 and -2): n = sqrt(5 / 30), p = 0.5, d = sqrt(1/3), lr0 = 0.1 * d
    first = method.history[0]
    assert first["pruned_fraction"] == pytest.approx(0.5)
    assert first["relative_norm_drop"] == pytest.approx(math.sqrt(5 / 30))
    assert first["lr0"] == pytest.approx(0.1 / math.sqrt(3))
    assert [h["sparsity"] for h in method.history] == pytest.approx([0.5, 0.75])
    # each cycle: 1 epoch = 2 steps; after step n of T = 2 the rate is lr0 * (1 - n / 2)
    lr0s = [h["lr0"] for h in method.history]
    assert seen == pytest.approx([lr0s[0] / 2, 0.0, lr0s[1] / 2, 0.0])
    assert report.sparsity == pytest.approx(0.75)


def test_bimp_end_to_end() -> None:
    method = methods.get("bimp")
    ctx = _ctx(_conv(), _images(), 0.7, cycles=3, budget_epochs=3)
    report = method.prune(ctx)
    assert abs(report.sparsity - 0.7) <= 0.01
    assert [h["sparsity"] for h in method.history] == pytest.approx(
        [1 - 0.3 ** (1 / 3), 1 - 0.3 ** (2 / 3), 0.7], abs=0.005
    )
    assert all(0.1 / 200 <= h["lr0"] <= 0.1 for h in method.history)
    assert ctx.model(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="'epochs' of bimp must be >= cycles"):
        methods.get("bimp").prune(_ctx(_conv(), _images(), 0.7, cycles=3, budget_epochs=2))
