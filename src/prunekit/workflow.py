"""The jobs the CLI runs, as plain Python: fit a model to a data set, train, evaluate, report.

The CLI only parses flags and prints; everything it does is one call here, so a script can do the
same thing with the same defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import time
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
from prunekit.io import atomic_write_json
from prunekit.tables import markdown_table
from prunekit.train import TrainConfig, TrainResult, evaluate, fit, load_checkpoint, rank


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


def model_figures(
    model: nn.Module, example: torch.Tensor, *, latency: bool = True
) -> dict[str, Any]:
    """Params, FLOPs, MACs, bytes, peak memory and latency at batch 1 and 32 of one model."""
    return measure.summarize(model, example, latency=latency, batch_sizes=(1, 32))


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


def train_model(
    job: TrainJob,
    config: TrainConfig,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate on the test split, measure; write ``checkpoint.pt`` and ``metrics.json``.

    ``out`` defaults to ``runs/<model>-<data>-<hash of the non-default options>``: running the same
    command again resumes from the checkpoint instead of starting over.
    """
    out_dir = Path(out) if out is not None else Path("runs") / job.run_name(config)
    run = train_and_test(job, config, checkpoint=out_dir / "checkpoint.pt", progress=progress)
    setup = run.setup
    metrics = {
        "model": job.model,
        "data": setup.info.name,
        "synthetic_data": setup.info.synthetic,
        "input_shape": list(setup.info.input_shape),
        "test_top1": run.test["top1"],
        "val_top1": run.result.final.get("top1"),
        "train_time_s": run.result.train_time_s,
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
    """Rebuild the model a checkpoint holds and evaluate it on a split of a data set."""
    ckpt = load_checkpoint(checkpoint)
    arch = ckpt.get("arch")
    if not arch:
        raise ConfigError(
            f"checkpoint {checkpoint} holds no architecture to rebuild the model from"
        )
    model = pk_models.rebuild(arch)
    model.load_state_dict(ckpt["model"])
    minfo = pk_models.model_info(arch["name"])
    size = arch["kwargs"].get("input_size") or fitted_size(arch["name"], image_size)
    dataset = pk_data.load(
        data_name, root=root, split=split, image_size=tuple(size) if minfo.dims == 2 else None
    )
    return {
        "checkpoint": str(checkpoint),
        "data": data_name,
        "split": split,
        **evaluate(model, dataset),
    }


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
    calib_batches: int = field(default=4, metadata={"help": "batches for data-driven criteria"})
    finetune_epochs: int = field(default=3, metadata={"help": "fine-tuning epochs after pruning"})
    finetune_lr: float = field(default=0.01, metadata={"help": "fine-tuning learning rate"})
    option: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "method options as KEY=VALUE ... (prunekit methods --show ID lists them)"
        },
    )

    def target(self) -> dict[str, float]:
        """The one target of the run: ``target_sparsity`` for an unstructured method (type U in
        the catalogue), else ``target_params`` or ``target_flops``; a target that does not fit
        the method's type is refused."""
        unstructured = self.method is not None and _method_type(self.method) == "U"
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
        if self.target_params is not None:
            return {"target_params": self.target_params}
        if self.target_flops is None:
            raise ConfigError("give --target-flops or --target-params")
        return {"target_flops": self.target_flops}

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
        return out

    def label(self) -> str:
        return self.method if self.method else f"{self.importance} criterion"


def _method_type(method_id: str) -> str:
    from prunekit import methods

    return methods.entry(method_id).type


