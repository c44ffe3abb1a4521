"""Structured Sparsity Learning (Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep
Neural Networks", NIPS 2016, https://arxiv.org/abs/1608.03665).

The paper's defining computation, in two steps (the runner fine-tunes afterwards):

1. **Group-Lasso training.** The loss gains, for every convolution ``W_l`` (``N_l`` filters,
   ``C_l`` input channels),

       lambda_n * sum_n ||W_l[n, :, :, :]||_2  +  lambda_c * sum_c ||W_l[:, c, :, :]||_2

   (filter-wise and channel-wise groups). The gradient of ``lambda * ||w_g||_2`` is
   ``lambda * w_g / ||w_g||_2`` (taken as 0 where ``w_g = 0``); it is added to every weight's
   gradient by a gradient hook (:func:`add_group_lasso_penalty`, removed after training), so
   any optimiser and :func:`prunekit.train.fit` run unchanged. With ``penalize_linear`` the
   same two groups are used on Linear layers (rows and columns of the weight).
2. **Removal of the zero groups.** A channel is produced by filters (the output side of its
   group) and read by input channels of the next layers (the input side); both penalties push
   it to zero. Each unit of every channel group is scored by the L2 norm of *all* those weights
   together (:func:`unit_norms`). Units whose norm is at most ``epsilon`` times the largest unit
   norm are counted as zero groups (kept in :attr:`SSL.zero_groups` and logged); the run's FLOPs
   or params target then removes the lowest-norm units across all layers at once (raw norms,
   one global threshold), so the zero groups go first.

Defaults and options (``ctx.options``):

* ``lambda_filter`` and ``lambda_channel`` (both 1e-4): the paper tunes the group-Lasso
  coefficient per experiment; on CIFAR-10 its coefficients are, as recalled from the paper's
  text and not checked against it here, of the order of 1e-4 to 1e-3. The lower end is the
  default because the phase here continues training a trained model rather than training from
  scratch.
* ``ssl_epochs`` (3), ``lr`` (0.01), ``weight_decay`` (1e-4, applied as usual on top of the
  penalty): the paper trains with the penalty for a full schedule; here a few epochs of SGD
  with a step schedule (lr / 10 at 50% and 75%) continue training of the given model.
  ``ssl_epochs=0`` skips the penalty and removes by the unit norms alone.
* ``epsilon`` (1e-4): the relative threshold below which a unit counts as a zero group.
* ``penalize_linear`` (False): the paper's CIFAR experiments penalise convolutions.

Deviations a reader should know:

* Only the filter-wise and channel-wise groups are used. The paper also has shape-wise groups
  (``W_l[:, c, h, w]``: one kernel position of one input channel across all filters) and
  depth-wise groups (a whole layer, with a shortcut around it); zeroing them cannot make a dense
  convolution physically smaller channel by channel, which is what the structural core does, so
  they are left out.
* The channel-wise penalty is applied to dense convolutions only (``groups == 1``); a grouped or
  depthwise convolution has one input channel per filter, where the filter-wise group already
  covers it.
* The paper removes exactly the groups that reached zero; here the amount removed is the run's
  target and the zero groups are simply the first to go. If more units are zero than the target
  asks for, only the target's share is removed; if fewer, the lowest non-zero norms follow.
* Unit norms count conv / Linear weights only (the penalty's groups); biases and BatchNorm
  parameters do not enter, so a removed unit's BatchNorm shift (a constant channel after a zero
  filter) is lost with it, as pruning does in the paper.
* Every group keeps at least one channel; channels of protected layers are never scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import TrainConfig, fit
from prunekit.train.device import resolve_device

log = logging.getLogger(__name__)

DEFAULT_LAMBDA = 1e-4
DEFAULT_EPOCHS = 3
DEFAULT_LR = 0.01
DEFAULT_WEIGHT_DECAY = 1e-4
DEFAULT_EPSILON = 1e-4

_TINY = 1e-12  # a group norm below this is treated as zero (its gradient term is 0)


def penalized_weights(model: nn.Module, *, linear: bool = False) -> list[tuple[nn.Module, bool]]:
    """``(layer, channel_wise)`` for every layer whose weight the penalty covers: every conv
    (channel-wise groups for dense ones only) and, with ``linear``, every Linear layer."""
    out: list[tuple[nn.Module, bool]] = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.weight is not None:
            out.append((m, m.groups == 1))
        elif linear and isinstance(m, nn.Linear):
            out.append((m, True))
    return out


def group_lasso_grad(
    weight: torch.Tensor, out_dim: int, lambda_filter: float, lambda_channel: float | None
) -> torch.Tensor:
    """The gradient of ``lambda_filter * sum_n ||W[n]|| + lambda_channel * sum_c ||W[:, c]||``
    for a weight whose filters lie along ``out_dim`` (0, or 1 for a transposed conv) and input
    channels along the other of dims 0 and 1 (``lambda_channel=None``: no channel term)."""
    w = weight.detach()
    in_dim = 1 - out_dim

    def term(dim: int, lam: float) -> torch.Tensor:
        others = [d for d in range(w.dim()) if d != dim]
        norm = w.pow(2).sum(dim=others, keepdim=True).sqrt()
        return lam * w / norm.clamp_min(_TINY)  # w is 0 wherever its group norm is 0

    grad = term(out_dim, lambda_filter) if lambda_filter else torch.zeros_like(w)
    if lambda_channel:
        grad = grad + term(in_dim, lambda_channel)
    return grad


def add_group_lasso_penalty(
    model: nn.Module, lambda_filter: float, lambda_channel: float, *, linear: bool = False
) -> list[RemovableHandle]:
    """Register on each penalised weight (see :func:`penalized_weights`) a hook adding the
    group-Lasso gradient (:func:`group_lasso_grad`) to its gradient. Returns the handles;
    ``handle.remove()`` undoes it."""

    def hook_for(m: nn.Module, channel_wise: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        out_dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
        lam_c = lambda_channel if channel_wise else None
        return lambda g: g + group_lasso_grad(m.weight, out_dim, lambda_filter, lam_c).to(g.dtype)

    return [
        m.weight.register_hook(hook_for(m, cw)) for m, cw in penalized_weights(model, linear=linear)
    ]


def _check_options(opts: dict[str, Any]) -> None:
    for key in ("lambda_filter", "lambda_channel", "weight_decay"):
        v = opts[key]
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(
                f"option {key!r} of method 'ssl' must be a finite number >= 0, got {v!r}"
            )
    if not (math.isfinite(opts["lr"]) and opts["lr"] > 0):
        raise ConfigError(f"option 'lr' of method 'ssl' must be a number > 0, got {opts['lr']!r}")
    if opts["ssl_epochs"] < 0:
        raise ConfigError(
            f"option 'ssl_epochs' of method 'ssl' must be >= 0, got {opts['ssl_epochs']!r}"
        )
    if not (0 <= opts["epsilon"] < 1):
        raise ConfigError(
            f"option 'epsilon' of method 'ssl' must be a fraction in [0, 1) of the largest unit "
            f"norm, got {opts['epsilon']!r}"
        )


def sparsity_train(model: nn.Module, ctx: Context, opts: dict[str, Any]) -> None:
    """Train ``model`` in place on ``ctx.train_set`` with the group-Lasso penalty (``opts``:
    :attr:`SSL.defaults` as :meth:`~prunekit.methods.Method.options` resolves them)."""
    _check_options(opts)
    config = TrainConfig(
        epochs=opts["ssl_epochs"],
        batch_size=ctx.batch_size,
        lr=opts["lr"],
        weight_decay=opts["weight_decay"],
        schedule="step",
        seed=ctx.seed,
    )
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    # on the training device before the hooks are registered, so they stay on the weights
    model.to(resolve_device(config.device))
    handles = add_group_lasso_penalty(
        model, opts["lambda_filter"], opts["lambda_channel"], linear=opts["penalize_linear"]
    )
    try:
        fit(model, ctx.train_set, config, progress=opts["progress"])
    finally:
        for h in handles:
            h.remove()
        model.to(device)


# ------------------------------------------------------------------------------ unit norms


def _filter_sq(site: Site) -> torch.Tensor | None:
    """Squared L2 norm of each output position's filter (conv / Linear weights only)."""
    w = out_weight(site.module)
    if w is None or w.dim() < 2:
        return None
    return w.detach().double().pow(2).flatten(1).sum(1)


