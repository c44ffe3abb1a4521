"""The unstructured methods against their papers and official code, each on a case small enough
to work out by hand: 1xN's dense layers, block size and rearrangement under coupling; the lottery
ticket's control, theta_0 and defaults; SNIP at initialisation; DNS's per-layer thresholds and a
surgery that fires; ADMM's final hard prune; the One-Cycle curve; the bench's file sizes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import masks, methods, models
from prunekit.methods.base import Context


def _ctx(model: nn.Module, data: TensorDataset, sparsity: float, **options: Any) -> Context:
    return Context(
        model=model,
        example_input=data.tensors[0][:2],
        train_set=data,
        val_set=data,
        target={"target_sparsity": sparsity},
        batch_size=8,
        calib_batches=1,
        options={"progress": False, **options},
    )


def _images(n: int = 32, shape: tuple[int, ...] = (3, 8, 8), classes: int = 4) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def _keep(model: nn.Module, name: str) -> torch.Tensor:
    """The keep-mask of ``name`` (all True when the layer carries no mask)."""
    found = masks.get_masks(model).get(name)
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if found is None:
        return torch.ones_like(module.weight, dtype=torch.bool)
    return found.data.bool()


# ----------------------------------------------------------------------------- 1xN


class _StemDepthwiseResidual(nn.Module):
    """stem (1 -> 32) -> a (32 -> 32) -> b (32 -> 32) + stem's output -> depthwise -> fc.

    ``a``'s outputs go to ``b`` alone; ``b``'s are added to the stem's, so they are tied."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.a = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bna = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bnb = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.fc = nn.Linear(32, 4)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            # every row of a and b: even output channels large, odd ones small, so the L1 order
            # (descending) is all evens first: blocks of 16 after rearrangement are the evens and
            # the odds; without it they are 0..15 and 16..31
            for conv in (self.a, self.b):
                g = torch.Generator().manual_seed(5)
                w = torch.rand(32, 32, 9, generator=g) * 0.5 + 0.5
                w[1::2] *= 0.01
                conv.weight.copy_(w.reshape(32, 32, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bna(self.a(x)))
        x = torch.relu(self.bnb(self.b(y)) + x)
        x = torch.relu(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _kept_sets(keep: torch.Tensor) -> set[frozenset[int]]:
    """Per input channel, the set of output channels whose kernels are kept."""
    k = keep.reshape(keep.shape[0], keep.shape[1], -1).any(-1)
    return {frozenset(torch.nonzero(k[:, c]).reshape(-1).tolist()) for c in range(k.shape[1])}


def test_one_by_n_keeps_stem_and_depthwise_dense_blocks_of_16_and_one_rate() -> None:
    model = _StemDepthwiseResidual()
    report = methods.get("one_by_n").prune(_ctx(model, _images(shape=(1, 6, 6)), 0.5))
    # lmbxmu/1xN models/mobilenet_v2.py: the first conv and the depthwise convs are plain
    # nn.Conv2d, never masked
    assert _keep(model, "stem.weight").all()
    assert _keep(model, "dw.weight").all()
    # every pruned layer at the same rate (imagenet.py: pr_cfg = [pr_target] * layers)
    a, b = _keep(model, "a.weight"), _keep(model, "b.weight")
    assert (~a).float().mean() == pytest.approx((~b).float().mean())
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    # the official N is 16 (utils/options.py --N 16): each (block, input channel) is 16 kernels
    for keep in (a, b):
        assert all(len(s) % 16 == 0 for s in _kept_sets(keep))


def test_one_by_n_rearranges_only_outputs_that_no_add_ties() -> None:
    model = _StemDepthwiseResidual()
    methods.get("one_by_n").prune(_ctx(model, _images(shape=(1, 6, 6)), 0.5))
    evens, odds = frozenset(range(0, 32, 2)), frozenset(range(1, 32, 2))
    low, high = frozenset(range(16)), frozenset(range(16, 32))
    # a: rearranged by L1, so its blocks are the evens and the odds
    sets_a = _kept_sets(_keep(model, "a.weight"))
    assert sets_a <= {frozenset(), evens, odds, evens | odds}
    assert evens in sets_a
    # b: tied to the stem's outputs by the add: one order for all of them, so no rearrangement
    sets_b = _kept_sets(_keep(model, "b.weight"))
    assert sets_b <= {frozenset(), low, high, low | high}
    assert sets_b & {low, high}


def test_one_by_n_at_90_percent_leaves_the_stem_whole() -> None:
    model = _StemDepthwiseResidual()
    report = methods.get("one_by_n").prune(_ctx(model, _images(shape=(1, 6, 6)), 0.9))
    assert report.sparsity == pytest.approx(0.9, abs=0.01)
    assert _keep(model, "stem.weight").all()


# ----------------------------------------------------------------------------- lottery tickets


class _TwoConv(nn.Module):
    """conv 3 -> 8 -> BN -> ReLU -> conv 8 -> 8 -> ReLU -> pool -> fc (protected)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 4)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def test_lth_random_control_trains_the_tickets_masks_from_a_new_init() -> None:
    data = _images()
    opts = {"rate_per_round": 0.5, "round_epochs": 1, "reset": "init"}
    ticket = methods.get("lth")
    torch.manual_seed(0)
    ticket_model = _TwoConv()
    ticket.prune(_ctx(ticket_model, data, 0.8, **opts))
    control = methods.get("lth")
    torch.manual_seed(0)
    model = _TwoConv()
    control.prune(_ctx(model, data, 0.8, **opts, random_control=True))
    assert len(ticket.rounds) == len(control.rounds) == 4  # 0.5, 0.75, 0.8
    for t, c in zip(ticket.rounds[1:], control.rounds[1:], strict=True):
        for name, mask in t["masks"].items():
            assert torch.equal(mask, c["masks"][name]), f"round {t['round']}: {name}"
    # same masks, other weights: the control trained from a new draw
    assert torch.equal(model.c2.weight != 0, ticket_model.c2.weight != 0)
    assert not torch.allclose(model.c2.weight, ticket_model.c2.weight)


def test_lth_theta_0_is_the_architectures_own_initialisation() -> None:
    model = models.create("resnet20", num_classes=4, in_channels=3)
    data = _images(16, shape=(3, 8, 8))
    method = methods.get("lth")
    # one round at 20%, layer-wise, returned at its reset values: the kept weights are theta_0's
    method.prune(
        _ctx(
            model,
            data,
            0.2,
            rate_per_round=0.2,
            round_epochs=1,
            reset="init",
            scope="layer",
            train_final=False,
        )
    )
    conv = dict(model.named_modules())["layer1.0.conv1"]
    w = conv.weight.detach()
    kept = w[w != 0]
    # He-normal with fan_out = 16 * 9: std sqrt(2 / 144) = 0.118; the top 80% by magnitude of a
    # normal has an RMS of about 1.1 std. PyTorch's default (Kaiming-uniform, a = sqrt 5) would
    # give std 1 / sqrt(3 * 144) = 0.048.
    rms = float(kept.pow(2).mean().sqrt())
    assert 0.10 < rms < 0.16


def test_lth_defaults_are_the_resnet_setting_with_rewinding() -> None:
    opts = methods.get("lth").resolve({})
    # Frankle et al. (ICML 2020) find no ResNet-20 tickets at lr 0.1 when resetting to init;
    # rewinding to an early iteration finds them. open_lth cifar_resnet: lr 0.1, momentum 0.9,
    # weight decay 1e-4, steps at 80 and 120 of 160 epochs, 20% global pruning per round.
    assert opts["reset"] == "rewind"
    assert opts["lr"] == 0.1
    assert opts["rate_per_round"] == 0.2
    assert opts["scope"] == "global"
    assert opts["weight_decay"] == 1e-4


# ----------------------------------------------------------------------------- SNIP


def test_snip_prunes_at_initialisation_by_default() -> None:
    model = _TwoConv()
    with torch.no_grad():  # a "trained" model: every weight 0.3
        for conv in (model.c1, model.c2):
            conv.weight.fill_(0.3)
    method = methods.get("snip")
    report = method.prune(_ctx(model, _images(), 0.5))
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    w = model.c2.weight.detach()
    kept = w[w != 0]
    assert not torch.allclose(kept, torch.full_like(kept, 0.3))
    # variance scaling (snip-public network.py: tf.variance_scaling_initializer, fan_in, scale 1)
    # draws std sqrt(1 / fan_in) = sqrt(1 / 72) = 0.118 before pruning; the kept half is larger
    rms = float(kept.pow(2).mean().sqrt())
    assert 0.10 < rms < 0.20


def test_snip_on_the_given_weights_when_asked() -> None:
    model = _TwoConv()
    with torch.no_grad():
        for conv in (model.c1, model.c2):
            conv.weight.fill_(0.3)
    methods.get("snip").prune(_ctx(model, _images(), 0.5, init="none"))
    w = model.c2.weight.detach()
    kept = w[w != 0]
    assert torch.allclose(kept, torch.full_like(kept, 0.3))


# ----------------------------------------------------------------------------- DNS


class _TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(10, 1, bias=False)
        self.l2 = nn.Linear(1, 10, bias=False)
        self.fc = nn.Linear(10, 2)
        self.protected_layers = ("fc",)
        with torch.no_grad():
            self.l1.weight.copy_(torch.arange(1.0, 11.0).reshape(1, 10))
            self.l2.weight.copy_(
                torch.tensor([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 10.0, 100.0]).reshape(10, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_dns_each_layer_has_its_own_c_and_a_is_the_prune_threshold() -> None:
    # 40 weights, fc's 20 dense: an overall 0.15 asks 0.3 of l1 and l2, 3 weights each.
    # One c over z = (|w| - mu) / sigma for both layers would take the 6 lowest z: l1's 1..4
    # (z -1.57 .. -0.52) and l2's 1.0, 1.1 (z -0.381, -0.378): 4 and 2, not 3 and 3.
    model = _TwoLinear()
    data = TensorDataset(torch.randn(8, 10), torch.randint(0, 2, (8,)))
    method = methods.get("dns")
    method.prune(_ctx(model, data, 0.15, dns_epochs=0))
    l1, l2 = method.thresholds["l1.weight"], method.thresholds["l2.weight"]
    # official code (compress_conv_layer.cu): prune |w| <= 0.9 r, splice |w| > 1.1 r
    assert l1[1] / l1[0] == pytest.approx(1.1 / 0.9)
    assert l2[1] / l2[0] == pytest.approx(1.1 / 0.9)
    # a, the prune threshold, takes exactly 3 of each layer
    assert 3.0 < l1[0] <= 4.0
    assert 1.2 < l2[0] <= 1.3
    first = method.history[0]
    assert first["step"] == 0
    assert first["layers"] == {"l1.weight": pytest.approx(0.3), "l2.weight": pytest.approx(0.3)}
    assert method.adjusted == 0


def test_dns_surgery_fires_while_training_and_stops_at_iter_stop() -> None:
    model = _TwoConv()
    data = _images(64)
    method = methods.get("dns")
    method.prune(_ctx(model, data, 0.8, dns_epochs=2, dns_lr=0.1, iter_stop=0.5))
    steps = 2 * math.ceil(64 / 8)
    updates = method.history
    assert updates[0]["step"] == 0
    fired = [u for u in updates[1:] if u["pruned"] + u["spliced"] > 0]
    assert fired, "no mask update changed anything during training"
    assert all(u["step"] < 0.5 * steps for u in updates)
    # the final masks are the surgery's: the adjustment to the exact target moves few weights
    assert method.adjusted <= 0.05 * sum(m.weight.numel() for m in (model.c1, model.c2))


# ----------------------------------------------------------------------------- ADMM


def test_admm_hard_prunes_the_smallest_final_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _TwoConv()
    seen: dict[str, torch.Tensor] = {}
    apply = masks.apply_masks

    def spy(m: nn.Module, new: dict[str, Any], *args: Any, **kw: Any) -> Any:
        for name in new:
            module = m.get_submodule(name.rsplit(".", 1)[0])
            seen[name] = module.weight.detach().clone()
        return apply(m, new, *args, **kw)

    monkeypatch.setattr(masks, "apply_masks", spy)
    methods.get("admm").prune(
        _ctx(model, _images(64), 0.7, admm_iterations=4, lr=0.1, scope="layer")
    )
    for name in ("c1.weight", "c2.weight"):
        w, keep = seen[name].abs(), _keep(model, name)
        # |W| of every kept weight >= |W| of every pruned one
        assert float(w[keep].min()) >= float(w[~keep].max())


# ----------------------------------------------------------------------------- One-Cycle


def test_one_cycle_beta_is_the_authors_six() -> None:
    # fasterai core/schedule.py sched_onecycle(start, end, pos, alpha=14, beta=6)
    sched = masks.OneCycle(0.5, 100)

    def sig(z: float) -> float:
        return 1.0 / (1.0 + math.exp(-z))

    lo, hi = sig(-6.0), sig(14.0 - 6.0)
    for t in (10, 43, 70):
        expected = (sig(14.0 * t / 100 - 6.0) - lo) / (hi - lo)
        assert sched.get_sparsity(t) == pytest.approx(0.5 * expected, abs=1e-9)


# ----------------------------------------------------------------------------- bench


def test_bench_reports_deep_compression_bytes_only_for_the_quantised_model(
    tmp_path: Path,
) -> None:
    from prunekit.bench import load_records, parse_spec, run_spec

    spec = parse_spec(
        {
            "name": "bytes",
            "models": ["lenet5"],
            "datasets": [{"name": "digits", "image_size": 28}],
            "methods": [
                {"id": "magnitude", "options": {"rounds": 1, "retrain_epochs": 0}},
                {
                    "id": "deep_compression",
                    "options": {"prune_epochs": 0, "quant_epochs": 0},
                },
            ],
            "targets": {"sparsity": [0.5]},
            "seeds": [0],
            "baseline": {"epochs": 1},
            "finetune": {"epochs": 0},
            "measure": {"latency": False},
        }
    )
    store = tmp_path / "results.sqlite"
    summary = run_spec(spec, store, progress=False)
    assert summary.failed == 0
    records = {r.config["method"]: r.metrics for r in load_records([store])}
    assert "bytes_result_file" not in records["magnitude"]
    dc = records["deep_compression"]
    assert dc["bytes_result_file"] == dc["bytes_after"] > 0  # the file the evaluated model is
