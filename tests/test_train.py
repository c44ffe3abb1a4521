"""Tests of prunekit.train: reproducibility, exact resume, checkpoints, schedules, evaluation."""

from __future__ import annotations

import math
import os
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from prunekit.errors import CheckpointError, ConfigError, MissingFileError
from prunekit.train import (
    LRFactor,
    TrainConfig,
    build_loss,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    load_checkpoint,
)
from prunekit.train.sampling import GlobalBatchSampler

# ---------------------------------------------------------------------------- fixtures


def tiny_cnn(seed: int = 0, classes: int = 4, batchnorm: bool = True) -> nn.Module:
    """Two convs (with BatchNorm unless told) and a linear head on 1x8x8 inputs."""
    torch.manual_seed(seed)
    norm = nn.BatchNorm2d if batchnorm else nn.Identity
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        norm(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        norm(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


def learnable_data(n: int = 64, classes: int = 4, seed: int = 123) -> TensorDataset:
    """Random images labelled by which quadrant is brightest: learnable by a small CNN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    quads = torch.stack(
        [x[:, 0, :4, :4], x[:, 0, :4, 4:], x[:, 0, 4:, :4], x[:, 0, 4:, 4:]], dim=1
    ).mean(dim=(2, 3))
    return TensorDataset(x, quads.argmax(dim=1) % classes)


class AugmentedDataset(Dataset):
    """Adds noise and random flips drawn from torch's *global* RNG in ``__getitem__``."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.base[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + 0.1 * torch.randn_like(x), y


def cfg(**kw) -> TrainConfig:
    base = {"epochs": 2, "batch_size": 16, "lr": 0.05, "device": "cpu"}
    return TrainConfig(**{**base, **kw})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Interrupt(Exception):
    pass


# ---------------------------------------------------------------------------- reproducibility


def test_same_seed_gives_identical_weights_and_other_seed_differs():
    data = AugmentedDataset(learnable_data())
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        model = tiny_cnn()
        fit(model, data, cfg(seed=seed), progress=False)
        runs[name] = weights(model)
    assert_same_weights(runs["a"], runs["b"])
    assert not torch.equal(runs["a"]["0.weight"], runs["c"]["0.weight"])


# ---------------------------------------------------------------------------- resume


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
@pytest.mark.parametrize("interrupt", ["step_end", "epoch_end"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, augment, interrupt):
    data = learnable_data(60)  # 60 / 16: a short last batch in every epoch
    data = AugmentedDataset(data) if augment else data
    config = cfg(epochs=4, schedule="cosine", warmup_epochs=1)

    model_a = tiny_cnn()
    result_a = fit(model_a, data, config, checkpoint=tmp_path / "a.pt", progress=False)

    def crash(event, state):
        # step_end: die in the middle of epoch 3; epoch_end: die after epoch 2, before its save.
        if event == interrupt == "step_end" and state["step"] == 10:
            raise Interrupt
        if event == interrupt == "epoch_end" and state["epoch"] == 2:
            raise Interrupt

    model_b = tiny_cnn()
    with pytest.raises(Interrupt):
        fit(model_b, data, config, checkpoint=tmp_path / "b.pt", callbacks=[crash], progress=False)
    saved_epoch = load_checkpoint(tmp_path / "b.pt")["epoch"]
    assert saved_epoch == (2 if interrupt == "step_end" else 1)

    model_b = tiny_cnn(seed=99)  # a fresh process would rebuild the model; weights come from disk
    result_b = fit(model_b, data, config, checkpoint=tmp_path / "b.pt", progress=False)

    assert_same_weights(weights(model_a), weights(model_b))
    assert [r["train_loss"] for r in result_a.history] == [
        r["train_loss"] for r in result_b.history
    ]
    assert [r["epoch"] for r in result_b.history] == [1, 2, 3, 4]


def test_resume_false_starts_over(tmp_path):
    data = learnable_data()
    fit(tiny_cnn(), data, cfg(epochs=1), checkpoint=tmp_path / "c.pt", progress=False)
    model = tiny_cnn()
    result = fit(
        model, data, cfg(epochs=1), checkpoint=tmp_path / "c.pt", resume=False, progress=False
    )
    assert len(result.history) == 1
    reference = tiny_cnn()
    fit(reference, data, cfg(epochs=1), progress=False)
    assert_same_weights(weights(model), weights(reference))


def test_resuming_a_finished_run_trains_no_further(tmp_path):
    data = learnable_data()
    model = tiny_cnn()
    first = fit(model, data, cfg(), val_set=data, checkpoint=tmp_path / "f.pt", progress=False)
    done = weights(model)
    again = fit(model, data, cfg(), val_set=data, checkpoint=tmp_path / "f.pt", progress=False)
    assert_same_weights(done, weights(model))
    assert again.history == first.history
    assert again.final == first.final


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_contents(tmp_path):
    model = tiny_cnn()
    model.prunekit_arch = {"name": "tiny", "widths": [4, 8]}
    config = cfg(epochs=2)
    fit(model, learnable_data(), config, checkpoint=tmp_path / "k.pt", progress=False)
    ckpt = load_checkpoint(tmp_path / "k.pt")
    assert ckpt["arch"] == {"name": "tiny", "widths": [4, 8]}
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * 4
    assert TrainConfig.from_dict(ckpt["config"]) == config
    assert_same_weights(ckpt["model"], weights(model))
    assert len(ckpt["history"]) == 2 and ckpt["version"] >= 1
    assert {"torch", "numpy", "python", "cuda"} <= set(ckpt["rng"][0])
    assert "state" in ckpt["optimizer"] and "last_epoch" in ckpt["scheduler"]
    torch.load(tmp_path / "k.pt", weights_only=True)  # plain data only


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "atomic.pt"
    real_save = torch.save
    calls = []

    def flaky_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"half a checkpoint")  # some bytes hit the disk before the crash
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        fit(tiny_cnn(), learnable_data(), cfg(epochs=3), checkpoint=path, progress=False)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["atomic.pt"]  # no temporary file left behind


def test_corrupt_and_foreign_checkpoints_are_rejected(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="expected a prunekit checkpoint") as e:
        load_checkpoint(garbage)
    assert str(garbage) in str(e.value)

    good = tmp_path / "good.pt"
    fit(tiny_cnn(), learnable_data(), cfg(epochs=1), checkpoint=good, progress=False)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.pt"):
        load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="expected a prunekit checkpoint"):
        load_checkpoint(foreign)

    # fit refuses to overwrite a corrupt checkpoint it was asked to resume from
    with pytest.raises(CheckpointError, match=r"garbage\.pt"):
        fit(tiny_cnn(), learnable_data(), cfg(), checkpoint=garbage, progress=False)


def test_missing_checkpoint(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(MissingFileError, match=r"nope\.pt"):
        load_checkpoint(path)


def test_resume_with_different_config_names_the_fields(tmp_path):
    path = tmp_path / "m.pt"
    fit(tiny_cnn(), learnable_data(), cfg(epochs=3), checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match=r"lr.*weight_decay|weight_decay.*lr") as e:
        fit(
            tiny_cnn(),
            learnable_data(),
            cfg(epochs=3, lr=0.01, weight_decay=0.0),
            checkpoint=path,
            progress=False,
        )
    assert "m.pt" in str(e.value) and "epochs" not in str(e.value)
    # eval_every cannot change the result, so it may differ
    fit(tiny_cnn(), learnable_data(), cfg(epochs=3, eval_every=2), checkpoint=path, progress=False)


def test_resume_into_a_differently_shaped_model(tmp_path):
    path = tmp_path / "s.pt"
    fit(tiny_cnn(), learnable_data(), cfg(epochs=2), checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        fit(tiny_cnn(classes=5), learnable_data(), cfg(epochs=2), checkpoint=path, progress=False)


# ---------------------------------------------------------------------------- schedules


def lrs(schedule: str, total: int, warmup: int = 0, **kw) -> list[float]:
    f = LRFactor(schedule, total_steps=total, warmup_steps=warmup, **kw)
    return [f(s) for s in range(total)]


def test_schedule_values_by_hand():
    assert lrs("constant", 4) == [1, 1, 1, 1]
    assert lrs("step", 8, milestones=(0.5, 0.75), gamma=0.1) == pytest.approx(
        [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    # cosine over 4 steps: (1 + cos(pi * s/4)) / 2
    assert lrs("cosine", 4) == pytest.approx(
        [1, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    )
    assert lrs("linear", 4) == pytest.approx([1, 0.75, 0.5, 0.25])
    # 2 warm-up steps (1/2, 2/2), then linear over the remaining 4
    assert lrs("linear", 6, warmup=2) == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25])
    assert lrs("cosine", 6, warmup=2)[:3] == pytest.approx([0.5, 1, 1])


def test_scheduler_drives_optimizer_lr_and_round_trips():
    model = nn.Linear(2, 2)
    config = cfg(epochs=4, lr=0.2, schedule="step", milestones=(0.5,), gamma=0.5)
    opt = build_optimizer(model, config)
    sched = build_scheduler(opt, config, steps_per_epoch=2)  # 8 steps, drop at step 4
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.2, 0.2, 0.2, 0.2, 0.1, 0.1])
    opt2 = build_optimizer(model, config)
    sched2 = build_scheduler(opt2, config, steps_per_epoch=2)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert sched2.last_epoch == 6 and opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_history_records_scheduled_lr():
    result = fit(
        tiny_cnn(), learnable_data(), cfg(epochs=4, lr=0.1, schedule="linear"), progress=False
    )
    # 4 steps per epoch, 16 in all: the last step of epoch e uses lr * (1 - (4e - 1) / 16)
    assert [r["lr"] for r in result.history] == pytest.approx(
        [0.1 * (1 - (4 * e - 1) / 16) for e in range(1, 5)]
    )


# ---------------------------------------------------------------------------- optimisation


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adam", 0.03)])
def test_optimizers_reduce_loss(optimizer, lr):
    data = learnable_data(128)
    model = tiny_cnn()
    before = evaluate(model, data)["loss"]
    fit(model, data, cfg(epochs=15, optimizer=optimizer, lr=lr, weight_decay=0.0), progress=False)
    after = evaluate(model, data)
    assert after["loss"] < 0.8 * before  # chance level is ln 4 = 1.39
    assert after["top1"] > 55


def test_label_smoothing_matches_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    eps = 0.2
    logp = logits.log_softmax(dim=1)
    nll = -logp.gather(1, target[:, None]).squeeze(1)
    expected = (1 - eps) * nll + eps * (-logp.mean(dim=1))
    got = build_loss(cfg(label_smoothing=eps))(logits, target)
    assert torch.allclose(got, expected)


def test_fit_reports_smoothed_loss():
    """One full-batch step with a negligible lr: the reported loss is the smoothed loss at init."""
    data = learnable_data()
    x, y = data.tensors
    for eps in (0.0, 0.3):
        model = tiny_cnn(batchnorm=False)
        with torch.no_grad():
            logp = model(x).log_softmax(dim=1)
        nll = -logp.gather(1, y[:, None]).squeeze(1)
        expected = ((1 - eps) * nll + eps * (-logp.mean(dim=1))).mean().item()
        result = fit(
            model, data, cfg(epochs=1, batch_size=64, lr=1e-12, label_smoothing=eps), progress=False
        )
        assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_weight_decay_is_applied():
    """Plain SGD, one step: w1 = w0 - lr * (grad + wd * w0), so the decayed run differs by
    exactly lr * wd * w0 from the undecayed one."""
    data = learnable_data()
    lr, wd = 0.1, 0.5
    w0 = weights(tiny_cnn())
    out = {}
    for decay in (0.0, wd):
        model = tiny_cnn()
        fit(
            model,
            data,
            cfg(
                epochs=1,
                batch_size=64,
                lr=lr,
                momentum=0.0,
                weight_decay=decay,
                schedule="constant",
            ),
            progress=False,
        )
        out[decay] = weights(model)
    for k in ("0.weight", "8.weight", "8.bias"):
        assert torch.allclose(out[wd][k], out[0.0][k] - lr * wd * w0[k], atol=1e-6), k
        assert not torch.allclose(out[wd][k], out[0.0][k])


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field_name,value",
    [
        ("epochs", 0),
        ("batch_size", -4),
        ("optimizer", "rmsprop"),
        ("lr", -1),
        ("momentum", 1.5),
        ("weight_decay", -0.1),
        ("schedule", "exp"),
        ("milestones", (0.75, 0.5)),
        ("milestones", (0.5, 1.5)),
        ("gamma", 0.0),
        ("warmup_epochs", 11),
        ("label_smoothing", 1.0),
        ("seed", -1),
        ("device", "toaster"),
        ("amp", "yes"),
        ("num_workers", -1),
        ("eval_every", 0),
        ("epochs", 2.5),
        ("lr", float("nan")),
        ("nesterov", 1),
    ],
)
def test_config_validation_names_field_and_value(field_name, value):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field_name: value})
    msg = str(e.value)
    assert msg.startswith(field_name) and repr(value) in msg and "must be" in msg


