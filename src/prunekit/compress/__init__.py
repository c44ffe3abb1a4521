"""Compact storage for pruned models: sparse tensor encodings on disk."""

from __future__ import annotations

from prunekit.compress.sparse import SparseReport, load_sparse, load_sparse_model, save_sparse

__all__ = ["SparseReport", "load_sparse", "load_sparse_model", "save_sparse"]
