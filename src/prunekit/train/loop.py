"""The training loop: :func:`fit` trains a classifier in place and returns its history.

What it guarantees, and how:

* **Reproducible.** Global RNGs are seeded from ``config.seed`` (plus the rank) at the start; the
  sample order comes from a generator seeded by ``(seed, epoch)`` only (see
  :mod:`prunekit.train.sampling`). On CPU a run under a seed is bit-reproducible.
* **Resumable, exactly.** After every epoch a checkpoint holds the model, optimizer, per-step
  scheduler, grad scaler, history and every global RNG state. Resuming continues with the next
  epoch and reproduces an uninterrupted run bit for bit on CPU, random augmentation included.
* **Distributed.** Under ``torchrun`` (``WORLD_SIZE > 1``) it initialises the process group if
  needed (gloo on CPU, nccl on CUDA), wraps the model in DDP and gives each rank its contiguous
  slice of every global batch. Losses are weighted by the global batch size, so the update equals
  that of one process on the same global batch. Only rank 0 writes checkpoints and shows
  progress. BatchNorm statistics are per rank under plain DDP (buffers are broadcast from rank 0
  each forward and after each epoch), so models with BatchNorm do not match a single-process run
  exactly; on CUDA, convert them with ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` before
  calling ``fit`` if that matters. Validation counts are summed over ranks (see
  :func:`~prunekit.train.evaluate`). The process group is left initialised, for the caller's
  later evaluation or pruning.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from prunekit.errors import CheckpointError, ConfigError, DataError, StaleCheckpointError
from prunekit.io import PathLike

from . import distributed as dist_
from .checkpoint import check_config, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .device import amp_enabled, autocast, resolve_device
from .evaluate import evaluate
from .optim import build_loss, build_optimizer
from .rng import get_rng_state, seed_everything, set_rng_state
from .sampling import GlobalBatchSampler, mixed_seed
from .schedules import build_scheduler

Callback = Callable[[str, dict[str, Any]], None]
"""``cb(event, state)``; events ``"step_end"`` and ``"epoch_end"`` (see :func:`fit`)."""
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(x, logits, labels)`` -> per-sample loss (see :func:`fit`)."""

_POSTFIX_INTERVAL_S = 0.5
_EPOCHS = [0]  # epochs over the training set that fit() has completed in this process


def epochs_trained() -> int:
    """Epochs over a training set that :func:`fit` has completed in this process (a resumed
    fit counts its restored epochs too). The difference across a call is the training budget
    the call spent, e.g. a pruning method's own phases."""
    return _EPOCHS[0]


@dataclass
class TrainResult:
    """What :func:`fit` did: per-epoch metrics, the last validation metrics and the speed."""

    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    train_time_s: float = 0.0
    images_per_s: float = 0.0


