"""Reconstruction-based channel pruning: choose the input channels of a layer that best
reproduce its output on sampled data, then refit the layer's weights to the kept channels.

Both methods prune the *chains* of the model (:func:`prunekit.methods.common.chains`): the
channels made by one layer (the producer) and read by exactly one conv or Linear layer (the
consumer). Removing a channel removes the producer's filter and the consumer's input slice, so
the choice is made on the consumer: which of its input channels can go with the least change of
its output.

* **ThiNet** — Luo, Wu, Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
  Compression" (ICCV 2017). Sample ``(image, location, output channel)`` triples of the
  consumer's output; for each sample ``i`` the consumer's pre-bias output is the sum over its
  input channels ``c`` of the contribution ``x̂_ic = sum over the kernel window of W[o, c] *
  x[c]`` (the input patch comes from :func:`torch.nn.functional.unfold`; for a Linear consumer
  ``x̂_ic = W[o, c] x_c``). The removed set ``T`` starts empty and grows greedily: each step
  adds the channel ``c`` minimising ``sum_i (sum_{j in T ∪ {c}} x̂_ij)^2``, the squared change of
  the sampled outputs if ``T ∪ {c}`` were removed. Then the kept channels are rescaled by the
  least-squares ``w = argmin_w sum_i (ŷ_i - w · x̂_i,kept)^2`` (``ŷ_i`` the sampled pre-bias
  output with every channel present); each kept input channel of the consumer's weight is
  multiplied by its ``w_c``. Paper default: 10 samples per image (option
  ``samples_per_image``), drawn from a subset of the ImageNet training images; here from the
  run's calibration batches (``calib_batches`` x ``batch_size`` images, 4 x 64 by default).
* **Channel pruning by LASSO** — He, Zhang, Sun, "Channel Pruning for Accelerating Very Deep
  Neural Networks" (ICCV 2017). Sample ``N`` locations of the consumer (10 per image, option
  ``samples_per_image``): the input patches ``X`` (``N x C x k``), taken from the model as pruned
  so far, and the full output vectors ``Y`` (``N x out``, bias removed), taken from the
  *original* model before any pruning, which limits the accumulation of error over layers as in
  the paper. With ``Z_c = X_c W_c^T`` (the contribution of channel ``c`` to every output), the
  channel coefficients solve the LASSO ``beta = argmin ||Y - sum_c beta_c Z_c||_F^2 + alpha
  ||beta||_1`` (scikit-learn's :func:`~sklearn.linear_model.lasso_path` and
  :class:`~sklearn.linear_model.Lasso`, no intercept). ``alpha`` grows until at most the kept
  number of channels is non-zero; the rule used (see :func:`lasso_select`): the largest ``alpha``
  whose solution still has at least ``keep`` non-zeros (a geometric grid of 60 values from the
  smallest ``alpha`` that zeroes everything down to 1e-6 of it, refined by bisection between the
  two grid points that bracket ``keep``), keeping its ``keep`` largest ``|beta_c|`` (ties: lower
  index). Then the kept weights are refitted by least squares, ``W' = argmin ||Y - X_kept
  W'^T||_F^2`` (:func:`torch.linalg.lstsq`), and written into the consumer. The paper folds
  ``beta`` into ``W``; the least-squares solution subsumes that scaling. The paper samples 10
  locations per image from 5000 ImageNet images; here the calibration batches
  (``calib_batches`` x ``batch_size`` images, 4 x 64 by default) with ``samples_per_image``
  (10) each. The refit has ``K * k`` unknowns per output; the calibration set should give well
  more samples than that.

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
* **LASSO solved on the Gram matrix.** The stacked problem has ``N * out`` rows; it is replaced
  by an exactly equivalent one with at most ``C`` rows (``G = A^T A = V Λ V^T``, rows
  ``Λ^{1/2} V^T`` and target ``Λ^{-1/2} V^T A^T y``), whose residual differs from the stacked one
  by a constant. scikit-learn divides the squared error by the number of rows, so ``alpha`` is on
  that problem's scale; only the order of the non-zeros along the path matters for the rule.
  The paper's formulation alternates the LASSO and least-squares steps; one pass (LASSO to the
  target width, then one least-squares step) runs here.
* If the LASSO never reaches ``keep`` non-zeros (channels that are always zero), the remaining
  places go to the channels with the largest energy ``||Z_c||`` after the non-zero ones.
* The least-squares steps (ThiNet's scales, LASSO's refit) treat singular values below
  ``1e3 * eps`` of the model's dtype (relative to the largest) as zero and return the
  minimum-norm solution: features computed in float32 are no more precise than that, and two
  channels that are copies up to rounding would otherwise get huge opposite weights.
* Sampled locations are distinct within an image (at most all of its locations); ThiNet draws
  one output channel per sampled location. Everything is seeded by ``ctx.seed``.
* Options: ``samples_per_image`` (10, both papers), ``rescale`` (True; False skips the weight
  update, for comparison).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, lasso_path
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph import Graph, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import Chain, chains
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import distributed as dist_

__all__ = [
    "ChannelPruningLasso",
    "ThiNet",
    "chain_budget",
    "lasso_select",
    "least_squares_weights",
    "rcond_for",
    "thinet_greedy",
    "thinet_scales",
]

LASSO_GRID = 60  # geometric grid of alphas along the LASSO path
LASSO_RANGE = 1e-6  # smallest alpha on the grid, relative to the one that zeroes everything
LASSO_BISECTIONS = 30


# ---------------------------------------------------------------------------- the computations


def thinet_greedy(contrib: torch.Tensor, n_remove: int) -> list[int]:
    """ThiNet's greedy removal: ``contrib`` is ``samples x channels`` (``x̂_ic``); returns the
    ``n_remove`` channels removed, in the order chosen.

    Each step adds to the removed set ``T`` the channel ``c`` minimising ``sum_i (sum_{j in T ∪
    {c}} x̂_ij)^2``; ties go to the lower index.
    """
    if contrib.dim() != 2:
        raise ConfigError(f"contributions must be samples x channels, got {tuple(contrib.shape)}")
    n, channels = contrib.shape
    if not 0 <= n_remove <= channels:
        raise ConfigError(f"n_remove must be in [0, {channels}], got {n_remove}")
    contrib = contrib.double()
    running = torch.zeros(n, dtype=torch.float64, device=contrib.device)
    free = torch.ones(channels, dtype=torch.bool, device=contrib.device)
    removed: list[int] = []
    for _ in range(n_remove):
        cost = ((running[:, None] + contrib) ** 2).sum(0)
        cost[~free] = math.inf
        c = int(torch.argmin(cost))  # the first minimum: the lower index on ties
        removed.append(c)
        free[c] = False
        running += contrib[:, c]
    return removed


def rcond_for(dtype: torch.dtype) -> float:
    """Relative cut-off for singular values in the least-squares steps: features computed in
    ``dtype`` are only that precise, so directions this weak are rounding noise (two identical
    channels differing by one rounding would otherwise get huge opposite weights)."""
    return 1e3 * torch.finfo(dtype).eps


def thinet_scales(
    contrib_kept: torch.Tensor, target: torch.Tensor, rcond: float | None = None
) -> torch.Tensor:
    """``w = argmin_w sum_i (target_i - w · contrib_kept_i)^2``: one scale per kept channel
    (minimum-norm when the kept contributions are collinear). ``rcond`` defaults to
    :func:`rcond_for` the inputs' dtype."""
    a = contrib_kept.double().cpu()
    b = target.double().cpu().reshape(-1, 1)
    cut = rcond_for(contrib_kept.dtype) if rcond is None else rcond
    return torch.linalg.lstsq(a, b, rcond=cut, driver="gelsd").solution[:, 0]


