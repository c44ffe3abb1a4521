"""Miao, Luo, Chen, Chen, Liu, Wang, "Learning Pruning-Friendly Networks via Frank-Wolfe:
One-Shot, Any-Sparsity, and No Retraining", ICLR 2022 (official code: VITA-Group
SFW-Once-for-All-Pruning, ``train_prune.py`` / ``test_prune.py``; its optimizer and constraints
follow ZIB-IOL/StochasticFrankWolfe, ``pytorch/optimizers.py`` and ``pytorch/constraints.py``).

The algorithm, top to bottom:

1. **The constraint.** Every trainable parameter ``theta`` (``n`` entries) gets its own K-sparse
   polytope ``C = conv{v : v_i in {0, +-r}, exactly K entries non-zero}`` (the intersection of
   the L1 ball of radius ``K r`` with the L-infinity ball of radius ``r``), ``K = k_frac * n``
   (at least 1). Its L2 diameter is ``D = 2 tau * n0`` with ``n0`` the parameter's average L2
   norm under its layer's own initialisation (``init_draws`` draws of ``reset_parameters`` on a
   copy; 1 where that norm is 0, e.g. a BatchNorm bias), hence ``r = D / (2 sqrt(K))``
   (official ``set_k_sparse_constraints`` with ``mode="initialization"``).
2. **Start inside.** The network is drawn afresh from its architecture's initialisation (the
   paper trains from scratch; ``from_init=False`` keeps the given weights), then every
   parameter is scaled into its polytope when its K-sparse norm ``max(|x|_inf, |x|_1 / K)``
   exceeds ``r`` (official ``make_feasible``).
3. **Stochastic Frank-Wolfe steps.** For each minibatch gradient ``g``: the momentum average
   ``d = m d + (1 - m) g`` (``d = g`` at the first step); the linear minimisation oracle over
   the polytope, ``v = argmin_{v in C} <v, d>``: ``-r sign(d_i)`` at the K entries of largest
   ``|d_i|``, 0 elsewhere (:func:`ksparse_lmo`); the step ``eta = clip(lr_t * |d|_2 /
   |theta - v|_2, 0, 1)`` (``rescale="gradient"``) and ``theta <- (1 - eta) theta + eta v``
   (:func:`frank_wolfe_step`). The iterate is a convex combination of sparse vertices: most of
   its mass sits on few entries, which is what makes it "pruning-friendly".
4. **Cut once.** The trained network is pruned to the target by magnitude in one shot, without
   retraining (the point of the paper: the same trained network serves any sparsity).

Here the Frank-Wolfe update runs through :meth:`Context.train` (checkpointed, resumable): a
gradient hook on every trainable parameter hands the minibatch gradient to :class:`FrankWolfe`
and leaves a zero gradient to the phase's SGD (momentum and weight decay 0, so SGD moves
nothing); after every optimizer step :class:`FrankWolfe` makes the step of 3. Its momentum
buffers and step count are saved with every epoch.

Defaults: ``lr`` 1.0, ``momentum`` 0.9, ``k_frac`` 0.05, ``tau`` 15, gradient rescaling and no
weight decay are the official ``train_prune.py`` defaults (paper Sec. 4.1); ``schedule="step"``
divides the step size by 10 at 1/3 and 2/3 of training, as the official ``lr_scheme
dynamic_change`` does. ``epochs``: SFW *is* the network's training (the paper's 180 epochs are
its dense baseline's), so by default it gets the run's baseline epochs
(:func:`~prunekit.methods.base.scratch_epochs`; 3 outside a run); the results record them
(``from_init_epochs``).

Deviations: the init norm is taken per parameter (the official code keys it by shape);
``dynamic_change``'s loss-driven adjustments (step size times 0.7 or 1.06 every 5 epochs after
epoch 20) are not reproduced; the cut is one global magnitude threshold over the pruned conv /
Linear layers (official ``utils/prune.py`` ``global_prune``: one threshold over every parameter,
BatchNorm and biases included), protected layers staying dense; the gradient hooks keep SFW to one process (under DDP the reducer would
average the zeroed gradients). The method needs a model without masks.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.methods.base import (
    Context,
    Method,
    SparsityReport,
    count_nonzero,
    register_method,
    scratch_epochs,
)
from prunekit.methods.fine_grained import SCOPES, covered_sparsity, magnitude_prune, target_sparsity
from prunekit.methods.initialisation import reinitialise
from prunekit.methods.options import SHARED, Options, option
from prunekit.train.config import SCHEDULES
from prunekit.train.schedules import LRFactor

_OFFICIAL = "official train_prune.py"


def ksparse_lmo(d: torch.Tensor, k: int, radius: float) -> torch.Tensor:
    """The vertex of the K-sparse polytope of ``radius`` minimising ``<v, d>``: ``-radius *
    sign(d_i)`` at the ``k`` entries of largest ``|d_i|`` (ties: the first), 0 elsewhere."""
    flat = d.reshape(-1)
    v = torch.zeros_like(flat)
    top = torch.topk(flat.abs(), k=min(k, flat.numel()), sorted=False).indices
    v[top] = -radius * torch.sign(flat[top])
    return v.reshape(d.shape)


def ksparse_norm(x: torch.Tensor, k: int) -> float:
    """The gauge of the K-sparse polytope of radius 1: ``max(|x|_inf, |x|_1 / k)``."""
    return float(torch.maximum(x.abs().max(), x.abs().sum() / k))


def shift_inside(x: torch.Tensor, k: int, radius: float) -> torch.Tensor:
    """``x`` scaled into the K-sparse polytope of ``radius`` (unchanged when inside)."""
    norm = ksparse_norm(x, k)
    return x * (radius / norm) if norm > radius else x


def frank_wolfe_step(
    theta: torch.Tensor, d: torch.Tensor, v: torch.Tensor, lr: float, rescale: str
) -> tuple[torch.Tensor, float]:
    """``((1 - eta) theta + eta v, eta)`` with ``eta = clip(lr * factor, 0, 1)``; ``factor`` is
    ``|d|_2 / |theta - v|_2`` (``"gradient"``) or 1 (``"none"``)."""
    factor = 1.0
    if rescale == "gradient":
        gap = float(torch.linalg.vector_norm(theta - v))
        factor = float(torch.linalg.vector_norm(d)) / gap if gap > 0 else 0.0
    eta = min(max(lr * factor, 0.0), 1.0)
    return theta * (1.0 - eta) + v * eta, eta


def polytope_size(n: int, k_frac: float) -> int:
    """K of a parameter with ``n`` entries: ``int(k_frac * n)``, at least 1, at most ``n``."""
    return min(max(int(k_frac * n), 1), n)


def init_norms(model: nn.Module, draws: int, seed: int) -> dict[str, float]:
    """Average L2 norm of every trainable parameter under its own layer's
    ``reset_parameters`` (``draws`` draws on a copy of the layer); 1.0 where that is 0 or the
    layer has no ``reset_parameters`` of its own (then the parameter's current norm, if not 0)."""
    out: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module_name, module in model.named_modules():
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            reset = getattr(module, "reset_parameters", None)
            sums = dict.fromkeys(own, 0.0)
            if callable(reset):
                twin = copy.deepcopy(module)
                for _ in range(draws):
                    twin.reset_parameters()
                    for n, p in twin.named_parameters(recurse=False):
                        sums[n] += float(torch.linalg.vector_norm(p.detach())) / draws
            else:
                sums = {n: float(torch.linalg.vector_norm(p.detach())) for n, p in own.items()}
            prefix = f"{module_name}." if module_name else ""
            for n, value in sums.items():
                out[prefix + n] = value if value > 0 else 1.0
    return out


@dataclass(frozen=True)
class SFWOptions(Options):
    epochs: int | None = option(
        None,
        help=SHARED["epochs"] + " (None: the run's baseline epochs, 3 outside a run)",
        source="prunekit: the baseline's budget, since SFW replaces the dense training "
        "(the paper trains 180 epochs, as its dense baseline)",
        low=1,
    )
    lr: float = option(
        1.0,
        help="Frank-Wolfe step size before rescaling (clipped to [0, 1])",
        source=f"{_OFFICIAL} (--lr 1.0)",
        low=0,
        high=1,
        low_open=True,
    )
    momentum: float = option(
        0.9,
        help="d = momentum * d + (1 - momentum) * g",
        source=f"{_OFFICIAL} (--momentum 0.9)",
        low=0,
        high=1,
        high_open=True,
    )
    k_frac: float = option(
        0.05,
        help="K of each parameter's K-sparse polytope, as a fraction of its entries",
        source=f"{_OFFICIAL} (--k_frac 0.05)",
        low=0,
        high=1,
        low_open=True,
    )
    tau: float = option(
        15.0,
        help="polytope L2 diameter = 2 tau * the parameter's average init norm",
        source=f"{_OFFICIAL} (--tau 15, --mode initialization)",
        low=0,
        low_open=True,
    )
    rescale: str = option(
        "gradient",
        help="step-size rescaling: 'gradient' (|d| / |theta - v|) or 'none'",
        source=f"{_OFFICIAL} (--rescale gradient)",
        choices=("gradient", "none"),
    )
    schedule: str = option(
        "step",
        help=SHARED["schedule"] + " of the step size (step: /10 at 1/3 and 2/3)",
        source=f"{_OFFICIAL} (--lr_scheme dynamic_change: /10 at 1/3 and 2/3 of the epochs)",
        choices=SCHEDULES,
    )
    from_init: bool = option(
        True,
        help="train from the architecture's initialisation (False: from the given weights)",
        source="paper Sec. 3 (the network is trained from scratch with SFW)",
    )
    init_draws: int = option(
        100,
        help="initialisations averaged for each parameter's init norm",
        source="ZIB-IOL constraints.py get_avg_init_norm (repetitions=100)",
        low=1,
    )
    scope: str = option(
        "global",
        help=SHARED["scope"] + " (the one-shot magnitude cut)",
        source="official utils/prune.py global_prune (one threshold)",
        choices=SCOPES,
    )


class FrankWolfe:
    """Stochastic Frank-Wolfe over per-parameter K-sparse polytopes, as a training callback.

    :meth:`attach` hooks every parameter: the hook keeps the minibatch gradient and returns
    zeros, so the training phase's SGD (no momentum, no weight decay) leaves the parameter
    alone; at every ``step_end`` :meth:`step` makes the Frank-Wolfe update. ``state_dict``
    holds the step count and momentum buffers (a resumed phase continues the same iterates).
    """

    def __init__(
        self,
        params: dict[str, nn.Parameter],
        sizes: dict[str, int],
        radii: dict[str, float],
        opts: SFWOptions,
        total_steps: int,
    ) -> None:
        self.params, self.sizes, self.radii, self.opts = params, sizes, radii, opts
        self.factor = LRFactor(opts.schedule, max(total_steps, 1), milestones=(1 / 3, 2 / 3))
        self.grads: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.etas: list[float] = []  # mean step size of the last update
        self._handles: list[Any] = []

    def attach(self) -> None:
        for name, p in self.params.items():
            self._handles.append(p.register_hook(self._capture(name)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _capture(self, name: str) -> Any:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            self.grads[name] = grad.detach().clone()
            return torch.zeros_like(grad)

        return hook

    @torch.no_grad()
    def step(self) -> None:
        lr = self.opts.lr * self.factor(self.steps)
        m = self.opts.momentum
        etas = []
        for name, p in self.params.items():
            g = self.grads.pop(name, None)
            if g is None:
                continue
            if name in self.buffers and m > 0:
                d = self.buffers[name].mul_(m).add_(g, alpha=1.0 - m)
            else:
                d = self.buffers[name] = g
            v = ksparse_lmo(d, self.sizes[name], self.radii[name])
            new, eta = frank_wolfe_step(p.detach(), d, v, lr, self.opts.rescale)
            p.copy_(new)
            etas.append(eta)
        self.steps += 1
        self.etas = [sum(etas) / len(etas)] if etas else []

    def __call__(self, event: str, state: dict[str, Any]) -> None:
        if event == "step_end":
            self.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "buffers": {n: b.detach().cpu().clone() for n, b in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.buffers = {
            n: b.to(self.params[n].device) for n, b in state["buffers"].items() if n in self.params
        }


@register_method("sfw")
class StochasticFrankWolfe(Method):
    """Miao et al. (ICLR 2022): train with stochastic Frank-Wolfe inside per-parameter K-sparse
    polytopes, then cut the trained network to the target by magnitude once, without
    retraining. See the module docstring."""

    Options = SFWOptions

    def __init__(self) -> None:
        self.radii: dict[str, float] = {}
        self.sizes: dict[str, int] = {}
        self.steps = 0

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError("sfw starts from a dense model; this model already carries masks")
        covered_sparsity(model, target)  # fail early when the target cannot be met
        before = count_nonzero(model)
        norms = init_norms(model, opts.init_draws, ctx.seed)
        if opts.from_init:
            reinitialise(model, ctx.seed)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.sizes = {n: polytope_size(p.numel(), opts.k_frac) for n, p in params.items()}
        # diameter 2 tau n0 = 2 r sqrt(K)
        self.radii = {n: opts.tau * norms[n] / math.sqrt(self.sizes[n]) for n in params}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(shift_inside(p.detach(), self.sizes[n], self.radii[n]))
        epochs = scratch_epochs(opts.epochs, ctx)
        steps = epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        fw = FrankWolfe(params, self.sizes, self.radii, opts, steps)
        fw.attach()
        try:
            ctx.train(
                model,
                epochs,
                opts.lr,
                name="sfw",
                callbacks=[fw],
                momentum=0.0,
                weight_decay=0.0,
                schedule="constant",
                progress=opts.progress,
            )
        finally:
            fw.detach()
        self.steps = fw.steps
        magnitude_prune(model, target, opts.scope)
        report = SparsityReport.measure(model, before)
        report.from_init_epochs = epochs if opts.from_init else 0
        return report


__all__ = [
    "FrankWolfe",
    "SFWOptions",
    "StochasticFrankWolfe",
    "frank_wolfe_step",
    "init_norms",
    "ksparse_lmo",
    "ksparse_norm",
    "polytope_size",
    "shift_inside",
]
