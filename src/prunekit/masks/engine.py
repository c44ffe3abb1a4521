"""``prune``: choose the layers, score their weights, share the sparsity out, build and apply masks.

The steps are kept separate (targets -> scores -> scope plan -> granularity -> apply) so that each
pruning method can reuse the pieces it needs with its own importance function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks.apply import apply_masks, mask_parametrization
from prunekit.masks.granularity import GRANULARITIES, PatternOptions
from prunekit.masks.mask import Mask
from prunekit.masks.scope import SCOPES, check_supported
from prunekit.models.core import protected_layers

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Importance = str | Callable[[torch.Tensor], torch.Tensor]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear modules by name, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def weight_name(module_name: str) -> str:
    """Parameter name of a layer's weight (``"weight"`` when the model is the layer itself)."""
    return f"{module_name}.weight" if module_name else "weight"


def _matches(name: str, patterns: Iterable[str]) -> bool:
    param = weight_name(name)
    return any(p in (name, param) or name.startswith(f"{p}.") for p in patterns)


def select_targets(
    model: nn.Module, include: Iterable[str] | None, exclude: Iterable[str]
) -> dict[str, nn.Module]:
    """The layers to prune: all prunable but protected ones, or exactly ``include``; less ``exclude``.

    Names are module names or parameter names (``"fc"`` or ``"fc.weight"``), or a parent module
    (``"layer1"``). A name that matches no prunable layer is an error, to catch typos.
    """
    layers = prunable_layers(model)
    exclude = tuple([exclude] if isinstance(exclude, str) else exclude)
    named = [] if include is None else [include] if isinstance(include, str) else list(include)
    for p in (*named, *exclude):
        if not any(_matches(n, [p]) for n in layers):
            known = ", ".join(layers) or "(none)"
            raise ConfigError(f"{p!r} names no conv or linear layer; layers: {known}")
    if include is None:
        protected = protected_layers(model)
        chosen = {n: m for n, m in layers.items() if not _matches(n, protected)}
    else:
        chosen = {n: m for n, m in layers.items() if _matches(n, named)}
    return {n: m for n, m in chosen.items() if not _matches(n, exclude)}


def layer_scores(module: nn.Module, importance: Importance, name: str) -> torch.Tensor:
    """Per-weight importance of ``module.weight``; entries already masked out score lowest.

    ``"magnitude"`` scores the effective (masked) weight, so pruned entries score 0. A callable
    gets the stored parameter (``original`` when masked, so its ``.grad`` is there) and must return
    a tensor of the same shape.
    """
    effective = module.weight.detach()
    if importance == "magnitude":
        return effective.abs()
    if not callable(importance):
        raise ConfigError(f"importance must be 'magnitude' or a callable, got {importance!r}")
    current = mask_parametrization(module, "weight")
    param = module.parametrizations.weight.original if current is not None else module.weight
    scores = importance(param)
    if not isinstance(scores, torch.Tensor) or scores.shape != effective.shape:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(
            f"importance for {name} returned {got}, expected {tuple(effective.shape)}"
        )
    scores = scores.detach()
    if current is None or bool(current.mask.all()):
        return scores
    return torch.where(current.mask, scores, scores.min().clamp(max=0))


def check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ConfigError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    return float(sparsity)


def prune(
    model: nn.Module,
    sparsity: float,
    *,
    granularity: str = "element",
    scope: str = "layer",
    n: int = 2,
    m: int = 4,
    block: int = 4,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    importance: Importance = "magnitude",
) -> dict[str, Mask]:
    """Mask the conv/linear weights of ``model`` to ``sparsity`` and apply the masks (in place).

    New masks are ANDed with masks already on a weight. Returns the combined masks by parameter
    name (``"layer.weight"``); layers a scope leaves dense (the first conv under ``uniform``) get
    none. See :mod:`prunekit.masks.granularity` and :mod:`prunekit.masks.scope` for the options.
    """
    sparsity = check_sparsity(sparsity)
    make = GRANULARITIES.get(granularity)
    plan_fn = SCOPES.get(scope)
    check_supported(scope, granularity)
    opts = PatternOptions(n=n, m=m, block=block)
    opts.validate()

    targets = select_targets(model, include, exclude)
    scores = {
        weight_name(name): layer_scores(mod, importance, name) for name, mod in targets.items()
    }
    first_conv = next(
        (
            weight_name(n_)
            for n_, m_ in prunable_layers(model).items()
            if not isinstance(m_, nn.Linear)
        ),
        None,
    )
    plan = plan_fn(scores, sparsity, first_conv)

    masks: dict[str, Mask] = {}
    for name, decision in plan.items():
        if decision is None:
            continue
        if isinstance(decision, torch.Tensor):
            masks[name] = Mask(decision)
        else:
            keep, meta = make(scores[name], decision, name, opts)
            masks[name] = Mask(keep, meta=meta)
    return apply_masks(model, masks)
