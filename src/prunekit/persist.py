"""Saving and loading pruned models without pickling code.

A pruned model is not an instance of any class one could import: its layers are narrower than
the architecture that built them. Pickling the module would tie the file to the exact code that
wrote it and run arbitrary code on load. Instead a file stores *how to get back to it*:

``arch``
    ``model.prunekit_arch``: plain data from which :func:`prunekit.models.rebuild` builds the
    original, unpruned architecture (absent for users' own models: they pass ``model=``).
``structure``
    ``model._prunekit_structure``: for every pruned layer, the positions of the *original* layer's
    input and output sides that are still there. Loading rebuilds the original and replays these
    through each layer's handler, which also fixes attributes that no tensor holds
    (``in_channels``, ``groups``, ``num_features`` ...).
``state_dict``
    the weights, loaded strictly once the shapes agree again.

Parameters the graph slices outside any layer (a layer-scale ``gamma`` used in an element-wise op)
belong to modules without a handler, so no layer record describes them. They need no record of
their own: the state dict already holds them at their pruned shape, so on load such a tensor is
replaced by one of the saved shape before the strict load. That is only accepted where it can be
the result of pruning (same number of dimensions, no dimension larger than the original); any
other mismatch, and any mismatch on a layer a handler owns, means the file and the architecture
disagree and is an error naming the layer.

The file is a dict of plain data and tensors written with
:func:`prunekit.io.atomic_torch_save`, so it loads with ``torch.load(weights_only=True)`` and a
crash while saving leaves the previous file intact.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError
from prunekit.io import PathLike, atomic_torch_save, load_tagged
from prunekit.models import protected_layers, rebuild

FORMAT = "prunekit-model"
VERSION = 1
EXPECTED = "expected a prunekit model file written by prunekit.save"

__all__ = ["FORMAT", "VERSION", "load", "register_reader", "save"]

ModelSource = nn.Module | Callable[[], nn.Module]
Reader = Callable[..., nn.Module]

# Formats of other modules that load() recognises by their first bytes. They register here (the
# Deep Compression format does on import of prunekit.compress), so this module imports none of
# them.
_READERS: dict[bytes, Reader] = {}


def register_reader(magic: bytes, reader: Reader) -> None:
    """Let :func:`load` read files starting with ``magic`` through
    ``reader(path, model, map_location=...)``."""
    _READERS[bytes(magic)] = reader


# ---------------------------------------------------------------------------------- save


def save(model: nn.Module, path: PathLike, *, extra: Any = None) -> None:
    """Write ``model`` (pruned or not) to ``path`` so :func:`load` can rebuild it anywhere.

    ``extra`` is the caller's metadata (accuracy, pruning settings ...). It must be JSON-able so
    the file stays plain data that loads without running code; :func:`load` puts it back on the
    model as ``prunekit_extra``.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save expects an nn.Module, got {type(model).__name__}")
    check_extra(extra)
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor: "
                "prunekit.save stores tensors only"
            )
        state[key] = value
    arch = getattr(model, "prunekit_arch", None)
    from prunekit import __version__

    atomic_torch_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "arch": None if arch is None else plain_data(arch),
            "structure": structure_of(model),
            "state_dict": state,
            "protected_layers": list(protected_layers(model)),
            "extra": extra,
            "torch": str(torch.__version__),
            "prunekit": str(__version__),
        },
        path,
    )


def plain_data(obj: Any) -> Any:
    """A copy made of dicts and lists only, so the file needs nothing beyond plain data."""
    if isinstance(obj, Mapping):
        return {str(k): plain_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_data(v) for v in obj]
    return obj


def structure_of(model: nn.Module) -> dict[str, dict[str, list[int] | None]]:
    structure = getattr(model, "_prunekit_structure", None) or {}
    return {
        str(name): {
            side: None if rec.get(side) is None else [int(i) for i in rec[side]]
            for side in ("in", "out")
        }
        for name, rec in structure.items()
    }


# ---------------------------------------------------------------------------------- load