@dataclass
class _Run:
    """The mutable pieces of one fit call, bundled so helpers stay short."""

    config: TrainConfig
    model: nn.Module  # the bare model, trained in place
    train_model: nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: GlobalBatchSampler
    device: torch.device
    use_amp: bool
    callbacks: tuple[Callback, ...]
    show_progress: bool
    loss: LossFn | None = None  # replaces the config's cross-entropy (e.g. distillation)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig | None = None,
    *,
    val_set: Dataset | None = None,
    checkpoint: PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    loss: LossFn | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``train_set`` (a map-style data set of ``(x, y)``) by ``config``.

    ``checkpoint`` is a file written atomically after every epoch (by rank 0). With ``resume`` and
    an existing file, training continues after its last epoch; its config must agree with
    ``config`` in every field but ``device`` and ``eval_every``, else
    :class:`~prunekit.errors.CheckpointError` names the fields that differ. A run that has
    finished is not trained further.

    ``val_set`` is evaluated every ``config.eval_every`` epochs and after the last one, adding
    ``val_top1``, ``val_loss`` (and ``val_top5``) to that epoch's history entry.

    ``callbacks`` are called on every rank as ``cb(event, state)``:

    * ``"step_end"`` after each optimizer step with ``step`` (steps taken, from 1), ``epoch``
      (the epoch in progress, from 1), ``model`` and ``optimizer`` — e.g. to re-apply masks;
    * ``"epoch_end"`` after each epoch's evaluation and before its checkpoint, with ``epoch``
      (epochs completed), ``step``, ``metrics`` (the history entry), ``model``, ``optimizer``,
      ``scheduler`` and ``config`` — e.g. soft filter pruning or sparsity schedules.

    ``loss(x, logits, labels)``, when given, returns the per-sample loss in place of the
    config's cross-entropy (e.g. :class:`prunekit.train.distill.Distiller`).

    ``model`` is the bare module (never the DDP wrapper). Callbacks must not change parameter
    shapes: the optimizer holds the original tensors.

    See the module docstring for reproducibility, resuming and DDP (BatchNorm caveat included).
    """
    config = TrainConfig() if config is None else config
    device = resolve_device(config.device)
    dist_.init_from_env("nccl" if device.type == "cuda" else "gloo")
    world, rank = dist_.world_size(), dist_.rank()
    if config.batch_size % world:
        raise ConfigError(
            f"batch_size must be divisible by the world size {world}, got {config.batch_size}"
        )
    n_train = len(train_set)  # type: ignore[arg-type]
    if n_train == 0:
        raise DataError("cannot train on an empty training set, expected at least one sample")
    use_amp = amp_enabled(config.amp, device)

    seed_everything(config.seed + rank)
    model.to(device)
    optimizer = build_optimizer(model, config)
    sampler = GlobalBatchSampler(
        n_train, config.batch_size, world_size=world, rank=rank, seed=config.seed
    )
    run = _Run(
        config=config,
        model=model,
        train_model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, len(sampler)),
        scaler=torch.amp.GradScaler(device.type, enabled=use_amp),
        sampler=sampler,
        device=device,
        use_amp=use_amp,
        callbacks=tuple(callbacks),
        show_progress=progress and rank == 0 and bool(sys.stderr and sys.stderr.isatty()),
        loss=loss,
    )
    if checkpoint is not None and resume and Path(checkpoint).exists():
        _restore(run, checkpoint)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        run.train_model = DistributedDataParallel(model, device_ids=ids)

    final: dict[str, Any] = {}
    while run.epoch < config.epochs:
        row = _train_epoch(run, train_set)
        if world > 1:
            # Each rank's last forward updated its own BatchNorm running stats: make all ranks
            # hold rank 0's, the ones the checkpoint stores.
            dist_.broadcast_buffers(model)
        last = run.epoch == config.epochs
        if val_set is not None and (last or run.epoch % config.eval_every == 0):
            final = evaluate(model, val_set, batch_size=config.batch_size, device=device)
            row.update({f"val_{k}": v for k, v in final.items() if k != "n"})
        run.history.append(row)
        for cb in run.callbacks:
            cb("epoch_end", _epoch_state(run, row))
        if checkpoint is not None:
            _save(run, checkpoint)
    if val_set is not None and not final:  # resumed a finished run
        final = evaluate(model, val_set, batch_size=config.batch_size, device=device)

    _EPOCHS[0] += run.epoch
    train_time = sum(r["time_s"] for r in run.history)
    images = n_train * len(run.history)
    return TrainResult(
        history=run.history,
        final=final,
        train_time_s=train_time,
        images_per_s=images / train_time if train_time > 0 else 0.0,
    )


def _train_epoch(run: _Run, train_set: Dataset) -> dict[str, Any]:
    """One pass over the training set; returns the epoch's history entry (metrics over ranks)."""
    cfg, device, sampler = run.config, run.device, run.sampler
    world = sampler.world_size
    sampler.set_epoch(run.epoch)
    # The loader's own generator (seeded per epoch and rank) feeds worker seeds; without it the
    # loader would draw from the global RNG.
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(mixed_seed(cfg.seed, run.epoch, sampler.rank)),
    )
    criterion = build_loss(cfg)
    epoch_no = run.epoch + 1
    bar = tqdm(
        total=len(sampler),
        desc=f"epoch {epoch_no}/{cfg.epochs}",
        disable=not run.show_progress,
        dynamic_ncols=True,
    )
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    lr = run.optimizer.param_groups[0]["lr"]
    last_postfix = time.monotonic()
    run.train_model.train()
    start = time.perf_counter()
    try:
        for i, (x, y) in enumerate(loader):
            real, global_n = sampler.step_counts(i)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(run.use_amp):
                out = run.train_model(x)
                per_sample = criterion(out, y) if run.loss is None else run.loss(x, out, y)
            if real != len(y):  # short last batch: padding sample(s) get weight 0
                per_sample, out, y = per_sample[:real], out[:real], y[:real]
            # Sum over this rank / (global batch / world): DDP's mean over ranks then gives the
            # mean over the global batch, even when ranks hold unequal shares of it.
            loss = per_sample.sum() / (global_n / world)
            run.optimizer.zero_grad(set_to_none=True)
            if run.use_amp:
                run.scaler.scale(loss).backward()
                run.scaler.step(run.optimizer)
                run.scaler.update()
            else:
                loss.backward()
                run.optimizer.step()
            lr = run.optimizer.param_groups[0]["lr"]
            run.scheduler.step()
            run.step += 1
            loss_sum += per_sample.detach().sum().float()
            correct += (out.detach().argmax(dim=1) == y).sum()
            seen += real
            for cb in run.callbacks:
                cb(
                    "step_end",
                    {
                        "step": run.step,
                        "epoch": epoch_no,
                        "model": run.model,
                        "optimizer": run.optimizer,
                    },
                )
            if run.show_progress:
                bar.update()
                now = time.monotonic()
                if now - last_postfix > _POSTFIX_INTERVAL_S:
                    last_postfix = now
                    bar.set_postfix(_postfix(loss_sum.item() / seen, correct.item() / seen, lr))
        totals = torch.tensor([loss_sum.item(), correct.item(), seen], dtype=torch.float64)
        if device.type == "cuda":  # nccl reduces CUDA tensors only
            totals = totals.to(device)
        loss_total, correct_total, seen_total = dist_.all_reduce_sum(totals).tolist()
        elapsed = time.perf_counter() - start
        row = {
            "epoch": epoch_no,
            "train_loss": loss_total / seen_total,
            "train_acc": 100.0 * correct_total / seen_total,
            "lr": lr,
            "time_s": elapsed,
        }
        bar.set_postfix(_postfix(row["train_loss"], row["train_acc"] / 100.0, lr))
    finally:
        bar.close()
    run.epoch = epoch_no
    return row


