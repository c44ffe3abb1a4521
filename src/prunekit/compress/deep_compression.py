"""Deep Compression storage: shared weights, relative positions and Huffman coding in one file.

Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained
Quantization and Huffman Coding", ICLR 2016 (https://arxiv.org/abs/1510.00149). The pruning stage
lives in :mod:`prunekit.methods.deep_compression`; this module does the two others.

**Weight sharing** (:func:`quantize_model`). The kept (non-zero) weights of every conv / Linear
layer are clustered by one-dimensional k-means into ``2**bits`` centroids (paper: 8 bits for
conv, 5 bits for fully connected layers), with the paper's *linear* initialisation: centroids
evenly spaced between the smallest and the largest kept weight, run once
(``sklearn.cluster.KMeans(init=<those centroids>, n_init=1)``). Each kept weight is then the
index of its centroid. A layer that already has at most ``2**bits`` distinct kept values keeps
them exactly as its codebook (no clustering), so quantising twice changes nothing.

**Trained quantisation.** The layer's weight becomes a parametrization
(:class:`SharedWeights`): ``weight = where(mask, centroids[index], 0)`` with ``centroids`` the
only trainable tensor. Autograd's backward of the gather adds the gradients of every weight
that reads a centroid, which is the paper's update: a centroid's gradient is the *sum* of the
gradients of the weights in its cluster. Any training loop (:func:`prunekit.train.fit`) then
fine-tunes the codebook while pruned weights stay exactly zero and sharing is kept.
:class:`SharedWeights` is a :class:`prunekit.masks.MaskParametrization`, so
:func:`prunekit.masks.get_masks`, :func:`~prunekit.masks.apply_masks` and
:func:`~prunekit.masks.finalize` treat it as the layer's mask; finalizing bakes the shared values
into a plain weight (at most ``2**bits`` distinct values per layer, which
:func:`save_deep_compressed` then stores exactly).

**Storage** (:func:`save_deep_compressed`). Per shared layer, over the flattened weight:

* the positions of the kept weights as *relative* indices: the gap from the previous entry
  (the first gap counted from position ``-1``), each at most ``2**gap_bits - 1`` (paper: 8 bits
  for conv, 5 for fc). A longer gap inserts *filler* entries: an entry ``2**gap_bits - 1``
  further on that points at a zero weight, as in the paper's figure 2;
* each entry's centroid index; fillers use one extra symbol, ``k`` (the codebook size), that
  decodes to zero;
* both streams Huffman coded (:mod:`prunekit.compress.huffman`, canonical codes; the file holds
  the code lengths, one byte per symbol up to the largest one used) and the codebook in the weight's own dtype (fp32 for an fp32 model).

Every other tensor (biases, BatchNorm parameters and buffers) is stored plainly; with
``value_dtype="fp16"`` float tensors other than the codebooks are stored in half precision.

The file: ``MAGIC`` (8 bytes), format version (uint32), header length (uint32), payload length
(uint64), then the header (zlib-compressed UTF-8 JSON: the model's architecture record as
:mod:`prunekit.persist` stores it: ``arch``, ``structure``, ``protected_layers``, ``extra``; and
one entry per tensor with byte ranges into the payload), the payload, and a CRC-32 of everything before it. All
integers are little-endian. It is plain data (nothing is unpickled) and written atomically.
:func:`load_deep_compressed` rebuilds the model through :func:`prunekit.persist.rebuild_saved`;
its outputs equal those of the quantised model that was saved, bit for bit (with fp32 plain
values). A missing file is a :class:`~prunekit.errors.MissingFileError`; a truncated, corrupt or
foreign one a :class:`~prunekit.errors.CheckpointError` naming it.

Deviations from the paper: the codebook stays fp32 (the paper counts 32 bits per centroid too);
the centroid index of a filler is a separate Huffman symbol rather than a reserved zero centroid,
so all ``2**bits`` centroids stay available to real weights; the relative-index and
centroid-index streams are coded separately per layer, each with its own Huffman code.
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
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
from prunekit.compress.huffman import HuffmanCode
from prunekit.compress.sparse import DTYPES, effective_state
from prunekit.errors import CheckpointError, ConfigError, MissingFileError
from prunekit.io import PathLike, atomic_open
from prunekit.masks.apply import mask_parametrization
from prunekit.masks.engine import prunable_layers, weight_name
from prunekit.masks.mask import Mask, MaskParametrization
from prunekit.models import protected_layers

MAGIC = b"PKDEEPC\x00"
VERSION = 1
EXPECTED = "expected a prunekit Deep Compression file written by save_deep_compressed"
_PREFIX = struct.Struct("<8sIIQ")  # magic, version, header bytes, payload bytes
_CRC = struct.Struct("<I")
# A layer that was not quantised is stored with its distinct values as its codebook, up to this
# many of them (more would mean it was never weight-shared).
MAX_CODEBOOK = 1 << 16

ValueDtype = Literal["fp32", "fp16"]
ModelSource = nn.Module | Callable[[], nn.Module]

__all__ = [
    "MAGIC",
    "VERSION",
    "DeepCompressionReport",
    "SharedWeights",
    "compress_model",
    "gaps_with_fillers",
    "kmeans_codebook",
    "linear_init",
    "load_deep_compressed",
    "positions_from_gaps",
    "quantize_model",
    "read_deep_compressed",
    "save_deep_compressed",
    "share_layer",
    "share_values",
    "shared_weights",
]


# ---------------------------------------------------------------------------- weight sharing


class SharedWeights(MaskParametrization):
    """``weight = where(mask, centroids[index], 0)``: a layer's weights drawn from a codebook.

    ``centroids`` (1-d) is the trainable parameter; ``index`` (int64, the weight's shape) and
    ``mask`` (bool) are buffers. The stored ``original`` weight is not read, so its gradient stays
    ``None`` and no optimizer moves it. The gradient of a centroid is the sum of the gradients of
    the weights that use it.
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, mask: Mask) -> None:
        super().__init__(mask)
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.register_buffer("index", index.detach().to(torch.long).clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shared = self.centroids[self.index]
        return torch.where(self.mask, shared, shared.new_zeros(()))


def linear_init(values: np.ndarray, k: int) -> np.ndarray:
    """The paper's linear initialisation: ``k`` centroids evenly spaced over ``[min, max]``."""
    return np.linspace(float(values.min()), float(values.max()), k)


def kmeans_codebook(
    values: torch.Tensor, k: int, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids, labels)`` of 1-d k-means with linear initialisation on ``values``.

    Centroids come back in ``values``' dtype, ascending when no clustering was needed. With at
    most ``k`` distinct values the distinct values themselves are the codebook (exact); an empty
    input gives a single zero centroid.
    """
    if k < 1:
        raise ConfigError(f"a codebook needs at least 1 centroid, got {k}")
    flat = values.detach().cpu().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(1, dtype=values.dtype), torch.zeros(0, dtype=torch.long)
    distinct, labels = torch.unique(flat, sorted=True, return_inverse=True)
    if distinct.numel() <= k:
        return distinct, labels
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    data = flat.double().numpy().reshape(-1, 1)
    init = linear_init(data, k).reshape(-1, 1)
    with warnings.catch_warnings():  # repeated values may leave fewer clusters than k: fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(data)
    centroids = torch.from_numpy(km.cluster_centers_.reshape(-1)).to(values.dtype)
    return centroids, torch.from_numpy(km.labels_.astype(np.int64))


def _bits_for(module: nn.Module, bits_conv: int, bits_fc: int) -> int:
    return bits_fc if isinstance(module, nn.Linear) else bits_conv


def _check_bits(name: str, bits: Any, top: int = 16) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= top:
        raise ConfigError(f"{name} must be an integer in [1, {top}], got {bits!r}")
    return bits


def shared_weights(model: nn.Module) -> dict[str, SharedWeights]:
    """The :class:`SharedWeights` parametrizations of ``model`` by weight name."""
    out: dict[str, SharedWeights] = {}
    for name, module in prunable_layers(model).items():
        p = mask_parametrization(module, "weight")
        if isinstance(p, SharedWeights):
            out[weight_name(name)] = p
    return out


def share_layer(
    module: nn.Module,
    centroids: torch.Tensor,
    index: torch.Tensor,
    keep: torch.Tensor,
    meta: dict[str, Any] | None = None,
) -> SharedWeights:
    """Put ``module.weight`` under a :class:`SharedWeights` parametrization (in place):
    ``weight = where(keep, centroids[index], 0)``, ``centroids`` the only trainable tensor.

    Any parametrization already on the weight is removed first (its current values kept as the
    stored weight, which then shows the shared values). A method that chose its own codebook and
    bit width per layer (a fixed-point grid, interval means, ADMM levels) installs it with this,
    so the layer trains, finalizes and is stored exactly as a Deep Compression layer is."""
    weight = module.weight
    if parametrize.is_parametrized(module, "weight"):
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    shared = SharedWeights(
        centroids.detach().to(weight.device, weight.dtype),
        index.detach().to(weight.device),
        Mask(keep.detach().bool().to(weight.device), meta=dict(meta or {})),
    )
    with torch.no_grad():
        module.weight.copy_(shared(module.weight))  # the stored weight shows the shared values
    parametrize.register_parametrization(module, "weight", shared)
    module.parametrizations.weight.original.requires_grad_(False)
    return shared


def share_values(
    module: nn.Module, values: torch.Tensor, keep: torch.Tensor, meta: dict[str, Any] | None = None
) -> SharedWeights:
    """:func:`share_layer` with the distinct values of ``values[keep]`` as the codebook: for a
    layer already quantised to a small set of values (at most :data:`MAX_CODEBOOK`)."""
    keep = keep.detach().bool()
    kept = values.detach()[keep].cpu()
    codebook, labels = torch.unique(kept, sorted=True, return_inverse=True)
    if codebook.numel() == 0:
        codebook = torch.zeros(1, dtype=values.dtype)
    if codebook.numel() > MAX_CODEBOOK:
        raise ConfigError(
            f"a layer has {codebook.numel()} distinct values, more than a codebook holds "
            f"({MAX_CODEBOOK}): expected a quantised layer"
        )
    index = torch.zeros(values.shape, dtype=torch.long)
    index[keep.cpu()] = labels
    return share_layer(module, codebook, index, keep, meta)


def quantize_model(
    model: nn.Module,
    *,
    bits_conv: int = 8,
    bits_fc: int = 5,
    seed: int = 0,
    layer_bits: Mapping[str, int] | None = None,
) -> dict[str, SharedWeights]:
    """Share the weights of every conv / Linear layer of ``model`` (in place).

    The kept weights are those under the layer's prunekit mask, or the non-zero ones of an
    unmasked layer; they are clustered into ``2**bits_conv`` (conv) or ``2**bits_fc`` (Linear)
    centroids, or ``2**layer_bits[name]`` for a weight named there (``"layer.weight"``: per-layer
    bit widths), and the layer's weight becomes a :class:`SharedWeights` parametrization (which
    carries the mask). Layers that are already shared are left alone. Returns all shared layers.
    """
    _check_bits("bits_conv", bits_conv)
    _check_bits("bits_fc", bits_fc)
    layer_bits = dict(layer_bits or {})
    layers = prunable_layers(model)
    unknown = set(layer_bits) - {weight_name(n) for n in layers}
    if unknown:
        raise ConfigError(
            f"layer_bits names {', '.join(sorted(unknown))}, which are not conv / Linear weights "
            "of the model; expected names such as 'layer.weight'"
        )
    for name, module in layers.items():
        current = mask_parametrization(module, "weight")
        if isinstance(current, SharedWeights):
            continue
        with torch.no_grad():
            weight = module.weight.detach().clone()
        if current is not None:
            keep = current.mask.detach().clone().bool()
            meta = dict(current.meta)
        else:
            keep = weight != 0
            meta = {}
        bits = layer_bits.get(weight_name(name), _bits_for(module, bits_conv, bits_fc))
        k = 2 ** _check_bits(f"layer_bits[{weight_name(name)!r}]", bits)
        centroids, labels = kmeans_codebook(weight[keep], k, seed=seed)
        index = torch.zeros(weight.shape, dtype=torch.long)
        index[keep.cpu()] = labels
        share_layer(module, centroids, index, keep, meta)
    return shared_weights(model)


# ---------------------------------------------------------------------------- relative indices


def gaps_with_fillers(positions: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative indices of increasing flat ``positions``, with filler entries.

    Returns ``(gaps, filler)``: every gap is in ``[1, 2**gap_bits - 1]``; the first is counted
    from position ``-1``. Where the distance to the next kept weight exceeds the span, filler
    entries (``filler`` True) step the full span each, landing on zero weights.
    """
    span = (1 << gap_bits) - 1
    pos = np.asarray(positions, dtype=np.int64)
    dist = np.diff(pos, prepend=-1)
    if dist.size and dist.min() < 1:
        raise ConfigError("positions must be strictly increasing and >= 0")
    fillers = (dist - 1) // span  # fillers before each kept weight
    last = dist - fillers * span  # the final step, in [1, span]
    count = fillers + 1
    total = int(count.sum())
    gaps = np.full(total, span, dtype=np.int64)
    ends = np.cumsum(count) - 1  # where each kept weight's own entry lands
    gaps[ends] = last
    filler = np.ones(total, dtype=bool)
    filler[ends] = False
    return gaps, filler


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Absolute flat positions of the entries (the inverse of :func:`gaps_with_fillers`)."""
    return np.cumsum(np.asarray(gaps, dtype=np.int64)) - 1


# ---------------------------------------------------------------------------------- save


@dataclass
class DeepCompressionReport:
    """What :func:`save_deep_compressed` wrote.

    ``dense_bytes`` is the model at fp32 without any file overhead: 4 bytes per element of every
    floating-point tensor of its (finalized) state dict plus the raw size of the other tensors.
    ``torch_save_bytes`` is the size of a plain ``torch.save`` of that state dict. ``ratio`` is
    ``dense_bytes / bytes_written`` (the paper's "compression rate": larger is better).
    ``layers`` gives, per shared weight: kept weights, entries (kept plus fillers), fillers,
    codebook size, Huffman bits of the relative-index and centroid-index streams.
    """

    path: Path
    bytes_written: int
    dense_bytes: int
    torch_save_bytes: int
    ratio: float
    layers: dict[str, dict[str, int]] = field(default_factory=dict)


def save_deep_compressed(
    model: nn.Module,
    path: PathLike,
    *,
    gap_bits_conv: int = 8,
    gap_bits_fc: int = 5,
    value_dtype: ValueDtype = "fp32",
    extra: Any = None,
) -> DeepCompressionReport:
    """Write ``model`` to ``path`` in the Deep Compression format (atomically).

    Conv / Linear weights shared by :func:`quantize_model` are stored as codebook + Huffman-coded
    relative positions (``gap_bits_*`` bits of span) and centroid indices. A conv / Linear layer
    that is not shared is stored the same way with its distinct non-zero values as the codebook,
    if it has at most 65536 of them (otherwise :class:`~prunekit.errors.ConfigError`: quantise it
    first). ``extra`` must be JSON-able, as for :func:`prunekit.save`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"save_deep_compressed expects an nn.Module, got {type(model).__name__}")
    _check_bits("gap_bits_conv", gap_bits_conv, 30)
    _check_bits("gap_bits_fc", gap_bits_fc, 30)
    if value_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"value_dtype must be 'fp32' or 'fp16', got {value_dtype!r}")
    persist.check_extra(extra)

    state = effective_state(model)
    layers = {weight_name(n): m for n, m in prunable_layers(model).items()}
    shared = shared_weights(model)
    payload = bytearray()

    def put(data: bytes) -> list[int]:
        start = len(payload)
        payload.extend(data)
        return [start, len(payload)]

    entries: dict[str, dict[str, Any]] = {}
    stats: dict[str, dict[str, int]] = {}
    for key, tensor in state.items():
        if tensor.dtype not in DTYPES.values():
            raise ConfigError(f"state_dict entry {key!r} has unsupported dtype {tensor.dtype}")
        if key in layers and tensor.is_floating_point():
            gap_bits = _bits_for(layers[key], gap_bits_conv, gap_bits_fc)
            entries[key], stats[key] = _encode_shared(key, tensor, shared.get(key), gap_bits, put)
        else:
            entries[key] = _encode_plain(key, tensor, value_dtype, put)

    arch = getattr(model, "prunekit_arch", None)
    from prunekit import __version__

    header_obj = {
        "arch": None if arch is None else persist.plain_data(arch),
        "structure": persist.structure_of(model),
        "protected_layers": list(protected_layers(model)),
        "extra": extra,
        "tensors": entries,
        "torch": str(torch.__version__),
        "prunekit": str(__version__),
    }
    try:
        header = zlib.compress(
            json.dumps(header_obj, separators=(",", ":"), allow_nan=False).encode(), 9
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the model's architecture record is not JSON-able: {e}") from e
    body = _PREFIX.pack(MAGIC, VERSION, len(header), len(payload)) + header + bytes(payload)
    with atomic_open(path, "wb") as f:
        f.write(body)
        f.write(_CRC.pack(zlib.crc32(body)))
    written = Path(path).stat().st_size
    dense = sum(
        t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in state.values()
    )
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, buf)
    return DeepCompressionReport(
        path=Path(path),
        bytes_written=written,
        dense_bytes=dense,
        torch_save_bytes=buf.tell(),
        ratio=dense / written,
        layers=stats,
    )