def load(
    path: PathLike,
    model: ModelSource | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the model saved at ``path`` and return it in eval mode on ``map_location``.

    The original architecture comes from the file's ``arch`` (zoo models) or from ``model``: an
    instance of the original, *unpruned* architecture (it is pruned in place and returned) or a
    zero-argument callable that builds one. ``model`` wins when both are available, so a file can
    be loaded into a compatible class of the caller's own. Pass a callable rather than an instance
    if the instance must survive a failed load: surgery happens before the weights are checked.

    The weights are assigned (not copied), so they keep the dtype they were saved with. A file
    written by ``prunekit compress`` (Deep Compression) loads the same way.
    """
    path = Path(path)
    for magic, reader in _READERS.items():  # other formats (Deep Compression files)
        if _starts_with(path, magic):
            return reader(path, model, map_location=map_location)
    ckpt = _read(path)
    return rebuild_saved(path, ckpt, ckpt["state_dict"], model, map_location)


def _starts_with(path: Path, magic: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False  # _read reports the missing or unreadable file


def check_extra(extra: Any) -> None:
    """User metadata must be JSON-able, so a file stays plain data that loads without code."""
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"extra must be JSON-able (plain dicts, lists, numbers, text): {e}"
        ) from e


def rebuild_saved(
    path: Path,
    ckpt: dict[str, Any],
    state: dict[str, torch.Tensor],
    model: Any,
    map_location: Any,
) -> nn.Module:
    """The model a saved file describes: original architecture (``ckpt["arch"]`` or ``model``),
    the recorded channel pruning replayed, then ``state`` loaded strictly. Shared by every
    prunekit file format that stores a model."""
    arch = ckpt["arch"]
    net = _original(path, arch, model)
    structure = ckpt["structure"]
    _apply_structure(path, net, structure)
    _load_state(path, net, state)
    net._prunekit_structure = {  # type: ignore[assignment]
        name: {side: None if rec[side] is None else list(rec[side]) for side in ("in", "out")}
        for name, rec in structure.items()
    }
    if arch is not None:
        net.prunekit_arch = arch  # type: ignore[assignment]
    net.protected_layers = tuple(ckpt["protected_layers"])  # type: ignore[assignment]
    net.prunekit_extra = ckpt["extra"]  # type: ignore[assignment]
    return net.to(map_location).eval()


def _read(path: Path) -> dict[str, Any]:
    """The file's dict, checked for the keys and types :func:`load` relies on."""
    ckpt = load_tagged(path, fmt=FORMAT, version=VERSION, what="model file", expected=EXPECTED)
    problem = check_fields(ckpt)
    if problem:
        raise CheckpointError(f"{path} is corrupt ({problem}): {EXPECTED}")
    return ckpt


def check_fields(ckpt: dict[str, Any]) -> str | None:
    arch = ckpt.get("arch")
    if arch is not None and not isinstance(arch, dict):
        return "'arch' is not a dict"
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        return "'state_dict' is not a dict of tensors"
    layers = ckpt.get("protected_layers")
    if not isinstance(layers, (list, tuple)) or not all(isinstance(n, str) for n in layers):
        return "'protected_layers' is not a list of layer names"
    structure = ckpt.get("structure")
    if not isinstance(structure, dict):
        return "'structure' is not a dict"
    for name, rec in structure.items():
        if not isinstance(rec, dict) or set(rec) != {"in", "out"}:
            return f"structure of layer {name!r} is not a dict with 'in' and 'out'"
        for side in ("in", "out"):
            kept = rec[side]
            if kept is None:
                continue
            if (
                not isinstance(kept, list)
                or not kept
                or not all(isinstance(i, int) and not isinstance(i, bool) for i in kept)
                or kept[0] < 0
                or any(a >= b for a, b in itertools.pairwise(kept))
            ):
                return f"kept {side}puts of layer {name!r} are not increasing positions"
    return None


def _original(path: Path, arch: dict[str, Any] | None, model: ModelSource | None) -> nn.Module:
    """The original, unpruned architecture the file's structure is relative to."""
    if model is None:
        if arch is None:
            raise CheckpointError(
                f"{path} does not record its architecture (the model was not built by "
                "prunekit.models.create): pass model= with the original, unpruned model or a "
                "function that builds it"
            )
        try:
            return rebuild(arch)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot rebuild architecture {arch!r}: {e}") from e
    if isinstance(model, nn.Module):
        net = model
    elif callable(model):
        net = model()
        if not isinstance(net, nn.Module):
            raise ConfigError(f"model= returned a {type(net).__name__}, not an nn.Module")
    else:
        raise ConfigError(
            f"model= must be an nn.Module or a zero-argument callable returning one, "
            f"got {type(model).__name__}"
        )
    if getattr(net, "_prunekit_structure", None):
        raise ConfigError(
            f"model= is already pruned; loading {path} needs the original, unpruned architecture"
        )
    return net


def _apply_structure(
    path: Path, net: nn.Module, structure: dict[str, dict[str, list[int] | None]]
) -> None:
    """Re-prune each recorded layer of the freshly built original through its handler."""
    from prunekit.graph.handlers import handler_for  # lazily: the graph is only needed here

    modules = dict(net.named_modules())
    for name, rec in structure.items():
        module = modules.get(name)
        if module is None:
            raise CheckpointError(
                f"{path}: pruned layer {name!r} is not in the rebuilt model; "
                "was the file saved from a different architecture?"
            )
        handler = handler_for(module)
        if handler is None:
            raise CheckpointError(
                f"{path}: pruned layer {name!r} ({type(module).__name__}) has no pruning "
                "handler; register it with prunekit.graph.register_handler before loading"
            )
        keep_in, keep_out = (
            None if rec[side] is None else torch.tensor(rec[side], dtype=torch.long)
            for side in ("in", "out")
        )
        try:
            with torch.no_grad():
                handler.prune(module, keep_in, keep_out)
        except Exception as e:
            raise CheckpointError(
                f"{path}: cannot re-apply the pruning of layer {name!r} "
                f"({type(module).__name__}): {e}"
            ) from e


def _load_state(path: Path, net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly load ``state``, first resizing tensors the graph sliced outside any layer."""
    from prunekit.graph.handlers import handler_for

    current = net.state_dict()
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        what = "; ".join(
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        )
        raise CheckpointError(
            f"{path}: state_dict does not match the rebuilt model (layer "
            f"{_owner(missing[0] if missing else unexpected[0])!r}): {what}"
        )
    for key, saved in state.items():
        have = current[key]
        if saved.shape == have.shape:
            continue
        owner_name, _, attr = key.rpartition(".")
        owner = net.get_submodule(owner_name)
        shrunk = saved.dim() == have.dim() and all(
            s <= h for s, h in zip(saved.shape, have.shape, strict=True)
        )
        if handler_for(owner) is not None or not shrunk:
            raise CheckpointError(
                f"{path}: layer {owner_name!r}: {attr} has shape {tuple(saved.shape)} in the file "
                f"but {tuple(have.shape)} in the rebuilt model; the architecture or the pruning "
                "record does not match the weights"
            )
        _resize(owner, attr, saved.shape)
    net.load_state_dict(state, strict=True, assign=True)


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def _resize(module: nn.Module, attr: str, shape: torch.Size) -> None:
    """Replace ``module.<attr>`` by an (uninitialised) tensor of ``shape`` for the strict load."""
    old = getattr(module, attr)
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module._buffers[attr] = new
