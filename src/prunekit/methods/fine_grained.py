"""What the fine-grained (unstructured and semi-structured) methods share: the weights of conv and
Linear layers are zeroed by masks, shapes stay. Every such method leaves :mod:`prunekit.masks`
masks attached (the runner fine-tunes with them and bakes them in afterwards) and returns a
:class:`~prunekit.methods.base.SparsityReport`.

Common ground
-------------
* **Which layers.** The conv / Linear layers :func:`prunekit.masks.select_targets` picks by
  default: all of them except the model's protected layers (its classifier, for the model zoo).
* **The target.** ``ctx.target == {"target_sparsity": s}`` is the fraction of *all* conv /
  Linear weights to zero, protected layers included (that is what the report measures). Since
  protected layers stay dense, the layers that are pruned get the slightly higher sparsity
  ``(s * all - zeros already outside them) / their size`` so that the overall figure is ``s``
  (``nm_sparsity`` excepted: its pattern fixes every layer's sparsity).
* **Training with masks.** Several methods train between or while pruning; they all go through
  one routine (:meth:`prunekit.methods.Context.train`: :func:`prunekit.train.fit`, SGD with momentum 0.9,
  weight decay 5e-4, cosine learning rate, the run's batch size and seed). Attached masks keep
  pruned weights at exactly zero throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.engine import weight_name
from prunekit.methods.base import Context

SCOPES = ("global", "layer")

Weights = dict[str, torch.Tensor]


def target_sparsity(ctx: Context, method_id: str) -> float:
    """The fraction of ``ctx.target``, which must be a sparsity target."""
    return ctx.target.require("sparsity", method=method_id).fraction


def targets(model: nn.Module, method_id: str) -> dict[str, nn.Module]:
    """The layers to prune, by weight name (``"layer.weight"``): the masks engine's default."""
    chosen = masks.select_targets(model, None, ())
    if not chosen:
        raise ConfigError(
            f"method {method_id!r} found no conv or Linear layer to prune "
            "(all are protected or the model has none)"
        )
    return {weight_name(n): m for n, m in chosen.items()}


def share_of_targets(model: nn.Module, names: Iterable[str], sparsity: float) -> float:
    """The sparsity the layers ``names`` must reach for all conv / Linear weights of ``model``
    to be at ``sparsity`` overall, the other layers staying as they are."""
    rows = masks.report(model)
    names = set(names)
    total = rows["overall"]["params"]
    inside = sum(r["params"] for n, r in rows["layers"].items() if n in names)
    zeros_outside = sum(
        r["params"] - r["nonzero"] for n, r in rows["layers"].items() if n not in names
    )
    share = (sparsity * total - zeros_outside) / inside
    if share >= 1.0:
        raise ConfigError(
            f"target_sparsity {sparsity:g} cannot be met: the layers left dense hold "
            f"{total - inside} of {total} weights; expected a smaller target"
        )
    return min(max(share, 0.0), 1.0)


def covered_sparsity(model: nn.Module, overall: float) -> float:
    """The sparsity to ask of the pruned layers (the masks engine's default choice) so that
    ``overall`` of all conv / Linear weights are zero, counted as :class:`SparsityReport` counts
    them (protected layers and the zeros already in them included): :func:`share_of_targets`
    of those layers."""
    return share_of_targets(model, targets(model, ""), overall)


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight parameter of ``module`` (under its parametrizations, if any)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def magnitude_prune(model: nn.Module, sparsity: float, scope: str) -> dict[str, masks.Mask]:
    """Mask the smallest-magnitude weights so that ``sparsity`` of all conv / Linear weights are
    zero (``scope`` ``"global"``: one threshold over the pruned layers; ``"layer"``: each pruned
    layer to the same sparsity). Masks already there stay (entries they prune score 0)."""
    check_choice("scope", scope, SCOPES)
    return masks.prune(model, covered_sparsity(model, sparsity), scope=scope)


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"option {name!r} must be one of {', '.join(choices)}; got {value!r}")


def check_range(name: str, value: float, low: float, high: float) -> None:
    """``low < value < high``, else ConfigError naming the option."""
    if not (low < value < high and math.isfinite(value)):
        raise ConfigError(f"option {name!r} must be in ({low}, {high}), got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    if not value >= 0 or not math.isfinite(value):
        raise ConfigError(f"option {name!r} must be a finite number >= 0, got {value!r}")


def check_positive_int(name: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"option {name!r} must be an integer >= 1, got {value!r}")


__all__ = [
    "SCOPES",
    "Weights",
    "check_choice",
    "check_nonnegative",
    "check_positive_int",
    "check_range",
    "covered_sparsity",
    "magnitude_prune",
    "share_of_targets",
    "stored_weight",
    "target_sparsity",
    "targets",
]