def _lengths_table(code: HuffmanCode) -> bytes:
    """Code length of every symbol from 0 to the largest coded one (0: no code), one byte each."""
    table = np.zeros(max(code.lengths, default=-1) + 1, dtype=np.uint8)
    for sym, n in code.lengths.items():
        table[sym] = n
    return table.tobytes()


def _encode_shared(
    key: str,
    tensor: torch.Tensor,
    shared: SharedWeights | None,
    gap_bits: int,
    put: Callable[[bytes], list[int]],
) -> tuple[dict[str, Any], dict[str, int]]:
    flat = tensor.detach().cpu().reshape(-1)
    if shared is not None:
        keep = shared.mask.detach().cpu().reshape(-1).bool()
        codebook = shared.centroids.detach().cpu().to(tensor.dtype)
        labels = shared.index.detach().cpu().reshape(-1)[keep]
    else:
        keep = flat != 0
        codebook, labels = torch.unique(flat[keep], sorted=True, return_inverse=True)
        if codebook.numel() > MAX_CODEBOOK:
            raise ConfigError(
                f"weight {key!r} has {codebook.numel()} distinct values, more than a codebook "
                f"holds ({MAX_CODEBOOK}): quantise it first (quantize_model or compress_model)"
            )
        if codebook.numel() == 0:
            codebook = torch.zeros(1, dtype=tensor.dtype)
    k = codebook.numel()
    positions = np.flatnonzero(keep.numpy())
    gaps, filler = gaps_with_fillers(positions, gap_bits)
    index = np.full(gaps.size, k, dtype=np.int64)  # fillers: symbol k, a zero weight
    index[~filler] = labels.numpy()
    gap_code = HuffmanCode.for_symbols(gaps)
    index_code = HuffmanCode.for_symbols(index)
    entry = {
        "kind": "shared",
        "shape": [int(s) for s in tensor.shape],
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "gap_bits": gap_bits,
        "k": k,
        "entries": int(gaps.size),
        "codebook": put(codebook.contiguous().view(torch.uint8).numpy().tobytes()),
        "gap_lengths": put(_lengths_table(gap_code)),
        "gaps": put(gap_code.encode(gaps)),
        "index_lengths": put(_lengths_table(index_code)),
        "index": put(index_code.encode(index)),
    }
    stats = {
        "nonzero": int(positions.size),
        "entries": int(gaps.size),
        "fillers": int(filler.sum()),
        "codebook": k,
        "gap_bits": gap_code.bit_length(gaps),
        "index_bits": index_code.bit_length(index),
    }
    return entry, stats


