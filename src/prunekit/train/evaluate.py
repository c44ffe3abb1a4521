"""Top-1 / top-5 accuracy and loss of a classifier on a data set.

Under DDP (an initialised process group with more than one rank) every rank evaluates its own
contiguous shard of the data set and the counts are summed with ``all_reduce``, so *every rank
must call* :func:`evaluate` and all get the same numbers, computed over each sample exactly once.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from prunekit.errors import DataError

from . import distributed as dist_
from .sampling import split_bounds


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a parameterless model."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (in eval mode, restored afterwards) on ``dataset`` of ``(x, y)`` pairs.

    Returns ``top1`` and, when the model outputs more than 5 classes, ``top5`` (both in percent),
    the mean unsmoothed cross-entropy ``loss`` and the number of samples ``n``. ``device`` defaults
    to the model's device; the model is not moved.
    """
    model = _unwrap(model)
    dev = torch.device(device) if device is not None else model_device(model)
    world, rank = dist_.world_size(), dist_.rank()
    n_total = len(dataset)  # type: ignore[arg-type]
    if n_total == 0:
        raise DataError("cannot evaluate on an empty data set, expected at least one sample")
    start, stop = split_bounds(n_total, world, rank)
    shard = dataset if world == 1 else Subset(dataset, range(start, stop))
    # An explicit generator: otherwise the loader draws a seed from the global torch RNG, and
    # evaluating between epochs would shift the random augmentation of the epochs that follow.
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, generator=torch.Generator())

    # [correct@1, correct@5, loss sum, n, saw >5 classes]; float64 counts exactly (MPS lacks it).
    dtype = torch.float32 if dev.type == "mps" else torch.float64
    sums = torch.zeros(5, dtype=dtype, device=dev)
    has_top5 = False
    was_training = model.training
    model.eval()
    try:
        for x, y in tqdm(loader, desc="eval", leave=False, disable=not progress or rank != 0):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            out = model(x).float()
            sums[2] += F.cross_entropy(out, y, reduction="sum")
            k = min(5, out.shape[1])
            has_top5 = out.shape[1] > 5
            hits = out.topk(k, dim=1).indices == y[:, None]
            sums[0] += hits[:, 0].sum()
            sums[1] += hits.any(dim=1).sum()
            sums[3] += y.numel()
    finally:
        model.train(was_training)
    # A rank with an empty shard never sees the output width, hence the summed flag.
    sums[4] = float(has_top5)
    correct1, correct5, loss_sum, n, top5_flag = dist_.all_reduce_sum(sums).tolist()
    has_top5 = top5_flag > 0
    result: dict[str, Any] = {"top1": 100.0 * correct1 / n}
    if has_top5:
        result["top5"] = 100.0 * correct5 / n
    result["loss"] = loss_sum / n
    result["n"] = int(n)
    return result
