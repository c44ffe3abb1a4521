"""Reading IDX files (the MNIST container format), raw or gzip-compressed.

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian uint32 per
dimension, then the values big-endian. The header is checked against the byte count, so a
truncated download is reported instead of being reshaped into nonsense.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from prunekit.errors import DataError

DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
EXPECTED = "expected IDX (magic 0x00 0x00 <dtype> <ndim>, big-endian uint32 dims, then data)"


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {str(path)!r}: {EXPECTED} ({e})") from e


def parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode IDX bytes into an array in native byte order; ``path`` only names errors."""
    where = repr(str(path))
    if len(raw) < 4:
        raise DataError(f"{where} is {len(raw)} bytes, too short for a header: {EXPECTED}")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in DTYPES:
        raise DataError(f"{where} has bad magic number 0x{raw[:4].hex()}: {EXPECTED}")
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"{where} declares 0 dimensions: {EXPECTED}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where} is truncated inside its header: {EXPECTED}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = DTYPES[raw[2]]
    want = math.prod(dims) * dtype.itemsize  # Python ints: a huge header cannot wrap around
    got = len(raw) - header
    if got != want:
        state = "truncated" if got < want else "longer than its header says"
        raise DataError(
            f"{where} is {state}: header {dims} of {dtype.name} needs {want} data bytes, "
            f"found {got}; {EXPECTED}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read and validate one IDX file (``.gz`` or raw)."""
    return parse_idx(read_bytes(path), path)
