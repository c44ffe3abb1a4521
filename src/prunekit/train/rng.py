"""Seeding and saving/restoring every global random number generator training touches.

Random augmentation in a data set's ``__getitem__`` (and dropout) draws from the global torch,
numpy and Python generators. Restoring all of them from a checkpoint is what lets a resumed run
reproduce an uninterrupted one bit for bit. States are stored as tensors and plain Python values
so that checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and all CUDA devices), numpy and Python's ``random``."""
    seed %= 2**32
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def get_rng_state() -> dict[str, Any]:
    """A snapshot of the global generators, in checkpoint-safe types."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore a snapshot from :func:`get_rng_state` (CUDA states only if the device count
    matches: a run resumed on another machine still continues, if not bit for bit)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
