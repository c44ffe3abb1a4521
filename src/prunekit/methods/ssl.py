"""Structured Sparsity Learning (Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in Deep
Neural Networks", NIPS 2016, https://arxiv.org/abs/1608.03665; official code: the Caffe fork
``wenwei202/caffe``, ``examples/cifar10``).

The paper's defining computation, in two steps (the runner fine-tunes afterwards):

1. **Group-Lasso training.** The loss gains, for every convolution ``W_l`` (``N_l`` filters,
   ``C_l`` input channels),

       lambda_n * sum_n ||W_l[n, :, :, :]||_2  +  lambda_c * sum_c ||W_l[:, c, :, :]||_2

   (filter-wise and channel-wise groups), and training drives whole groups to zero. Here the
   penalty is applied by its proximal step after every optimiser step (:func:`group_lasso_prox`:
   each group is shrunk toward zero by ``lr * lambda`` in norm, and set to exactly zero when its
   norm is smaller; rows first, then columns), so the groups the penalty wins reach exactly
   zero rather than hovering around it as a subgradient step leaves them. With
   ``penalize_linear`` the same two groups are used on Linear layers (rows and columns).
2. **Removal of the zero groups.** A channel is produced by filters (the output side of its
   group) and read by input channels of the next layers (the input side); both penalties push
   it to zero. Each unit of every channel group is scored by the L2 norm of *all* those weights
   together (:func:`unit_norms`). Units whose norm is zero (at most ``epsilon`` times the largest
   unit norm; default 0: exactly zero) are the zero groups (kept in :attr:`SSL.zero_groups` and
   logged), and they are removed first: the run's target removes the lowest-norm units across
   all layers at once (raw norms, one global threshold), so when the zero groups cover the
   target only zero groups go, and when they do not, all of them go and the smallest norms
   follow.

Defaults and their sources:

* The official CIFAR-10 example (``examples/cifar10/readme.md``) regularises a trained baseline
  with ``train_script.sh 0.001 0.0 0.003 0.003``: lr 0.001, no weight decay, group-Lasso
  coefficient 0.003 on rows (filters) and on columns, for ``template_group_solver.prototxt``'s
  200,000 iterations (lr / 10 at 100k, 160k, 180k): a summed learning rate of
  ``100000 * 1e-3 + 60000 * 1e-4 + 20000 * 1e-5 + 20000 * 1e-6 = 106.2``, so each group's norm is
  pulled toward zero by ``0.003 * 106.2 = 0.32`` in all. That phase is about 400 epochs of
  CIFAR-10 (on this CPU, ResNet-20 on digits-32: about an hour). Here it is ``epochs``
  (default 5) epochs at ``lr`` 0.01 with a step schedule (lr / 10 at 50% and 75%), and the
  default coefficients (None) are 0.003 scaled by ``106.2 / (summed lr of this phase)``: each
  penalty pulls each group's norm toward zero by the official example's 0.32 in all, reached in
  a few minutes (ResNet-20 trained on digits: median group norm about 1.4, so the smaller
  groups reach zero). A number given is used as it is.
* ``weight_decay`` 0 (the official example's ``<weight_decay>`` argument).
* ``epsilon`` (0): the relative threshold at or below which a unit counts as a zero group.
* ``penalize_linear`` (False): the paper's CIFAR experiments penalise convolutions.

Deviations a reader should know:

* Only the filter-wise and channel-wise groups are used. The paper also has shape-wise groups
  (``W_l[:, c, h, w]``) and depth-wise groups (a whole layer, with a shortcut around it);
  zeroing them cannot make a dense convolution physically smaller channel by channel, which is
  what the structural core does, so they are left out.
* The penalty is applied by proximal steps (the same objective; exact zeros), not by the
  subgradient the Caffe solver adds; the two overlapping group terms are applied one after the
  other.
* The channel-wise penalty is applied to dense convolutions only (``groups == 1``); a grouped or
  depthwise convolution has one input channel per filter, where the filter-wise group already
  covers it.
* The paper removes exactly the groups that reached zero; here the run's target decides how much
  is removed, zero groups first.
* Behind a BatchNorm the loss does not depend on a filter's scale, so nothing but the gradient's
  rotation resists the filter-wise pull; this is a property of the paper's penalty on such
  networks (its CIFAR ConvNet has no BatchNorm).
* Unit norms count conv / Linear weights only (the penalty's groups); biases and BatchNorm
  parameters do not enter, so a removed unit's BatchNorm shift (a constant channel after a zero
  filter, read by zero columns when the channel group is zero too) is lost with it.
* Every group keeps at least one channel; channels of protected layers are never scored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.graph.core import Site, out_weight
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import TrainConfig
from prunekit.train.schedules import summed_lr

log = logging.getLogger(__name__)

OFFICIAL_LAMBDA = 0.003  # examples/cifar10/readme.md: train_script.sh 0.001 0.0 0.003 0.003
# template_group_solver.prototxt: 200k iterations from lr 0.001, x0.1 at 100k, 160k, 180k
OFFICIAL_LR_SUM = 100_000 * 1e-3 + 60_000 * 1e-4 + 20_000 * 1e-5 + 20_000 * 1e-6
DEFAULT_EPOCHS = 5  # prunekit: a few minutes on a CPU
DEFAULT_LR = 0.01  # prunekit: lets the network adapt to the penalty within a short phase
DEFAULT_WEIGHT_DECAY = 0.0  # official example: <weight_decay> 0.0
DEFAULT_EPSILON = 0.0  # zero groups are exactly zero after proximal steps

_TINY = 1e-12  # a group norm below this is treated as zero (its gradient term is 0)


@dataclass(frozen=True)
class SSLOptions(Options):
    """SSL's group-Lasso phase and zero-group threshold."""

    renamed: ClassVar[dict[str, str]] = {"ssl_epochs": "epochs"}

    epochs: int = option(
        DEFAULT_EPOCHS,
        help=SHARED["epochs"] + " with the penalty (0: remove by the trained norms)",
        source="prunekit: a few minutes on a CPU (official example: 200k iterations, ~400 epochs)",
        low=0,
    )
    lr: float = option(
        DEFAULT_LR,
        help=SHARED["lr"] + ", / 10 at 50% and 75% of the phase",
        source="prunekit (official example: 0.001 over ~400 epochs)",
        low=0,
        low_open=True,
    )
    weight_decay: float = option(
        DEFAULT_WEIGHT_DECAY,
        help=SHARED["weight_decay"],
        source="official examples/cifar10/readme.md: train_script.sh 0.001 0.0 0.003 0.003",
        low=0,
    )
    lambda_filter: float | None = option(
        None,
        help="group-Lasso coefficient on filters (rows); None: the official 0.003 scaled so the "
        "phase pulls each group as far as the official ~400 epochs (0.32 in norm)",
        source="official examples/cifar10/readme.md: train_script.sh 0.001 0.0 0.003 0.003",
        low=0,
    )
    lambda_channel: float | None = option(
        None,
        help="group-Lasso coefficient on input channels (columns); None: the official 0.003 "
        "scaled so the phase pulls each group as far as the official ~400 epochs (0.32 in norm)",
        source="official examples/cifar10/readme.md: train_script.sh 0.001 0.0 0.003 0.003",
        low=0,
    )
    epsilon: float = option(
        DEFAULT_EPSILON,
        help="a unit whose norm is at most epsilon times the largest is a zero group",
        source="prunekit: exact zeros after proximal steps",
        low=0,
        high=1,
        high_open=True,
    )
    penalize_linear: bool = option(
        False,
        help="penalise Linear layers (rows and columns) as well",
        source="paper Sec. 4: the CIFAR experiments penalise convolutions",
    )


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