def _design(
    x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrix ``G = A^T A`` and ``A^T y`` of the stacked LASSO design whose
    column ``c`` is ``vec(Z_c)``, ``Z_c = X_c W_c^T`` (computed in chunks of samples)."""
    n, c, _ = x.shape
    out = weight.shape[0]
    gram = torch.zeros(c, c, dtype=torch.float64)
    cross = torch.zeros(c, dtype=torch.float64)
    step = max(1, 2**22 // max(1, c * out))
    for s in range(0, n, step):
        z = torch.einsum("nck,ock->nco", x[s : s + step], weight)
        gram += torch.einsum("nco,ndo->cd", z, z)
        cross += torch.einsum("nco,no->c", z, y[s : s + step])
    return gram, cross


def lasso_select(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, keep: int) -> list[int]:
    """The ``keep`` channels chosen by the LASSO on channel coefficients ``beta``, sorted.

    ``x``: sampled input patches, ``samples x C x k``; ``weight``: the consumer's weight as
    ``out x C x k``; ``y``: the target outputs, ``samples x out``. Minimises ``||y - sum_c beta_c
    X_c W_c^T||^2 + alpha |beta|_1``; the rule for ``alpha`` is in the module docstring.
    """
    x, weight, y = x.double().cpu(), weight.double().cpu(), y.double().cpu()
    channels = x.shape[1]
    if not 1 <= keep <= channels:
        raise ConfigError(f"keep must be in [1, {channels}], got {keep}")
    if keep == channels:
        return list(range(channels))
    gram, cross = _design(x, weight, y)
    energy = torch.diagonal(gram).clone()
    lam, vec = torch.linalg.eigh(gram)
    top = float(lam.max()) if lam.numel() else 0.0
    ok = lam > max(top, 0.0) * channels * torch.finfo(torch.float64).eps
    root = lam[ok].sqrt()
    rows = (vec[:, ok] * root).T.numpy()  # rows^T rows = gram
    target = ((vec[:, ok].T @ cross) / root).numpy()  # rows^T target = cross
    beta = np.zeros(channels)
    n_rows = max(1, rows.shape[0])
    alpha_max = float(np.abs(rows.T @ target).max()) / n_rows if rows.shape[0] else 0.0
    if alpha_max > 0:
        beta = _lasso_beta(rows, target, keep, alpha_max)
    mag = np.abs(beta)
    order = sorted(range(channels), key=lambda c: (-mag[c], -float(energy[c]), c))
    return sorted(order[:keep])


def _lasso_beta(rows: np.ndarray, target: np.ndarray, keep: int, alpha_max: float) -> np.ndarray:
    """``beta`` at the largest alpha with at least ``keep`` non-zeros (or the smallest alpha
    tried, if none reaches ``keep``)."""
    grid = alpha_max * np.logspace(0, math.log10(LASSO_RANGE), LASSO_GRID)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = lasso_path(rows, target, alphas=grid, max_iter=10000, tol=1e-8)
        nnz = (coefs != 0).sum(0)
        hits = np.nonzero(nnz >= keep)[0]
        if not len(hits):
            return coefs[:, -1]
        i = int(hits[0])
        beta = coefs[:, i]
        if nnz[i] == keep or i == 0:
            return beta
        lo, hi = grid[i], grid[i - 1]  # lo: >= keep non-zeros; hi: fewer
        model = Lasso(fit_intercept=False, max_iter=10000, tol=1e-8, warm_start=True)
        model.coef_ = beta.copy()
        for _ in range(LASSO_BISECTIONS):
            mid = math.sqrt(lo * hi)
            model.set_params(alpha=mid)
            model.fit(rows, target)
            count = int((model.coef_ != 0).sum())
            if count >= keep:
                lo, beta = mid, model.coef_.copy()
                if count == keep:
                    break
            else:
                hi = mid
    return beta


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


# ------------------------------------------------------------------------------ sampling


class _Stop(Exception):
    """Ends a forward pass once the layer of interest has run."""


def _kernel_weight(module: nn.Module) -> torch.Tensor:
    """The consumer's weight as ``out x in x k`` (``k`` kernel positions; 1 for Linear)."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1)


def _as_rows(module: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """A conv output ``B x O x H x W`` or a Linear output ``B x ... x O`` as ``B x L x O``."""
    if isinstance(module, nn.Conv2d):
        return t.flatten(2).transpose(1, 2)
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _patches(module: nn.Module, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The consumer's input patches at output locations ``pos`` (``B x s``): ``B*s x C x k``."""
    b = x.shape[0]
    if isinstance(module, nn.Linear):
        rows = x.reshape(b, -1, x.shape[-1])
        picked = rows[torch.arange(b, device=x.device)[:, None], pos]
        return picked.reshape(-1, x.shape[-1], 1)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    out = []
    for i in range(b):  # one image at a time: unfolding a whole batch can be large
        cols = F.unfold(
            padded[i : i + 1], module.kernel_size, dilation=module.dilation, stride=module.stride
        )[0]
        out.append(cols[:, pos[i]].T)
    return torch.cat(out).reshape(b * pos.shape[1], x.shape[1], -1)


def _draw(g: torch.Generator, batch: int, locations: int, per_image: int) -> torch.Tensor:
    """Distinct random locations per image: ``batch x min(per_image, locations)``."""
    return torch.rand(batch, locations, generator=g).argsort(dim=1)[:, :per_image]


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _forward(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, Any]],
    hooks: dict[nn.Module, Callable[[int, torch.Tensor, torch.Tensor], None]],
    stop_at: nn.Module | None = None,
) -> None:
    """Run ``model`` on every batch; ``hooks[m](batch index, input, output)`` sees layer ``m``.
    The pass ends early once ``stop_at`` has run."""
    device = _device(model)
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


def _input_patches(
    model: nn.Module,
    module: nn.Module,
    batches: list[tuple[torch.Tensor, Any]],
    positions: list[torch.Tensor],
) -> torch.Tensor:
    """The input patches of ``module`` in ``model`` at the given locations of each batch."""
    patches: list[torch.Tensor] = []

    def take(b: int, x: torch.Tensor, _: torch.Tensor) -> None:
        patches.append(_patches(module, x, positions[b].to(x.device)).double().cpu())

    _forward(model, batches, {module: take}, stop_at=module)
    return torch.cat(patches)


def _all_ranks(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each tensor's rows from every rank, in rank order (unchanged in a single process): under
    torchrun every rank then selects and refits on the same samples, so all remove the same
    channels and hold the same weights."""
    if dist_.world_size() == 1:
        return tensors
    gathered = dist_.all_gather_objects(tensors)
    return tuple(torch.cat([g[i] for g in gathered]) for i in range(len(tensors)))  # type: ignore[index]


def _pre_bias(module: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    bias = getattr(module, "bias", None)
    return rows if bias is None else rows - bias.detach()


# ------------------------------------------------------------------------------ the methods


def chain_budget(graph: Graph, found: list[Chain], target: dict[str, float]) -> dict[str, int]:
    """How many channels each chain loses: one uniform rate over the chains meeting ``target``
    (``{"target_flops": f}`` or ``{"target_params": f}``); other groups keep everything."""
    names = {c.group.name for c in found}

    def importance(group: Any) -> torch.Tensor:
        fill = 0.0 if group.name in names else math.inf
        return torch.full((group.size,), fill, dtype=torch.float64)

    picks = select_channels(graph, scope="layer", importance=importance, **target)
    return {c.group.name: len(picks.get(c.group.name, [])) for c in found}


def _forward_order(graph: Graph, found: list[Chain]) -> list[Chain]:
    order = {name: i for i, name in enumerate(graph.sites)}
    return sorted(found, key=lambda c: (order[c.consumer.name], order[c.producer.name]))


class _Reconstruction(Method):
    """Shared driver: budget, chain-by-chain selection on the zeroed model, one removal."""

    defaults: ClassVar[dict[str, Any]] = {"samples_per_image": 10, "rescale": True}

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
        if opts["samples_per_image"] < 1:
            raise ConfigError(
                f"option samples_per_image of method {self.id!r} must be >= 1, "
                f"got {opts['samples_per_image']}"
            )
        found = _forward_order(graph, chains(graph))
        if not found:
            raise ConfigError(
                f"method {self.id!r} prunes channels passed from one layer to one conv or Linear "
                "layer (a chain); this model has none"
            )
        counts = chain_budget(graph, found, ctx.target)
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
                self._run(model, found, counts, batches, g, opts, picks)
        finally:
            model.train(was_training)
        return picks

    def _run(
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
    def _apply(chain: Chain, removed: list[int], new_weight: torch.Tensor | None) -> None:
        """Zero the removed units and write ``new_weight`` (``out x K x k``, kept units in
        order) into the consumer's kept input positions."""
        chain.group.zero(removed)
        if new_weight is None:
            return
        module = chain.consumer.module
        kept = [u for u in range(chain.group.size) if u not in set(removed)]
        cols = chain.consumer_index[kept].to(module.weight.device)
        w = module.weight
        w.data[:, cols] = new_weight.reshape(w.shape[0], len(kept), *w.shape[2:]).to(w)


@register_method("thinet")
class ThiNet(_Reconstruction):
    """ThiNet (Luo, Wu, Lin, ICCV 2017): per chain, the consumer's input channels are removed
    greedily so that the sampled outputs change least (sum of squared summed contributions of the
    removed channels), then the kept channels are rescaled by least squares. 10 samples
    (location, output channel) per calibration image (option ``samples_per_image``); one uniform
    rate over the chains meets the target. See the module docstring for the details and
    deviations."""

    def _run(
        self,
        model: nn.Module,
        found: list[Chain],
        counts: dict[str, int],
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        opts: dict[str, Any],
        picks: dict[str, list[int]],
    ) -> None:
        for chain in found:
            n_remove = counts[chain.group.name]
            if not n_remove:
                continue
            contrib, target = _all_ranks(
                *self._samples(model, chain, batches, g, opts["samples_per_image"])
            )
            removed = thinet_greedy(contrib, n_remove)
            new_weight = None
            if opts["rescale"]:
                kept = [u for u in range(chain.group.size) if u not in set(removed)]
                rcond = rcond_for(chain.consumer.module.weight.dtype)
                scales = thinet_scales(contrib[:, kept], target, rcond)
                w = _kernel_weight(chain.consumer.module)
                cols = chain.consumer_index[kept].to(w.device)
                new_weight = w[:, cols].double().cpu() * scales[None, :, None]
            self._apply(chain, removed, new_weight)
            picks[chain.group.name] = sorted(removed)

    @staticmethod
    def _samples(
        model: nn.Module,
        chain: Chain,
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        per_image: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contributions ``x̂`` (samples x units of the chain) and the pre-bias outputs ``ŷ``."""
        module = chain.consumer.module
        weight = _kernel_weight(module)
        units = chain.consumer_index.to(weight.device)
        contribs: list[torch.Tensor] = []

        def take(_: int, x: torch.Tensor, out: torch.Tensor) -> None:
            rows = _as_rows(module, out)
            pos = _draw(g, rows.shape[0], rows.shape[1], per_image)
            channel = torch.randint(weight.shape[0], tuple(pos.shape), generator=g)
            patch = _patches(module, x, pos.to(x.device))
            per_channel = (patch * weight[channel.reshape(-1).to(weight.device)]).sum(-1)
            contribs.append(per_channel.double().cpu())

        _forward(model, batches, {module: take}, stop_at=module)
        full = torch.cat(contribs)
        return full[:, units.cpu()], full.sum(1)


@register_method("lasso_channel")
class ChannelPruningLasso(_Reconstruction):
    """Channel pruning (He, Zhang, Sun, ICCV 2017): per chain, a LASSO on per-channel
    coefficients selects the consumer's input channels that reconstruct the original model's
    sampled outputs, then least squares refits the kept weights. 10 sampled locations per
    calibration image (option ``samples_per_image``); inputs from the model pruned so far,
    targets from the original; one uniform rate over the chains meets the target. See the module
    docstring for the alpha rule, the details and deviations."""

    def _run(
        self,
        model: nn.Module,
        found: list[Chain],
        counts: dict[str, int],
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        opts: dict[str, Any],
        picks: dict[str, list[int]],
    ) -> None:
        todo = [c for c in found if counts[c.group.name]]
        per_image = opts["samples_per_image"]
        positions: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(todo))}
        targets: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(todo))}

        def original(i: int, module: nn.Module) -> Callable[..., None]:
            def take(_: int, x: torch.Tensor, out: torch.Tensor) -> None:
                rows = _as_rows(module, out)
                pos = _draw(g, rows.shape[0], rows.shape[1], per_image)
                positions[i].append(pos)
                picked = rows[
                    torch.arange(rows.shape[0], device=rows.device)[:, None], pos.to(rows.device)
                ]
                targets[i].append(_pre_bias(module, picked).reshape(-1, rows.shape[2]).cpu())

            return take

        # the targets: every consumer's output in the original model, before any change
        _forward(
            model,
            batches,
            {c.consumer.module: original(i, c.consumer.module) for i, c in enumerate(todo)},
        )
        for i, chain in enumerate(todo):
            module = chain.consumer.module
            patches = _input_patches(model, module, batches, positions[i])
            units = chain.consumer_index
            x, y = _all_ranks(patches[:, units], torch.cat(targets[i]).double())
            weight = _kernel_weight(module).double().cpu()[:, units]
            keep = chain.group.size - counts[chain.group.name]
            kept = lasso_select(x, weight, y, keep)
            removed = [u for u in range(chain.group.size) if u not in set(kept)]
            new_weight = None
            if opts["rescale"]:
                rcond = rcond_for(module.weight.dtype)
                new_weight = least_squares_weights(x[:, kept], y, rcond)
            self._apply(chain, removed, new_weight)
            picks[chain.group.name] = removed
