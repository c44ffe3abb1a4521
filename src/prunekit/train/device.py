"""Picking the training device and the mixed-precision machinery that goes with it."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch

from prunekit.errors import ConfigError

from .distributed import env_world_size, local_rank


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU. Under ``torchrun`` a bare ``"cuda"`` means
    this process's ``cuda:LOCAL_RANK`` so that ranks on one machine do not share a GPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device must be available, got {spec!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank() if env_world_size() > 1 else 0)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device must be available, got {spec!r} but MPS is not available")
    return device


def amp_enabled(requested: bool, device: torch.device) -> bool:
    """AMP runs only on CUDA; elsewhere the request is ignored with a warning, not an error, so
    one config file serves both a GPU box and a laptop."""
    if requested and device.type != "cuda":
        warnings.warn(
            f"amp=True is ignored on device {device}: mixed precision is only used on CUDA",
            stacklevel=3,
        )
        return False
    return requested


def autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """float16 autocast on CUDA when enabled, else a no-op context (cheaper per step)."""
    if enabled:
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()
