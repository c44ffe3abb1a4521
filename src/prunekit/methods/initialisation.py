"""Re-initialising a model the way its architecture initialises it: one helper for every method
that needs a network at initialisation (lottery tickets' ``theta_0``, SNIP's scoring at init).

A model may say how it is initialised: a method ``init_weights()`` or ``reset_parameters()`` on
the model itself (torchvision and timm models initialise in their constructor; exposing it as a
method lets it be rerun). Every submodule's own ``reset_parameters`` (PyTorch's per-layer
defaults) runs first, so layers the architecture's routine does not touch are reset too; the
architecture's routine then overrides what it sets. A model without one gets the per-layer
defaults alone. A model of prunekit's zoo initialises in its constructor (``prunekit_arch``
names it): it is built afresh under the seed and its parameters and buffers copied in, when the
shapes still match.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit import masks

__all__ = ["architecture_init", "reinitialise"]


def architecture_init(model: nn.Module) -> str:
    """The name of ``model``'s own initialisation method (``"init_weights"`` or
    ``"reset_parameters"``), or ``""`` when it has none."""
    for name in ("init_weights", "reset_parameters"):
        if callable(getattr(model, name, None)):
            return name
    return ""


def reinitialise(model: nn.Module, seed: int) -> None:
    """Re-initialise every parameter of ``model`` under ``torch.manual_seed(seed)`` (the global
    RNG state is restored afterwards): each submodule's ``reset_parameters`` in registration
    order, then the model's own routine (:func:`architecture_init`). Masks on the model stay in
    force (the new stored weights are zeroed where they prune)."""
    current = masks.get_masks(model)
    own = architecture_init(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not own and _rebuild_from_zoo(model):
            return
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not model and callable(reset):
                reset()
        if own:
            getattr(model, own)()
    if current:
        masks.apply_masks(model, current)  # re-zeroes the stored weights under the masks


def _rebuild_from_zoo(model: nn.Module) -> bool:
    """Copy a fresh build of ``model``'s zoo architecture into it (masks stay in force); False
    when it has no ``prunekit_arch`` or its shapes no longer match (a structurally pruned
    model)."""
    from prunekit.methods.retraining import restore, snapshot
    from prunekit.models import rebuild

    arch = getattr(model, "prunekit_arch", None)
    if arch is None:
        return False
    fresh = snapshot(rebuild(arch))
    mine = snapshot(model)
    if fresh.keys() != mine.keys() or any(fresh[k].shape != v.shape for k, v in mine.items()):
        return False
    restore(model, fresh)
    return True
