"""Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017, https://arxiv.org/abs/1708.06519; official code
``Eric-mingjie/network-slimming``).

The paper's defining computation, in two steps (the runner fine-tunes afterwards):

1. **Sparsity training.** The loss gains ``lambda * sum |gamma|`` over the scale factor ``gamma``
   of every BatchNorm channel; its subgradient ``lambda * sign(gamma)`` is added to each
   ``gamma``'s gradient before the optimiser step (official ``main.py``, ``updateBN``; here a
   gradient hook on every BatchNorm weight, removed afterwards).
2. **Global threshold.** Channels are ranked by the *raw* ``|gamma|`` across all layers at once
   (no per-layer normalisation) and every channel below one global threshold is removed; the
   threshold is the one whose removal meets the run's FLOPs or params target.

Defaults and their sources:

* ``lambda`` per model family, as the official README runs it (``main.py -sr --s``): ``1e-4``
  for VGG, ``1e-5`` for ResNet and DenseNet (:func:`paper_lambda`: a network whose channel
  groups are produced by more than one layer (residual additions) or read together with others
  (concatenation) counts as ResNet / DenseNet, any other as VGG).
* The official sparsity training runs 160 epochs of SGD at lr 0.1 (momentum 0.9, weight decay
  1e-4, batch 64), lr / 10 at 50% and 75% (``main.py``). On CIFAR-10 that is
  ``782 * (80 * 0.1 + 40 * 0.01 + 40 * 0.001) = 6600`` in summed learning rate, so the penalty
  pulls each ``gamma`` toward zero by ``lambda * 6600`` in all (0.66 for VGG, 0.066 for ResNet).
  That phase costs 160 epochs of training (on this CPU, ResNet-20 on digits-32: about 20 minutes;
  CIFAR-10: many hours). Here the phase continues training of the given model for ``epochs``
  (default 5) epochs at the official lr 0.1, step schedule, momentum and weight decay, and the
  default ``penalty`` (None) is the family's lambda scaled by ``6600 / (summed lr of this
  phase)``: the penalty's total pull on each ``gamma`` is the paper's, reached in a few minutes.
  A number given as ``penalty`` is used as it is.

Deviations a reader should know:

* The paper trains from scratch with the penalty; here it continues training of a trained model
  over a short phase with a proportionally larger ``lambda`` (above).
* A channel carried by several BatchNorm layers (a residual stream) scores the **sum** of their
  ``|gamma|``; channels carried by no BatchNorm score ``+inf`` and are never removed (the paper
  prunes only channels that have a scaling factor).
* The official code prunes a fraction of the channels (``--percent``); here the threshold meets a
  FLOPs or params target. Every group keeps at least one channel (the paper's "a layer must keep
  a channel").
* If the unit that crosses the target overshoots it by more than the tolerance (one channel of a
  wide layer can be several percent of a small model), the walk continues past it in threshold
  order, skipping groups whose next channel would overshoot — the same rule as
  :func:`prunekit.prune.prune_channels`.
* Mixed precision is not used in the sparsity phase: a gradient hook sees *scaled* gradients
  under AMP, which would shrink the penalty by the loss scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import TrainConfig
from prunekit.train.schedules import summed_lr

LAMBDA_OPTION = "penalty"
LAMBDA_VGG = 1e-4  # official README: main.py -sr --s 0.0001 --arch vgg
LAMBDA_RESNET_DENSENET = 1e-5  # official README: --s 0.00001 --arch resnet / densenet
# official main.py on CIFAR-10: ceil(50000 / 64) steps x (80 x 0.1 + 40 x 0.01 + 40 x 0.001)
PAPER_LR_SUM = math.ceil(50000 / 64) * (80 * 0.1 + 40 * 0.01 + 40 * 0.001)
DEFAULT_EPOCHS = 5  # prunekit: a few minutes on a CPU (the paper: 160)
DEFAULT_LR = 0.1  # official main.py --lr 0.1
DEFAULT_WEIGHT_DECAY = 1e-4  # official main.py --weight-decay 1e-4
MOMENTUM = 0.9  # official main.py --momentum 0.9


@dataclass(frozen=True)
class SlimmingOptions(Options):
    """Network Slimming's sparsity-training phase."""

    renamed: ClassVar[dict[str, str]] = {
        "slimming_lambda": "penalty",
        "sparsity_epochs": "epochs",
        "sparsity_lr": "lr",
        "sparsity_weight_decay": "weight_decay",
    }

    penalty: float | None = option(
        None,
        help="lambda of the L1 penalty on BatchNorm scales; None: the official lambda of the "
        "model's family, scaled so the phase pulls each gamma as far as the official 160 epochs",
        source="official README (main.py -sr --s): 1e-4 VGG, 1e-5 ResNet and DenseNet",
        low=0,
    )
    epochs: int = option(
        DEFAULT_EPOCHS,
        help=SHARED["epochs"] + " with the penalty (0: threshold the trained gammas)",
        source="prunekit: a few minutes on a CPU (official main.py: --epochs 160)",
        low=0,
    )
    lr: float = option(
        DEFAULT_LR,
        help=SHARED["lr"] + ", / 10 at 50% and 75% of the phase",
        source="official main.py: --lr 0.1, lr * 0.1 at epochs * 0.5 and * 0.75",
        low=0,
        low_open=True,
    )
    weight_decay: float = option(
        DEFAULT_WEIGHT_DECAY,
        help=SHARED["weight_decay"],
        source="official main.py: --weight-decay 1e-4",
        low=0,
    )


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


