"""Taylor: Molchanov et al., "Pruning Convolutional Neural Networks for Resource Efficient
Inference" (ICLR 2017).

Removing feature map ``z`` changes the loss ``C`` by about its first-order Taylor term, so the
score of channel ``k`` of a layer is

    Theta(z^k) = | 1/M * sum_m  z^k_m * dC/dz^k_m |

over the ``M`` positions of the channel's map for one example; "for a minibatch with T > 1
examples, the criterion is computed for each example separately and averaged over T" (Sec. 2.2),
and here averaged over all calibration examples. ``normalize=True`` (the paper's default) then
divides each layer's scores by their L2 norm, so layers at different depths compare.

``per_example=False`` takes the absolute value of the mean over all examples instead (the sign
of the per-example terms can then cancel); the paper's per-example form is the default. The
default loss sums cross-entropy over the batch, so each example's gradient is that of its own
loss (the pass runs in eval mode, where examples do not interact). Scores are taken for the
output of each output-side layer of a group as the graph sees it (conv, its BatchNorm, ...),
summed per unit over those layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, collect

__all__ = ["Taylor", "summed_cross_entropy", "taylor_terms"]


def summed_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed (not averaged) over the batch: the default loss of :class:`Taylor`."""
    return F.cross_entropy(output, target, reduction="sum")


def taylor_terms(act: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions of ``act * grad`` per example and channel: ``(N, C, ...)`` -> ``(N, C)``."""
    if grad is None:
        raise ValueError("the Taylor criterion needs the loss gradient")
    prod = (act.to(torch.float64) * grad.to(torch.float64)).reshape(*act.shape[:2], -1)
    return prod.mean(2)


class Taylor(ActivationCriterion):
    """First-order Taylor estimate of the loss change from removing each channel (higher = keep).

    ``batches``: ``(x, y)`` pairs (labels are needed); ``loss_fn(model(x), y)`` gives a scalar
    (default :func:`summed_cross_entropy`); ``normalize`` divides each layer's scores by their L2
    norm (default True, as in the paper); ``per_example`` takes ``|.|`` per example before
    averaging (default True, as in the paper) rather than of the average. ``model`` and
    ``max_batches`` as for :class:`~prunekit.criteria.hrank.HRank`. Parameter ``.grad`` is left
    untouched.
    """

    def __init__(
        self,
        batches: Iterable[Any],
        loss_fn: Callable[[Any, Any], torch.Tensor] = summed_cross_entropy,
        normalize: bool = True,
        *,
        per_example: bool = True,
        model: nn.Module | None = None,
        max_batches: int | None = None,
    ) -> None:
        super().__init__(batches, model=model, max_batches=max_batches)
        self.loss_fn = loss_fn
        self.normalize = normalize
        self.per_example = per_example

    def _stat(self, act: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        terms = taylor_terms(act, grad)
        return terms.abs() if self.per_example else terms

    def _loss(self, output: Any, target: Any) -> torch.Tensor:
        if target is None:
            raise ValueError("Taylor needs labelled calibration batches: (x, y) pairs")
        return self.loss_fn(output, target)

    def gather(
        self, model: nn.Module, layers: dict[str, tuple[nn.Module, int]]
    ) -> dict[str, torch.Tensor]:
        """Per-layer Taylor scores, L2-normalised per layer if ``normalize``."""
        means = collect(
            model,
            layers,
            self.batches,
            self._stat,
            loss_fn=self._loss,
            max_batches=self.max_batches,
        )
        out = {}
        for name, v in means.items():
            v = v.abs()
            if self.normalize:
                norm = v.norm()
                v = v / norm if norm > 0 else v
            out[name] = v
        return out
