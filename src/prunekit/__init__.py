"""prunekit: convolutional-network pruning methods you can run, compare and ship."""

from __future__ import annotations

from prunekit import compress, criteria, data, graph, masks, measure, models, train
from prunekit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MissingFileError,
    PrunekitError,
    UnknownNameError,
    UnsupportedError,
)
from prunekit.persist import load, save
from prunekit.prune import PruneReport, prune_channels

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingFileError",
    "PruneReport",
    "PrunekitError",
    "UnknownNameError",
    "UnsupportedError",
    "__version__",
    "compress",
    "criteria",
    "data",
    "graph",
    "load",
    "masks",
    "measure",
    "models",
    "prune_channels",
    "save",
    "train",
]