def _encode_plain(
    key: str, tensor: torch.Tensor, value_dtype: str, put: Callable[[bytes], list[int]]
) -> dict[str, Any]:
    values = tensor.detach().cpu().contiguous()
    stored = values.dtype
    if value_dtype == "fp16" and stored in (torch.float32, torch.float64):
        half = values.half()
        if bool((half.isinf() & values.isfinite()).any()):
            raise ConfigError(
                f"tensor {key!r} has values beyond the fp16 range (|x| > 65504): "
                "save it with value_dtype='fp32'"
            )
        values, stored = half, torch.float16
    return {
        "kind": "plain",
        "shape": [int(s) for s in tensor.shape],
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "stored": str(stored).removeprefix("torch."),
        "data": put(values.reshape(-1).view(torch.uint8).numpy().tobytes()),
    }


def compress_model(
    model: nn.Module,
    path: PathLike,
    *,
    bits_conv: int = 8,
    bits_fc: int = 5,
    gap_bits_conv: int = 8,
    gap_bits_fc: int = 5,
    value_dtype: ValueDtype = "fp32",
    seed: int = 0,
    extra: Any = None,
    layer_bits: Mapping[str, int] | None = None,
) -> DeepCompressionReport:
    """Quantise ``model`` in place (:func:`quantize_model`, ``layer_bits`` per weight name over
    ``bits_conv`` / ``bits_fc``; layers already shared, or with few enough distinct values, are
    kept exactly) and write it with :func:`save_deep_compressed`."""
    quantize_model(model, bits_conv=bits_conv, bits_fc=bits_fc, seed=seed, layer_bits=layer_bits)
    return save_deep_compressed(
        model,
        path,
        gap_bits_conv=gap_bits_conv,
        gap_bits_fc=gap_bits_fc,
        value_dtype=value_dtype,
        extra=extra,
    )


