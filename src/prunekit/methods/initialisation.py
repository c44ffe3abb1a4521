"""Re-initialising a model the way its architecture initialises it: one helper for every method
that needs a network at initialisation (lottery tickets' ``theta_0``, SNIP's scoring at init).

A model may say how it is initialised: a method ``init_weights()`` or ``reset_parameters()`` on
the model itself (torchvision and timm models initialise in their constructor; exposing it as a
method lets it be rerun). Every submodule's own ``reset_parameters`` (PyTorch's per-layer
defaults) runs first, so layers the architecture's routine does not touch are reset too; the
architecture's routine then overrides what it sets. A model without one gets the per-layer
defaults alone.
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
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if module is not model and callable(reset):
                reset()
        if own:
            getattr(model, own)()
    if current:
        masks.apply_masks(model, current)  # re-zeroes the stored weights under the masks
