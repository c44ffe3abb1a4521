"""Page faults per pass and the allocator setting that removes them (glibc).

Run in a fresh interpreter: ``keep_freed_memory`` changes malloc for the whole process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, torch
from torch import nn
from prunekit.measure import allocator_in_use, faults_per_pass, use_allocator
torch.set_num_threads(1)
# MobileNetV2's stem and first inverted block at 224x224: activations of 1.5 to 4.6 MiB, freed
# at the top of the heap and trimmed away every pass by default
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6(), nn.Conv2d(32, 96, 1), nn.ReLU6(),
    nn.Conv2d(96, 96, 3, 2, 1, groups=96), nn.Conv2d(96, 24, 1),
).eval()
x = torch.randn(1, 3, 224, 224)
before, was = faults_per_pass(model, x), allocator_in_use()
applied = use_allocator("steady")
after = faults_per_pass(model, x)
undo = use_allocator("default")  # steady lasts for the rest of the process
print(json.dumps({"before": before, "applied": applied, "after": after, "was": was,
                  "undo": undo, "now": allocator_in_use()}))
"""


def test_kept_memory_removes_the_faults_a_large_activation_takes_every_pass() -> None:
    import ctypes.util

    if sys.platform != "linux" or "libc.so.6" not in str(ctypes.util.find_library("c")):
        pytest.skip("the mallopt settings are glibc's")  # macOS / musl: nothing to switch
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["was"] == "default" and r["applied"] == "steady"
    assert r["undo"] == r["now"] == "steady"
    # about 2,400 pages of 4 KiB faulted in afresh every pass (several MiB of activations)
    assert r["before"] >= 500
    assert r["after"] <= 10


def test_an_unknown_allocator_is_refused_by_name_and_default_changes_nothing() -> None:
    from prunekit.errors import ConfigError
    from prunekit.measure import allocator_in_use, use_allocator

    with pytest.raises(
        ConfigError, match="allocator must be one of steady, default; got 'jemalloc'"
    ):
        use_allocator("jemalloc")
    # "default" leaves malloc as it is: in this test process an earlier in-process CLI run may
    # have applied steady already (the fresh-interpreter test above checks from default)
    before = allocator_in_use()
    assert use_allocator("default") == before == allocator_in_use()
