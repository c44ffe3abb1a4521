"""Knowledge distillation during fine-tuning: the loss on cases worked out by hand, the training
loop's loss hook, and a pruning run whose fine-tuning learns from the unpruned model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit import workflow
from prunekit.errors import ConfigError
from prunekit.train import TrainConfig, TrainResult, fit
from prunekit.train import distill as distill_mod
from prunekit.train.distill import Distillation, distillation_loss


def test_loss_by_hand_at_temperature_one() -> None:
    # teacher softmax [3/4, 1/4], student uniform, label 0
    student = torch.zeros(1, 2)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    ce = math.log(2.0)
    got = distillation_loss(student, teacher, torch.tensor([0]), temperature=1.0, alpha=0.5)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(0.5 * kl + 0.5 * ce, rel=1e-6)


def test_loss_by_hand_at_temperature_two() -> None:
    # logits / 2: teacher softmax [sqrt3, 1] / (1 + sqrt3); the soft term is scaled by T^2 = 4,
    # the label term is the plain cross-entropy at T = 1
    student = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    s3 = math.sqrt(3.0)
    p = [s3 / (1 + s3), 1 / (1 + s3)]
    kl0 = p[0] * math.log(p[0] / 0.5) + p[1] * math.log(p[1] / 0.5)
    q = [math.e / (math.e + 1), 1 / (math.e + 1)]  # student [2, 0] / 2
    kl1 = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    ce1 = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    got = distillation_loss(student, teacher, torch.tensor([1, 0]), temperature=2.0, alpha=0.9)
    assert got[0].item() == pytest.approx(0.9 * 4 * kl0 + 0.1 * math.log(2.0), rel=1e-6)
    assert got[1].item() == pytest.approx(0.9 * 4 * kl1 + 0.1 * ce1, rel=1e-6)


def test_student_equal_to_teacher_pays_only_the_label_term() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 0])
    got = distillation_loss(logits, logits, labels, temperature=3.0, alpha=0.25)
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(got, 0.75 * ce)


@pytest.mark.parametrize(
    ("temperature", "alpha", "match"),
    [
        (0.0, 0.5, "temperature"),
        (-1.0, 0.5, "temperature"),
        (2.0, 1.5, "alpha"),
        (2.0, True, "alpha"),
    ],
)
def test_bad_settings_are_refused(temperature: float, alpha: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Distillation(temperature, alpha)


def _data(teacher: nn.Module, n: int = 256) -> TensorDataset:
    """Inputs whose labels are random, while ``teacher`` has its own (learnable) answer."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 6, generator=g)
    return TensorDataset(x, torch.randint(0, 3, (n,), generator=g))


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x).argmax(1) == b(x).argmax(1)).float().mean().item()


def test_fit_learns_from_the_teacher_not_the_labels() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(6, 3)
    with torch.no_grad():
        teacher.weight.mul_(4.0)  # confident answers
    data = _data(teacher)
    config = TrainConfig(epochs=12, batch_size=32, lr=0.1, seed=0)
    students = {}
    for alpha in (0.0, 1.0):
        torch.manual_seed(1)
        student = nn.Linear(6, 3)
        fit(student, data, config, progress=False, loss=Distillation(2.0, alpha).loss(teacher))
        students[alpha] = student
    x = data.tensors[0]
    # labels only: the random labels carry nothing about the teacher (about chance, 1/3);
    # soft targets only: the student becomes the teacher
    assert _agreement(students[1.0], teacher, x) > 0.95
    assert _agreement(students[0.0], teacher, x) < 0.6
    assert all(not p.requires_grad for p in teacher.parameters())


def test_alpha_zero_is_plain_training() -> None:
    data = _data(nn.Linear(6, 3))
    config = TrainConfig(epochs=2, batch_size=32, lr=0.1, seed=0)
    weights = []
    for loss in (None, Distillation(4.0, 0.0).loss(nn.Linear(6, 3))):
        torch.manual_seed(1)
        model = nn.Linear(6, 3)
        fit(model, data, config, progress=False, loss=loss)
        weights.append(model.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1])


class _Recorder:
    """Stands in for ``fit`` inside :func:`prunekit.workflow.run_pruning` (no training): keeps
    the loss each call was given and applies it once to a batch, as the loop would."""

    def __init__(self) -> None:
        self.losses: list[object] = []

    def __call__(self, model, train_set, config, *, loss=None, **kw):  # type: ignore[no-untyped-def]
        self.losses.append(loss)
        if loss is not None:
            x, y = next(iter(torch.utils.data.DataLoader(train_set, batch_size=8)))
            assert loss(x, model(x), y).shape == (8,)
        return TrainResult()


def _run(monkeypatch: pytest.MonkeyPatch, **kw: object) -> tuple[dict, list[object]]:
    recorder = _Recorder()
    monkeypatch.setattr(workflow, "fit", recorder)
    config = workflow.PruneConfig(
        model="lenet5", data="digits", epochs=1, finetune_epochs=1, target_flops=0.5, **kw
    )
    return workflow.run_pruning(config, progress=False, latency=False), recorder.losses


def test_pruning_run_distils_from_the_unpruned_model(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics, losses = _run(monkeypatch, distill=True, distill_temperature=3.0, distill_alpha=0.7)
    baseline_loss, finetune_loss = losses  # the baseline trains on labels only
    assert baseline_loss is None
    assert isinstance(finetune_loss, distill_mod.Distiller)
    assert (finetune_loss.config.temperature, finetune_loss.config.alpha) == (3.0, 0.7)
    # the teacher is the model as it was before pruning, the student the pruned one
    teacher_params = sum(p.numel() for p in finetune_loss.teacher.parameters())
    assert teacher_params == metrics["params_before"] > metrics["params_after"]


def test_pruning_run_without_distill_uses_the_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    _, losses = _run(monkeypatch)
    assert losses == [None, None]
    with pytest.raises(ConfigError, match="temperature"):
        _run(monkeypatch, distill=True, distill_temperature=0.0)
