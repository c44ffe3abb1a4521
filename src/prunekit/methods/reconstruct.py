"""What the reconstruction methods (ThiNet, channel pruning by LASSO) share: choose the input
channels of a layer that best reproduce its output on sampled data, then refit the layer's
weights to the kept channels.

Both methods prune the *chains* of the model (:func:`prunekit.methods.common.chains`): the
channels made by one layer (the producer) and read by exactly one conv or Linear layer (the
consumer). Removing a channel removes the producer's filter and the consumer's input slice, so
the choice is made on the consumer: which of its input channels can go with the least change of
its output.

Shared mechanics and deliberate deviations:

* **Budget.** The run's FLOPs or params target is met with one uniform removal rate over the
  chains (:func:`prunekit.prune.select_channels` in layer scope, chain groups scoring 0, every
  other group ``+inf``): only chains are pruned, as in the papers (e.g. only the inner conv of a
  residual block); groups that are not chains keep all their channels. The papers set per-layer
  rates by hand (ThiNet: one rate for VGG-16's first 10 layers; LASSO: a rate per stage from a
  sensitivity analysis); a single rate reaching the target is used here.
* **Order and removal.** Chains are processed in forward order. The chosen channels are zeroed
  (:meth:`~prunekit.graph.Group.zero`, so later layers see exactly what removal would give) and
  the consumer's kept weights are updated; the next chain is sampled from this partially pruned
  model. At the end every chosen channel is removed at once through
  :func:`prunekit.prune.remove_selected`; the pruned model computes what the zeroed and
  refitted model computed.
* **No fine-tuning between layers.** ThiNet fine-tunes after each layer and LASSO pruning may
  fine-tune at the end; here the method prunes in one pass and leaves fine-tuning to the runner.
  ThiNet's ``ŷ`` is therefore the consumer's output in the model pruned so far (the paper's
  setting after its layer-wise fine-tuning), while LASSO's ``Y`` is the original model's.
* The least-squares steps (ThiNet's scales, LASSO's refit) treat singular values below
  ``1e3 * eps`` of the model's dtype (relative to the largest) as zero and return the
  minimum-norm solution: features computed in float32 are no more precise than that, and two
  channels that are copies up to rounding would otherwise get huge opposite weights.
* Sampled locations are distinct within an image (at most all of its locations); ThiNet draws
  one output channel per sampled location. Everything is seeded by ``ctx.seed``.
* Options of both: :class:`ReconstructionOptions` (``samples_per_image``, 10 in both papers;
  ``rescale``, True; False skips the weight update, for comparison).
* Chains (:func:`prunekit.methods.common.chains`) include Conv1d consumers (the input unfolded as
  a ``1 x L`` image) and a Linear read through a flatten: there a channel's contribution to an
  output sums over its flattened positions, which play the part of the kernel window.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.methods.base import Context, Method
from prunekit.methods.common import Chain, chains
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import model_device
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import distributed as dist_


def rcond_for(dtype: torch.dtype) -> float:
    """Relative cut-off for singular values in the least-squares steps: features computed in
    ``dtype`` are only that precise, so directions this weak are rounding noise (two identical
    channels differing by one rounding would otherwise get huge opposite weights)."""
    return 1e3 * torch.finfo(dtype).eps


def least_squares_weights(
    x_kept: torch.Tensor, y: torch.Tensor, rcond: float | None = None
) -> torch.Tensor:
    """``W' = argmin ||y - X_kept W'^T||_F^2`` as ``out x K x k`` (``x_kept``: ``samples x K x
    k``, ``y``: ``samples x out``), solved with :func:`torch.linalg.lstsq` in float64."""
    n, kept, k = x_kept.shape
    a = x_kept.double().cpu().reshape(n, kept * k)
    cut = rcond_for(x_kept.dtype) if rcond is None else rcond
    sol = torch.linalg.lstsq(a, y.double().cpu(), rcond=cut, driver="gelsd").solution  # K*k x out
    return sol.T.reshape(-1, kept, k)


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has run."""


