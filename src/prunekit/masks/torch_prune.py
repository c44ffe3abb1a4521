"""Conversion to and from ``torch.nn.utils.prune``'s representation.

torch keeps ``<name>_orig`` as the parameter, ``<name>_mask`` as a buffer and recomputes the weight
in a forward pre-hook; prunekit keeps a parametrization. Converting lets models pruned by either
tool be trained, saved and finalised by the other.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from prunekit.masks.apply import apply_masks, get_masks, split_name
from prunekit.masks.mask import Mask


def _torch_pruned(module: nn.Module) -> list[str]:
    names = []
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            names.append(hook._tensor_name)
    return names


def from_torch_prune(model: nn.Module) -> dict[str, Mask]:
    """Replace every ``torch.nn.utils.prune`` mask in ``model`` by a prunekit mask (in place).

    torch's hook, ``_orig`` parameter and ``_mask`` buffer are removed. Returns the new masks.
    """
    masks = {}
    for module_name, module in list(model.named_modules()):
        for tensor_name in _torch_pruned(module):
            mask = Mask(getattr(module, f"{tensor_name}_mask").detach().clone())
            torch_prune.remove(module, tensor_name)  # leaves weight = orig * mask as a Parameter
            prefix = f"{module_name}." if module_name else ""
            masks[f"{prefix}{tensor_name}"] = mask
    return apply_masks(model, masks)


def to_torch_prune(model: nn.Module) -> dict[str, Mask]:
    """Replace every prunekit mask in ``model`` by ``torch.nn.utils.prune.custom_from_mask``.

    Returns the masks that were converted.
    """
    masks = get_masks(model)
    for name, mask in masks.items():
        module, tensor_name = split_name(model, name)
        parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
        torch_prune.custom_from_mask(
            module, tensor_name, mask.data.to(getattr(module, tensor_name).device)
        )
    return masks
