"""The command line end to end on tiny runs: outputs, files, resume, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import prunekit
from prunekit import measure, workflow
from prunekit.cli import build_parser, main

COMMANDS = ["demo", "train", "eval", "info", "list", "export", "bench", "compress", "methods"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: prunekit " + command in capsys.readouterr().out


def test_same_flag_names_everywhere() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "info"):
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--model", "--data", "--debug"} <= flags
    for name in ("train", "demo"):
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--model", "--data", "--seed", "--out"} <= flags


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for name in ("resnet56", "vgg16", "mnist1d_cnn", "digits", "cifar10", "synthetic"):
        assert f"| {name} " in out


def test_info_fits_model_to_data_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", "--model", "resnet20", "--data", "digits"], capsys)
    assert code == 0
    assert "input (1, 32, 32), 10 classes" in out  # digits resized for a CIFAR-style model
    assert "| classifier *" in out  # the protected layer is marked
    setup = workflow.prepare("resnet20", "digits")
    flops = measure.count_flops(setup.model, setup.example_input())
    total = next(line for line in out.splitlines() if line.startswith("| total"))
    assert f"{measure.count_params(setup.model).total:,}" in total
    assert f"{flops.macs:,}" in total and f"{flops.flops:,}" in total


def test_info_lists_channel_groups(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["info", "--model", "resnet20", "--groups"], capsys)
    assert code == 0
    assert "12 channel groups" in out  # the stem's residual stage, 9 block-internal, 2 stages
    groups = out.split("channel groups")[1]
    row = next(line for line in groups.splitlines() if line.startswith("| conv1 "))
    assert "| 16 " in row and "| 13 " in row  # 16 channels shared by 13 layers


def test_model_follows_the_data() -> None:
    s = workflow.prepare("mnist1d_cnn", "mnist1d")
    assert tuple(s.info.input_shape) == (1, 40)
    assert s.model(s.example_input(2)).shape == (2, 10)
    s = workflow.prepare("lenet_300_100", "digits")
    assert tuple(s.info.input_shape) == (1, 28, 28)
    s = workflow.prepare("lenet5", "digits", image_size=16)
    assert tuple(s.info.input_shape) == (1, 16, 16)
    assert s.model(s.example_input(2)).shape == (2, 10)


def test_train_writes_results_resumes_and_evaluates(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet5", "--data", "digits", "--epochs", "2", "--lr", "0.05"]
    argv += ["--batch-size", "32", "--seed", "3", "--out", str(out), "--no-progress"]
    code, stdout, _ = run(argv, capsys)
    assert code == 0, stdout
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 2 and config["train"]["seed"] == 3
    assert config["job"]["model"] == "lenet5"
    assert metrics["test_top1"] > 50  # two epochs on digits are far above chance (10%)
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]

    # the same command again finds the finished checkpoint: nothing retrains, weights stay
    assert main(argv) == 0
    again = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    capsys.readouterr()

    code, stdout, _ = run(
        ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", "digits"], capsys
    )
    assert code == 0
    assert f"{metrics['test_top1']:.4g}" in stdout


def test_demo_prunes_finetunes_and_writes_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--model", "lenet5", "--epochs", "2", "--finetune-epochs", "1"]
    code, stdout, _ = run([*argv, "--out", str(out), "--no-progress"], capsys)
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ["params_before", "params_after", "flops_before", "flops_after", "acc_before"]
    keys += ["acc_pruned", "acc_finetuned", "latency_before_ms", "latency_after_ms"]
    keys += ["bytes_before", "bytes_after"]
    keys += ["top5_before", "top5_pruned", "top5_finetuned"]  # 10 classes: top-5 is defined
    assert set(keys) <= set(metrics)
    assert all(metrics[f"top5_{s}"] >= metrics[f"acc_{s}"] for s in ("before", "finetuned"))
    setup = workflow.prepare("lenet5", "digits")
    assert metrics["params_before"] == measure.count_params(setup.model).total
    assert metrics["flops_before"] == measure.count_flops(setup.model, setup.example_input()).flops
    # 50% of the FLOPs removed, within 1% of the dense figure; the model physically shrank
    assert abs(metrics["flops_after"] / metrics["flops_before"] - 0.5) <= 0.01
    assert metrics["params_after"] < metrics["params_before"]
    assert metrics["bytes_after"] < metrics["bytes_before"]
    # the saved pruned model reloads with the sizes the metrics report
    pruned = prunekit.load(out / "pruned.pt")
    assert measure.count_params(pruned).total == metrics["params_after"]
    assert measure.count_flops(pruned, setup.example_input()).flops == metrics["flops_after"]
    assert "after/before" in stdout and f"{metrics['params_after']:,}" in stdout
    # timed with the steady allocator, the CLI's default, and saying so
    assert metrics["allocator"] == measure.allocator_in_use()
    assert metrics["allocator"].startswith("steady") or "not glibc" in metrics["allocator"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "--model", "resnet21"], "unknown model 'resnet21'"),
        (["info", "--model", "resnet20", "--data", "nope"], "unknown data set 'nope'"),
        (["info", "--model", "resnet20", "--data", "mnist1d"], "1-D"),
        (["info", "--model", "resnet20", "--data", "cifar10"], "needs root=DIR"),
        (
            ["info", "--model", "resnet20", "--data", "cifar10", "--root", "/no/such/dir"],
            "/no/such/dir",
        ),
        (["train", "--model", "lenet5", "--lr", "-1", "--epochs", "1"], "lr must be > 0"),
        (["eval", "--checkpoint", "/no/such/ckpt.pt"], "/no/such/ckpt.pt"),
    ],
)
def test_errors_are_one_line(argv: list[str], needle: str, capsys, tmp_path) -> None:
    if argv[0] == "train":
        argv = [*argv, "--out", str(tmp_path / "x")]
    code, _, err = run(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(KeyError, match="resnet21"):
        main(["info", "--model", "resnet21", "--debug"])


def test_entry_point_exit_codes() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "list", "models"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and "resnet20" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "info", "--model", "x"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    usage = subprocess.run(
        [sys.executable, "-m", "prunekit.cli", "frobnicate"], capture_output=True, text=True
    )
    assert usage.returncode == 2


@pytest.mark.slow
def test_default_demo_learns_digits(tmp_path) -> None:
    """The README's demo, as shipped: ResNet-20 on digits at 32x32."""
    metrics = workflow.run_pruning(workflow.PruneConfig(), out=tmp_path, progress=False)
    assert metrics["acc_before"] > 95
    assert metrics["acc_finetuned"] > 90
    assert abs(metrics["flops_after"] / metrics["flops_before"] - 0.5) <= 0.01