def kernel_weight(module: nn.Module) -> torch.Tensor:
    """The consumer's weight as ``out x in x k`` (``k`` kernel positions; 1 for Linear)."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1)


def as_rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A conv output ``B x O x ...`` (1-D or 2-D) or a Linear output ``B x ... x O`` as
    ``B x L x O``."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return t.flatten(2).transpose(1, 2)
    return t.reshape(t.shape[0], -1, t.shape[-1])


def patches_at(module: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The consumer's input patches at output locations ``pos`` (``B x s``): ``B*s x C x k``
    (a Conv1d's input is unfolded as a ``1 x L`` image; a Linear's features are ``C x 1``)."""
    b = x.shape[0]
    if isinstance(module, nn.Linear):
        rows = x.reshape(b, -1, x.shape[-1])
        picked = rows[torch.arange(b, device=x.device)[:, None], pos]
        return picked.reshape(-1, x.shape[-1], 1)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    if isinstance(module, nn.Conv1d):
        padded = padded.unsqueeze(2)
        kernel, dilation, stride = (1, *kernel), (1, *dilation), (1, *stride)
    out = []
    for i in range(b):  # one image at a time: unfolding a whole batch can be large
        cols = F.unfold(padded[i : i + 1], kernel, dilation=dilation, stride=stride)[0]
        out.append(cols[:, pos[i]].T)
    return torch.cat(out).reshape(b * pos.shape[1], x.shape[1], -1)


def unit_index(chain: Chain) -> torch.Tensor:
    """The consumer's input positions of each unit of ``chain``: ``units x P``."""
    idx = chain.consumer_index
    return idx if idx.dim() == 2 else idx[:, None]


def unit_patches(chain: Chain, patches: torch.Tensor) -> torch.Tensor:
    """The chain's units of the consumer's patches (``n x in x k``): ``n x units x k'`` where a
    unit's ``k'`` values are its kernel window (conv) or its flattened positions (Linear)."""
    idx = unit_index(chain).to(patches.device)
    if idx.shape[1] == 1:
        return patches[:, idx[:, 0]]
    return patches[:, idx.reshape(-1), 0].reshape(patches.shape[0], *idx.shape)


def unit_weight(chain: Chain) -> torch.Tensor:
    """The consumer's weight on the chain's units: ``out x units x k'`` (as
    :func:`unit_patches`)."""
    w = kernel_weight(chain.consumer.module)
    idx = unit_index(chain).to(w.device)
    if idx.shape[1] == 1:
        return w[:, idx[:, 0]]
    return w[:, idx.reshape(-1), 0].reshape(w.shape[0], *idx.shape)


def unit_contributions(chain: Chain, per_position: torch.Tensor) -> torch.Tensor:
    """Per-input-position contributions (``n x in``) summed over each unit's positions:
    ``n x units``."""
    idx = unit_index(chain).to(per_position.device)
    return per_position[:, idx].sum(-1)


def draw_locations(g: torch.Generator, batch: int, locations: int, per_image: int) -> torch.Tensor:
    """Distinct random locations per image: ``batch x min(per_image, locations)``."""
    return torch.rand(batch, locations, generator=g).argsort(dim=1)[:, :per_image]


def forward_with_hooks(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, Any]],
    hooks: dict[nn.Module, Callable[[int, torch.Tensor, torch.Tensor], None]],
    stop_at: nn.Module | None = None,
) -> None:
    """Run ``model`` on every batch; ``hooks[m](batch index, input, output)`` sees layer ``m``.
    The pass ends early once ``stop_at`` has run."""
    device = model_device(model)
    current = [0]

    def make(fn: Callable[[int, torch.Tensor, torch.Tensor], None], stop: bool) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            fn(current[0], args[0].detach(), output.detach())
            if stop:
                raise _Stop

        return hook

    handles = [m.register_forward_hook(make(fn, m is stop_at)) for m, fn in hooks.items()]
    try:
        for i, (x, _) in enumerate(batches):
            current[0] = i
            with contextlib.suppress(_Stop):
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()


def input_patches(
    model: nn.Module,
    module: nn.Module,
    batches: list[tuple[torch.Tensor, Any]],
    positions: list[torch.Tensor],
) -> torch.Tensor:
    """The input patches of ``module`` in ``model`` at the given locations of each batch."""
    patches: list[torch.Tensor] = []

    def take(b: int, x: torch.Tensor, _: torch.Tensor) -> None:
        patches.append(patches_at(module, x, positions[b].to(x.device)).double().cpu())

    forward_with_hooks(model, batches, {module: take}, stop_at=module)
    return torch.cat(patches)