def test_nesterov_needs_sgd_with_momentum():
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(nesterov=True, momentum=0.0)
    with pytest.raises(ConfigError, match="nesterov"):
        TrainConfig(nesterov=True, optimizer="adam")
    TrainConfig(nesterov=True)


def test_config_dict_round_trip_and_unknown_key():
    config = TrainConfig(lr=1, milestones=[0.3, 0.6])  # coerced to float / tuple
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.milestones == (0.3, 0.6)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_every_config_field_has_help_and_a_simple_type():
    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f.name
        assert f.type in (int, float, str, bool, tuple[float, ...]), f.name


def test_batch_size_must_divide_world_size():
    with pytest.raises(ValueError, match="not divisible"):
        GlobalBatchSampler(10, 5, world_size=2)


# ---------------------------------------------------------------------------- evaluate


class Logits(nn.Module):
    """The input *is* the logits, so the accuracy of a data set is known by construction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_evaluate_known_top1_top5_and_loss():
    logits = torch.arange(10.0).repeat(10, 1)  # every row ranks class 9 first, then 8, 7, ...
    # top-5 is {9, 8, 7, 6, 5}: top-1 hits 3 of 10, top-5 hits 8 of 10
    labels = torch.tensor([9, 9, 9, 8, 7, 6, 5, 5, 0, 1])
    data = TensorDataset(logits, labels)
    result = evaluate(Logits(), data, batch_size=3)
    assert result["top1"] == pytest.approx(30.0)
    assert result["top5"] == pytest.approx(80.0)
    assert result["n"] == 10
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item())


def test_evaluate_without_top5_for_few_classes_and_restores_mode():
    data = TensorDataset(torch.eye(3), torch.tensor([0, 1, 0]))
    model = Logits().train()
    result = evaluate(model, data)
    assert result["top1"] == pytest.approx(200 / 3)
    assert "top5" not in result
    assert model.training


# ---------------------------------------------------------------------------- fit API


def test_fit_result_and_callbacks():
    data = learnable_data(60)  # 4 steps per epoch
    events = []

    def mask_first_filter(event, state):
        events.append((event, state.get("step"), state["epoch"]))
        if event == "step_end":  # the way pruning re-applies masks after each update
            with torch.no_grad():
                state["model"][0].weight[0].zero_()

    model = tiny_cnn()
    result = fit(
        model,
        data,
        cfg(epochs=2, eval_every=5),
        val_set=data,
        callbacks=[mask_first_filter],
        progress=False,
    )
    assert [e for e in events if e[0] == "step_end"] == [
        ("step_end", s, 1 + (s - 1) // 4) for s in range(1, 9)
    ]
    assert [e for e in events if e[0] == "epoch_end"] == [("epoch_end", 4, 1), ("epoch_end", 8, 2)]
    assert torch.count_nonzero(model[0].weight[0]) == 0
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert "val_top1" not in result.history[0]  # eval_every=5, but the last epoch is evaluated
    assert {"train_loss", "train_acc", "lr", "time_s", "val_top1"} <= set(result.history[1])
    assert result.final == evaluate(model, data, batch_size=16)
    assert result.train_time_s > 0 and result.images_per_s > 0


def test_amp_on_cpu_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="amp=True is ignored"):
        fit(tiny_cnn(), learnable_data(), cfg(epochs=1, amp=True), progress=False)


def test_progress_bar_runs(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    fit(tiny_cnn(), learnable_data(), cfg(epochs=1), progress=True)
    assert "epoch 1/1" in capsys.readouterr().err


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("n", [64, 70, 65])
def test_global_batches_do_not_depend_on_world_size(n):
    single = GlobalBatchSampler(n, 16, seed=3)
    single.set_epoch(2)
    batches = list(single)
    for world in (2, 4):
        ranks = [GlobalBatchSampler(n, 16, world_size=world, rank=r, seed=3) for r in range(world)]
        for s in ranks:
            s.set_epoch(2)
        per_rank = [list(s) for s in ranks]
        assert all(len(p) == len(batches) for p in per_rank)  # same step count on every rank
        for t, batch in enumerate(batches):
            real = [s.step_counts(t) for s in ranks]
            union = [i for r in range(world) for i in per_rank[r][t][: real[r][0]]]
            assert union == batch
            assert all(g == len(batch) for _, g in real)
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_sample_order_depends_on_seed_and_epoch_only():
    a, b = GlobalBatchSampler(50, 10, seed=1), GlobalBatchSampler(50, 10, seed=1)
    list(a)  # history of a does not matter
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    b.set_epoch(0)
    assert list(a) != list(b)
    assert list(GlobalBatchSampler(50, 10, seed=2)) != list(GlobalBatchSampler(50, 10, seed=1))
