"""Training inside a method: the loops every method that trains uses, in one place.

* :func:`batch_stream` (endless seeded minibatches), :func:`sgd_steps` (a few minibatch SGD
  updates) and :func:`accuracy` (top-1 on a data set, optionally on its first batches): the short
  loops of search and iterative methods (random channel pruning, L1-filter, Taylor).
* :class:`Retraining`: the base of methods that train inside :meth:`~Method.prune` in several
  phases (lottery-ticket rounds, ADMM iterations, budgeted cycles), each one a named phase of
  :meth:`prunekit.methods.Context.train` (the one way a method trains: :func:`prunekit.train.fit`
  with the masks attached, checkpointed in the run folder).
* :func:`snapshot` / :func:`restore`: copies of a model's tensors keyed as in the unmasked model,
  and writing them back in place under the masks (lottery-ticket resets).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from prunekit import masks
from prunekit.errors import DataError
from prunekit.methods.base import Context, Method
from prunekit.train import Callback, TrainResult, evaluate
from prunekit.train import distributed as dist_


def batch_stream(
    dataset: Dataset[Any], batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless minibatches of a seeded shuffle of ``dataset``, a new shuffle every pass.

    The first batches equal :meth:`~prunekit.methods.base.Context.calibration` for the same
    data, batch size and seed."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot draw minibatches from an empty data set")
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g)
    while True:
        yield from loader


def model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def sgd_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> None:
    """``steps`` plain minibatch SGD updates of ``model`` in place (cross-entropy, train mode),
    taking batches from ``batches``. Every module's mode is restored and parameter gradients are
    cleared afterwards. Under torchrun gradients are averaged over ranks and BatchNorm statistics
    taken from rank 0, so every rank keeps the same model."""
    if steps <= 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    device = model_device(model)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    modes = {m: m.training for m in model.modules()}
    model.train()
    try:
        for _ in range(steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist_.average_gradients(params)  # under torchrun every rank takes the same step
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        for m, mode in modes.items():
            m.train(mode)
        dist_.broadcast_buffers(model)


def accuracy(model: nn.Module, dataset: Dataset[Any], batches: int, batch_size: int) -> float:
    """Top-1 accuracy in percent of ``model`` on ``dataset`` (its first ``batches`` batches of
    ``batch_size`` when ``batches > 0``, else all of it)."""
    if batches > 0:
        n = min(len(dataset), batches * batch_size)  # type: ignore[arg-type]
        dataset = Subset(dataset, range(n))
    return float(evaluate(model, dataset, batch_size=batch_size)["top1"])


class Retraining(Method):
    """A method that trains inside :meth:`prune`. ``callbacks`` (``cb(event, state)``, as
    :func:`prunekit.train.fit` takes them) are passed to every training run it does.

    Each training run is a phase of :meth:`Context.train`, named ``phase1``, ``phase2``, ... in
    the order the method runs them: with a run folder, a restarted run restores the phases it
    finished and resumes the one it was in."""

    def __init__(self) -> None:
        self.callbacks: list[Callback] = []
        self.phases = 0

    def _train(
        self, ctx: Context, opts: Mapping[str, Any], *, epochs: int, lr: float, schedule: str, **kw
    ) -> TrainResult:
        self.phases += 1
        return ctx.train(
            ctx.model,
            epochs,
            lr,
            name=f"phase{self.phases}",
            callbacks=[*self.callbacks, *kw.pop("callbacks", ())],
            momentum=opts["momentum"],
            weight_decay=opts["weight_decay"],
            schedule=schedule,
            seed=kw.pop("seed", ctx.seed),
            progress=bool(opts["progress"]),
        )


def val_top1(ctx: Context) -> float:
    return float(evaluate(ctx.model, ctx.val_set, batch_size=ctx.batch_size)["top1"])


_ORIGINAL = re.compile(r"(^|\.)parametrizations\.([^.]+)\.original$")


def _plain_key(key: str) -> str | None:
    """State-dict key as the unmasked model names it; None for mask buffers."""
    key = _ORIGINAL.sub(r"\1\2", key)
    return None if "parametrizations." in key or key.startswith("parametrizations") else key


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer, keyed as in the unmasked model's state_dict."""
    out = {}
    for key, value in model.state_dict().items():
        plain = _plain_key(key)
        if plain is not None:
            out[plain] = value.detach().clone().cpu()
    return out


@torch.no_grad()
def restore(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (from :func:`snapshot`) into the model's tensors in place, then zero the
    stored weights again where a mask prunes them. Parameter objects are kept (an optimizer or a
    parametrization holding them stays valid)."""
    for key, tensor in model.state_dict().items():
        plain = _plain_key(key)
        if plain is not None and plain in state:
            tensor.copy_(state[plain])
    current = masks.get_masks(model)
    if current:
        masks.apply_masks(model, current)  # ANDs each mask with itself and re-zeroes `original`


__all__ = [
    "Retraining",
    "accuracy",
    "batch_stream",
    "model_device",
    "restore",
    "sgd_steps",
    "snapshot",
    "val_top1",
]
