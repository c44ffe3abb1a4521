"""Making pruned models small on disk and simple for export: sparse tensor encodings, removal of
channels that are all zero, BatchNorm folding."""

from __future__ import annotations

from prunekit.compress import deep_compression  # noqa: F401  (registers its format with load)
from prunekit.compress.simplify import (
    SimplifyReport,
    ZeroChannelReport,
    fold_batchnorm,
    remove_zero_channels,
    simplify,
)
from prunekit.compress.sparse import SparseReport, load_sparse, load_sparse_model, save_sparse

__all__ = [
    "SimplifyReport",
    "SparseReport",
    "ZeroChannelReport",
    "fold_batchnorm",
    "load_sparse",
    "load_sparse_model",
    "remove_zero_channels",
    "save_sparse",
    "simplify",
]
