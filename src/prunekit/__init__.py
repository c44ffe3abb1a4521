"""prunekit: convolutional-network pruning methods you can run, compare and ship."""

from __future__ import annotations

from prunekit import data, measure, models, train
from prunekit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MissingFileError,
    PrunekitError,
    UnknownNameError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MissingFileError",
    "PrunekitError",
    "UnknownNameError",
    "__version__",
    "data",
    "measure",
    "models",
    "train",
]
