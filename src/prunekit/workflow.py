"""The jobs the CLI runs, as plain Python: fit a model to a data set, train, evaluate, report.

The CLI only parses flags and prints; everything it does is one call here, so a script can do the
same thing with the same defaults.

Every value that can be checked without training is checked before any training starts
(:meth:`PruneConfig.validate`, :meth:`TrainJob.validate`).

A run folder (``out``) records what defines its contents in ``run.json``: model, data set, data
folder, input size, method or criterion, options, target, seed and every training knob. A rerun
resumes from the folder's checkpoints only when all of it matches; anything else is an error
saying to pick another folder or to pass ``overwrite=True`` (``--overwrite``), never a silent
reuse of another run's results. Temporary files left by a write that was killed are removed when
the next run in the folder starts.

A method whose result is a file (``result_file = "model.deepc"`` on the method class, with
``write_result(model, path, options)``) gets that file written in the run folder; the run reports
its size as ``bytes_after`` and the accuracy of the model rebuilt from it, so both figures
describe the same model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from prunekit import data as pk_data
from prunekit import masks, measure
from prunekit import models as pk_models
from prunekit.configs import run_hash, to_dict
from prunekit.errors import ConfigError
from prunekit.io import atomic_write_json, remove_orphan_temps
from prunekit.tables import markdown_table
from prunekit.targets import CLOCKS, RUNTIMES
from prunekit.train import (
    TrainConfig,
    TrainResult,
    barrier,
    epochs_trained,
    evaluate,
    fit,
    init_from_env,
    load_checkpoint,
    rank,
)


@dataclass
class Setup:
    """A model built to fit a data set, with the data set's three splits."""

    model_name: str
    data_name: str
    model: nn.Module
    info: pk_data.DataInfo
    train_set: Dataset[Any]
    val_set: Dataset[Any]
    test_set: Dataset[Any]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.info.input_shape)


