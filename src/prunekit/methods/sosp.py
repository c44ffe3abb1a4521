"""SOSP — Nonnenmacher, Pfeil, Steinwart, Reeb, "SOSP: Efficiently Capturing Global Correlations
by Second-Order Structured Pruning" (ICLR 2022), the main method SOSP-H.

Removing a set ``M`` of structures perturbs the parameters by ``δθ = -θ_M`` with ``θ_M =
sum_{s in M} θ_s`` (``θ_s``: the parameters that make structure ``s``, zero elsewhere). To second
order the loss changes by ``-gᵀθ_M + ½ θ_Mᵀ H θ_M``, whose quadratic term couples every pair of
pruned structures, in any layers. SOSP-H keeps these correlations at the cost of one
Hessian-vector product by replacing one factor ``θ_M`` with ``θ``, the parameters of all
structures: each structure's saliency

    ``λ_s = | -gᵀθ_s + ½ θ_sᵀ H θ |`` ``= | -gᵀθ_s + ½ sum_{s'} θ_sᵀ H θ_s' |``

sums its second-order interaction with every structure of the network. ``H`` is the
Gauss-Newton matrix of the cross-entropy, ``H = 1/N sum_n J_nᵀ (diag(p_n) - p_n p_nᵀ) J_n``
(positive semi-definite; ``J_n`` the Jacobian of the logits), applied to ``θ`` without forming
it (:func:`prunekit.criteria.hessian.gauss_newton_product`).

1. On ``calib_batches`` calibration batches in eval mode: ``u = H θ`` and the gradient ``g``.
2. Per channel group, per unit: ``θ_sᵀ u`` and ``gᵀ θ_s``, summed over every parameter row that
   produces the unit (filters, biases and BatchNorm scale and shift: what zeroing the unit sets
   to zero).
3. One global ranking of the raw saliencies ``λ_s`` over all layers (SOSP prunes globally);
   the lowest are removed to the FLOPs or params target through the structural core. The
   runner fine-tunes afterwards.

Defaults and their sources:

* ``first_order = True``: the gradient term of the Taylor expansion is kept (it vanishes at a
  minimum; ``False`` leaves ``|½ θ_sᵀ H θ|``).
* ``calib_batches = None``: the run's calibration batches (``ctx.calib_batches``).
* ``scope = "global"``: SOSP ranks all structures of the network together; ``"layer"``
  removes one rate from every group instead (raw saliencies fill the remainder).

Deviations a reader should know: the structures are prunekit's channel groups (the channels of
a residual stage are one structure spanning several layers). Only the paper's abstract and
introduction were available while writing this module, not its method section or official
code; the saliency above is the expansion the abstract describes (second order, Gauss-Newton,
Hessian-vector products, correlations across all layers), and the first-order term is exposed
as an option for that reason. SOSP-I (the paper's second method, with the structure-by-
structure correlation matrix) and the expand-pruning scheme are not implemented. Sums are
reduced over DDP ranks, so every rank removes the same channels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.criteria.hessian import (
    gauss_newton_product,
    loss_gradient,
    unit_parameter_mask,
    unit_sums,
)
from prunekit.errors import ConfigError
from prunekit.graph import Graph, Group, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import eval_modes, restore_modes
from prunekit.methods.options import SHARED, Options, option
from prunekit.prune import PruneReport, remove_selected, select_channels


@dataclass(frozen=True)
class SOSPOptions(Options):
    scope: str = option(
        "global",
        help=SHARED["scope"] + " (raw scores in both)",
        source="paper: global pruning over all structures of the network",
        choices=("global", "layer"),
    )
    first_order: bool = option(
        True,
        help="include the gradient term -gᵀθ_s of the Taylor expansion in the saliency",
        source="prunekit: second-order Taylor expansion of the loss change (see the docstring)",
    )
    calib_batches: int | None = option(
        None,
        help=SHARED["calib_batches"] + " (None: the run's)",
        source="prunekit",
        low=1,
    )


def sosp_saliencies(
    model: nn.Module, graph: Graph, batches: list, first_order: bool = True
) -> dict[str, torch.Tensor]:
    """Per group of ``graph`` (built on ``model``), the SOSP-H saliency of every unit:
    ``|-gᵀθ_s + ½ θ_sᵀ H θ|`` (``first_order=False``: ``|½ θ_sᵀ H θ|``) with ``H`` the
    Gauss-Newton matrix of the cross-entropy on ``batches``."""
    masks = unit_parameter_mask(graph)
    params = list(masks)
    if not params:
        return {g.name: torch.zeros(g.size, dtype=torch.float64) for g in graph.groups}
    theta = [p.detach() * masks[p] for p in params]
    u = gauss_newton_product(model, params, theta, batches)
    second = {p: t * h for p, t, h in zip(params, theta, u, strict=True)}
    first = {}
    if first_order:
        grad = loss_gradient(model, params, batches)
        first = {p: t * gr for p, t, gr in zip(params, theta, grad, strict=True)}
    out = {}
    for g in graph.groups:
        value = 0.5 * unit_sums(g, second)
        if first_order:
            value = value - unit_sums(g, first)
        out[g.name] = value.abs()
    return out


@register_method("sosp")
class SOSP(Method):
    """SOSP-H (Nonnenmacher et al., ICLR 2022): each channel's saliency is its second-order
    effect on the loss including its Gauss-Newton interaction with every other channel of the
    network (one Hessian-vector product ``H θ``), plus the first-order term; channels are ranked
    globally and the lowest removed to the target. See the module docstring."""

    Options = SOSPOptions

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        target = ctx.target.require("flops", "params", method=self.id)
        if opts.calib_batches is not None:
            ctx = dataclasses.replace(ctx, calib_batches=opts.calib_batches)
        batches = ctx.calibration()
        if not batches:
            raise ConfigError("method 'sosp' needs calibration data: the training set gave none")
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            scores = sosp_saliencies(ctx.model, graph, batches, opts.first_order)

            def importance(group: Group) -> torch.Tensor:
                return scores[group.name]

            picks = select_channels(
                graph, scope=opts.scope, normalize=False, importance=importance, **target.as_dict()
            )
            return remove_selected(graph, picks, dense)
        finally:
            restore_modes(modes)


__all__ = ["SOSP", "SOSPOptions", "sosp_saliencies"]
