"""Nothing silently wrong: run folders know what they hold, every check comes before any work,
and every bad input gets one clear line."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import prunekit
from prunekit import data, workflow
from prunekit.cli import main
from prunekit.criteria.hrank import HRank
from prunekit.errors import CheckpointError, ConfigError, DataError, PrunekitError
from prunekit.train import TrainConfig

TINY = {"model": "lenet5", "epochs": 1, "batch_size": 64, "finetune_epochs": 1}


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prunekit: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training (or data loading for it) fails the test: checks must come first."""

    def trained(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the configuration was checked")

    monkeypatch.setattr(workflow, "train_and_test", trained)
    monkeypatch.setattr(workflow, "fit", trained)


# ------------------------------------------------------------------ 1. run folders


def test_prune_folder_refuses_a_different_run_and_overwrite_replaces_it(tmp_path, capsys):
    out = tmp_path / "D"
    first = workflow.run_pruning(
        workflow.PruneConfig(**TINY, importance="l1"), out=out, progress=False, latency=False
    )
    l1_bytes = (out / "pruned.pt").read_bytes()
    argv = ["prune", "--model", "lenet5", "--epochs", "1", "--finetune-epochs", "1"]
    argv += ["--importance", "random", "--out", str(out), "--no-progress"]
    code, _, err = cli(argv, capsys)
    assert code == 1
    line = one_line_error(err)
    assert str(out) in line and "importance" in line and "'l1'" in line and "'random'" in line
    assert "--overwrite" in line and "--out" in line
    assert (out / "pruned.pt").read_bytes() == l1_bytes  # nothing of the first run was touched
    assert json.loads((out / "metrics.json").read_text())["method"] == "l1 criterion"

    code, _, _ = cli([*argv, "--overwrite"], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "random criterion"
    assert (out / "pruned.pt").read_bytes() != l1_bytes
    assert metrics["acc_finetuned"] != first["acc_finetuned"]


def test_prune_folder_resumes_only_on_a_full_match(tmp_path):
    out = tmp_path / "D"
    config = workflow.PruneConfig(**{**TINY, "finetune_epochs": 0})
    workflow.run_pruning(config, out=out, progress=False, latency=False)
    again = workflow.run_pruning(
        config, out=out, progress=False, latency=False
    )  # same run: resumes
    assert again["attempts"] == 2
    for change in ({"seed": 1}, {"target_flops": 0.3}, {"finetune_lr": 0.02}, {"method": "hrank"}):
        other = workflow.PruneConfig(**{**TINY, "finetune_epochs": 0, **change})
        with pytest.raises(ConfigError, match="overwrite"):
            workflow.run_pruning(other, out=out, progress=False, latency=False)


def test_a_folder_of_unknown_origin_is_not_reused(tmp_path):
    out = tmp_path / "D"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"from somewhere else")
    with pytest.raises(ConfigError, match="overwrite"):
        workflow.run_pruning(workflow.PruneConfig(**TINY), out=out, progress=False, latency=False)


def test_an_option_added_since_the_folder_was_written_matches_its_default(tmp_path):
    out = tmp_path / "D"
    config = workflow.PruneConfig(**TINY)
    settings = config.settings()
    del settings["run"]["scope"]  # as if written before the option existed
    out.mkdir()
    record = {"settings": {"kind": "prune", **settings}, "attempts": 1}
    (out / "run.json").write_text(json.dumps(record))
    (out / "checkpoint.pt").write_bytes(b"")
    defaults = workflow.PruneConfig().settings()
    claim = workflow.claim_run_folder
    assert claim(out, "prune", config.settings(), defaults=defaults) == 2  # a resume
    (out / "run.json").write_text(json.dumps(record))
    changed = workflow.PruneConfig(**TINY, scope="global").settings()
    with pytest.raises(ConfigError, match=r"run\.scope: None there, 'global' now"):
        claim(out, "prune", changed, defaults=defaults)


def test_train_folder_refuses_other_data_or_size(tmp_path, capsys):
    out = tmp_path / "T"
    base = ["train", "--model", "lenet5", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert cli(base, capsys)[0] == 0
    config = (out / "config.json").read_text()
    code, _, err = cli([*base, "--image-size", "16"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "image_size" in line and "--overwrite" in line
    assert (out / "config.json").read_text() == config  # the record still tells the truth
    code, _, err = cli([*base, "--data", "mnist1d", "--model", "mnist1d_cnn"], capsys)
    assert code == 1 and "--overwrite" in err
    assert cli([*base, "--image-size", "16", "--overwrite"], capsys)[0] == 0
    assert json.loads((out / "config.json").read_text())["job"]["image_size"] == 16
    assert json.loads((out / "metrics.json").read_text())["input_shape"] == [1, 16, 16]


# ------------------------------------------------------------------ 2. checks before work


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--target-flops", "1.5"], "target_flops"),
        (["--target-params", "0"], "target_params"),
        (["--importance", "l3"], "l3"),
        (["--scope", "bogus"], "scope"),
        (["--method", "nope"], "nope"),
        (["--method", "hrank", "--option", "bogus=1"], "bogus"),
        (["--finetune-lr", "-1"], "finetune_lr"),
        (["--lr", "0"], "lr"),
        (["--data", "cifar10"], "needs root"),
        (["--image-size", "0"], "image_size"),
        (["--model", "resnet21"], "resnet21"),
    ],
)
def test_prune_checks_everything_before_training(flags, needle, no_training, capsys, tmp_path):
    code, _, err = cli(["prune", *flags, "--out", str(tmp_path / "x"), "--no-progress"], capsys)
    assert code == 1
    assert needle in one_line_error(err)


def test_run_pruning_checks_before_training(no_training):
    for bad in (
        {"target_flops": 1.5},
        {"importance": "l3"},
        {"scope": "bogus"},
        {"data": "mnist", "root": "/no/such/folder"},
        {"calib_batches": 0},
        {"finetune_epochs": -1},
    ):
        with pytest.raises(PrunekitError):
            workflow.run_pruning(workflow.PruneConfig(**bad), progress=False)


def test_bench_spec_with_a_data_set_needing_root_fails_at_validation(tmp_path, capsys):
    from prunekit.bench import load_spec, run_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: s\nmodels: [lenet5]\ndatasets: [cifar10]\nmethods: [l1_filter]\n"
        "baseline: {epochs: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"datasets\[0\].*root"):
        load_spec(spec)
    spec.write_text(spec.read_text().replace("[cifar10]", "[{name: cifar10, root: /no/such}]"))
    store = tmp_path / "s.sqlite"
    with pytest.raises(ConfigError, match="/no/such"):
        run_spec(spec, store, progress=False)
    assert not (tmp_path / "s-work").exists()  # no baseline was even started


# ------------------------------------------------------------------ 3. accepted nonsense


def test_counts_are_validated(no_training, capsys, tmp_path):
    for flags, needle in (
        (["--calib-batches", "0"], "calib_batches"),
        (["--finetune-epochs", "-1"], "finetune_epochs"),
        (["--epochs", "0"], "epochs"),
        (["--batch-size", "0"], "batch_size"),
    ):
        code, _, err = cli(["prune", *flags, "--no-progress"], capsys)
        assert code == 1 and needle in one_line_error(err)


def test_a_criterion_without_data_is_an_error():
    with pytest.raises(PrunekitError, match="calibration"):
        HRank([])
    with pytest.raises(PrunekitError, match="calibration"):
        HRank(iter([]))


# ------------------------------------------------------------------ 4. silent no-op


class ChannelMixingNet(nn.Module):
    """Every conv's channels feed a running sum across the channels, which pins them."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cumsum(torch.relu(self.c1(x)), 1)
        x = torch.cumsum(torch.relu(self.c2(x)), 1)
        return self.fc(x.mean((2, 3)))


def _pinned_setup() -> workflow.Setup:
    ds = data.load("digits", split="train")
    return workflow.Setup("mixing", "digits", ChannelMixingNet(), ds.info, ds, ds, ds)


def test_a_prune_that_cannot_remove_anything_says_which_groups_are_pinned_and_why():
    setup = _pinned_setup()
    config = workflow.PruneConfig(model="lenet5", importance="l1")
    with pytest.raises(ConfigError) as e:
        workflow.prune_step(config, setup, progress=False)
    msg = str(e.value)
    assert "c1" in msg and "c2" in msg and "cumsum" in msg and "\n" not in msg


def test_a_method_removing_less_than_asked_is_reported():
    setup = _pinned_setup()
    report = prunekit.PruneReport(100, 100, 100, 100, [], {})
    lines = workflow.shortfall_warnings(
        workflow.PruneConfig(target_flops=0.5), setup.model, setup.example_input(), report
    )
    assert lines and "c1" in lines[0] and "cumsum" in lines[0]
    assert "0%" in lines[0] and "50%" in lines[0]


# ------------------------------------------------------------------ 5. messages


def png_file(path: Path) -> Path:
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path, format="PNG")
    return path


@pytest.mark.parametrize("kind", ["random", "png"])
def test_unreadable_files_never_suggest_unsafe_loading(kind, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    if kind == "png":
        png_file(path)
    else:
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    for load in (prunekit.load, prunekit.train.load_checkpoint):
        with pytest.raises(CheckpointError) as e:
            load(path)
        msg = str(e.value)
        assert "weights_only" not in msg and "\n" not in msg and "ckpt.pt" in msg
        if kind == "png":
            assert "PNG image" in msg
    code, _, err = cli(["eval", "--checkpoint", str(path)], capsys)
    assert code == 1 and "weights_only" not in one_line_error(err)


def test_a_file_of_another_kind_is_named_with_the_command_that_reads_it(tmp_path, capsys):
    out = tmp_path / "T"
    argv = ["train", "--model", "lenet5", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert cli(argv, capsys)[0] == 0
    code, _, err = cli(["export", str(out / "checkpoint.pt"), str(tmp_path / "m.onnx")], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "training checkpoint" in line and "prunekit eval" in line

    model = prunekit.models.create("lenet5", num_classes=10, in_channels=1, input_size=28)
    prunekit.save(model, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model file.*prunekit\.load"):
        prunekit.train.load_checkpoint(tmp_path / "model.pt")


def test_eval_evaluates_a_pruned_model_file(tmp_path, capsys):
    out = tmp_path / "P"
    metrics = workflow.run_pruning(
        workflow.PruneConfig(**{**TINY, "finetune_epochs": 0}),
        out=out,
        progress=False,
        latency=False,
    )
    code, stdout, err = cli(["eval", "--checkpoint", str(out / "pruned.pt")], capsys)
    assert code == 0, err
    assert f"{metrics['acc_finetuned']:.4g}" in stdout


def test_eval_on_data_of_another_shape_names_both_shapes(tmp_path, capsys):
    out = tmp_path / "T"
    argv = ["train", "--model", "lenet5", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert cli(argv, capsys)[0] == 0
    code, _, err = cli(
        ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", "synthetic"], capsys
    )
    assert code == 1
    line = one_line_error(err)
    assert "(1, 28, 28)" in line and "(3, 28, 28)" in line


def idx(dims: tuple[int, ...], payload: bytes = b"") -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def test_idx_with_overflowing_dims_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx((2**31, 2**31, 2**31)))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        data.idx.read_idx(path)


def test_an_empty_idx_set_names_the_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx((0, 28, 28)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx((0,)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx((0, 28, 28)))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx((0,)))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*no samples"):
        data.load("mnist", tmp_path, split="train")


def test_a_root_that_is_a_file_is_called_a_file(tmp_path):
    root = tmp_path / "cifar.tar"
    root.write_bytes(b"x")
    with pytest.raises(PrunekitError) as e:
        data.load("cifar10", root)
    assert "is a file" in str(e.value) and "does not exist" not in str(e.value)


def write_imagefolder(root: Path, per_class: int = 4) -> None:
    for split in ("train", "val"):
        for cls, color in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (12, 12), color).save(folder / f"{i}.jpg")


def test_an_empty_class_folder_is_refused_with_its_path(tmp_path):
    write_imagefolder(tmp_path)
    (tmp_path / "train" / "green").mkdir()
    with pytest.raises(DataError) as e:
        data.load("imagefolder", tmp_path, split="train", image_size=8)
    assert str(tmp_path / "train" / "green") in str(e.value)


def test_a_corrupt_image_read_by_a_worker_is_one_line(tmp_path, capsys):
    write_imagefolder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "train" / "red" / "2.jpg"
    bad.write_bytes(b"not a jpeg at all")
    argv = ["train", "--model", "lenet5", "--data", "imagefolder", "--root", str(tmp_path / "imgs")]
    argv += ["--image-size", "28", "--epochs", "1", "--batch-size", "4", "--num-workers", "1"]
    code, _, err = cli([*argv, "--out", str(tmp_path / "T"), "--no-progress"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "2.jpg" in line and "cannot decode image" in line


def test_bench_run_prints_each_failed_runs_error(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: s\nmodels: [lenet5]\ndatasets: [mnist1d]\nmethods: [hrank]\n"
        "baseline: {epochs: 1}\nfinetune: {epochs: 0}\nmeasure: {latency: false}\n"
    )
    code, out, err = cli(
        ["bench", "run", str(spec), "--store", str(tmp_path / "s.sqlite"), "--no-progress"],
        capsys,
    )
    assert code == 1
    (line,) = [line for line in out.splitlines() if line.startswith("failed: ")]
    assert "lenet5/mnist1d hrank" in line and "1-D samples" in line
    assert "1 run(s) failed" in one_line_error(err)


# ------------------------------------------------------------------ 6. honest timings


def test_latency_is_timed_on_pinned_threads_with_its_spread(monkeypatch):
    torch.set_num_threads(2)
    try:
        setup = workflow.prepare("lenet5", "digits")
        figures = workflow.model_figures(setup.model, setup.example_input())
    finally:
        torch.set_num_threads(1)
    assert figures["latency_threads"] == 1
    assert "latency_b1_iqr_ms" in figures


def test_unreliable_latency_is_warned_about(monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    setup = workflow.prepare("lenet5", "digits")
    figures = workflow.model_figures(setup.model, setup.example_input())
    assert any("load" in w for w in figures["warnings"])


def test_a_wide_latency_spread_is_warned_about(monkeypatch):
    from prunekit import measure

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    steady = {"latency_b1_ms": 1.0, "latency_b1_iqr_ms": 0.05}
    assert measure.latency_warnings(steady, threads=1) == []
    noisy = {**steady, "latency_b32_ms": 10.0, "latency_b32_iqr_ms": 4.0}
    (line,) = measure.latency_warnings(noisy, threads=1)
    assert "batch 32" in line and "40%" in line and "unreliable" in line


def test_a_resumed_run_records_the_time_of_all_attempts(tmp_path):
    out = tmp_path / "D"
    config = workflow.PruneConfig(**TINY)
    first = workflow.run_pruning(config, out=out, progress=False, latency=False)
    again = workflow.run_pruning(
        config, out=out, progress=False, latency=False
    )  # finds everything finished
    assert first["train_time_s"] > 0.05
    assert again["train_time_s"] == pytest.approx(first["train_time_s"], rel=0.01)
    assert again["finetune_time_s"] == pytest.approx(first["finetune_time_s"], rel=0.01)


def test_orphan_temporary_files_are_removed_on_the_next_start(tmp_path):
    out = tmp_path / "T"
    job = workflow.TrainJob(model="lenet5")
    workflow.train_model(job, TrainConfig(epochs=1), out=out, progress=False)
    orphan = out / ".checkpoint.pt.k3j4h5.tmp"
    orphan.write_bytes(b"half a checkpoint")
    keep = out / "notes.tmp"  # not one of ours
    keep.write_text("mine")
    workflow.train_model(job, TrainConfig(epochs=1), out=out, progress=False)
    assert not orphan.exists() and keep.exists()