def fitted_size(
    model_name: str, image_size: int | tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The input size a model gets: the user's ``image_size`` or the model's native size."""
    info = pk_models.model_info(model_name)
    if image_size is None:
        return tuple(info.input_size)
    return pk_models.core.as_size(image_size, info.dims, "image_size")


def load_splits(
    data_name: str,
    *,
    dims: int,
    size: tuple[int, ...] | None,
    root: str | None = None,
    augment: bool = True,
) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any]]:
    """Train (augmented if asked), val and test splits, resized to ``size`` for 2-D models.

    1-D signals keep their native length: a 1-D model is built for the length of the data.
    """
    resize = size if dims == 2 else None
    native = pk_data.load(data_name, root=root, split="test")
    if native.info.dims != dims:
        raise ConfigError(
            f"data set {data_name!r} has {native.info.dims}-D samples of shape "
            f"{native.info.input_shape} but the model takes {dims}-D inputs; "
            f"pick a {native.info.dims}-D model (see `prunekit list models`)"
        )
    if resize is None or tuple(native.info.input_shape[1:]) == resize:
        test = native
    else:
        test = pk_data.load(data_name, root=root, split="test", image_size=resize)
    train = pk_data.load(data_name, root=root, split="train", image_size=resize, augment=augment)
    val = pk_data.load(data_name, root=root, split="val", image_size=resize)
    return train, val, test


def prepare(
    model_name: str,
    data_name: str,
    *,
    root: str | None = None,
    image_size: int | tuple[int, ...] | None = None,
    augment: bool = True,
    seed: int = 0,
) -> Setup:
    """Build ``model_name`` for ``data_name``: input channels, classes and input size all follow
    the data set (digits are resized to 32x32 for CIFAR-style models without being asked)."""
    minfo = pk_models.model_info(model_name)
    size = fitted_size(model_name, image_size)
    train, val, test = load_splits(
        data_name, dims=minfo.dims, size=size, root=root, augment=augment
    )
    info: pk_data.DataInfo = train.info  # type: ignore[attr-defined]
    torch.manual_seed(seed)  # model initialisation is part of the run's seed
    model = pk_models.create(
        model_name,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_shape[1:],
    )
    return Setup(model_name, data_name, model, info, train, val, test)


LATENCY_THREADS = 1  # as the benchmark times: one thread, so figures compare across machines


def model_figures(
    model: nn.Module,
    example: torch.Tensor,
    *,
    latency: bool = True,
    threads: int = LATENCY_THREADS,
) -> dict[str, Any]:
    """Params, FLOPs, MACs, bytes, peak memory and latency at batch 1 and 32 of one model.

    Latency is timed on ``threads`` torch threads (``latency_threads``), with its spread
    (``latency_b<N>_iqr_ms``); ``warnings`` lists why a figure may not be trusted (a wide spread,
    or other processes loading the machine), empty when there is no reason to doubt it.
    """
    figures: dict[str, Any] = dict(
        measure.summarize(model, example, latency=latency, batch_sizes=(1, 32), threads=threads)
    )
    if latency:
        figures["latency_threads"] = threads
        figures["warnings"] = measure.latency_warnings(figures, threads=threads)
    return figures


@dataclass
class TrainJob:
    """What ``prunekit train`` runs: a model on a data set under a training config."""

    model: str = field(default="resnet20", metadata={"help": "model name (prunekit list models)"})
    data: str = field(default="digits", metadata={"help": "data set name (prunekit list data)"})
    root: str | None = field(default=None, metadata={"help": "folder holding the data set's files"})
    image_size: int | None = field(default=None, metadata={"help": "input size (default: model's)"})
    augment: bool = field(default=True, metadata={"help": "train-time augmentation"})

    def run_name(self, train: TrainConfig) -> str:
        return f"{self.model}-{self.data}-{run_hash(self, train)}"

    def validate(self) -> None:
        """Refuse, before any work, an unknown model or data set, a data set that needs a
        ``root`` folder without one (or with one that is not a folder), and a bad input size."""
        pk_models.model_info(self.model)
        pk_data.check_root(self.data, self.root)
        if self.image_size is not None:
            fitted_size(self.model, self.image_size)

    def settings(self, config: TrainConfig) -> dict[str, Any]:
        """What defines a training run's results: the job (data folder as an absolute path) and
        every training field that can change the weights."""
        from prunekit.train.config import RESULT_NEUTRAL_FIELDS

        train = {k: v for k, v in config.to_dict().items() if k not in RESULT_NEUTRAL_FIELDS}
        return {"job": {**to_dict(self), "root": _absolute(self.root)}, "train": train}


@dataclass
class Trained:
    """A fitted setup with its training history and test-split metrics."""

    setup: Setup
    result: TrainResult
    test: dict[str, Any]


def train_and_test(
    job: TrainJob, config: TrainConfig, *, checkpoint: Path | None, progress: bool = True
) -> Trained:
    """Fit ``job.model`` to ``job.data``, train it under ``config`` and evaluate it on the test split.

    With a ``checkpoint`` path an interrupted run resumes where it stopped.
    """
    setup = prepare(
        job.model,
        job.data,
        root=job.root,
        image_size=job.image_size,
        augment=job.augment,
        seed=config.seed,
    )
    result = fit(
        setup.model,
        setup.train_set,
        config,
        val_set=setup.val_set,
        checkpoint=checkpoint,
        progress=progress,
    )
    return Trained(setup, result, evaluate(setup.model, setup.test_set))


def write_run(out_dir: Path, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """``config.json`` and ``metrics.json`` of a run, written atomically, by rank 0 only
    (under torchrun every rank holds the same figures)."""
    if rank() == 0:
        atomic_write_json(config, out_dir / "config.json")
        atomic_write_json(metrics, out_dir / "metrics.json")


RUN_RECORD = "run.json"
# Files a run writes in its folder; a folder holding any of them belongs to a run.
RUN_FILES = (RUN_RECORD, "config.json", "metrics.json", "checkpoint.pt", "finetune.pt", "pruned.pt")
METHOD_DIR = "method"  # the method's own training phases checkpoint here (Context.work_dir)


def _absolute(root: str | None) -> str | None:
    return None if root is None else str(Path(root).expanduser().resolve())


_ABSENT = object()


def _differences(saved: Any, now: Any, defaults: Any = None, prefix: str = "") -> list[str]:
    """``key: X there, Y now`` for every leaf where two JSON-like records differ. A key the saved
    record lacks (written before the option existed) matches when it now has its default."""
    if isinstance(saved, dict) and isinstance(now, dict):
        defaults = defaults if isinstance(defaults, dict) else {}
        out = []
        for key in sorted(set(saved) | set(now), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            old, new = saved.get(key, _ABSENT), now.get(key)
            if old is _ABSENT and key in defaults and new == defaults[key]:
                continue
            old = None if old is _ABSENT else old
            out += _differences(old, new, defaults.get(key), name)
        return out
    return [] if saved == now else [f"{prefix or 'run'}: {saved!r} there, {now!r} now"]


def claim_run_folder(
    out_dir: Path,
    kind: str,
    settings: dict[str, Any],
    *,
    overwrite: bool = False,
    device: str = "auto",
    defaults: dict[str, Any] | None = None,
) -> int:
    """Make ``out_dir`` the folder of the run ``settings`` describe; returns this attempt's
    number (1 for a fresh run, 2 for its first resume ...).

    A folder that holds another run (its ``run.json`` differs from ``settings``), or run files
    without a record, is refused with an error naming what differs, unless ``overwrite``: then
    the previous run's files are removed first. Orphan temporary files of a killed write are
    removed. Rank 0 alone reads and writes; under torchrun the other ranks wait for it, so none
    resumes from a file it is about to delete. ``defaults``: the settings of a run with every
    option at its default (an option added since the folder was written matches its default).
    """
    settings = json.loads(json.dumps({"kind": kind, **settings}, default=str))
    defaults = json.loads(json.dumps({"kind": kind, **(defaults or {})}, default=str))
    attempts = 1
    if rank() == 0 and int(os.environ.get("RANK", "0")) == 0:
        remove_orphan_temps(out_dir)
        record_path = out_dir / RUN_RECORD
        record = _read_record(record_path)
        present = [n for n in RUN_FILES if (out_dir / n).exists()]
        if overwrite:
            for name in [*present, *(record or {}).get("results", [])]:
                (out_dir / name).unlink(missing_ok=True)
            shutil.rmtree(out_dir / METHOD_DIR, ignore_errors=True)
        elif present:
            if record is None:
                raise ConfigError(
                    f"run folder {out_dir} holds {', '.join(present)} but no record of the run "
                    f"that wrote them ({RUN_RECORD}); give another --out, or --overwrite to "
                    "replace them"
                )
            diffs = _differences(record.get("settings"), settings, defaults)
            if diffs:
                shown = "; ".join(diffs[:4]) + (
                    f"; {len(diffs) - 4} more" if len(diffs) > 4 else ""
                )
                raise ConfigError(
                    f"run folder {out_dir} holds another run ({shown}); give another --out, "
                    "or --overwrite to replace it"
                )
            attempts = int(record.get("attempts", 0)) + 1
        atomic_write_json({"settings": settings, "attempts": attempts, "results": []}, record_path)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from prunekit.train.device import resolve_device

        init_from_env("nccl" if resolve_device(device).type == "cuda" else "gloo")
        barrier()
        record = _read_record(out_dir / RUN_RECORD)
        attempts = int((record or {}).get("attempts", 1))
    return attempts


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot read the run record {path} ({e}); give another --out, or --overwrite to "
            "replace the run"
        ) from e
    return record if isinstance(record, dict) else None


def _note_result_file(out_dir: Path, name: str) -> None:
    """Add ``name`` to the files the run folder's record says the run wrote (removed with the
    run on ``--overwrite``)."""
    record = _read_record(out_dir / RUN_RECORD) or {}
    results = sorted({*record.get("results", []), name})
    atomic_write_json({**record, "results": results}, out_dir / RUN_RECORD)


def train_model(
    job: TrainJob,
    config: TrainConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate on the test split, measure; write ``checkpoint.pt`` and ``metrics.json``.

    ``out`` defaults to ``runs/<model>-<data>-<hash of the non-default options>``: running the same
    command again resumes from the checkpoint instead of starting over. A folder holding another
    run is refused unless ``overwrite`` (see the module docstring).
    """
    job.validate()
    out_dir = Path(out) if out is not None else Path("runs") / job.run_name(config)
    attempts = claim_run_folder(
        out_dir,
        "train",
        job.settings(config),
        overwrite=overwrite,
        device=config.device,
        defaults=TrainJob().settings(TrainConfig()),
    )
    run = train_and_test(job, config, checkpoint=out_dir / "checkpoint.pt", progress=progress)
    setup = run.setup
    metrics = {
        "model": job.model,
        "data": setup.info.name,
        "synthetic_data": setup.info.synthetic,
        "input_shape": list(setup.info.input_shape),
        "test_top1": run.test["top1"],
        "val_top1": run.result.final.get("top1"),
        "train_time_s": run.result.train_time_s,  # every epoch of every attempt
        "attempts": attempts,
        **model_figures(setup.model, setup.example_input(), latency=False),
    }
    write_run(out_dir, {"job": to_dict(job), "train": config.to_dict()}, metrics)
    metrics["out"] = str(out_dir)
    return metrics


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_name: str,
    *,
    root: str | None = None,
    split: str = "test",
    image_size: int | None = None,
) -> dict[str, Any]:
    """Rebuild the model a file holds and evaluate it on a split of a data set.

    ``checkpoint`` is a training checkpoint (``prunekit train``) or a model file (a run's
    ``pruned.pt``, anything :func:`prunekit.load` reads, Deep Compression files included). A data
    set whose samples do not have the shape the model was built for is refused naming both."""
    from prunekit.errors import CheckpointError
    from prunekit.persist import load as load_model

    pk_data.check_root(data_name, root)
    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as not_a_checkpoint:
        try:
            model = load_model(checkpoint)
        except CheckpointError:
            raise not_a_checkpoint from None
        arch = getattr(model, "prunekit_arch", None)
        what = "model file"
    else:
        arch = ckpt.get("arch")
        if not arch:
            raise ConfigError(
                f"checkpoint {checkpoint} holds no architecture to rebuild the model from"
            )
        model = pk_models.rebuild(arch)
        model.load_state_dict(ckpt["model"])
        what = "checkpoint"
    size: Any = None
    if arch:
        minfo = pk_models.model_info(arch["name"])
        size = arch["kwargs"].get("input_size") or fitted_size(arch["name"], image_size)
        size = (size,) if isinstance(size, int) else tuple(size)
        if minfo.dims != 2:
            size = None
    dataset = pk_data.load(data_name, root=root, split=split, image_size=size)
    _check_input_shape(model, arch, dataset, f"{what} {checkpoint}", data_name)
    return {
        "checkpoint": str(checkpoint),
        "data": data_name,
        "split": split,
        **evaluate(model, dataset),
    }