def all_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor's rows from every rank, in rank order (unchanged in a single process): under
    torchrun every rank then selects and refits on the same samples, so all remove the same
    channels and hold the same weights."""
    if dist_.world_size() == 1:
        return tensors
    gathered = dist_.all_gather_objects(tensors)
    return tuple(torch.cat([g[i] for g in gathered]) for i in range(len(tensors)))  # type: ignore[index]


def pre_bias(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return rows if bias is None else rows - bias.detach()


def chain_budget(graph: Graph, found: list[Chain], target: Target) -> dict[str, int]:
    """How many channels each chain loses: one uniform rate over the chains meeting ``target``
    (a FLOPs or params :class:`~prunekit.targets.Target`); other groups keep everything."""
    names = {c.group.name for c in found}

    def importance(group: Any) -> torch.Tensor:
        fill = 0.0 if group.name in names else math.inf
        return torch.full((group.size,), fill, dtype=torch.float64)

    picks = select_channels(graph, scope="layer", importance=importance, **target.as_dict())
    return {c.group.name: len(picks.get(c.group.name, [])) for c in found}


def forward_order(graph: Graph, found: list[Chain]) -> list[Chain]:
    order = {name: i for i, name in enumerate(graph.sites)}
    return sorted(found, key=lambda c: (order[c.consumer.name], order[c.producer.name]))


@dataclass(frozen=True)
class ReconstructionOptions(Options):
    samples_per_image: int = option(
        10,
        help="sampled locations of the consumer's output per calibration image",
        source="ThiNet and He et al. (ICCV 2017), experiments: 10 sampled locations per image",
        low=1,
    )
    rescale: bool = option(
        True,
        help="refit the consumer's kept weights by least squares (False: selection only)",
        source="ThiNet: least-squares scales; He et al.: least-squares reconstruction",
    )


class ReconstructionMethod(Method):
    """Shared driver: budget, chain-by-chain selection on the zeroed model, one removal."""

    Options = ReconstructionOptions

    def prune(self, ctx: Context) -> PruneReport:
        model = ctx.model
        was_training = model.training
        model.eval()  # tracing and sampling must not update BatchNorm statistics
        try:
            graph = build(model, ctx.example_input)
            dense = graph.plan([])
            picks = self.select_and_refit(ctx, graph)
            return remove_selected(graph, picks, dense)
        finally:
            model.train(was_training)

    def select_and_refit(self, ctx: Context, graph: Graph) -> dict[str, list[int]]:
        """Choose the channels of every chain of ``graph`` (built on ``ctx.model``), zero them
        and refit the consumers' kept weights, chain by chain; returns ``{group: indices}`` for
        :func:`prunekit.prune.remove_selected`. The model is left zeroed, not yet smaller."""
        opts = self.options(ctx)
        found = forward_order(graph, chains(graph))
        if not found:
            raise ConfigError(
                f"method {self.id!r} prunes channels passed from one layer to one conv or Linear "
                "layer (a chain); this model has none"
            )
        counts = chain_budget(
            graph, found, ctx.target.require("flops", "params", "latency", method=self.id)
        )
        batches = ctx.calibration()
        if not batches:
            raise ConfigError(
                f"method {self.id!r} needs calibration data: the training set gave no batch"
            )
        model = ctx.model
        was_training = model.training
        model.eval()
        g = torch.Generator().manual_seed(ctx.seed)
        picks: dict[str, list[int]] = {}
        try:
            with torch.no_grad():
                self.refit_chains(model, found, counts, batches, g, opts, picks)
        finally:
            model.train(was_training)
        return picks

    def refit_chains(
        self,
        model: nn.Module,
        found: list[Chain],
        counts: dict[str, int],
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        opts: dict[str, Any],
        picks: dict[str, list[int]],
    ) -> None:
        raise NotImplementedError

    @staticmethod
    def apply_choice(chain: Chain, removed: list[int], new_weight: torch.Tensor | None) -> None:
        """Zero the removed units and write ``new_weight`` (``out x K x k'`` as
        :func:`unit_weight`, kept units in order) into the consumer's kept input positions."""
        chain.group.zero(removed)
        if new_weight is None:
            return
        w = chain.consumer.module.weight
        kept = [u for u in range(chain.group.size) if u not in set(removed)]
        idx = unit_index(chain)[kept].to(w.device)
        if idx.shape[1] == 1:
            w.data[:, idx[:, 0]] = new_weight.reshape(w.shape[0], len(kept), *w.shape[2:]).to(w)
        else:  # a Linear after a flatten: each unit's positions
            w.data[:, idx.reshape(-1)] = new_weight.reshape(w.shape[0], -1).to(w)


__all__ = [
    "ReconstructionMethod",
    "ReconstructionOptions",
    "all_ranks",
    "as_rows",
    "chain_budget",
    "draw_locations",
    "forward_order",
    "forward_with_hooks",
    "input_patches",
    "kernel_weight",
    "least_squares_weights",
    "patches_at",
    "pre_bias",
    "rcond_for",
    "unit_contributions",
    "unit_index",
    "unit_patches",
    "unit_weight",
]