BENCH_SPEC = """
name: cli-bench
models: [lenet5]
datasets: [{name: digits, image_size: 28}]
methods: [hrank]
targets: {flops: [0.3]}
seeds: [0]
baseline: {epochs: 1}
finetune: {epochs: 0}
measure: {latency: false}
"""


def test_bench_run_report_and_export_of_a_run(tmp_path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(BENCH_SPEC)
    store = tmp_path / "results.sqlite"
    argv = ["bench", "run", str(spec), "--store", str(store), "--no-progress"]
    code, out, _ = run(argv, capsys)
    assert code == 0 and "1 runs; 0 already done, 1 run now, 0 failed" in out
    code, out, _ = run(argv, capsys)  # a rerun skips the finished run
    assert code == 0 and "1 already done, 0 run now" in out

    code, out, _ = run(["bench", "report", str(store), "--out", str(tmp_path / "rep")], capsys)
    assert code == 0
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "hrank" in html and "data:image/png;base64," in html

    (pruned,) = (tmp_path / "results-work" / "runs").glob("*/pruned.pt")
    onnx_file = tmp_path / "pruned.onnx"
    code, out, _ = run(["export", str(pruned), str(onnx_file)], capsys)
    assert code == 0 and onnx_file.exists() and "max |onnxruntime - torch|" in out
    # --input-shape is batch first, as `prunekit info` reads it
    onnx_file.unlink()
    code, out, _ = run(
        ["export", str(pruned), str(onnx_file), "--input-shape", "2,1,28,28"], capsys
    )
    assert code == 0 and onnx_file.exists()
    code, _, err = run(["export", str(pruned), str(onnx_file), "--input-shape", "1,a"], capsys)
    assert code == 1 and "input shape '1,a'" in err and "e.g. 1,3,32,32" in err


def test_bench_errors_name_the_spec_key(tmp_path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(BENCH_SPEC.replace("finetune: {epochs: 0}", "finetune: {epoch: 0}"))
    code, _, err = run(["bench", "run", str(spec), "--store", str(tmp_path / "s.sqlite")], capsys)
    assert code == 1 and "finetune.epoch: unknown key" in err and str(spec) in err
    code, _, err = run(["bench", "report", str(tmp_path / "missing.sqlite")], capsys)
    assert code == 1 and "missing.sqlite" in err
