"""Data-driven pruning under ``torchrun``: two CPU processes, each with its own calibration data,
must remove the same channels, and the ones a single process picks from both ranks' data.

Each rank scores on different images; the criteria sum their statistics over ranks, so every
rank holds the same scores. Without that reduction the ranks would prune different channels (a
model that no longer matches across ranks). This file is also the worker script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import ConcatDataset, TensorDataset

from prunekit import methods
from prunekit.train import distributed as dist_
from torchrun_launch import run_torchrun

# method -> options; ``taylor`` without its fine-tuning steps is a pure scoring pass, which a
# single process on both ranks' data must reproduce exactly
METHODS = {
    "hrank": {},
    "taylor": {"finetune_steps": 0, "maps_per_step": 2},
    "taylor+sgd": {"finetune_steps": 2, "maps_per_step": 2},
    "thinet": {"samples_per_image": 4},
    "thinet_lc": {"samples_per_image": 4},  # ThiNet's driver: samples gathered over the ranks
    "lasso_channel": {"samples_per_image": 4},
    "fsm": {},
    # global ranking moves in steps of one channel, too coarse for this net: one rate per layer
    "hap": {"n_v": 2, "calib_batches": None, "scope": "layer"},
    "sosp": {"scope": "layer"},
    "hrel": {},
    "rate_derivation": {},
    "sketch": {},  # weights only, but its BatchNorm re-estimation reads each rank's data
}
# the ranks' samples are drawn per rank, so these are compared across ranks, not to one process
# HRel's mutual information is a statistic of each batch (Gram matrices over its images)
PER_RANK_SAMPLING = ("taylor+sgd", "thinet", "thinet_lc", "lasso_channel", "hrel")
SENSITIVE = ("taylor", "thinet", "thinet_lc", "lasso_channel", "hap", "sosp", "hrel")
PER_RANK = 16  # two batches of 8 per rank: every sample is calibration data
TARGET = {"target_flops": 0.4}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def rank_data(r: int) -> TensorDataset:
    """Rank ``r``'s images: lit in input channel ``r`` only, so ranks see different features."""
    g = torch.Generator().manual_seed(100 + r)
    x = torch.zeros(PER_RANK, 2, 6, 6)
    x[:, r] = torch.randn(PER_RANK, 6, 6, generator=g) * (1 + 2 * r)
    return TensorDataset(x, torch.randint(0, 3, (PER_RANK,), generator=g))


def picks(method: str, data: torch.utils.data.Dataset, calib_batches: int) -> dict:
    model = make_model()
    ctx = methods.Context(
        model, torch.randn(1, 2, 6, 6), data, data, dict(TARGET), calib_batches=calib_batches,
        batch_size=8, options={"progress": False, **METHODS[method]},
    )  # fmt: skip
    report = methods.get(method.split("+")[0]).prune(ctx)
    return {name: sorted(idx) for name, idx in report.removed.items()}


def worker(out: Path) -> None:
    dist_.init_from_env("gloo")
    r = dist_.rank()
    result = {m: picks(m, rank_data(r), PER_RANK // 8) for m in METHODS}
    (out / f"rank{r}.json").write_text(json.dumps(result))
    dist_.shutdown()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ranks_remove_the_same_channels_as_one_process_on_all_data(tmp_path: Path) -> None:
    run_torchrun(__file__, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    both = ConcatDataset([rank_data(0), rank_data(1)])
    for m in METHODS:
        assert ranks[0][m] == ranks[1][m], m
        if m not in PER_RANK_SAMPLING:
            assert ranks[0][m] == picks(m, both, 2 * PER_RANK // 8), m
    # the reduction matters: with continuous scores, each rank alone would pick differently
    # (HRank's integer ranks tie too often on maps this small to show it)
    for m in SENSITIVE:
        alone = [picks(m, rank_data(r), PER_RANK // 8) for r in range(2)]
        assert alone[0] != alone[1], m


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
