"""Compact storage of sparse (unstructured-pruned) weights.

Unstructured pruning zeroes individual weights but leaves every tensor at its full shape, so a
plain ``torch.save`` file is exactly as large as the dense model. This module writes each tensor
in whichever of three encodings is smallest for it:

``dense``
    every element, as ``torch.save`` would.
``bitmask``
    one bit per element saying whether it is nonzero (``numpy.packbits``), then the nonzero
    values in order. Costs ``numel / 8`` bytes whatever the sparsity, so it wins at moderate
    sparsity.
``csr``
    the flat positions of the nonzeros, delta-encoded (first position, then the gap to the
    previous one) in the narrowest unsigned integer that holds the largest gap (uint8, uint16,
    uint32, uint64 only for gaps of 2**32 or more), then the values. Costs a few bytes per
    nonzero, so it wins at very high sparsity.

"Nonzero" means "not all bits zero", so ``-0.0`` and NaN payloads round-trip bit-exactly.

All payload bytes live in one ``uint8`` blob (with a CRC-32 checked on load) rather than one
tensor per piece: ``torch.save`` spends a zip record and alignment padding on every tensor, which
at high sparsity would cost more than the weights themselves. The file is otherwise plain data,
tagged ``format="prunekit-sparse"``, ``version=1``, written atomically through
:func:`prunekit.io.atomic_torch_save` and read back with ``torch.load(weights_only=True)`` via
:func:`prunekit.io.load_tagged`.

With ``dtype="fp16"`` the values of float32/float64 tensors are stored in half precision; loading
casts them back to their original dtype, so the result equals ``t.half().to(t.dtype)`` exactly
(zeros stay exact zeros; a value beyond the fp16 range is refused rather than turned into inf).
Integer, bool and other tensors are always stored bit-exactly.
"""

from __future__ import annotations

import io
import math
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit import persist
from prunekit.errors import CheckpointError, ConfigError
from prunekit.io import PathLike, atomic_torch_save, load_tagged
from prunekit.models import protected_layers

FORMAT = "prunekit-sparse"
VERSION = 1
EXPECTED = "expected a prunekit sparse file written by prunekit.compress.save_sparse"

Fmt = Literal["auto", "bitmask", "csr", "dense"]
ValueDtype = Literal["fp32", "fp16"]

__all__ = [
    "FORMAT",
    "VERSION",
    "SparseReport",
    "load_sparse",
    "load_sparse_model",
    "save_sparse",
]

_FMTS = ("auto", "bitmask", "csr", "dense")
_VALUE_DTYPES = ("fp32", "fp16")
_KINDS = ("dense", "bitmask", "csr")

# The dtypes a file may name, by name: parsing names through this table (never getattr on torch)
# keeps a corrupt file from naming anything that is not a plain tensor dtype.
DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.complex64,
        torch.complex128,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
# Index widths in bytes -> numpy little-endian dtype (explicit byte order: files move between
# machines).
_INDEX_DTYPES: dict[int, str] = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_INDEX_NAMES: dict[int, str] = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}
# Same-width integer views used to test "any bit set" quickly.
_INT_VIEW: dict[int, torch.dtype] = {
    1: torch.uint8,
    2: torch.int16,
    4: torch.int32,
    8: torch.int64,
}

ModelSource = nn.Module | Callable[[], nn.Module]


@dataclass
class SparseReport:
    """What :func:`save_sparse` wrote, next to what a dense ``torch.save`` would have cost.

    ``ratio`` is ``bytes_written / dense_bytes`` (smaller is better). ``formats`` gives each
    tensor's encoding; ``index_dtypes`` the delta width of each ``csr`` tensor. ``sparsity`` is
    the fraction of all stored elements that are zero.
    """

    path: Path
    bytes_written: int
    dense_bytes: int
    ratio: float
    dtype: ValueDtype
    sparsity: float
    formats: dict[str, str] = field(default_factory=dict)
    index_dtypes: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- save


