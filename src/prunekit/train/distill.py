"""Knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural
Network", 2015): a student learns from a teacher's softened class probabilities as well as from
the labels. Pruning uses it while fine-tuning, the unpruned model teaching its pruned copy.

Per sample, with student logits ``z_s``, teacher logits ``z_t``, label ``y``, temperature ``T``
and weight ``alpha``::

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

The ``T^2`` keeps the soft term's gradients at the same scale whatever the temperature (section
2.1 of the paper: they scale as ``1 / T^2``). Defaults: ``T = 4``, from section 3, where
temperatures of 2.5 to 4 worked best for a student much smaller than its teacher (a pruned model
is one); ``alpha = 0.9``, section 2.1's advice to give the label term "a considerably lower
weight".

:class:`Distillation` holds the two numbers; :meth:`Distillation.loss` binds a teacher and gives
the per-sample loss :func:`prunekit.train.fit` takes as ``loss=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError

__all__ = ["Distillation", "Distiller", "distillation_loss"]


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """The per-sample loss above, for logits of shape ``(batch, classes)``; shape ``(batch,)``."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    soft = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    hard = F.cross_entropy(student.float(), labels, reduction="none")
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@dataclass(frozen=True)
class Distillation:
    """Temperature ``T > 0`` and the soft term's weight ``alpha`` in [0, 1]."""

    temperature: float = 4.0
    alpha: float = 0.9

    def __post_init__(self) -> None:
        t, a = self.temperature, self.alpha
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"distillation temperature must be a number > 0, got {t!r}")
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
            raise ConfigError(f"distillation alpha must be a number in [0, 1], got {a!r}")

    def loss(self, teacher: nn.Module) -> Distiller:
        """The training loss with ``teacher`` (kept in eval mode and never updated)."""
        return Distiller(teacher, self)


class Distiller:
    """``loss(x, student_logits, labels)`` -> per-sample distillation loss; the teacher's
    logits are computed on the same batch ``x`` without gradients."""

    def __init__(self, teacher: nn.Module, config: Distillation) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.config = config

    def __call__(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        device = out.device
        if next(self.teacher.parameters(), torch.empty(0)).device != device:
            self.teacher.to(device)
        self.teacher.eval()  # a caller's .train() on a parent module must not reach it
        with torch.no_grad():
            soft_targets = self.teacher(x)
        return distillation_loss(out, soft_targets, y, self.config.temperature, self.config.alpha)
