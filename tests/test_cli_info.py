"""``prunekit info`` on any importable model: ``--model package.module:factory --input-shape``,
and its one-line errors for every way the model or the shape can be wrong."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nets import ConvBNNet
from prunekit import measure
from prunekit.models import load_factory, parse_input_shape
from test_cli import run


def test_factory_model_gets_layer_table_totals_and_groups(capsys) -> None:
    code, out, _ = run(["info", "--model", "nets:ConvBNNet", "--input-shape", "2,3,8,8"], capsys)
    assert code == 0, out
    assert out.startswith("nets:ConvBNNet: input (2, 3, 8, 8)")
    model = ConvBNNet()
    flops = measure.count_flops(model, torch.randn(2, 3, 8, 8))
    total = next(line for line in out.splitlines() if line.startswith("| total"))
    assert f"{measure.count_params(model).total:,}" in total and f"{flops.flops:,}" in total
    assert "| fc *" in out  # the model's own protected_layers are honoured
    assert "2 channel groups" in out
    groups = out.split("channel groups")[1]
    assert any(line.startswith("| c1 ") and "| 8 " in line for line in groups.splitlines())


def test_registered_name_with_an_input_shape_needs_no_data_set(capsys) -> None:
    code, out, _ = run(["info", "--model", "resnet20", "--input-shape", "1,1,16,16"], capsys)
    assert code == 0
    assert out.startswith("resnet20: input (1, 1, 16, 16)")
    assert "12 channel groups" in out  # as fitted to a data set: the graph is the same


def test_a_module_in_the_working_folder_imports(capsys, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "pk_user_net.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build():
                return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "pk_user_net", raising=False)
    path = list(sys.path)
    code, out, err = run(
        ["info", "--model", "pk_user_net:build", "--input-shape", "1,3,8,8"], capsys
    )
    assert code == 0, err
    assert "1 channel groups" in out  # the hidden conv's six channels; the output is kept
    assert sys.path == path  # the working folder was only on the path while importing
    sys.modules.pop("pk_user_net", None)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--model", "nets:ConvBNNet"], "needs --input-shape"),
        (["--model", "no_such_module_x:build", "--input-shape", "1,3,8,8"], "cannot be imported"),
        (["--model", "nets:NoSuchNet", "--input-shape", "1,3,8,8"], "'nets' has no attribute 'NoSuchNet'"),
        (["--model", "prunekit.models.core:DEFAULT_PROTECTED", "--input-shape", "1,3,8,8"], "is a tuple, not a function"),
        (["--model", "prunekit.models:list_models", "--input-shape", "1,3,8,8"], "returned a list, not a torch.nn.Module"),
        (["--model", "nets:ConvBNNet.forward", "--input-shape", "1,3,8,8"], "with no arguments failed"),
        (["--model", ":build", "--input-shape", "1,3,8,8"], "expected 'package.module:factory'"),
        (["--model", "nets:ConvBNNet", "--input-shape", "1,3,x,8"], "input shape '1,3,x,8'"),
        (["--model", "nets:ConvBNNet", "--input-shape", "0,3,8,8"], "positive integers"),
        (["--model", "nets:ConvBNNet", "--input-shape", "1,5,8,8"], "does not run on an input of shape (1, 5, 8, 8)"),
        (["--model", "resnet21", "--input-shape", "1,3,8,8"], "unknown model 'resnet21'"),
    ],
)  # fmt: skip
def test_bad_models_and_shapes_are_one_line_errors(argv: list[str], needle: str, capsys) -> None:
    code, _, err = run(["info", *argv], capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit: error: "), err
    assert needle in lines[0]


def test_load_factory_accepts_classes_and_dotted_attributes() -> None:
    assert isinstance(load_factory("nets:ConvBNNet"), ConvBNNet)
    assert isinstance(load_factory("torch.nn:Identity"), torch.nn.Identity)
    assert parse_input_shape("1, 3, 32, 32") == (1, 3, 32, 32)
    assert parse_input_shape("4,10") == (4, 10)