def save_sparse(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: PathLike,
    *,
    fmt: Fmt = "auto",
    dtype: ValueDtype = "fp32",
    min_sparsity: float = 0.3,
    extra: Any = None,
) -> SparseReport:
    """Write a model's (or a state dict's) tensors to ``path`` in compact sparse form.

    ``fmt="auto"`` picks the smallest encoding per tensor, but keeps a tensor dense when fewer
    than ``min_sparsity`` of its elements are zero: below that the saving is a few percent at
    best and dense tensors load fastest. ``"bitmask"``, ``"csr"`` and ``"dense"`` force one
    encoding for every tensor.

    A model with ``torch.nn.utils.parametrize`` masks is stored by its *effective* weights under
    the plain names, as the finalized model's ``state_dict`` would hold them, so the file loads
    into the plain architecture. A zoo model's ``prunekit_arch`` and pruning structure are kept so
    :func:`load_sparse_model` can rebuild it. ``extra`` must be JSON-able (see
    :func:`prunekit.save`).
    """
    if fmt not in _FMTS:
        raise ConfigError(f"fmt must be one of {', '.join(_FMTS)}, got {fmt!r}")
    if dtype not in _VALUE_DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_VALUE_DTYPES)}, got {dtype!r}")
    if (
        isinstance(min_sparsity, bool)
        or not isinstance(min_sparsity, (int, float))
        or not 0.0 <= min_sparsity <= 1.0
    ):
        raise ConfigError(f"min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    persist.check_extra(extra)

    if isinstance(model_or_state_dict, nn.Module):
        model: nn.Module | None = model_or_state_dict
        state = effective_state(model_or_state_dict)
    elif isinstance(model_or_state_dict, Mapping):
        model = None
        state = _checked_state(model_or_state_dict)
    else:
        raise ConfigError(
            "save_sparse expects an nn.Module or a state dict, "
            f"got {type(model_or_state_dict).__name__}"
        )

    chunks: list[np.ndarray] = []
    offset = 0

    def put(data: np.ndarray) -> list[int]:
        nonlocal offset
        start = offset
        chunks.append(data)
        offset += data.size
        return [start, offset]

    entries: dict[str, dict[str, Any]] = {}
    formats: dict[str, str] = {}
    index_dtypes: dict[str, str] = {}
    zeros = total = 0
    for name, tensor in state.items():
        entry, nnz, index_width = _encode(name, tensor, fmt, dtype, float(min_sparsity), put)
        entries[name] = entry
        formats[name] = entry["kind"]
        if index_width is not None:
            index_dtypes[name] = _INDEX_NAMES[index_width]
        total += tensor.numel()
        zeros += tensor.numel() - nnz

    blob = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint8)
    arch = getattr(model, "prunekit_arch", None) if model is not None else None
    from prunekit import __version__

    atomic_torch_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "byteorder": sys.byteorder,
            "dtype": dtype,
            "arch": None if arch is None else persist.plain_data(arch),
            "structure": persist.structure_of(model) if model is not None else {},
            "protected_layers": (list(protected_layers(model)) if model is not None else []),
            "extra": extra,
            "tensors": entries,
            "blob": torch.from_numpy(blob),
            "crc32": zlib.crc32(blob.data),
            "torch": str(torch.__version__),
            "prunekit": str(__version__),
        },
        path,
    )
    # Measured after the write so that nothing here can fail between the two: a failure in the
    # comparison must never be mistaken for a failed save.
    written = Path(path).stat().st_size
    dense = _dense_bytes(state)
    return SparseReport(
        path=Path(path),
        bytes_written=written,
        dense_bytes=dense,
        ratio=written / dense if dense else float("nan"),
        dtype=dtype,
        sparsity=zeros / total if total else 0.0,
        formats=formats,
        index_dtypes=index_dtypes,
    )


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` as the model would hold it with its parametrizations finalized.

    A parametrized module's state dict holds ``<m>.parametrizations.<p>.original`` (and the
    parametrizations' own buffers, e.g. masks) instead of ``<m>.<p>``. Each such group is replaced,
    in place in the key order, by the effective tensor ``getattr(m, p)`` under the plain name.
    """
    prefixes = [
        ((f"{name}." if name else "") + "parametrizations.", f"{name}." if name else "", module)
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module)
    ]
    prefixes.sort(key=lambda p: len(p[0]), reverse=True)  # innermost module wins
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in model.state_dict().items():
            match = next((p for p in prefixes if key.startswith(p[0])), None)
            if match is None:
                state[key] = _as_tensor(key, value)
                continue
            marker, plain_prefix, module = match
            pname = key[len(marker) :].split(".", 1)[0]
            plain = plain_prefix + pname
            if plain not in state:
                state[plain] = getattr(module, pname).detach()
    return state


def _checked_state(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ConfigError(f"state dict keys must be strings, got {key!r}")
        if ".parametrizations." in f".{key}":
            raise ConfigError(
                f"state dict entry {key!r} belongs to a parametrized (masked) module: pass the "
                "model itself so its effective weights can be stored"
            )
        out[key] = _as_tensor(key, value)
    return out


def _as_tensor(key: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(
            f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor: "
            "save_sparse stores tensors only"
        )
    if value.dtype not in DTYPES.values():
        raise ConfigError(f"state_dict entry {key!r} has unsupported dtype {value.dtype}")
    return value.detach()


def _nonzero(flat: torch.Tensor) -> torch.Tensor:
    """Elements with any bit set (so ``-0.0`` counts as a value to keep, bit-exactly)."""
    size = flat.element_size()
    if size in _INT_VIEW:
        return flat.view(_INT_VIEW[size]) != 0
    return flat.view(torch.uint8).reshape(-1, size).ne(0).any(dim=1)


def _bytes_of(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _encode(
    name: str,
    tensor: torch.Tensor,
    fmt: str,
    dtype: str,
    min_sparsity: float,
    put: Callable[[np.ndarray], list[int]],
) -> tuple[dict[str, Any], int, int | None]:
    """One tensor's file entry (payload handed to ``put``), its nonzero count and its csr index
    width, if any."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    numel = flat.numel()
    stored = flat.dtype
    if dtype == "fp16" and flat.dtype in (torch.float32, torch.float64):
        stored = torch.float16
    mask = _nonzero(flat)
    nnz = int(mask.sum())
    item = torch.empty(0, dtype=stored).element_size()

    positions = np.flatnonzero(mask.numpy())
    deltas = np.diff(positions, prepend=0) if nnz else positions
    max_delta = int(deltas.max()) if nnz else 0
    width = next(w for w in (1, 2, 4, 8) if max_delta < 2 ** (8 * w))

    if fmt != "auto":
        kind = fmt
    elif numel == 0 or (numel - nnz) / numel < min_sparsity:
        kind = "dense"
    else:
        sizes = {
            "dense": numel * item,
            "bitmask": math.ceil(numel / 8) + nnz * item,
            "csr": nnz * (width + item),
        }
        kind = min(_KINDS, key=lambda k: sizes[k])  # ties go to the earlier, simpler kind

    values = flat if kind == "dense" else flat[mask]
    if stored != flat.dtype:
        half = values.to(stored)
        if bool((half.isinf() & values.isfinite()).any()):
            raise ConfigError(
                f"tensor {name!r} has values beyond the fp16 range (|x| > 65504): "
                "save it with dtype='fp32'"
            )
        values = half
    entry: dict[str, Any] = {
        "kind": kind,
        "shape": [int(s) for s in tensor.shape],
        "dtype": str(flat.dtype).removeprefix("torch."),
        "stored": str(stored).removeprefix("torch."),
        "nnz": numel if kind == "dense" else nnz,
        "values": put(_bytes_of(values)),
    }
    if kind == "bitmask":
        entry["bits"] = put(np.packbits(mask.numpy()))
    elif kind == "csr":
        entry["index_width"] = width
        entry["index"] = put(deltas.astype(_INDEX_DTYPES[width]).view(np.uint8))
    return entry, nnz, (width if kind == "csr" else None)


def _dense_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Size of the plain ``torch.save(state_dict)`` file the sparse file replaces."""
    buf = io.BytesIO()
    # clone: a view would otherwise save its whole underlying storage
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    return buf.tell()


# ---------------------------------------------------------------------------------- load


def load_sparse(path: PathLike) -> dict[str, torch.Tensor]:
    """The state dict stored at ``path``, bit-exact for values stored at their own precision.

    A missing file is a :class:`~prunekit.errors.MissingFileError`; a truncated, corrupt or
    foreign file a :class:`~prunekit.errors.CheckpointError` naming it.
    """
    return _read(Path(path))[1]


def load_sparse_model(
    path: PathLike,
    model: ModelSource | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the model stored at ``path`` (in eval mode on ``map_location``).

    Works like :func:`prunekit.load`, through the same code: the original architecture comes from
    the file's ``arch`` or from ``model`` (the original, unpruned model or a callable building
    it), the recorded channel pruning is replayed, then the weights are loaded strictly.
    """
    path = Path(path)
    ckpt, state = _read(path)
    return persist.rebuild_saved(path, ckpt, state, model, map_location)


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ckpt = load_tagged(path, fmt=FORMAT, version=VERSION, what="sparse file", expected=EXPECTED)
    state: dict[str, torch.Tensor] = {}
    try:
        problem = _check_header(ckpt)
        if problem is None:
            state = _decode_all(ckpt)
    except Exception as e:  # any inconsistency in a file that passed the tag is corruption
        problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        raise CheckpointError(f"{path} is corrupt ({problem}): {EXPECTED}")
    return ckpt, state


def _check_header(ckpt: dict[str, Any]) -> str | None:
    if ckpt.get("byteorder") != sys.byteorder:
        return f"written with byte order {ckpt.get('byteorder')!r}, this machine is {sys.byteorder}"
    blob = ckpt.get("blob")
    if not isinstance(blob, torch.Tensor) or blob.dtype != torch.uint8 or blob.dim() != 1:
        return "'blob' is not a 1-d uint8 tensor"
    if zlib.crc32(blob.numpy().data) != ckpt.get("crc32"):
        return "payload checksum mismatch"
    if not isinstance(ckpt.get("tensors"), dict):
        return "'tensors' is not a dict"
    probe = dict(ckpt)
    probe["state_dict"] = {}  # checked by _decode_all; the rest as prunekit.load checks it
    return persist.check_fields(probe)


def _decode_all(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    blob: torch.Tensor = ckpt["blob"]
    out: dict[str, torch.Tensor] = {}
    for name, entry in ckpt["tensors"].items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise ValueError(f"entry {name!r} is not a dict")
        try:
            out[name] = _decode(blob, entry)
        except Exception as e:
            raise ValueError(f"tensor {name!r}: {e}") from e
    return out


def _span(blob: torch.Tensor, span: Any, nbytes: int) -> torch.Tensor:
    """``blob[start:stop]`` after checking it is in range and exactly ``nbytes`` long."""
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in span)
        or not 0 <= span[0] <= span[1] <= blob.numel()
        or span[1] - span[0] != nbytes
    ):
        raise ValueError(f"byte range {span!r} does not hold {nbytes} bytes")
    return blob[span[0] : span[1]].clone()  # clone: a fresh, aligned storage to view as values


def _decode(blob: torch.Tensor, entry: dict[str, Any]) -> torch.Tensor:
    kind, shape, nnz = entry.get("kind"), entry.get("shape"), entry.get("nnz")
    if kind not in _KINDS:
        raise ValueError(f"unknown encoding {kind!r}")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"shape {shape!r} is not a list of sizes")
    dtype, stored = DTYPES[entry["dtype"]], DTYPES[entry["stored"]]
    numel = math.prod(shape)
    if not isinstance(nnz, int) or not 0 <= nnz <= numel or (kind == "dense" and nnz != numel):
        raise ValueError(f"nonzero count {nnz!r} does not fit {numel} elements")
    item = torch.empty(0, dtype=stored).element_size()
    values = _span(blob, entry.get("values"), nnz * item).view(stored)

    if kind == "dense":
        flat = values
    else:
        if kind == "bitmask":
            bits = _span(blob, entry.get("bits"), math.ceil(numel / 8)).numpy()
            mask = np.unpackbits(bits, count=numel).astype(bool)
            if int(mask.sum()) != nnz:
                raise ValueError("bitmask does not match the nonzero count")
            index = torch.from_numpy(mask)
        else:
            width = entry.get("index_width")
            if width not in _INDEX_DTYPES:
                raise ValueError(f"index width {width!r} is not 1, 2, 4 or 8 bytes")
            raw = _span(blob, entry.get("index"), nnz * width).numpy()
            deltas = raw.view(_INDEX_DTYPES[width]).astype(np.int64)
            if nnz and ((deltas[1:] < 1).any() or int(deltas.sum()) >= numel):
                raise ValueError("index deltas do not give increasing positions in range")
            index = torch.from_numpy(np.cumsum(deltas))
        flat = torch.zeros(numel, dtype=stored)
        flat[index] = values
    return flat.to(dtype).reshape(shape)