def _postfix(loss: float, acc: float, lr: float) -> dict[str, str]:
    return {"loss": f"{loss:.4f}", "acc": f"{100.0 * acc:.2f}%", "lr": f"{lr:.3g}"}


def _epoch_state(run: _Run, row: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": run.epoch,
        "step": run.step,
        "metrics": row,
        "model": run.model,
        "optimizer": run.optimizer,
        "scheduler": run.scheduler,
        "config": run.config,
    }


def _save(run: _Run, path: PathLike) -> None:
    """Checkpoint after an epoch: every rank contributes its RNG state, rank 0 writes."""
    rng_states = dist_.all_gather_objects(get_rng_state())
    if dist_.rank() == 0:
        save_checkpoint(
            {
                "arch": getattr(run.model, "prunekit_arch", None),
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "epoch": run.epoch,
                "step": run.step,
                "config": run.config.to_dict(),
                "history": run.history,
                "rng": rng_states,
                "world_size": run.sampler.world_size,
            },
            path,
        )
    dist_.barrier()  # no rank runs ahead of (or exits before) the write


def _restore(run: _Run, path: PathLike) -> None:
    """Load a checkpoint into ``run``: state dicts, counters, history and this rank's RNGs."""
    ckpt = load_checkpoint(path)
    check_config(ckpt, run.config, path)
    expected_step = ckpt["epoch"] * len(run.sampler)
    if ckpt["step"] != expected_step:
        raise CheckpointError(
            f"cannot resume from {path}: it took {ckpt['step']} steps in {ckpt['epoch']} epochs, "
            f"expected {expected_step} with this training set and batch size"
        )
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise StaleCheckpointError(
            f"checkpoint {path} does not fit this model: {str(e).strip().splitlines()[0]}"
        ) from e
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and run.use_amp:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.epoch, run.step = int(ckpt["epoch"]), int(ckpt["step"])
    run.history = list(ckpt["history"])
    rng_states = ckpt["rng"]
    rank = run.sampler.rank
    if rank < len(rng_states):
        set_rng_state(rng_states[rank])
