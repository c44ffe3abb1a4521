"""Taylor: Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks for
Resource Efficient Inference" (ICLR 2017).

This is the 2017 paper (the catalogue entry ``taylor`` names it), not the same authors'
"Importance Estimation for Neural Network Pruning" (CVPR 2019), which scores BatchNorm gates by
``(gamma * dC/dgamma)^2``. Removing feature map ``z`` changes the loss ``C`` by about its
first-order Taylor term, so the score of channel ``k`` is

    Theta(z^k) = | 1/M * sum_m  z^k_m * dC/dz^k_m |

over the ``M`` positions of the channel's map for one example (paper Sec. 2.2); "for a
minibatch with T > 1 examples, the criterion is computed for each example separately and
averaged over T", here over all calibration examples. The map ``z`` is the paper's
``z_l = g_l R(z_{l-1} * w_l + b_l)``: the layer's output after the nonlinearity, i.e. the tensor
the next layer reads (:mod:`prunekit.criteria.activations`; after pooling and residual additions
too). ``normalize=True`` (the paper's default) then divides the scores by their L2 norm, so that
layers at different depths compare in one global ranking.

Coupled channels. A group of prunable channels is usually one layer's feature maps and is
normalised as one layer. Where several maps carry the same channels (the blocks of a residual
stage share them), the per-example terms of each map are averaged over those maps and the
group's vector is normalised once: one score per group, on the scale of one layer. (Summing
separately normalised per-layer scores, as a naive reading would, gives a stage of ``n`` maps
``n`` times the weight of a plain layer in the global ranking.)

``per_example=False`` takes the absolute value of the mean over all examples instead (the sign
of the per-example terms can then cancel, as in several re-implementations); the paper's
per-example form is the default. The default loss sums cross-entropy over the batch, so each
example's gradient is that of its own loss (the pass runs in eval mode, where examples do not
interact).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.criteria.activations import ActivationCriterion, Tap, collect

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
    """First-order Taylor estimate of the loss change from removing each channel's feature map
    (higher = keep).

    ``batches``: ``(x, y)`` pairs (labels are needed; at least one batch); ``loss_fn(model(x),
    y)`` gives a scalar (default :func:`summed_cross_entropy`); ``normalize`` divides each
    group's scores by their L2 norm (default True, as the paper does per layer);
    ``per_example`` takes ``|.|`` per example before averaging (default True, as in the paper)
    rather than of the average. ``model`` and ``max_batches`` as for
    :class:`~prunekit.criteria.hrank.HRank`. Parameter ``.grad`` is left untouched.
    """

    name = "Taylor"

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

    def stat(self, act: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        """Per example and unit: ``|mean(z * dC/dz)|`` (or the signed mean without
        ``per_example``)."""
        terms = taylor_terms(act, grad)
        return terms.abs() if self.per_example else terms

    def _loss(self, output: Any, target: Any) -> torch.Tensor:
        if target is None:
            raise ValueError("Taylor needs labelled calibration batches: (x, y) pairs")
        return self.loss_fn(output, target)

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        """Per-unit mean of the (absolute) Taylor terms of each tapped map."""
        return collect(
            model, taps, self.batches, self.stat, loss_fn=self._loss, max_batches=self.max_batches
        )

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """``|values|``, divided by its L2 norm if ``normalize`` (one norm per group)."""
        v = values.abs()
        if self.normalize:
            norm = v.norm()
            v = v / norm if norm > 0 else v
        return v