def _in_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight with input channels on dim 1, for a layer whose input positions are read by
    every filter (dense conv, Linear); None otherwise."""
    if isinstance(module, nn.Linear):
        return module.weight
    if isinstance(module, nn.modules.conv._ConvNd) and module.groups == 1:
        w = module.weight
        return w.transpose(0, 1) if isinstance(module, nn.modules.conv._ConvTransposeNd) else w
    return None


def _input_side_sq(graph: Graph, group: Group) -> torch.Tensor:
    """Per unit of ``group``, the squared L2 norm of the input-channel weights that read it: for
    every dense conv / Linear layer on the group's input side, the columns ``W[:, p]`` at each
    input position ``p`` carrying the unit (a flattened channel has one position per spatial
    location; all of them count)."""
    index = {u: i for i, u in enumerate(group.units)}
    out = torch.zeros(group.size, dtype=torch.float64)
    layers = {m.layer for m in group.members if m.side == "in"}
    for name in sorted(layers):
        site = graph.sites[name]
        w = _in_weight(site.module)
        if w is None or w.dim() < 2 or site.in_labels is None:
            continue
        per_pos = w.detach().double().pow(2).transpose(0, 1).flatten(1).sum(1).cpu()
        roots = graph.labels.roots(site.in_labels)
        if len(roots) != len(per_pos):
            raise ValueError(f"{name}: {len(per_pos)} input positions, {len(roots)} labels")
        pos = [p for p, r in enumerate(roots.tolist()) if r in index]
        if pos:
            slots = torch.tensor([index[int(roots[p])] for p in pos])
            out.index_add_(0, slots, per_pos[torch.tensor(pos)])
    return out


def unit_norms(graph: Graph) -> dict[str, torch.Tensor]:
    """Per group, each unit's L2 norm over all the conv / Linear weights tied to it: the filters
    that produce it and the input-channel weights of the layers that read it."""
    return {g.name: (g.values(_filter_sq) + _input_side_sq(graph, g)).sqrt() for g in graph.groups}


def zero_units(norms: dict[str, torch.Tensor], epsilon: float) -> dict[str, list[int]]:
    """Units whose norm is at most ``epsilon`` times the largest unit norm of all groups."""
    top = max((float(v.max()) for v in norms.values() if len(v)), default=0.0)
    limit = epsilon * top
    out = {}
    for name, v in norms.items():
        idx = torch.nonzero(v <= limit).flatten().tolist()
        if idx:
            out[name] = idx
    return out


@register_method("ssl")
class SSL(Method):
    """Structured Sparsity Learning (Wen et al., NIPS 2016): training with filter-wise and
    channel-wise group-Lasso penalties (``lambda_filter``, ``lambda_channel``, both 1e-4 by
    default; ``ssl_epochs`` 3, ``lr`` 0.01), then removal of the units with the smallest L2 norm
    over all their weights across layers, zero groups first, to meet the target. See the module
    docstring for the details and deviations.

    After :meth:`prune`, ``zero_groups`` holds ``{group name: indices}`` of the units that were
    zero (norm at most ``epsilon`` of the largest) before removal, and ``norms`` their norms."""

    defaults: ClassVar[dict[str, Any]] = {
        "ssl_epochs": DEFAULT_EPOCHS,
        "lr": DEFAULT_LR,
        "weight_decay": DEFAULT_WEIGHT_DECAY,
        "lambda_filter": DEFAULT_LAMBDA,
        "lambda_channel": DEFAULT_LAMBDA,
        "epsilon": DEFAULT_EPSILON,
        "penalize_linear": False,
    }

    def __init__(self) -> None:
        self.zero_groups: dict[str, list[int]] = {}
        self.norms: dict[str, torch.Tensor] = {}

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        _check_options(opts)
        if not penalized_weights(ctx.model, linear=opts["penalize_linear"]):
            raise ConfigError(
                "ssl needs a model with convolutions (or Linear layers with penalize_linear)"
            )
        if opts["ssl_epochs"] > 0:
            sparsity_train(ctx.model, ctx, opts)
        model = ctx.model
        was_training = model.training
        model.eval()  # tracing must not update BatchNorm running statistics
        try:
            graph = build(model, ctx.example_input)
            dense = graph.plan([])
            self.norms = norms = unit_norms(graph)
            self.zero_groups = zero_units(norms, opts["epsilon"])
            n_zero = sum(len(v) for v in self.zero_groups.values())
            log.info(
                "ssl: %d of %d units are zero groups (norm <= %g of the largest)",
                n_zero,
                sum(g.size for g in graph.groups),
                opts["epsilon"],
            )
            picks = select_channels(
                graph,
                scope="global",
                normalize=False,  # one threshold on raw group norms across layers
                importance=lambda g: norms[g.name],
                **ctx.target.require("flops", "params", method=self.id).as_dict(),
            )
            return remove_selected(graph, picks, dense)
        finally:
            model.train(was_training)


__all__ = [
    "SSL",
    "add_group_lasso_penalty",
    "group_lasso_grad",
    "penalized_weights",
    "sparsity_train",
    "unit_norms",
    "zero_units",
]