def _check_input_shape(
    model: nn.Module, arch: dict[str, Any] | None, dataset: Any, what: str, data_name: str
) -> None:
    """Refuse a data set whose samples the model cannot take, naming both shapes."""
    shape = tuple(dataset.info.input_shape)
    kwargs = (arch or {}).get("kwargs", {})
    channels, size = kwargs.get("in_channels"), kwargs.get("input_size")
    if channels is not None and size is not None:
        size = (size,) if isinstance(size, int) else tuple(size)
        expected = (int(channels), *(int(v) for v in size))
        if len(expected) == len(shape) and expected != shape:
            raise ConfigError(
                f"{what} holds a model for inputs of shape {expected}, but data set "
                f"{data_name!r} gives samples of shape {shape}; evaluate it on data of its shape"
            )
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{what} cannot take samples of shape {shape} from data set {data_name!r}: {first}"
        ) from e


@dataclass
class PruneConfig:
    """One pruning run: train a baseline, prune it (a catalogue method, or a criterion straight
    through the structural core), fine-tune, measure before and after. ``prunekit demo`` is this
    run with its defaults; ``prunekit prune`` exposes every field."""

    model: str = field(default="resnet20", metadata={"help": "model name"})
    data: str = field(default="digits", metadata={"help": "data set name"})
    root: str | None = field(default=None, metadata={"help": "folder holding the data set's files"})
    image_size: int | None = field(default=None, metadata={"help": "input size (default: model's)"})
    epochs: int = field(default=10, metadata={"help": "baseline training epochs"})
    batch_size: int = field(default=64, metadata={"help": "batch size"})
    lr: float = field(default=0.05, metadata={"help": "peak learning rate (SGD, cosine)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    method: str | None = field(
        default=None,
        metadata={"help": "catalogue method id (prunekit methods); default: --importance"},
    )
    importance: str = field(default="l1", metadata={"help": "criterion when no --method is given"})
    scope: str = field(default="layer", metadata={"help": "layer or global (criterion runs)"})
    target_flops: float | None = field(
        default=0.5, metadata={"help": "fraction of FLOPs to remove"}
    )
    target_params: float | None = field(
        default=None, metadata={"help": "fraction of params to remove (overrides --target-flops)"}
    )
    target_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "fraction of conv/Linear weights to zero (unstructured methods; "
            "overrides --target-flops)"
        },
    )
    target_latency: float | None = field(
        default=None,
        metadata={
            "help": "fraction of the dense model's measured latency to remove (structured "
            "methods; overrides --target-flops and --target-params)"
        },
    )
    latency_runtime: str = field(
        default="torch",
        metadata={
            "help": "runtime --target-latency is measured on",
            "choices": RUNTIMES,
        },
    )
    latency_batch: int = field(default=1, metadata={"help": "batch size of --target-latency"})
    latency_threads: int = field(default=1, metadata={"help": "threads of --target-latency"})
    latency_clock: str = field(
        default="wall",
        metadata={
            "help": "clock --target-latency is measured on: wall, or cpu (the process's CPU "
            "time: torch, one thread; on a machine shared with other processes)",
            "choices": CLOCKS,
        },
    )
    calib_batches: int = field(default=4, metadata={"help": "batches for data-driven criteria"})
    finetune_epochs: int = field(default=3, metadata={"help": "fine-tuning epochs after pruning"})
    finetune_lr: float = field(default=0.01, metadata={"help": "fine-tuning learning rate"})
    option: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "method options as KEY=VALUE ... (prunekit methods --show ID lists them)"
        },
    )
    round_to: int | None = field(
        default=None,
        metadata={"help": "keep every pruned width a multiple of N (criterion runs)"},
    )
    max_ratio: float | None = field(
        default=None,
        metadata={
            "help": "the largest fraction of any layer's channels removed (criterion runs; "
            "default: all but one)"
        },
    )
    search_budget: str | None = field(
        default=None,
        metadata={
            "help": "evaluations (e.g. 200) or time (e.g. 90s, 10m) a search method may use "
            "(its search_budget option)"
        },
    )
    steps: int = field(
        default=1,
        metadata={
            "help": "reach the FLOPs or params target in N equal steps, fine-tuning "
            "--step-epochs between two steps (structured; 1: one shot)"
        },
    )
    step_epochs: int = field(
        default=0,
        metadata={"help": "fine-tuning epochs between two of the --steps (at --finetune-lr)"},
    )
    distill: bool = field(
        default=False,
        metadata={"help": "fine-tune by distillation from the unpruned model (Hinton et al.)"},
    )
    distill_temperature: float = field(default=4.0, metadata={"help": "distillation temperature T"})
    distill_alpha: float = field(
        default=0.9, metadata={"help": "weight of the soft (teacher) term; 1 - alpha on labels"}
    )

    def distillation(self) -> Any:
        """The fine-tuning's :class:`~prunekit.train.distill.Distillation`, or None."""
        from prunekit.train.distill import Distillation

        if not self.distill:
            return None
        return Distillation(self.distill_temperature, self.distill_alpha)

    def target(self) -> dict[str, float]:
        """The one target of the run: ``target_sparsity`` for an unstructured method (type U in
        the catalogue), else ``target_params`` or ``target_flops``; a target that does not fit
        the method's type is refused."""
        # a run without a method and with a sparsity target is a peer's (its pruning function
        # is passed to run_pruning); a criterion run of the CLI is refused in _prune
        unstructured = (
            _method_type(self.method) == "U"
            if self.method is not None
            else self.target_sparsity is not None
        )
        if unstructured:
            if self.target_sparsity is None:
                raise ConfigError(
                    f"method {self.method!r} is unstructured: give --target-sparsity "
                    "(the fraction of weights to zero)"
                )
            return {"target_sparsity": self.target_sparsity}
        if self.target_sparsity is not None:
            raise ConfigError(
                "--target-sparsity is for unstructured methods (prunekit methods --type U); "
                "structured pruning takes --target-flops or --target-params"
            )
        if self.target_latency is not None:
            return {"target_latency": self.target_latency}
        if self.target_params is not None:
            return {"target_params": self.target_params}
        if self.target_flops is None:
            raise ConfigError("give --target-flops or --target-params")
        return {"target_flops": self.target_flops}

    def target_object(self) -> Any:
        """:meth:`target` as a :class:`~prunekit.targets.Target` (a latency target with its
        runtime, batch size, threads and clock)."""
        from prunekit.targets import LatencySetting, Target

        target = self.target()
        if "target_latency" in target:
            setting = LatencySetting.from_flat(self)
            return Target.from_mapping({**target, "latency": setting})
        return Target.from_mapping(target)

    def options(self) -> dict[str, str]:
        """``--option KEY=VALUE ...`` as a dict (values stay strings: the method converts them)."""
        out = {}
        for item in self.option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
            out[key.strip()] = value.strip()
        if out and self.method is None:
            raise ConfigError("--option needs --method (options belong to a method)")
        if self.search_budget is not None:
            if self.method is None:
                raise ConfigError("--search-budget needs --method (a search method, e.g. legr)")
            out.setdefault("search_budget", str(self.search_budget))
        return out

    def label(self) -> str:
        return self.method if self.method else f"{self.importance} criterion"

    def validate(self) -> None:
        """Every check that needs no training, so a bad value fails before any work: model,
        data set and its folder, input size, counts (``calib_batches >= 1``,
        ``finetune_epochs >= 0``), the training and fine-tuning knobs, the target (its kind
        and its range), the criterion and scope, or the method and its options."""
        baseline_config(self)[0].validate()
        for name, minimum in (("calib_batches", 1), ("finetune_epochs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        lr = self.finetune_lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
            raise ConfigError(f"finetune_lr must be a number > 0, got {lr!r}")
        finetune_config(self)  # TrainConfig checks epochs, batch size, lr and seed
        target = self.target_object()
        for name, minimum in (("steps", 1), ("step_epochs", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if self.steps > 1 and target.kind not in ("flops", "params"):
            raise ConfigError(
                f"steps > 1 prunes to a FLOPs or params target in steps, not to a {target.kind} "
                "target"
            )
        options = self.options()
        if self.max_ratio is not None:
            from prunekit.prune import check_max_ratio

            check_max_ratio(self.max_ratio)
        if self.method is None:
            from prunekit import criteria

            criteria.get(self.importance)
            if self.scope not in ("layer", "global"):
                raise ConfigError(f"scope must be 'layer' or 'global', got {self.scope!r}")
        else:
            from prunekit import methods

            methods.get(self.method).resolve(options)
            for name in ("round_to", "max_ratio"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"{name} applies to criterion runs; method {self.method!r} chooses its "
                        "own widths"
                    )

    def settings(self) -> dict[str, Any]:
        """What defines a pruning run's results: every field, the data folder as an absolute
        path and the method options as a mapping (their order on the command line is not)."""
        return {
            "run": {
                **to_dict(self),
                "root": _absolute(self.root),
                "option": dict(sorted(self.options().items())),
            }
        }


def _method_type(method_id: str) -> str:
    from prunekit import methods

    return methods.entry(method_id).type


def prune_step(
    config: PruneConfig, setup: Setup, *, progress: bool = True, work_dir: Path | None = None
) -> Any:
    """Prune ``setup.model`` in place as ``config`` says; returns the method's report. A method
    that trains checkpoints its training phases in ``work_dir`` (resumed when rerun).

    A target that cannot be reached is an error that also names the pinned channels (which
    layers' channels nothing may remove, and why)."""
    try:
        return _prune(config, setup, progress, work_dir)
    except ConfigError as e:
        if "cannot reach" not in str(e):
            raise
        raise ConfigError(f"{e}; {pinned_channels(setup.model, setup.example_input())}") from e


def pinned_channels(model: nn.Module, example: torch.Tensor) -> str:
    """One line naming the channels the structural core may not remove, by reason (a reshape
    that mixes channels, the model output ...), with the layers that carry them: the pinned sets
    of :func:`prunekit.graph.explain` where it exists, else the graph's own pinned labels."""
    from prunekit import graph as pk_graph

    explain = getattr(pk_graph, "explain", None)
    if explain is not None:
        report = explain(model, example)
        if report.refusal is not None:
            return f"the channel graph refuses this model: {report.refusal}"
        groups = len(report.groups)
        # the model's input channels are never removed: not news
        pinned = [(p.reason, p.layers) for p in report.pinned if p.reason != "model input"]
    else:
        g = pk_graph.build(model, example)
        groups = len(g.groups)
        by_reason: dict[str, list[str]] = {}
        for name, site in g.sites.items():
            if site.out_labels is None or not len(site.out_labels):
                continue
            roots = set(g.labels.roots(site.out_labels).tolist())
            for reason in sorted({g.labels.fixed_reason(int(r)) or "" for r in roots} - {""}):
                by_reason.setdefault(reason, []).append(name)
        pinned = list(by_reason.items())
    if not pinned:
        return f"{groups} channel group(s) can be pruned and no channels are pinned"
    parts = []
    usual = ("model output", "protected layer")  # expected pins go last
    for reason, layers in sorted(pinned, key=lambda p: p[0].startswith(usual)):
        shown = ", ".join(layers[:6]) + (f" (+{len(layers) - 6} more)" if len(layers) > 6 else "")
        parts.append(f"{shown} ({reason})")
    return f"{groups} channel group(s) can be pruned; pinned channels: " + "; ".join(parts)


def shortfall_warnings(
    config: PruneConfig, model: nn.Module, example: torch.Tensor, report: Any
) -> list[str]:
    """A warning when a structured prune removed less than its target (more than the 1%
    tolerance short), naming the pinned channels; empty when the target was met."""
    from prunekit.prune import TOLERANCE

    target = config.target()
    ((key, fraction),) = target.items()
    kind = key.removeprefix("target_")
    if kind not in ("flops", "params"):
        return []
    achieved = report.flops_reduction if kind == "flops" else report.params_reduction
    if achieved >= fraction - TOLERANCE:
        return []
    what = "FLOPs" if kind == "flops" else "parameters"
    return [
        f"asked to remove {fraction:.0%} of the {what} but removed {achieved:.0%}: "
        + pinned_channels(model, example)
    ]


def _check_criterion_target(config: PruneConfig) -> None:
    """A criterion run (no method, no pruning function of its own) removes channels: a
    sparsity target is refused, naming what to give instead."""
    if config.method is None and config.target_sparsity is not None:
        raise ConfigError(
            "--target-sparsity is for unstructured methods (prunekit methods --type U); "
            "structured pruning takes --target-flops or --target-params"
        )


def _prune(config: PruneConfig, setup: Setup, progress: bool, work_dir: Path | None) -> Any:
    from prunekit import methods
    from prunekit.prune import prune_channels

    example = setup.example_input()
    _check_criterion_target(config)
    if config.method is None:
        return prune_channels(
            setup.model,
            example,
            importance=config.importance,
            scope=config.scope,
            round_to=config.round_to,
            max_ratio=1.0 if config.max_ratio is None else config.max_ratio,
            **config.target_object().as_dict(),
        )
    method = methods.get(config.method)  # a planned method is refused, never replaced
    ctx = methods.Context(
        setup.model,
        example,
        setup.train_set,
        setup.val_set,
        config.target_object(),
        calib_batches=config.calib_batches,
        batch_size=config.batch_size,
        seed=config.seed,
        options={"progress": progress, **config.options()},
        work_dir=work_dir,
        scratch_epochs=config.epochs,  # the baseline's: the budget of training from scratch
    )
    return method.prune(ctx)


def prune_in_steps(
    config: PruneConfig,
    setup: Setup,
    once: Callable[[PruneConfig, Path | None], Any],
    work_dir: Path | None,
    *,
    progress: bool = False,
) -> Any:
    """Prune ``setup.model`` to ``config``'s target in ``config.steps`` equal steps: step ``i``
    asks ``once(step_config, folder)`` to leave ``1 - i / steps`` of the target's share of the
    dense model's FLOPs (or params), expressed as a fraction of the model as it is then, and
    ``config.step_epochs`` epochs of fine-tuning (the run's fine-tuning lr, checkpointed in
    ``work_dir``) follow every step but the last. The iterative pruning of Torch-Pruning's
    ``MetaPruner(iterative_steps=N)`` and of the pruning literature's prune / fine-tune cycles,
    for any structured method or peer. Returns one report from the dense model to the last
    step's (``steps`` 1: ``once``'s own)."""
    if config.steps == 1:
        return once(config, work_dir)
    from prunekit.prune import GroupChange, PruneReport

    ((key, fraction),) = config.target().items()
    if fraction / config.steps <= 1e-3:
        raise ConfigError(
            f"steps: {config.steps} steps to {key} {fraction:g} remove {fraction / config.steps:.2g}"
            " of the model each, at most 0.1%: use fewer steps or a larger target"
        )
    model, example = setup.model, setup.example_input()

    def figure() -> int:
        if key == "target_flops":
            return measure.count_flops(model, (example,)).flops
        return measure.count_params(model).total

    dense = figure()
    reports = []
    for i in range(1, config.steps + 1):
        share = 1.0 - (1.0 - fraction * i / config.steps) * dense / figure()
        if share > 1e-3:  # an earlier step that removed more than asked may leave nothing
            step = dataclasses.replace(config, steps=1, step_epochs=0, **{key: share})
            reports.append(once(step, None if work_dir is None else work_dir / f"step{i}"))
        if i < config.steps and config.step_epochs > 0:
            fit(
                model,
                setup.train_set,
                dataclasses.replace(finetune_config(config), epochs=config.step_epochs),
                checkpoint=None if work_dir is None else work_dir / f"step{i}.pt",
                progress=progress,
            )
    first, last = reports[0], reports[-1]
    widths: dict[str, list[int]] = {}
    for r in reports:
        for g in r.groups:
            widths.setdefault(g.name, [g.before, g.after])[1] = g.after
    return PruneReport(
        params_before=first.params_before,
        params_after=last.params_after,
        flops_before=first.flops_before,
        flops_after=last.flops_after,
        groups=[GroupChange(n, b, a) for n, (b, a) in widths.items()],
        pinned=list(last.pinned),
    )


def finetune_config(config: PruneConfig) -> TrainConfig:
    """The fine-tuning config: the baseline's, with ``finetune_epochs`` (at least 1: with 0
    nothing is fine-tuned) and ``finetune_lr``."""
    return dataclasses.replace(
        baseline_config(config)[1], epochs=max(config.finetune_epochs, 1), lr=config.finetune_lr
    )


def baseline_config(config: PruneConfig) -> tuple[TrainJob, TrainConfig]:
    """The job and training config of ``config``'s baseline (every method of a comparison that
    shares model, data, epochs, batch size, lr and seed shares this baseline)."""
    job = TrainJob(
        model=config.model, data=config.data, root=config.root, image_size=config.image_size
    )
    train_cfg = TrainConfig(
        epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed
    )
    return job, train_cfg


def run_pruning(
    config: PruneConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    baseline: Trained | None = None,
    latency: bool = True,
    prune: Any = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; prune it (``config.method`` or the
    ``config.importance`` criterion) to the target; fine-tune; report accuracy (top-1, and top-5
    as ``top5_<stage>`` when the model has more than 5 classes), size and speed before and after.
    With ``out``: metrics, config and the pruned model are saved there, and rerunning the same
    run resumes from the training and fine-tuning checkpoints (a folder holding another run is
    refused unless ``overwrite``; see the module docstring). ``latency=False`` skips the latency
    timings (a caller that times the models itself, e.g. at other batch sizes or thread counts).

    Timings: ``train_time_s`` and ``finetune_time_s`` sum the epochs of every attempt (a resumed
    run counts the epochs its earlier attempts trained); ``attempts`` counts the starts. Latency
    is timed on one thread; ``warnings`` says why a figure may not be trusted, or that the prune
    removed less than asked and which channels were pinned.

    ``baseline``: an already trained baseline (from :func:`train_and_test` with
    :func:`baseline_config`'s configs) to prune a copy of, instead of training one; it is left
    unchanged, so one baseline serves every method of a comparison.

    ``prune(config, setup)``, when given, prunes ``setup.model`` in place to ``config``'s target
    (each step's, with ``config.steps`` > 1: :func:`prune_in_steps`) instead of ``config.method``
    or the criterion and returns a :class:`~prunekit.prune.PruneReport` (the benchmark's peer
    and reference baselines). With ``config.distill`` the fine-tuning learns from a copy of the
    unpruned model (:mod:`prunekit.train.distill`).
    """
    from prunekit.persist import save

    config.validate()  # every check that needs no training, before any
    if prune is None:  # a peer's pruning function may take a sparsity target without a method
        _check_criterion_target(config)
    out_dir = Path(out) if out is not None else None
    attempts = 1
    if out_dir is not None:
        attempts = claim_run_folder(
            out_dir,
            "prune",
            config.settings(),
            overwrite=overwrite,
            defaults=PruneConfig().settings(),
        )
    job, train_cfg = baseline_config(config)
    finetune_cfg = finetune_config(config)
    if baseline is None:
        run = train_and_test(
            job,
            train_cfg,
            checkpoint=out_dir / "checkpoint.pt" if out_dir else None,
            progress=progress,
        )
    else:
        model_copy = copy.deepcopy(baseline.setup.model)
        run = dataclasses.replace(
            baseline, setup=dataclasses.replace(baseline.setup, model=model_copy)
        )
    setup, model, example = run.setup, run.setup.model, run.setup.example_input()
    warnings: list[str] = []
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": setup.info.name,
        "input_shape": list(setup.info.input_shape),
        "epochs": config.epochs,
        "seed": config.seed,
        "method": config.label(),
        **config.target(),
        "acc_before": run.test["top1"],
        "train_time_s": run.result.train_time_s,  # every epoch of every attempt
        "attempts": attempts,
    }
    if "top5" in run.test:
        metrics["top5_before"] = run.test["top5"]
    metrics.update(_stage_figures(model, example, "before", latency, warnings))

    teacher = copy.deepcopy(model) if config.distill else None
    t0, epochs0 = time.perf_counter(), epochs_trained()
    work_dir = out_dir / METHOD_DIR if out_dir is not None else None

    def once(step: PruneConfig, folder: Path | None) -> Any:
        if prune is not None:
            return prune(step, setup)
        return prune_step(step, setup, progress=progress, work_dir=folder)

    report = prune_in_steps(config, setup, once, work_dir, progress=progress)
    metrics["prune_time_s"] = time.perf_counter() - t0
    # the training budget the method spent inside its pruning (recoveries, sparsity training,
    # soft phases), beyond the fine-tuning every run gets
    metrics["method_epochs"] = epochs_trained() - epochs0
    _record_accuracy(metrics, "pruned", evaluate(model, setup.test_set))

    if getattr(report, "at_initialisation", False):
        # pruned at initialisation: the model trains with the baseline's schedule (as the
        # width-scaled reference does), then gets the same fine-tuning as every pruned model
        metrics["at_initialisation"] = True
        metrics["scratch_epochs"] = train_cfg.epochs
        metrics["scratch_time_s"] = fit(
            model,
            setup.train_set,
            train_cfg,
            val_set=setup.val_set,
            checkpoint=out_dir / "scratch.pt" if out_dir else None,
            progress=progress,
        ).train_time_s
        _record_accuracy(metrics, "scratch", evaluate(model, setup.test_set))

    finetuned = 0.0
    if config.finetune_epochs > 0:  # 0: measure the pruned model as it is
        finetuned = fit(
            model,
            setup.train_set,
            finetune_cfg,
            val_set=setup.val_set,
            checkpoint=out_dir / "finetune.pt" if out_dir else None,
            progress=progress,
            loss=None if teacher is None else config.distillation().loss(teacher),
        ).train_time_s
    metrics["finetune_time_s"] = finetuned  # every epoch of every attempt
    from prunekit.methods import SparsityReport

    if isinstance(report, SparsityReport):
        final = masks.report(model)["overall"]  # first: kernels in a basis count coefficients
        masks.finalize(model)  # bake the masks in: a plain model, zeros where pruned
        metrics["sparsity"] = final["sparsity"]
        metrics["nonzero_params"] = final["nonzero"]
        if report.from_init_epochs:  # the method trained the network from scratch itself
            metrics["from_init_epochs"] = report.from_init_epochs
    else:
        metrics["groups_pruned"] = sum(g.after < g.before for g in report.groups)
        if getattr(report, "latency", None) is not None:  # a latency target's figures
            metrics.update(report.latency.as_dict())
        warnings += shortfall_warnings(config, model, example, report)
    result_file = _result_file(config, model, out_dir)
    if result_file is not None:  # the run's result is that file: measure the model it holds
        from prunekit.persist import load as load_model

        model = load_model(result_file)
    _record_accuracy(metrics, "finetuned", evaluate(model, setup.test_set))
    metrics.update(_stage_figures(model, example, "after", latency, warnings))
    metrics["allocator"] = measure.allocator_in_use()  # what the latency figures were timed with
    if result_file is not None:
        metrics["bytes_after"] = measure.file_size(result_file)
        metrics["result_file"] = str(result_file) if out_dir is not None else None
        if out_dir is None:  # nowhere to keep it: it was written to be measured
            result_file.unlink(missing_ok=True)
            result_file.parent.rmdir()
    metrics["warnings"] = warnings
    if out_dir is not None and rank() == 0:
        save(model, out_dir / "pruned.pt", extra={"run": dataclasses.asdict(config)})
        metrics["pruned_model_file"] = str(out_dir / "pruned.pt")
        write_run(
            out_dir,
            {
                "run": dataclasses.asdict(config),
                "train": train_cfg.to_dict(),
                "finetune": finetune_cfg.to_dict(),
            },
            metrics,
        )
    return metrics


def _stage_figures(
    model: nn.Module, example: torch.Tensor, stage: str, latency: bool, warnings: list[str]
) -> dict[str, Any]:
    """:func:`model_figures` named after ``stage``; its warnings join ``warnings``."""
    figures = model_figures(model, example, latency=latency)
    warnings += [f"{stage}: {w}" for w in figures.pop("warnings", [])]
    return tagged(figures, stage)


def _result_file(config: PruneConfig, model: nn.Module, out_dir: Path | None) -> Path | None:
    """Write the file a method declares as its result (``result_file`` and ``write_result`` on
    the method) in ``out_dir`` (a temporary folder without one); ``None`` for other methods."""
    if config.method is None:
        return None
    from prunekit import methods

    method = methods.get(config.method)
    name = getattr(method, "result_file", None)
    if not name:
        return None
    folder = out_dir if out_dir is not None else Path(tempfile.mkdtemp(prefix="prunekit-"))
    path = folder / name
    if rank() == 0:
        method.write_result(model, path, config.options())
        if out_dir is not None:
            _note_result_file(out_dir, name)
    barrier()
    return path


def _record_accuracy(metrics: dict[str, Any], stage: str, result: dict[str, Any]) -> None:
    metrics[f"acc_{stage}"] = result["top1"]
    if "top5" in result:
        metrics[f"top5_{stage}"] = result["top5"]


def tagged(figures: dict[str, Any], stage: str) -> dict[str, Any]:
    """Name figures after the stage they describe: ``params_before``, ``latency_before_ms`` ...

    Batch-1 latency is the headline ``latency_<stage>_ms``; other batch sizes keep their size.
    """
    out = {}
    for key, value in figures.items():
        if key.startswith("latency_b1_"):
            key = key.replace("latency_b1_", f"latency_{stage}_")
        elif key.startswith("latency_"):
            key = key.replace("_ms", f"_{stage}_ms")
        else:
            key = f"{key}_{stage}"
        out[key] = value
    return out


DEMO_ROWS = [
    ("params", "params_{}"),
    ("MACs", "macs_{}"),
    ("FLOPs", "flops_{}"),
    ("latency, batch 1 (ms, median)", "latency_{}_ms"),
    ("  spread, batch 1 (IQR, ms)", "latency_{}_iqr_ms"),
    ("latency, batch 32 (ms, median)", "latency_b32_{}_ms"),
    ("  spread, batch 32 (IQR, ms)", "latency_b32_iqr_{}_ms"),
    ("peak memory, batch 1 (bytes)", "peak_memory_bytes_{}"),
    ("bytes on disk", "bytes_{}"),
]


def demo_table(metrics: dict[str, Any]) -> str:
    """The demo's before/after report, with the ratio after/before of each figure."""

    def ratio(a: Any, b: Any) -> float | None:
        return b / a if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None

    rows: list[list[Any]] = [
        ["test accuracy (%)", metrics["acc_before"], metrics.get("acc_finetuned"), None],
        ["  right after pruning (%)", None, metrics.get("acc_pruned"), None],
    ]
    if "sparsity" in metrics:
        rows.append(["weight sparsity (conv/Linear)", 0.0, metrics["sparsity"], None])
    for label, key in DEMO_ROWS:
        before, after = metrics.get(key.format("before")), metrics.get(key.format("after"))
        if key == "bytes_{}" and metrics.get("result_file"):
            label = f"{label} (after: {Path(metrics['result_file']).name})"
        spread = "iqr" in key  # a ratio of spreads means nothing
        rows.append([label, before, after, None if spread else ratio(before, after)])
    target = (
        f"{metrics['target_flops']:.0%} fewer FLOPs"
        if "target_flops" in metrics
        else f"{metrics['target_params']:.0%} fewer params"
        if "target_params" in metrics
        else f"{metrics['target_latency']:.0%} less measured latency"
        if "target_latency" in metrics
        else f"{metrics['target_sparsity']:.0%} of its weights zero"
    )
    title = (
        f"{metrics['model']} on {metrics['data']} {tuple(metrics['input_shape'])}: "
        f"{metrics['epochs']} epochs, then pruned ({metrics['method']}) to {target} and fine-tuned"
    )
    if "latency_threads" in metrics:
        title += f" (latency on {metrics['latency_threads']} thread(s))"
    return title + "\n" + markdown_table(["", "before", "after", "after/before"], rows)
