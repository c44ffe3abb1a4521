"""fmi, ezcrop and msvfp under ``torchrun``: two CPU processes with different calibration data
remove the same channels (the feature-map statistics and MSVFP's trial losses are reduced over
the ranks), and EZCrop's picks equal those of one process on both ranks' data. This file is also
the worker script; the net and the per-rank data are those of ``test_distributed_pruning``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import ConcatDataset

from prunekit import methods
from prunekit.train import distributed as dist_
from test_distributed_pruning import PER_RANK, TARGET, make_model, rank_data
from torchrun_launch import run_torchrun

# global ranking moves in steps of one channel, too coarse for this net: one rate per layer
METHODS = {"fmi": {"scope": "layer"}, "ezcrop": {}, "msvfp": {"epochs": 0}}
# FMI's entropy of a channel read as one number per image is taken over each batch, and MSVFP's
# loss subset is drawn per rank: compared across ranks only
PER_BATCH = ("fmi", "msvfp")
# one first-layer channel of this net is 6.25% of its FLOPs: MSVFP's steps reach 25% exactly
TARGETS = {"msvfp": {"target_flops": 0.25}}


def picks(method: str, data: torch.utils.data.Dataset, calib_batches: int) -> dict:
    model = make_model()
    ctx = methods.Context(
        model, torch.randn(1, 2, 6, 6), data, data, TARGETS.get(method, dict(TARGET)), calib_batches=calib_batches,
        batch_size=8, options={"progress": False, **METHODS[method]},
    )  # fmt: skip
    report = methods.get(method).prune(ctx)
    return {name: sorted(idx) for name, idx in report.removed.items()}


def worker(out: Path) -> None:
    dist_.init_from_env("gloo")
    r = dist_.rank()
    result = {m: picks(m, rank_data(r), PER_RANK // 8) for m in METHODS}
    (out / f"rank{r}.json").write_text(json.dumps(result))
    dist_.shutdown()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ranks_remove_the_same_channels(tmp_path: Path) -> None:
    run_torchrun(__file__, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    both = ConcatDataset([rank_data(0), rank_data(1)])
    for m in METHODS:
        assert ranks[0][m] == ranks[1][m], m
        if m not in PER_BATCH:
            assert ranks[0][m] == picks(m, both, 2 * PER_RANK // 8), m
    # the reduction matters: each rank alone picks differently
    for m in ("ezcrop", "fmi"):
        alone = [picks(m, rank_data(r), PER_RANK // 8) for r in range(2)]
        assert alone[0] != alone[1], m


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
