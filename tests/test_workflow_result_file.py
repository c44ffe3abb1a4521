"""A method whose result is a file: the run writes it in its folder, reports its bytes, and
measures the model rebuilt from it."""

from __future__ import annotations

import json
from pathlib import Path

import prunekit
from prunekit import workflow
from prunekit.train import evaluate

QUICK = {"prune_epochs": 0, "quant_epochs": 0}


def config(**kw: object) -> workflow.PruneConfig:
    options = tuple(f"{k}={v}" for k, v in QUICK.items())
    return workflow.PruneConfig(
        model="lenet5",
        epochs=1,
        finetune_epochs=0,
        method="deep_compression",
        target_sparsity=0.8,
        option=options,
        **kw,  # type: ignore[arg-type]
    )


def test_deep_compression_reports_its_file_and_the_accuracy_of_the_model_in_it(tmp_path):
    out = tmp_path / "run"
    metrics = workflow.run_pruning(config(), out=out, progress=False, latency=False)
    file = out / "model.deepc"
    assert metrics["result_file"] == str(file)
    assert metrics["bytes_after"] == file.stat().st_size
    assert metrics["bytes_after"] * 5 < metrics["bytes_before"]  # not the dense torch file
    setup = workflow.prepare("lenet5", "digits")
    rebuilt = prunekit.load(file)
    assert metrics["acc_finetuned"] == evaluate(rebuilt, setup.test_set)["top1"]
    assert json.loads((out / "run.json").read_text())["results"] == ["model.deepc"]

    workflow.run_pruning(
        workflow.PruneConfig(model="lenet5", epochs=1, finetune_epochs=0),
        out=out,
        progress=False,
        latency=False,
        overwrite=True,
    )
    assert not file.exists()  # the replaced run's file went with it


def test_without_a_folder_the_file_is_still_what_is_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    metrics = workflow.run_pruning(config(), progress=False, latency=False)
    assert metrics["bytes_after"] * 5 < metrics["bytes_before"]
    assert metrics["result_file"] is None
    assert list(Path(tmp_path).iterdir()) == []  # the file was measured, then removed
