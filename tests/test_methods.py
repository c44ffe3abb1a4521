"""The method registry and the pruning runner, from Python and from the command line."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, ClassVar

import pytest
import torch

from nets import ConvBNNet, random_data
from prunekit import masks, methods, workflow
from prunekit.cli import main
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.methods import fine_grained, options
from prunekit.methods.initialisation import reinitialise
from prunekit.targets import Target


def _planned() -> str:
    """A catalogue id not implemented yet (whichever is first: the list shrinks over time)."""
    return next(e.id for e in methods.catalogue() if e.id not in methods.METHODS.names())


def test_every_catalogue_entry_is_listed_with_a_status() -> None:
    listing = methods.list_methods()
    assert len(listing) == len(methods.catalogue()) == 71
    status = {e.id: s for e, s in listing}
    assert status["hrank"] == "implemented"
    assert status[_planned()] == "planned"
    assert set(status.values()) == {"implemented", "planned"}


def test_implemented_methods_carry_their_citation() -> None:
    for cls in methods.iter_implemented():
        e = methods.entry(cls.id)
        assert e.title and e.type in ("S", "U")
        # every entry from a paper links it; N:M sparsity is a hardware pattern, not one paper
        assert e.link or (e.venue is None and e.id == "nm_sparsity")
        assert cls().citation == e


def test_planned_methods_refuse_to_run_and_unknown_ids_list_known() -> None:
    planned = _planned()
    with pytest.raises(
        ConfigError, match=f"'{planned}' is in the catalogue but not implemented yet"
    ):
        methods.get(planned)
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
            _planned(),
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


def test_method_options_are_typed_bounded_and_unknown_ones_named() -> None:
    method = methods.get("magnitude")
    ctx = methods.Context(torch.nn.Linear(2, 2), torch.randn(1, 2), [], [], {"target_flops": 0.5})
    ctx.options = {"rounds": "2", "lr": "0.5", "progress": "false"}
    opts = method.options(ctx)
    assert opts.as_dict() == {"rounds": 2, "epochs": 1, "lr": 0.5, "progress": False}
    assert (opts.rounds, opts["lr"]) == (2, 0.5)  # attributes, and keys for dict-style code
    assert opts.non_default() == {"rounds": 2, "lr": 0.5, "progress": False}
    ctx.options = {"round": 2}
    with pytest.raises(ConfigError, match=r"no option 'round'.*rounds=3"):
        method.options(ctx)
    ctx.options = {"rounds": "2.5"}
    with pytest.raises(ConfigError, match=r"'rounds' of method 'magnitude' expects int"):
        method.options(ctx)
    ctx.options = {"rounds": 0}
    with pytest.raises(ConfigError, match=r"'rounds' of method 'magnitude' must be in \[1, inf\)"):
        method.options(ctx)
    ctx.options = {"lr": 0.0}  # an open bound
    with pytest.raises(ConfigError, match=r"'lr' of method 'magnitude' must be in \(0, inf\)"):
        method.options(ctx)
    ctx.options = {"retrain_epochs": "3"}  # the name before the rename still reads
    assert method.options(ctx).epochs == 3


def test_options_convert_optional_values_and_choices() -> None:
    assert methods.get("hrank").resolve({"calib_batches": "none"})["calib_batches"] is None
    assert methods.get("hrank").resolve({"calib_batches": "3"})["calib_batches"] == 3

    @dataclasses.dataclass(frozen=True)
    class Demo(options.Options):
        scope: str = options.option("layer", help="x", choices=("layer", "global"))
        frac: float = options.option(0.5, help="y", low=0, high=1, high_open=True)

    assert Demo.from_mapping({"scope": "global", "frac": "0"}).scope == "global"
    with pytest.raises(ConfigError, match="'scope' must be one of layer, global; got 'all'"):
        Demo.from_mapping({"scope": "all"})
    with pytest.raises(ConfigError, match=r"'frac' must be in \[0, 1\), got 1.0"):
        Demo.from_mapping({"frac": 1})
    rows = {r.name: r for r in Demo.describe()}
    assert rows["frac"].bounds == "[0, 1)" and rows["scope"].bounds == "one of layer, global"


def test_legacy_defaults_still_convert() -> None:
    class Legacy(methods.Method):
        id = "legacy_demo"
        defaults: ClassVar[dict[str, Any]] = {"steps": 3, "name": "a", "flag": False}

    opts = Legacy().resolve({"steps": "4", "flag": "yes"})
    assert opts == {"progress": True, "steps": 4, "name": "a", "flag": True}
    with pytest.raises(ConfigError, match="'steps' of method 'legacy_demo' expects int"):
        Legacy().resolve({"steps": "x"})


def test_method_card_and_option_flags(capsys, tmp_path) -> None:
    assert main(["methods", "--show", "magnitude"]) == 0
    out = capsys.readouterr().out
    assert "Learning both Weights" in out and "implemented" in out
    row = next(line for line in out.splitlines() if line.startswith("| rounds "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:4] == ["rounds", "int", "3", "[1, inf)"] and cells[5].startswith("prunekit")
    assert main(["methods", "--show", _planned()]) == 0
    assert "planned" in capsys.readouterr().out
    argv = ["prune", "--model", "lenet5", "--method", "magnitude", "--epochs", "1"]
    argv += ["--no-progress", "--target-sparsity", "0.5"]
    assert main([*argv, "--option", "rounds=x", "--out", str(tmp_path)]) == 1
    assert "'rounds' of method 'magnitude' expects int" in capsys.readouterr().err
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


def test_a_criterion_run_with_a_sparsity_target_is_refused_before_training(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def no_training(*args, **kw):  # type: ignore[no-untyped-def]
        raise AssertionError("trained before refusing the target")

    monkeypatch.setattr(workflow, "train_and_test", no_training)
    config = workflow.PruneConfig(model="lenet5", target_sparsity=0.5)
    with pytest.raises(ConfigError, match="--target-sparsity is for unstructured methods"):
        workflow.run_pruning(config, progress=False, latency=False)


# ----------------------------------------------------------------------------- machinery


def _train_ctx(model: torch.nn.Module, work_dir: Any = None) -> methods.Context:
    data = random_data(24)
    return methods.Context(
        model,
        data[0][0][None],
        data,
        data,
        {"target_sparsity": 0.5},
        batch_size=8,
        work_dir=work_dir,
    )


def _gradual(model: torch.nn.Module) -> masks.ScheduledMagnitudePruner:
    schedule = masks.GradualCubic(0.0, 0.6, 0, 5, 1)  # a new mask at steps 1..5 (3 steps per epoch)
    pruner = masks.ScheduledMagnitudePruner(schedule, ["c1.weight", "c2.weight"])
    pruner.prepare(model)
    return pruner


class _Killed(Exception):
    pass


def test_context_train_resumes_a_killed_phase_with_its_pruner(tmp_path) -> None:
    torch.manual_seed(0)
    reference = ConvBNNet()
    killed = copy.deepcopy(reference)
    resumed = copy.deepcopy(reference)
    pruner = _gradual(reference)
    _train_ctx(reference).train(reference, 2, 0.05, name="phase", callbacks=[pruner])

    def kill(event: str, state: dict[str, Any]) -> None:
        if event == "step_end" and state["step"] == 4:  # inside epoch 2, after its checkpoint
            raise _Killed

    with pytest.raises(_Killed):
        _train_ctx(killed, tmp_path).train(
            killed, 2, 0.05, name="phase", callbacks=[_gradual(killed), kill]
        )
    assert (tmp_path / "phase.pt").exists() and (tmp_path / "phase.state.pt").exists()
    again = _gradual(resumed)  # a fresh pruner: its state comes from the run folder
    _train_ctx(resumed, tmp_path).train(resumed, 2, 0.05, name="phase", callbacks=[again])
    assert again.history == pruner.history and len(again.history) == 5  # steps 1..5
    for (k, a), (_, b) in zip(
        reference.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k
    # a finished phase is restored, not trained again
    before = {k: v.clone() for k, v in resumed.state_dict().items()}
    _train_ctx(resumed, tmp_path).train(resumed, 2, 0.05, name="phase", callbacks=[again])
    assert all(torch.equal(before[k], v) for k, v in resumed.state_dict().items())


def test_pruner_state_round_trip_restores_unpruned_entries() -> None:
    model = ConvBNNet()
    pruner = _gradual(model)
    pruner.prune_to(0, 0.2)
    state = pruner.state_dict()
    pruner.prune_to(1, 0.6)  # prunes more
    pruner.load_state_dict(state)  # back to the 20% masks (the weights come from the model's own
    # checkpoint: Context.train restores both)
    assert masks.get_masks(model)["c1.weight"].sparsity == pytest.approx(0.2, abs=0.02)
    assert masks.get_masks(model)["c2.weight"] == masks.Mask.from_state_dict(
        state["masks"]["c2.weight"]
    )
    assert pruner.history == [(0, 0.2, pytest.approx(0.2, abs=0.02))]


def test_straight_through_mask_passes_the_gradient_to_masked_entries() -> None:
    layer = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    st = masks.attach_straight_through(layer, torch.tensor([[1.0, 0.0, 1.0]]))
    x = torch.tensor([[1.0, 1.0, 1.0]])
    out = layer(x).sum()
    assert float(out) == 4.0  # the masked entry does not contribute
    out.backward()
    grad = layer.parametrizations.weight.original.grad
    assert torch.equal(grad, torch.ones(1, 3))  # ... yet it receives the gradient
    st.set(torch.ones(1, 3))
    assert float(layer(x).sum()) == 6.0


def test_reinitialise_runs_the_architecture_init_after_the_layer_defaults() -> None:
    class Arch(ConvBNNet):
        def init_weights(self) -> None:
            torch.nn.init.constant_(self.c1.weight, 0.5)

    model = Arch()
    masks.apply_masks(model, {"c2.weight": masks.Mask(torch.zeros_like(model.c2.weight))})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    reinitialise(model, seed=3)
    assert bool((model.c1.weight == 0.5).all())  # the architecture's own routine
    assert not bool((model.fc.weight == 7.0).any())  # every other layer's own defaults
    assert bool((model.c2.weight == 0).all())  # the mask stays in force
    other = Arch()
    reinitialise(other, seed=3)
    assert torch.equal(other.fc.weight, model.fc.weight)  # seeded


def test_sparsity_accounting_counts_zeros_already_in_protected_layers() -> None:
    model = ConvBNNet()
    with torch.no_grad():
        model.fc.weight[:, :6] = 0  # half of the protected classifier is zero already
    share = fine_grained.covered_sparsity(model, 0.5)
    names = list(fine_grained.targets(model, "x"))
    assert share == fine_grained.share_of_targets(model, names, 0.5)
    fine_grained.magnitude_prune(model, 0.5, "global")
    assert methods.SparsityReport.measure(model, 0).sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
def test_a_method_training_phase_checkpoints_in_the_run_folder(tmp_path) -> None:
    argv = ["prune", "--model", "lenet5", "--method", "magnitude", "--target-sparsity", "0.5"]
    argv += ["--epochs", "1", "--finetune-epochs", "0", "--option", "rounds=2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    phases = sorted(p.name for p in (tmp_path / "method").iterdir())
    assert phases == ["round1.pt", "round2.pt"]
    first = json.loads((tmp_path / "metrics.json").read_text())
    assert main([*argv, "--out", str(tmp_path)]) == 0  # rerun: phases restored, same result
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["acc_pruned"] == first["acc_pruned"]
    assert main([*argv, "--out", str(tmp_path), "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "method").iterdir()) == phases


def test_target_is_validated_once_and_reads_every_form() -> None:
    t = Target.from_mapping({"target_flops": 0.5})
    assert (t.kind, t.fraction, t.key, t.structured) == ("flops", 0.5, "target_flops", True)
    assert t == Target.parse("flops=0.5") == Target.parse("target_flops:0.5")
    assert t == Target.from_mapping({"kind": "flops", "fraction": 0.5}) == Target.of(t)
    assert Target.from_mapping(t.as_dict()) == t
    assert Target.from_mapping({"target_params": None, "target_sparsity": 0.9}).kind == "sparsity"
    for bad, message in [
        ({"target_flops": 1.0}, r"target_flops must be a fraction in \(0, 1\)"),
        ({"target_flops": 0}, r"target_flops must be a fraction in \(0, 1\)"),
        ({"target_flops": True}, "target_flops must be a fraction"),
        ({"target_flops": 0.5, "target_params": 0.2}, "exactly one of"),
        ({"target_speed": 0.5}, "unknown target kind 'speed'"),
        ({}, "exactly one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Target.from_mapping(bad)
    with pytest.raises(ConfigError, match="KIND=FRACTION"):
        Target.parse("0.5")
    with pytest.raises(ConfigError, match="must be a number"):
        Target.parse("flops=half")
    with pytest.raises(ConfigError, match=r"'magnitude' \(it is unstructured\) expects a"):
        t.require("sparsity", method="magnitude")
    assert t.require("flops", "params") is t


def test_context_converts_its_target_and_methods_check_the_kind() -> None:
    ctx = methods.Context(torch.nn.Linear(2, 2), torch.randn(1, 2), [], [], {"target_flops": 0.5})
    assert ctx.target == Target("flops", 0.5)
    with pytest.raises(ConfigError, match="fraction in"):
        methods.Context(torch.nn.Linear(2, 2), torch.randn(1, 2), [], [], {"target_flops": 2})
    with pytest.raises(ConfigError, match=r"'magnitude' .* expects a target_sparsity target"):
        methods.get("magnitude").prune(ctx)


def test_each_method_is_one_file_named_by_its_id() -> None:
    import pkgutil

    ids = {e.id for e in methods.catalogue()}
    files = {m.name for m in pkgutil.iter_modules(methods.__path__)}
    assert {f for f in files if f in ids} == set(methods.METHODS.names())
    for entry in methods.METHODS:
        assert entry.obj.__module__ == f"prunekit.methods.{entry.name}"

    with pytest.raises(TypeError, match=r"must be defined in prunekit/methods/hrank\.py"):

        class Elsewhere(methods.Method):
            __module__ = "prunekit.methods.common"

        methods.register_method("hrank")(Elsewhere)
