"""Scopes: how one overall sparsity target is shared out among the prunable layers.

A scope maps each layer's importance scores to either a per-layer sparsity (which the granularity
then realises) or, for the global rankings, an element keep-mask directly. ``None`` means "leave the
layer dense, without a mask".

* ``layer``   - every layer pruned to the target.
* ``uniform`` - like ``layer``, but the network's first convolution stays dense (Gale et al. 2019:
  it is tiny and pruning it costs much accuracy). Protected layers stay dense in every scope.
* ``global``  - one threshold on the scores of all layers together.
* ``lamp``    - one threshold on LAMP scores (Lee et al., ICLR 2021), which rescale each weight by
  the energy of the weights at least as large in its layer, so no layer is wiped out.
* ``erk``     - Erdős–Rényi-Kernel densities (Evci et al. 2020), proportional to
  ``sum(shape) / prod(shape)``, scaled to meet the target and capped at 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from prunekit.errors import ConfigError
from prunekit.masks.granularity import keep_top, prune_count
from prunekit.registry import Registry

Plan = dict[str, "float | torch.Tensor | None"]
ScopeFn = Callable[[dict[str, torch.Tensor], float, "str | None"], Plan]

SCOPES: Registry[ScopeFn] = Registry("scope")


@SCOPES.register("layer", element_only=False)
def layer(scores: dict[str, torch.Tensor], sparsity: float, first_conv: str | None) -> Plan:
    """Every layer to ``sparsity``."""
    return dict.fromkeys(scores, sparsity)


@SCOPES.register("uniform", element_only=False)
def uniform(scores: dict[str, torch.Tensor], sparsity: float, first_conv: str | None) -> Plan:
    """Every layer to ``sparsity`` except the model's first convolution, left dense."""
    return {name: None if name == first_conv else sparsity for name in scores}


def global_keep(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Prune the ``round(sparsity * total)`` lowest scores across all layers (exact count)."""
    if not scores:
        return {}
    flat = torch.cat([s.reshape(-1).float().cpu() for s in scores.values()])
    keep = keep_top(flat, prune_count(flat.numel(), sparsity))
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start : start + s.numel()].reshape(s.shape).to(s.device)
        start += s.numel()
    return out


@SCOPES.register("global", element_only=True)
def global_(scores: dict[str, torch.Tensor], sparsity: float, first_conv: str | None) -> Plan:
    """One threshold on the raw scores over all layers."""
    return dict(global_keep(scores, sparsity))


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score of each entry: ``w_u^2 / sum of w_v^2 over v with |w_v| >= |w_u|``.

    Ties share one denominator (all tied weights are "larger or equal" to each other). A layer of
    zeros scores 0 everywhere.
    """
    sq = weight.detach().double().reshape(-1).pow(2)
    ordered, _ = torch.sort(sq)
    below = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)])  # below[i] = sum of i smallest
    n_smaller = torch.searchsorted(ordered, sq, right=False)
    denom = sq.sum() - below[n_smaller]
    score = torch.where(denom > 0, sq / denom.clamp_min(torch.finfo(sq.dtype).tiny), 0.0)
    return score.reshape(weight.shape)


@SCOPES.register("lamp", element_only=True)
def lamp(scores: dict[str, torch.Tensor], sparsity: float, first_conv: str | None) -> Plan:
    """Global threshold on LAMP scores computed from each layer's scores."""
    return dict(global_keep({n: lamp_scores(s) for n, s in scores.items()}, sparsity))


def erk_densities(shapes: dict[str, torch.Size], sparsity: float) -> dict[str, float]:
    """ERK density per layer meeting overall density ``1 - sparsity`` over these layers.

    Layers whose scaled density would pass 1 are made dense and the budget is re-spread over the
    others, repeating until none passes 1.
    """
    sizes = {n: float(torch.Size(s).numel()) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    budget = (1.0 - sparsity) * sum(sizes.values())
    dense: set[str] = set()
    while True:
        free = [n for n in shapes if n not in dense]
        if not free:
            return dict.fromkeys(shapes, 1.0)
        eps = (budget - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in free)
        over = {n for n in free if eps * raw[n] > 1.0}
        if not over:
            return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}
        dense |= over


@SCOPES.register("erk", element_only=True)
def erk(scores: dict[str, torch.Tensor], sparsity: float, first_conv: str | None) -> Plan:
    """Per-layer sparsity from :func:`erk_densities`."""
    densities = erk_densities({n: s.shape for n, s in scores.items()}, sparsity)
    return {n: max(0.0, 1.0 - d) for n, d in densities.items()}


def check_supported(scope: str, granularity: str) -> None:
    """Raise :class:`ConfigError` for a scope that only ranks single weights."""
    if SCOPES.entry(scope).meta["element_only"] and granularity != "element":
        raise ConfigError(
            f"scope {scope!r} works with granularity 'element' only, got {granularity!r}; "
            "use scope='layer' or 'uniform'"
        )
