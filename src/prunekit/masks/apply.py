"""Attaching masks to parameters, reading them back, and baking them in.

Masks live as ``torch.nn.utils.parametrize`` parametrizations, so the effective weight is
recomputed as ``w * m`` on every access: forward and backward both see the mask and no optimizer
can move a pruned entry away from zero. :func:`finalize` removes that per-step cost once training
is done.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError
from prunekit.masks.basis import basis_layers
from prunekit.masks.mask import Mask, MaskParametrization


def split_name(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """``"layer1.conv.weight"`` -> (the conv module, ``"weight"``); ConfigError if absent."""
    module_name, _, tensor_name = name.rpartition(".")
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        raise ConfigError(f"model has no module {module_name!r} (for mask {name!r})") from None
    if not isinstance(getattr(module, tensor_name, None), torch.Tensor):
        raise ConfigError(f"model has no parameter {name!r}")
    return module, tensor_name


def mask_parametrization(module: nn.Module, tensor_name: str) -> MaskParametrization | None:
    """The prunekit mask on ``module.<tensor_name>``, if any."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, MaskParametrization):
            return p
    return None


def attach(module: nn.Module, tensor_name: str, mask: Mask, *, name: str) -> Mask:
    """AND ``mask`` into the parameter's mask (adding the parametrization if needed).

    Also zeroes the stored dense weight where the combined mask is 0, so a later
    :func:`finalize`, export or plain read of ``original`` agrees with the effective weight.
    """
    current = mask_parametrization(module, tensor_name)
    mask.check_shape(name, getattr(module, tensor_name).shape)
    if current is None:
        mask = mask.to(getattr(module, tensor_name).device)
        parametrize.register_parametrization(module, tensor_name, MaskParametrization(mask))
        current = mask_parametrization(module, tensor_name)
        assert current is not None
    else:
        combined = current.as_mask() & mask
        current.mask.copy_(combined.data)
        current.meta = combined.meta
    with torch.no_grad():
        # masked_fill, not a multiply: negative weights times 0 give -0.0, whose sign bit makes a
        # pruned entry look non-zero to bit-level storage
        module.parametrizations[tensor_name].original.masked_fill_(~current.mask.bool(), 0.0)
    return current.as_mask()


def apply_masks(model: nn.Module, masks: Mapping[str, Mask]) -> dict[str, Mask]:
    """Apply ``masks`` (by parameter name), combined by AND with masks already there.

    Shapes are all checked before anything is changed, so a bad mask leaves the model untouched.
    Returns the combined masks now in force.
    """
    located = {}
    for name, mask in masks.items():
        if not isinstance(mask, Mask):
            raise ConfigError(f"masks[{name!r}] must be a Mask, got {type(mask).__name__}")
        module, tensor_name = split_name(model, name)
        mask.check_shape(name, getattr(module, tensor_name).shape)
        located[name] = (module, tensor_name, mask)
    return {name: attach(m, t, mask, name=name) for name, (m, t, mask) in located.items()}


def get_masks(model: nn.Module) -> dict[str, Mask]:
    """The prunekit masks in force on ``model``, by parameter name (copies)."""
    found = {}
    for module_name, module in model.named_modules():
        for tensor_name in getattr(module, "parametrizations", {}):
            p = mask_parametrization(module, tensor_name)
            if p is not None:
                prefix = f"{module_name}." if module_name else ""
                found[f"{prefix}{tensor_name}"] = p.as_mask()
    return found


def _own_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own before its parametrizations go.

    ``torch.nn.utils.parametrize`` serves a parametrized tensor through a property of a class
    made for the module, and ``copy.deepcopy`` keeps that class: a copy and its original share
    it. Removing the copy's parametrizations deletes the property from the shared class and would
    break the original, so the module first gets a fresh class with the same members.
    """
    cls = type(module)
    members = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, members)


def finalize(model: nn.Module) -> nn.Module:
    """Bake every prunekit mask into its weight and drop the parametrizations (in place);
    kernels stored in a basis (:mod:`prunekit.masks.basis`) become plain kernels rebuilt from
    their kept coefficients.

    The result is a plain model: no per-step multiply, state_dict keys back to ``weight``, pruned
    entries exactly zero. Tensors carrying other parametrizations besides a mask are baked too,
    since torch removes a tensor's parametrizations all together. Returns ``model``.
    """
    for name, mask in get_masks(model).items():
        module, tensor_name = split_name(model, name)
        _bake(module, tensor_name)
        weight = getattr(module, tensor_name)
        with torch.no_grad():  # +0.0 at pruned entries (w * 0 is -0.0 for negative w)
            weight.masked_fill_(~mask.data.to(weight.device), 0.0)
    for module in basis_layers(model).values():  # kernels rebuilt from their kept coefficients
        _bake(module, "weight")
    return model


def _bake(module: nn.Module, tensor_name: str) -> None:
    _own_class(module)
    parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    # torch re-registers the tensor last; put it back first, as the layer was built, so the
    # state_dict and parameters() keep their original order
    params = module._parameters
    module._parameters = {tensor_name: params[tensor_name], **params}
