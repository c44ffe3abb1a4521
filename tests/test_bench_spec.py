"""Benchmark specs: validation errors name the file and key path, expansion, run ids."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from prunekit.bench import RunConfig, Spec, expand, load_spec, parse_spec
from prunekit.bench.spec import DatasetSpec, MeasureSpec, MethodSpec, Targets
from prunekit.errors import ConfigError

BASE = """\
name: tiny
models: [lenet5]
datasets: [digits]
methods: [hrank]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_full_spec_loads_into_dataclasses(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
name: digits-structured
models: [lenet5, lenet_300_100]
datasets:
  - {name: digits, image_size: 28, root: null}
methods:
  - hrank
  - {id: magnitude, options: {rounds: 1, retrain_epochs: "0"}}
targets: {flops: [0.3, 0.5], params: [], sparsity: [0.9]}
seeds: [0, 1, 2]
baseline: {epochs: 2, batch_size: 32, lr: 1e-2}
finetune: {epochs: 0, lr: 0.001}
calib_batches: 2
measure: {latency: false, batch_sizes: [1, 8], onnx: true, threads: 2}
""",
    )
    spec = load_spec(path)
    assert spec.name == "digits-structured"
    assert spec.models == ("lenet5", "lenet_300_100")
    assert spec.datasets == (DatasetSpec("digits", 28, None),)
    assert spec.methods[0] == MethodSpec("hrank", {})
    # option values are converted to the option's type
    assert spec.methods[1] == MethodSpec("magnitude", {"rounds": 1, "epochs": 0})
    assert spec.targets == Targets(flops=(0.3, 0.5), params=(), sparsity=(0.9,))
    assert spec.seeds == (0, 1, 2)
    assert (spec.baseline.epochs, spec.baseline.batch_size, spec.baseline.lr) == (2, 32, 0.01)
    assert (spec.finetune.epochs, spec.finetune.lr) == (0, 0.001)
    assert spec.calib_batches == 2
    assert spec.measure == MeasureSpec(latency=False, batch_sizes=(1, 8), onnx=True, threads=2)
    assert spec.source == str(path)


def test_defaults_fill_everything_but_the_required_keys() -> None:
    spec = parse_spec(
        {"name": "x", "models": ["lenet5"], "datasets": ["digits"], "methods": ["snip"]}
    )
    assert spec.targets == Targets(flops=(0.5,), sparsity=(0.5,))
    assert spec.seeds == (0,)
    assert spec.measure.latency and spec.measure.batch_sizes == (1, 32)
    assert spec.calib_batches == 4
    assert expand(spec)[0].target_kind == "sparsity"


ERRORS = [
    (
        BASE.replace("methods: [hrank]", "methods:\n  - hrank\n  - {id: fpgm, optoins: {}}"),
        "methods[1].optoins: unknown key (expected one of: id, options, distill, steps, step_epochs)",
    ),
    (BASE + "finetune: {epochs: three}\n", "finetune.epochs: expected an integer, got 'three'"),
    (
        BASE + "targets: {flops: [1.5]}\n",
        "targets.flops[0]: expected a fraction in (0, 1), got 1.5",
    ),
    (BASE + "targets: {sparsity: [0.5, 0]}\n", "targets.sparsity[1]: expected a fraction"),
    (BASE.replace("[lenet5]", "[lenet5, resnet99]"), "models[1]: unknown model 'resnet99' (known:"),
    (BASE.replace("[digits]", "[{name: imagenet9}]"), "datasets[0].name: unknown data set"),
    (BASE.replace("[digits]", "[{name: digits, size: 3}]"), "datasets[0].size: unknown key"),
    (BASE + "seeds: [true]\n", "seeds[0]: expected an integer, got True"),
    (BASE + "seeds: [0, 1, 0]\n", "seeds[2]: duplicate of seeds[0]"),
    (BASE + "calib_batches: 0\n", "calib_batches: expected an integer >= 1, got 0"),
    (BASE + "baseline: {epochs: 1.5}\n", "baseline.epochs: expected an integer, got 1.5"),
    (BASE + "baseline: {lr: -1}\n", "baseline.lr: expected a number > 0"),
    (BASE + "measure: {latency: 1}\n", "measure.latency: expected true or false, got 1"),
    (BASE + "measure: {batch_sizes: [1, 0]}\n", "measure.batch_sizes[1]: expected an integer >= 1"),
    (BASE + "optoins: 3\n", "optoins: unknown key (expected one of: name, models"),
    (BASE.replace("methods: [hrank]\n", ""), "methods: required key missing"),
    (BASE.replace("[lenet5]", "[]"), "models: expected a non-empty list"),
    (BASE.replace("[lenet5]", "lenet5"), "models: expected a list, got 'lenet5'"),
    (
        BASE.replace("[hrank]", "[resnet_magic]"),
        "methods[0]: unknown pruning method 'resnet_magic'",
    ),
    (BASE.replace("[hrank]", "[rapid]"), "methods[0]: method 'rapid' is in the catalogue but not"),
    (
        BASE.replace("[hrank]", "[{id: magnitude, options: {rounds: many}}]"),
        "methods[0].options.rounds: option 'rounds' of method 'magnitude' expects int",
    ),
    (
        BASE.replace("[hrank]", "[{id: magnitude, options: {bogus: 1}}]"),
        "methods[0].options.bogus: method 'magnitude' has no option 'bogus'",
    ),
    (
        BASE.replace("[hrank]", "[{id: magnitude, options: {rounds: [1]}}]"),
        "methods[0].options.rounds: expected a number, string or bool, got a list",
    ),
    (
        BASE.replace("[hrank]", "[hrank, snip]") + "targets: {flops: [0.5]}\n",
        "targets: method 'snip' is unstructured and needs targets.sparsity",
    ),
    ("- just\n- a list\n", "expected a mapping, got a list"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_the_file_and_key_path(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_spec(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nmodels: [lenet5\ndatasets: [digits]\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml:\d+: invalid YAML") as exc:
        load_spec(path)
    assert str(exc.value).startswith(f"{path}:")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_parse_spec_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline: name: expected a non-empty string, got 3$"):
        parse_spec(
            {"name": 3, "models": ["lenet5"], "datasets": ["digits"], "methods": ["hrank"]},
            source="inline",
        )


def mixed_spec() -> Spec:
    return parse_spec(
        {
            "name": "mixed",
            "models": ["lenet5", "lenet_300_100"],
            "datasets": ["digits"],
            "methods": ["hrank", {"id": "magnitude", "options": {"rounds": 1}}, "snip"],
            "targets": {"flops": [0.3, 0.5], "params": [0.4], "sparsity": [0.9]},
            "seeds": [0, 1],
        }
    )


def test_expand_crosses_everything_with_targets_by_method_type() -> None:
    runs = expand(mixed_spec())
    # 2 models x 1 data set x (hrank: 3 targets, magnitude: 1, snip: 1) x 2 seeds
    assert len(runs) == 2 * (3 + 1 + 1) * 2
    kinds = {(r.method, r.target_kind, r.target) for r in runs}
    assert kinds == {
        ("hrank", "flops", 0.3),
        ("hrank", "flops", 0.5),
        ("hrank", "params", 0.4),
        ("magnitude", "sparsity", 0.9),
        ("snip", "sparsity", 0.9),
    }
    assert [r.model for r in runs[:10]] == ["lenet5"] * 10  # models vary slowest
    assert [r.seed for r in runs[:2]] == [0, 1]  # seeds vary fastest
    assert next(r for r in runs if r.method == "magnitude").options == {"rounds": 1}


def test_run_ids_are_stable_distinct_and_a_hash_of_the_config() -> None:
    runs = expand(mixed_spec())
    assert [r.id for r in runs] == [r.id for r in expand(mixed_spec())]
    assert len({r.id for r in runs}) == len(runs)
    run = runs[0]
    canonical = json.dumps(run.hashed(), sort_keys=True, separators=(",", ":"))
    assert run.id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert RunConfig.from_dict(run.to_dict()).id == run.id
    assert dataclasses.replace(run, finetune_lr=0.02).id != run.id


def test_baseline_key_is_shared_by_runs_of_one_baseline() -> None:
    runs = expand(mixed_spec())
    lenet_seed0 = [r for r in runs if r.model == "lenet5" and r.seed == 0]
    assert len({r.baseline_key for r in lenet_seed0}) == 1
    assert len({r.baseline_key for r in runs}) == 4  # 2 models x 2 seeds
    run = lenet_seed0[0]
    assert dataclasses.replace(run, finetune_epochs=9).baseline_key == run.baseline_key
    assert dataclasses.replace(run, lr=0.1).baseline_key != run.baseline_key


def test_run_config_to_prune_config() -> None:
    runs = expand(mixed_spec())
    params = next(r for r in runs if r.target_kind == "params")
    cfg = params.prune_config()
    assert (cfg.model, cfg.data, cfg.method, cfg.seed) == (params.model, "digits", "hrank", 0)
    assert (cfg.target_flops, cfg.target_params, cfg.target_sparsity) == (None, 0.4, None)
    assert cfg.target() == {"target_params": 0.4}
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (10, 64, 0.05)
    assert (cfg.finetune_epochs, cfg.finetune_lr, cfg.calib_batches) == (3, 0.01, 4)

    sparse = next(r for r in runs if r.method == "magnitude")
    cfg = sparse.prune_config()
    assert cfg.target() == {"target_sparsity": 0.9}
    assert cfg.option == ("rounds=1",)
    assert cfg.options() == {"rounds": "1"}

    flops = next(r for r in runs if r.target_kind == "flops")
    assert flops.prune_config().target() == {"target_flops": flops.target}
