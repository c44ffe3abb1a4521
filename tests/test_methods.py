"""The method registry and the pruning runner, from Python and from the command line."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit import methods, workflow
from prunekit.cli import main
from prunekit.errors import ConfigError, UnknownNameError


def test_every_catalogue_entry_is_listed_with_a_status() -> None:
    listing = methods.list_methods()
    assert len(listing) == len(methods.catalogue()) == 71
    status = {e.id: s for e, s in listing}
    assert status["hrank"] == "implemented"
    assert status["metapruning"] == "planned"
    assert set(status.values()) == {"implemented", "planned"}


def test_implemented_methods_carry_their_citation() -> None:
    for cls in methods.iter_implemented():
        e = methods.entry(cls.id)
        assert e.title and e.type in ("S", "U")
        # every entry from a paper links it; N:M sparsity is a hardware pattern, not one paper
        assert e.link or (e.venue is None and e.id == "nm_sparsity")
        assert cls().citation == e


def test_planned_methods_refuse_to_run_and_unknown_ids_list_known() -> None:
    with pytest.raises(
        ConfigError, match="'metapruning' is in the catalogue but not implemented yet"
    ):
        methods.get("metapruning")
    with pytest.raises(UnknownNameError, match="hrank"):
        methods.get("no_such_method")


def test_methods_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods", "--type", "S"]) == 0
    out = capsys.readouterr().out
    assert "| hrank " in out and "implemented" in out and "| thinet " in out
    assert "| magnitude " not in out  # an unstructured method, filtered out by --type S


def test_prune_command_refuses_a_planned_method(capsys, tmp_path) -> None:
    code = main(
        [
            "prune",
            "--method",
            "metapruning",
            "--epochs",
            "1",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "not implemented yet" in err and err.count("\n") == 1


def test_prune_with_a_method_meets_the_target(tmp_path, capsys) -> None:
    argv = ["prune", "--model", "lenet5", "--method", "hrank", "--target-flops", "0.5"]
    argv += ["--epochs", "1", "--finetune-epochs", "1", "--calib-batches", "2"]
    assert main([*argv, "--out", str(tmp_path), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "hrank"
    assert abs(metrics["flops_after"] / metrics["flops_before"] - 0.5) <= 0.02
    for key in ("acc_before", "acc_pruned", "acc_finetuned", "params_after", "latency_after_ms"):
        assert key in metrics
    assert "pruned (hrank)" in capsys.readouterr().out


def test_target_params_overrides_the_default_flops_target(tmp_path) -> None:
    config = workflow.PruneConfig(model="lenet5", epochs=1, finetune_epochs=0, target_params=0.5)
    metrics = workflow.run_pruning(config, out=tmp_path, progress=False)
    assert abs(metrics["params_after"] / metrics["params_before"] - 0.5) <= 0.02
    assert "target_flops" not in metrics


def test_method_options_are_typed_and_unknown_ones_named() -> None:
    method = methods.get("sfp")
    ctx = methods.Context(torch.nn.Linear(2, 2), torch.randn(1, 2), [], [], {"target_flops": 0.5})
    ctx.options = {"soft_epochs": "2", "soft_lr": "0.5", "progress": "false"}
    assert method.options(ctx) == {"soft_epochs": 2, "soft_lr": 0.5, "progress": False}
    ctx.options = {"soft_epoch": 2}
    with pytest.raises(ConfigError, match=r"no option 'soft_epoch'.*soft_epochs=3"):
        method.options(ctx)
    ctx.options = {"soft_epochs": "2.5"}
    with pytest.raises(ConfigError, match=r"'soft_epochs'.*expects int"):
        method.options(ctx)


def test_method_card_and_option_flags(capsys, tmp_path) -> None:
    assert main(["methods", "--show", "sfp"]) == 0
    out = capsys.readouterr().out
    assert "Soft Filter Pruning" in out and "soft_epochs = 3" in out and "implemented" in out
    assert main(["methods", "--show", "metapruning"]) == 0
    assert "planned" in capsys.readouterr().out
    argv = ["prune", "--model", "lenet5", "--method", "sfp", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--option", "soft_epochs=x", "--out", str(tmp_path)]) == 1
    assert "'soft_epochs' of method 'sfp' expects int" in capsys.readouterr().err
    assert main(["prune", "--option", "a=1", "--out", str(tmp_path)]) == 1
    assert "--option needs --method" in capsys.readouterr().err


def test_targets_follow_the_method_type() -> None:
    cfg = workflow.PruneConfig(method="magnitude", target_sparsity=0.9)
    assert cfg.target() == {"target_sparsity": 0.9}
    with pytest.raises(ConfigError, match="'magnitude' is unstructured: give --target-sparsity"):
        workflow.PruneConfig(method="magnitude").target()
    with pytest.raises(ConfigError, match="--target-sparsity is for unstructured methods"):
        workflow.PruneConfig(method="hrank", target_sparsity=0.5).target()
    assert workflow.PruneConfig(method="hrank").target() == {"target_flops": 0.5}
