"""Training checkpoints: what they hold, how they are written and how they are checked on load.

A checkpoint is a plain dict written with :func:`prunekit.io.atomic_torch_save`, so a crash while
saving leaves the previous checkpoint intact. It holds only tensors and plain Python data, so it
loads with ``torch.load(weights_only=True)`` and no arbitrary code runs when reading one. Keys:

``format``, ``version``
    identify the file as a prunekit checkpoint (see :data:`FORMAT`, :data:`VERSION`).
``arch``
    ``getattr(model, "prunekit_arch", None)``: plain data from which the model zoo rebuilds the
    (possibly pruned) architecture.
``model``, ``optimizer``, ``scheduler``, ``scaler``
    ``state_dict()`` of each.
``epoch``, ``step``
    epochs completed and optimizer steps taken.
``config``, ``history``
    :meth:`TrainConfig.to_dict` and the per-epoch metrics so far.
``rng``
    one :func:`prunekit.train.rng.get_rng_state` snapshot per rank.
``world_size``
    number of ranks that wrote it.
"""

from __future__ import annotations

from typing import Any

from prunekit.errors import CheckpointError, ConfigError
from prunekit.io import PathLike, atomic_torch_save, load_tagged

from .config import TrainConfig

FORMAT = "prunekit.train.checkpoint"
VERSION = 1
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "config",
    "history",
    "rng",
)

__all__ = ["FORMAT", "VERSION", "check_config", "load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: PathLike) -> None:
    """Write ``state`` (the keys above, without ``format``/``version``) atomically to ``path``."""
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`prunekit.train.fit`, tensors on the CPU.

    Raises :class:`~prunekit.errors.MissingFileError` if ``path`` does not exist and
    :class:`~prunekit.errors.CheckpointError` if it is unreadable, truncated, or not a prunekit
    checkpoint of a version this code understands.
    """
    expected = f"expected a prunekit checkpoint ({FORMAT} version <= {VERSION})"
    ckpt = load_tagged(path, fmt=FORMAT, version=VERSION, what="checkpoint", expected=expected)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: {expected}")
    return ckpt


def check_config(ckpt: dict[str, Any], config: TrainConfig, path: PathLike) -> None:
    """Refuse to resume under a config whose result-affecting fields differ from the saved one.

    ``device`` and ``eval_every`` may differ; any other difference would silently produce a run
    that matches neither config.
    """
    try:
        saved = TrainConfig.from_dict(dict(ckpt["config"]))
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unusable config: {e}") from e
    diffs = saved.result_differences(config)
    if diffs:
        detail = "; ".join(
            f"{k}: checkpoint {getattr(saved, k)!r} vs now {getattr(config, k)!r}" for k in diffs
        )
        raise CheckpointError(
            f"cannot resume from {path}: config differs in {', '.join(diffs)} ({detail}); "
            "pass resume=False or another checkpoint path to start over"
        )