def _shrink(w: torch.Tensor, dim: int, amount: float) -> None:
    """In place: scale each group (all entries with one index along ``dim``) by
    ``max(0, 1 - amount / ||group||)``: the proximal step of ``amount * ||group||_2``."""
    others = [d for d in range(w.dim()) if d != dim]
    norm = w.pow(2).sum(dim=others, keepdim=True).sqrt()
    w.mul_((1 - amount / norm.clamp_min(_TINY)).clamp_min(0.0))


def group_lasso_prox(
    weight: torch.Tensor,
    out_dim: int,
    step_filter: float,
    step_channel: float | None,
) -> None:
    """In place, the proximal step of ``step_filter * sum_n ||W[n]|| + step_channel * sum_c
    ||W[:, c]||`` (``step = lr * lambda``) for a weight whose filters lie along ``out_dim`` (0,
    or 1 for a transposed conv) and input channels along the other of dims 0 and 1; filters
    first, then channels (``step_channel=None``: no channel term). A group whose norm is at most
    its step becomes exactly zero."""
    with torch.no_grad():
        if step_filter:
            _shrink(weight, out_dim, step_filter)
        if step_channel:
            _shrink(weight, 1 - out_dim, step_channel)


class GroupLassoProx:
    """A :func:`prunekit.train.fit` callback applying :func:`group_lasso_prox` to every
    penalised weight after every optimiser step, with that step's learning rate."""

    def __init__(
        self,
        model: nn.Module,
        lambda_filter: float,
        lambda_channel: float,
        lr: float,
        *,
        linear: bool = False,
    ) -> None:
        self.layers = penalized_weights(model, linear=linear)
        self.lambda_filter = lambda_filter
        self.lambda_channel = lambda_channel
        self.lr = lr  # the learning rate of the step just taken
        self._hooked: Any = None

    def _record_lr(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.lr = float(optimizer.param_groups[0]["lr"])

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event != "step_end":
            return
        for m, channel_wise in self.layers:
            out_dim = 1 if isinstance(m, nn.modules.conv._ConvTransposeNd) else 0
            group_lasso_prox(
                m.weight,
                out_dim,
                self.lr * self.lambda_filter,
                self.lr * self.lambda_channel if channel_wise else None,
            )
        optimizer = state["optimizer"]
        if self._hooked is not optimizer:  # from the next step on, read each step's own lr
            optimizer.register_step_pre_hook(self._record_lr)
            self._hooked = optimizer


def phase_config(ctx: Context, opts: Mapping[str, Any]) -> TrainConfig:
    """The group-Lasso phase's training config (step schedule: lr / 10 at 50% and 75%)."""
    return TrainConfig(
        epochs=opts["epochs"],
        batch_size=ctx.batch_size,
        lr=opts["lr"],
        weight_decay=opts["weight_decay"],
        schedule="step",
        seed=ctx.seed,
    )


def resolve_lambda(key: str, ctx: Context, opts: Mapping[str, Any], config: TrainConfig) -> float:
    """The coefficient ``opts[key]``, or when it is None the official 0.003 scaled so that its
    total pull ``lambda * summed lr`` over the phase is the official example's (0.32)."""
    if opts[key] is not None:
        return float(opts[key])
    steps = math.ceil(len(ctx.train_set) / ctx.batch_size)  # type: ignore[arg-type]
    ours = summed_lr(config, steps)
    return OFFICIAL_LAMBDA * OFFICIAL_LR_SUM / ours if ours else 0.0


def sparsity_train(model: nn.Module, ctx: Context, opts: Mapping[str, Any]) -> tuple[float, float]:
    """Train ``model`` in place on ``ctx.train_set`` with the group-Lasso penalty applied by
    proximal steps (``opts``: the method's options); returns ``(lambda_filter,
    lambda_channel)`` as used."""
    config = phase_config(ctx, opts)
    lam_f = resolve_lambda("lambda_filter", ctx, opts, config)
    lam_c = resolve_lambda("lambda_channel", ctx, opts, config)
    prox = GroupLassoProx(model, lam_f, lam_c, config.lr, linear=opts["penalize_linear"])
    ctx.train(  # checkpointed with the run (Context.train): a killed run resumes the phase
        model,
        config.epochs,
        config.lr,
        name="ssl_group_lasso",
        callbacks=[prox],
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        schedule=config.schedule,
        progress=opts["progress"],
    )
    return lam_f, lam_c


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
    channel-wise group-Lasso penalties applied by proximal steps (``lambda_filter``,
    ``lambda_channel``: None, the official 0.003 scaled to this phase, or numbers; ``epochs`` 5 at ``lr`` 0.01), then removal of the groups that reached zero first and the
    smallest L2 norms over all their weights across layers next, to meet the target. See the
    module docstring for the details and deviations.

    After :meth:`prune`, ``zero_groups`` holds ``{group name: indices}`` of the units that were
    zero (norm at most ``epsilon`` of the largest) before removal, ``norms`` every unit's norm
    and ``lambdas`` the two coefficients the phase used."""

    Options = SSLOptions

    def __init__(self) -> None:
        self.zero_groups: dict[str, list[int]] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.lambdas: tuple[float, float] = (0.0, 0.0)

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        if not penalized_weights(ctx.model, linear=opts["penalize_linear"]):
            raise ConfigError(
                "ssl needs a model with convolutions (or Linear layers with penalize_linear)"
            )
        if opts["epochs"] > 0:
            self.lambdas = sparsity_train(ctx.model, ctx, opts)
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
                **ctx.target.require("flops", "params", "latency", method=self.id).as_dict(),
            )
            return remove_selected(graph, picks, dense)
        finally:
            model.train(was_training)


__all__ = [
    "SSL",
    "GroupLassoProx",
    "SSLOptions",
    "group_lasso_prox",
    "penalized_weights",
    "sparsity_train",
    "unit_norms",
    "zero_units",
]