# ---------------------------------------------------------------------------------- load


def load_deep_compressed(
    path: PathLike,
    model: ModelSource | None = None,
    *,
    map_location: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild the model stored at ``path`` (plain weights, eval mode, on ``map_location``).

    As :func:`prunekit.load`: the architecture comes from the file's ``arch`` or from ``model``
    (the original, unpruned model or a zero-argument callable building it).
    """
    path = Path(path)
    ckpt, state = _read(path)
    return persist.rebuild_saved(path, ckpt, state, model, map_location)


def read_deep_compressed(path: PathLike) -> dict[str, torch.Tensor]:
    """The (plain) state dict stored at ``path``."""
    return _read(Path(path))[1]


def _read(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.exists():
        raise MissingFileError(f"Deep Compression file {path} does not exist")
    data = path.read_bytes()
    if len(data) < _PREFIX.size or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path} is not a prunekit Deep Compression file: {EXPECTED}")
    _, version, hlen, plen = _PREFIX.unpack_from(data)
    if version < 1 or version > VERSION:
        raise CheckpointError(
            f"{path} has Deep Compression format version {version}, this prunekit reads up to "
            f"{VERSION}: {EXPECTED}"
        )
    end = _PREFIX.size + hlen + plen
    if len(data) != end + _CRC.size:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({len(data)} bytes, the header announces "
            f"{end + _CRC.size}): {EXPECTED}"
        )
    if zlib.crc32(data[:end]) != _CRC.unpack_from(data, end)[0]:
        raise CheckpointError(f"{path} is corrupt (checksum mismatch): {EXPECTED}")
    payload = data[_PREFIX.size + hlen : end]
    try:
        ckpt = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + hlen]).decode())
        problem = _check_header(ckpt)
        state = {} if problem else _decode_all(ckpt, payload)
    except Exception as e:  # any inconsistency in a file with a valid checksum is corruption
        problem, state = f"{type(e).__name__}: {e}", {}
    if problem is not None:
        raise CheckpointError(f"{path} is corrupt ({problem}): {EXPECTED}")
    return ckpt, state


def _check_header(ckpt: Any) -> str | None:
    if not isinstance(ckpt, dict):
        return "the header is not a dict"
    if not isinstance(ckpt.get("tensors"), dict):
        return "'tensors' is not a dict"
    probe = dict(ckpt)
    probe["state_dict"] = {}  # the tensors are checked while decoding
    return persist.check_fields(probe)


def _decode_all(ckpt: dict[str, Any], payload: bytes) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, entry in ckpt["tensors"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"entry {name!r} is not a dict")
        try:
            kind = entry.get("kind")
            if kind == "shared":
                out[name] = _decode_shared(payload, entry)
            elif kind == "plain":
                out[name] = _decode_plain(payload, entry)
            else:
                raise ValueError(f"unknown encoding {kind!r}")
        except Exception as e:
            raise ValueError(f"tensor {name!r}: {e}") from e
    return out


def _int(entry: dict[str, Any], key: str, lo: int, hi: float = math.inf) -> int:
    v = entry.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{key} {v!r} is not an integer in [{lo}, {hi}]")
    return v


def _span(payload: bytes, span: Any, nbytes: int | None = None, limit: int | None = None) -> bytes:
    if (
        not isinstance(span, list)
        or len(span) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in span)
        or not 0 <= span[0] <= span[1] <= len(payload)
        or (nbytes is not None and span[1] - span[0] != nbytes)
        or (limit is not None and span[1] - span[0] > limit)
    ):
        raise ValueError(f"byte range {span!r} is out of place")
    return payload[span[0] : span[1]]


def _shape_dtype(entry: dict[str, Any], key: str = "dtype") -> tuple[list[int], torch.dtype]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"shape {shape!r} is not a list of sizes")
    dtype = DTYPES.get(entry.get(key))  # type: ignore[arg-type]
    if dtype is None:
        raise ValueError(f"{key} {entry.get(key)!r} is not a known dtype")
    return shape, dtype


def _tensor(raw: bytes, dtype: torch.dtype) -> torch.Tensor:
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


def _code(table: bytes) -> HuffmanCode:
    return HuffmanCode({i: int(n) for i, n in enumerate(table) if n})


def _decode_plain(payload: bytes, entry: dict[str, Any]) -> torch.Tensor:
    shape, dtype = _shape_dtype(entry)
    _, stored = _shape_dtype(entry, "stored")
    item = torch.empty(0, dtype=stored).element_size()
    raw = _span(payload, entry.get("data"), math.prod(shape) * item)
    return _tensor(raw, stored).to(dtype).reshape(shape)


def _decode_shared(payload: bytes, entry: dict[str, Any]) -> torch.Tensor:
    shape, dtype = _shape_dtype(entry)
    if not dtype.is_floating_point:
        raise ValueError(f"a shared weight must be floating point, not {dtype}")
    numel = math.prod(shape)
    gap_bits = _int(entry, "gap_bits", 1, 30)
    k = _int(entry, "k", 1, MAX_CODEBOOK)
    count = _int(entry, "entries", 0, numel)
    item = torch.empty(0, dtype=dtype).element_size()
    codebook = _tensor(_span(payload, entry.get("codebook"), k * item), dtype)
    span = 1 << gap_bits
    gap_code = _code(_span(payload, entry.get("gap_lengths"), limit=span))
    index_code = _code(_span(payload, entry.get("index_lengths"), limit=k + 1))
    gaps = np.asarray(gap_code.decode(_span(payload, entry.get("gaps")), count))
    index = np.asarray(index_code.decode(_span(payload, entry.get("index")), count))
    positions = positions_from_gaps(gaps)
    if count and (gaps.min() < 1 or positions[-1] >= numel):
        raise ValueError(f"relative indices run past the {numel} weights")
    values = torch.cat((codebook, torch.zeros(1, dtype=dtype)))  # symbol k: filler, zero
    flat = torch.zeros(numel, dtype=dtype)
    flat[torch.from_numpy(positions)] = values[torch.from_numpy(index)]
    return flat.reshape(shape)


persist.register_reader(MAGIC, load_deep_compressed)  # prunekit.load reads these files too
