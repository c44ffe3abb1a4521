"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, https://arxiv.org/abs/1708.06519).

The paper's defining computation, in two steps (the runner fine-tunes afterwards):

1. **Sparsity training.** The loss gains ``lambda * sum |gamma|`` over the scale factor ``gamma``
   of every BatchNorm channel; its subgradient ``lambda * sign(gamma)`` is added to each
   ``gamma``'s gradient (here by a gradient hook on every BatchNorm weight, removed afterwards).
2. **Global threshold.** Channels are ranked by the *raw* ``|gamma|`` across all layers at once
   (no per-layer normalisation) and every channel below one global threshold is removed; the
   threshold is the one whose removal meets the run's FLOPs or params target.

Defaults and options (``ctx.options``):

* ``slimming_lambda`` (1e-4): the paper grid-searches ``lambda`` over {1e-3, 1e-4, 1e-5} on
  CIFAR and reports 1e-4 for VGGNet and 1e-5 for ResNet and DenseNet; 1e-4 is used here for
  every model unless set (pass 1e-5 for the paper's ResNet/DenseNet setting).
* ``sparsity_epochs`` (3), ``sparsity_lr`` (0.01), ``sparsity_weight_decay`` (1e-4, the paper's
  weight decay): the paper trains from scratch with the penalty (160 epochs on CIFAR); here the
  penalty continues training of the given model for a few epochs, SGD with a step schedule
  (lr / 10 at 50% and 75% of training, as in the paper).

Deviations a reader should know:

* A channel carried by several BatchNorm layers (a residual stream) scores the **sum** of their
  ``|gamma|``; channels carried by no BatchNorm score ``+inf`` and are never removed (the paper
  prunes only channels that have a scaling factor).
* Every group keeps at least one channel (the paper's "a layer must keep a channel").
* If the unit that crosses the target overshoots it by more than the tolerance (one channel of a
  wide layer can be several percent of a small model), the walk continues past it in threshold
  order, skipping groups whose next channel would overshoot — the same rule as
  :func:`prunekit.prune.prune_channels`.
* Mixed precision is not used in the sparsity phase: a gradient hook sees *scaled* gradients
  under AMP, which would shrink the penalty by the loss scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.graph.core import Site
from prunekit.methods.base import Context, Method, register_method
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import TrainConfig, fit

DEFAULT_LAMBDA = 1e-4
DEFAULT_EPOCHS = 3
DEFAULT_LR = 0.01
DEFAULT_WEIGHT_DECAY = 1e-4


def batchnorm_scales(model: nn.Module) -> list[nn.Parameter]:
    """The scale factors ``gamma`` (weights) of every affine BatchNorm layer of ``model``."""
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]


def add_l1_penalty(model: nn.Module, lam: float) -> list[RemovableHandle]:
    """Register on each BatchNorm ``gamma`` a hook adding ``lam * sign(gamma)`` to its gradient,
    the subgradient of ``lam * sum |gamma|``. Returns the handles; ``handle.remove()`` undoes it."""

    def hook_for(w: nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda g: g + lam * torch.sign(w.detach())

    return [w.register_hook(hook_for(w)) for w in batchnorm_scales(model)]


def sparsity_train(model: nn.Module, ctx: Context, opts: dict[str, Any]) -> None:
    """Train ``model`` in place on ``ctx.train_set`` with the L1 penalty on BatchNorm scales
    (``opts``: :attr:`NetworkSlimming.defaults` as :meth:`~prunekit.methods.Method.options`
    resolves them)."""
    lam = opts["slimming_lambda"]
    if lam < 0 or not math.isfinite(lam):
        raise ConfigError(f"slimming_lambda must be a finite number >= 0, got {lam!r}")
    config = TrainConfig(
        epochs=opts["sparsity_epochs"],
        batch_size=ctx.batch_size,
        lr=opts["sparsity_lr"],
        weight_decay=opts["sparsity_weight_decay"],
        schedule="step",
        seed=ctx.seed,
    )
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    handles = add_l1_penalty(model, lam)
    try:
        fit(model, ctx.train_set, config, progress=False)
    finally:
        for h in handles:
            h.remove()
        model.to(device)  # fit may have moved it to the accelerator


def _gamma(site: Site) -> torch.Tensor | None:
    m = site.module
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
        return m.weight.detach().abs()
    return None


def _carries(site: Site) -> torch.Tensor | None:
    gamma = _gamma(site)
    return None if gamma is None else torch.ones_like(gamma)


def gamma_scores(graph: Graph) -> dict[str, torch.Tensor]:
    """Per group, each unit's raw ``|gamma|`` summed over the BatchNorm layers carrying it;
    ``+inf`` for units that no BatchNorm carries."""
    out: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        has_bn = g.values(_carries)
        scores = g.values(_gamma)
        out[g.name] = torch.where(has_bn > 0, scores, torch.full_like(scores, math.inf))
    return out


def global_threshold(
    graph: Graph,
    scores: dict[str, torch.Tensor],
    *,
    target_flops: float | None = None,
    target_params: float | None = None,
) -> dict[str, list[int]]:
    """Units to remove, ``{group name: indices}``: the lowest raw scores across all groups, as
    many as it takes to remove ``target_flops`` or ``target_params`` (a fraction) of the dense
    model within :data:`prunekit.prune.TOLERANCE`. Every group keeps at least one unit; units
    scoring ``+inf`` are never removed."""
    return select_channels(
        graph,
        importance=lambda g: scores[g.name],
        scope="global",
        normalize=False,  # one threshold on raw |gamma| across layers, as in the paper
        target_flops=target_flops,
        target_params=target_params,
    )


def prune_by_gamma(
    model: nn.Module,
    example_input: Any,
    *,
    target_flops: float | None = None,
    target_params: float | None = None,
) -> PruneReport:
    """Remove, in place, the channels of ``model`` under one global threshold on raw BatchNorm
    ``|gamma|`` chosen to meet the target; report as :func:`prunekit.prune.prune_channels`."""
    was_training = model.training
    model.eval()  # tracing and FLOP counting must not update BatchNorm running statistics
    try:
        return _prune_by_gamma(model, example_input, target_flops, target_params)
    finally:
        model.train(was_training)


def _prune_by_gamma(
    model: nn.Module,
    example_input: Any,
    target_flops: float | None,
    target_params: float | None,
) -> PruneReport:
    graph = build(model, example_input)
    dense = graph.plan([])
    picks = global_threshold(
        graph, gamma_scores(graph), target_flops=target_flops, target_params=target_params
    )
    return remove_selected(graph, picks, dense)


@register_method("slimming")
class NetworkSlimming(Method):
    """Network Slimming (Liu et al., ICCV 2017): sparsity training with ``lambda * sum |gamma|``
    on BatchNorm scales (``lambda`` 1e-4 by default, option ``slimming_lambda``; 3 epochs,
    option ``sparsity_epochs``; lr 0.01, option ``sparsity_lr``), then removal of the channels
    below one global threshold on raw ``|gamma|`` that meets the target. See the module
    docstring for the details and deviations."""

    defaults: ClassVar[dict[str, Any]] = {
        "slimming_lambda": DEFAULT_LAMBDA,
        "sparsity_epochs": DEFAULT_EPOCHS,
        "sparsity_lr": DEFAULT_LR,
        "sparsity_weight_decay": DEFAULT_WEIGHT_DECAY,
    }

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if not batchnorm_scales(ctx.model):
            raise ConfigError("slimming needs a model with affine BatchNorm layers")
        if opts["sparsity_epochs"] > 0:
            sparsity_train(ctx.model, ctx, opts)
        target = ctx.target.require("flops", "params", method=self.id)
        return prune_by_gamma(ctx.model, ctx.example_input, **target.as_dict())


__all__ = [
    "NetworkSlimming",
    "add_l1_penalty",
    "batchnorm_scales",
    "gamma_scores",
    "global_threshold",
    "prune_by_gamma",
    "sparsity_train",
]