def prune_step(config: PruneConfig, setup: Setup, *, progress: bool = True) -> Any:
    """Prune ``setup.model`` in place as ``config`` says; returns the method's report."""
    from prunekit import methods
    from prunekit.prune import prune_channels

    example = setup.example_input()
    if config.method is None:
        return prune_channels(
            setup.model,
            example,
            importance=config.importance,
            scope=config.scope,
            **config.target(),
        )
    from prunekit.targets import Target

    method = methods.get(config.method)  # a planned method is refused, never replaced
    ctx = methods.Context(
        setup.model,
        example,
        setup.train_set,
        setup.val_set,
        Target.from_mapping(config.target()),
        calib_batches=config.calib_batches,
        batch_size=config.batch_size,
        seed=config.seed,
        options={"progress": progress, **config.options()},
    )
    return method.prune(ctx)


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
) -> dict[str, Any]:
    """Train ``config.model`` on ``config.data``; prune it (``config.method`` or the
    ``config.importance`` criterion) to the target; fine-tune; report accuracy (top-1, and top-5
    as ``top5_<stage>`` when the model has more than 5 classes), size and speed before and after.
    With ``out``: metrics, config and the pruned model are saved there, and rerunning resumes
    from the training and fine-tuning checkpoints. ``latency=False`` skips the latency timings
    (a caller that times the models itself, e.g. at other batch sizes or thread counts).

    ``baseline``: an already trained baseline (from :func:`train_and_test` with
    :func:`baseline_config`'s configs) to prune a copy of, instead of training one; it is left
    unchanged, so one baseline serves every method of a comparison.
    """
    from prunekit.persist import save

    config.target()  # fail before training, not after
    options = config.options()
    if config.method is not None:
        from prunekit import methods

        methods.get(config.method).resolve(options)
    out_dir = Path(out) if out is not None else None
    job, train_cfg = baseline_config(config)
    t0 = time.perf_counter()
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
    metrics: dict[str, Any] = {
        "model": config.model,
        "data": setup.info.name,
        "input_shape": list(setup.info.input_shape),
        "epochs": config.epochs,
        "seed": config.seed,
        "method": config.label(),
        **config.target(),
        "acc_before": run.test["top1"],
        "train_time_s": time.perf_counter() - t0,
    }
    if "top5" in run.test:
        metrics["top5_before"] = run.test["top5"]
    metrics.update(tagged(model_figures(model, example, latency=latency), "before"))

    t0 = time.perf_counter()
    report = prune_step(config, setup, progress=progress)
    metrics["prune_time_s"] = time.perf_counter() - t0
    _record_accuracy(metrics, "pruned", evaluate(model, setup.test_set))

    finetune_cfg = dataclasses.replace(
        train_cfg, epochs=max(config.finetune_epochs, 1), lr=config.finetune_lr
    )
    t0 = time.perf_counter()
    if config.finetune_epochs > 0:  # 0: measure the pruned model as it is
        fit(
            model,
            setup.train_set,
            finetune_cfg,
            val_set=setup.val_set,
            checkpoint=out_dir / "finetune.pt" if out_dir else None,
            progress=progress,
        )
    metrics["finetune_time_s"] = time.perf_counter() - t0
    _record_accuracy(metrics, "finetuned", evaluate(model, setup.test_set))
    from prunekit.methods import SparsityReport

    if isinstance(report, SparsityReport):
        masks.finalize(model)  # bake the masks in: a plain model, zeros where pruned
        final = masks.report(model)["overall"]
        metrics["sparsity"] = final["sparsity"]
        metrics["nonzero_params"] = final["nonzero"]
    else:
        metrics["groups_pruned"] = sum(g.after < g.before for g in report.groups)
    metrics.update(tagged(model_figures(model, example, latency=latency), "after"))
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
    ("latency, batch 1 (ms)", "latency_{}_ms"),
    ("latency, batch 32 (ms)", "latency_b32_{}_ms"),
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
        rows.append([label, before, after, ratio(before, after)])
    target = (
        f"{metrics['target_flops']:.0%} fewer FLOPs"
        if "target_flops" in metrics
        else f"{metrics['target_params']:.0%} fewer params"
        if "target_params" in metrics
        else f"{metrics['target_sparsity']:.0%} of its weights zero"
    )
    title = (
        f"{metrics['model']} on {metrics['data']} {tuple(metrics['input_shape'])}: "
        f"{metrics['epochs']} epochs, then pruned ({metrics['method']}) to {target} and fine-tuned"
    )
    return title + "\n" + markdown_table(["", "before", "after", "after/before"], rows)
