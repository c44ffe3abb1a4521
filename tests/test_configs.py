"""Config dataclasses as CLI flags, dicts and run hashes; atomic writes; the registry."""

from __future__ import annotations

import argparse
import json
import os
import stat
from dataclasses import dataclass, field

import pytest

from prunekit.configs import (
    add_config_args,
    config_from_args,
    from_dict,
    non_default,
    run_hash,
    to_dict,
)
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.io import atomic_open, atomic_write_json
from prunekit.registry import Registry
from prunekit.tables import markdown_table


@dataclass
class Cfg:
    epochs: int = field(default=3, metadata={"help": "epochs"})
    lr: float = 0.1
    name: str = "a"
    amp: bool = False
    milestones: tuple[float, ...] = (0.5, 0.75)
    root: str | None = None


def parse(argv: list[str]) -> Cfg:
    p = argparse.ArgumentParser()
    add_config_args(p, Cfg)
    return config_from_args(Cfg, p.parse_args(argv))


def test_flags_from_fields() -> None:
    assert parse([]) == Cfg()
    cfg = parse(
        ["--epochs", "7", "--lr", "0.5", "--amp", "--milestones", "0.3", "0.6", "--root", "/d"]
    )
    assert cfg == Cfg(epochs=7, lr=0.5, amp=True, milestones=(0.3, 0.6), root="/d")
    assert parse(["--no-amp"]).amp is False
    with pytest.raises(SystemExit):
        parse(["--epochs", "three"])


def test_overrides_apply_only_where_user_is_silent() -> None:
    p = argparse.ArgumentParser()
    add_config_args(p, Cfg)
    assert config_from_args(Cfg, p.parse_args(["--lr", "1"]), lr=2.0, epochs=9) == Cfg(
        epochs=9, lr=1.0
    )


def test_dict_round_trip_and_unknown_key() -> None:
    cfg = Cfg(epochs=5, milestones=(0.1,))
    d = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(Cfg, d) == cfg
    with pytest.raises(ConfigError, match="epoch"):
        from_dict(Cfg, {"epoch": 3})


def test_run_hash_depends_on_non_default_fields_only() -> None:
    assert non_default(Cfg(lr=0.2)) == {"lr": 0.2}
    assert run_hash(Cfg()) == run_hash(Cfg())
    assert run_hash(Cfg(lr=0.2)) != run_hash(Cfg())
    assert run_hash("resnet20", Cfg()) != run_hash("vgg11", Cfg())


def test_atomic_write_keeps_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "m.json"
    atomic_write_json({"a": 1}, path)
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write('{"a": 2, "trunc')
        raise RuntimeError("crash mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind


def test_atomic_write_gives_the_mode_a_plain_open_gives(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_json({"a": 1}, tmp_path / "shared.json")
        os.umask(0o077)
        atomic_write_json({"a": 1}, tmp_path / "private.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_registry_lists_known_names_on_unknown() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.register("a", note="x")(1)
    assert reg.names() == ["a", "b"] and reg.get("a") == 1 and reg.entry("a").meta == {"note": "x"}
    with pytest.raises(UnknownNameError, match=r"unknown widget 'c'; known: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 3)


def test_markdown_table() -> None:
    text = markdown_table(["k", "v"], [["params", 1234567], ["acc", 97.123456]])
    lines = text.splitlines()
    assert lines[0].startswith("| k ") and set(lines[1]) <= {"|", "-"}
    assert "1,234,567" in text and "97.12" in text
    assert len({len(line) for line in lines}) == 1  # columns aligned