def paper_lambda(model: nn.Module, example_input: Any) -> float:
    """The official code's ``lambda`` for ``model``'s family: ``1e-5`` (ResNet, DenseNet) when a
    channel group is produced by two or more layers (a residual addition) or a layer reads two
    or more groups together (a concatenation), else ``1e-4`` (VGG)."""
    was_training = model.training
    model.eval()
    try:
        graph = build(model, example_input)
    finally:
        model.train(was_training)
    owner = {u: g.name for g in graph.groups for u in g.units}
    for g in graph.groups:
        producers = [
            n
            for n in g.out_layers
            if (w := out_weight(graph.sites[n].module)) is not None and w.dim() >= 2
        ]
        if len(producers) > 1:
            return LAMBDA_RESNET_DENSENET
    for site in graph.sites.values():
        if site.in_labels is None or (w := out_weight(site.module)) is None or w.dim() < 2:
            continue
        read = {owner[r] for r in graph.labels.roots(site.in_labels).tolist() if r in owner}
        if len(read) > 1:
            return LAMBDA_RESNET_DENSENET
    return LAMBDA_VGG


def phase_config(ctx: Context, opts: Mapping[str, Any]) -> TrainConfig:
    """The sparsity phase's training config: the official optimiser and step schedule over
    ``opts["epochs"]`` epochs."""
    return TrainConfig(
        epochs=opts["epochs"],
        batch_size=ctx.batch_size,
        lr=opts["lr"],
        momentum=MOMENTUM,
        weight_decay=opts["weight_decay"],
        schedule="step",  # lr / 10 at 50% and 75% of training, as main.py
        seed=ctx.seed,
    )


def resolve_lambda(ctx: Context, opts: Mapping[str, Any], config: TrainConfig) -> float:
    """``lambda`` of the phase: the ``penalty`` option, or when it is None the family's lambda
    (:func:`paper_lambda`) scaled so that its total pull ``lambda * summed lr`` is the official
    160-epoch phase's."""
    if opts[LAMBDA_OPTION] is not None:
        return float(opts[LAMBDA_OPTION])
    steps = math.ceil(len(ctx.train_set) / ctx.batch_size)  # type: ignore[arg-type]
    ours = summed_lr(config, steps)
    return paper_lambda(ctx.model, ctx.example_input) * PAPER_LR_SUM / ours if ours else 0.0


def sparsity_train(model: nn.Module, ctx: Context, opts: Mapping[str, Any]) -> float:
    """Train ``model`` in place on ``ctx.train_set`` with the L1 penalty on BatchNorm scales
    (``opts``: the method's options); returns the ``lambda`` used."""
    config = phase_config(ctx, opts)
    lam = resolve_lambda(ctx, opts, config)
    handles = add_l1_penalty(model, lam)
    try:  # checkpointed with the run (Context.train): a killed run resumes the phase
        ctx.train(
            model,
            config.epochs,
            config.lr,
            name="slimming_sparsity",
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            schedule=config.schedule,
            progress=opts["progress"],
        )
    finally:
        for h in handles:
            h.remove()
    return lam


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
    **latency: Any,
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
        **latency,  # target_latency and its setting
    )


def prune_by_gamma(
    model: nn.Module,
    example_input: Any,
    *,
    target_flops: float | None = None,
    target_params: float | None = None,
    **latency: Any,
) -> PruneReport:
    """Remove, in place, the channels of ``model`` under one global threshold on raw BatchNorm
    ``|gamma|`` chosen to meet the target; report as :func:`prunekit.prune.prune_channels`."""
    was_training = model.training
    model.eval()  # tracing and FLOP counting must not update BatchNorm running statistics
    try:
        return _prune_by_gamma(model, example_input, target_flops, target_params, **latency)
    finally:
        model.train(was_training)


def _prune_by_gamma(
    model: nn.Module,
    example_input: Any,
    target_flops: float | None,
    target_params: float | None,
    **latency: Any,
) -> PruneReport:
    graph = build(model, example_input)
    dense = graph.plan([])
    picks = global_threshold(
        graph,
        gamma_scores(graph),
        target_flops=target_flops,
        target_params=target_params,
        **latency,
    )
    return remove_selected(graph, picks, dense)


@register_method("slimming")
class NetworkSlimming(Method):
    """Network Slimming (Liu et al., ICCV 2017): sparsity training with ``lambda * sum |gamma|``
    on BatchNorm scales (option ``penalty``: None, the official lambda of the model's family
    scaled to this phase, or a number; ``epochs`` 5 at ``lr`` 0.1, step schedule), then removal of the channels below one global threshold on raw
    ``|gamma|`` that meets the target. See the module docstring for the details and deviations.

    After :meth:`prune`, ``lam`` is the lambda the phase used."""

    Options = SlimmingOptions

    lam: float = 0.0

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if not batchnorm_scales(ctx.model):
            raise ConfigError("slimming needs a model with affine BatchNorm layers")
        if opts["epochs"] > 0:
            self.lam = sparsity_train(ctx.model, ctx, opts)
        target = ctx.target.require("flops", "params", "latency", method=self.id)
        return prune_by_gamma(ctx.model, ctx.example_input, **target.as_dict())


__all__ = [
    "LAMBDA_OPTION",
    "NetworkSlimming",
    "SlimmingOptions",
    "add_l1_penalty",
    "batchnorm_scales",
    "gamma_scores",
    "global_threshold",
    "paper_lambda",
    "prune_by_gamma",
    "sparsity_train",
]
