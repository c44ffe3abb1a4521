"""``prunekit info`` on any importable model: ``--model package.module:factory --input-shape``,
and its one-line errors for every way the model or the shape can be wrong."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from nets import ConvBNNet
from prunekit import measure
from prunekit.models import load_factory, parse_input_shape
from test_cli import run


class SplitNet(nn.Module):
    """Hard-coded unequal split sizes: the stem's channels are pinned (with the reason), the
    branches' own channels prune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(3, 6, 1)
        self.right = nn.Conv2d(5, 6, 1)
        self.out = nn.Conv2d(12, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(torch.relu(self.stem(x)), [3, 5], dim=1)
        return self.out(torch.cat([torch.relu(self.left(a)), torch.relu(self.right(b))], 1))


class FourierNet(nn.Module):
    """An FFT over the channels: an op the channel graph has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(self.conv(x), dim=1).real


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


def test_pinned_channels_are_listed_with_their_reason(capsys) -> None:
    code, out, _ = run(
        ["info", "--model", "test_cli_info:SplitNet", "--input-shape", "1,3,8,8"], capsys
    )
    assert code == 0
    assert "2 channel groups" in out  # left's and right's own channels
    pinned = out.split("pinned channels")[1]
    assert "by reason" in out
    row = next(line for line in pinned.splitlines() if "split" in line)
    assert row.startswith("| 8 ") and "stem" in row  # all eight stem channels, one reason


def test_a_refused_model_gets_the_refusal_and_its_fix(capsys) -> None:
    code, out, _ = run(
        ["info", "--model", "test_cli_info:FourierNet", "--input-shape", "1,3,8,8"], capsys
    )
    assert code == 0  # the layer table is still printed; the refusal is the diagnosis
    assert "| conv " in out and "| total " in out
    refusal = out.split("the channel graph refuses this model:")[1]
    assert "fft" in refusal and "register" in refusal


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
