"""DDP on CPU: two gloo processes under ``torchrun`` must train like one process.

The model has no BatchNorm on purpose: under plain DDP BatchNorm normalises with per-rank batch
statistics, so a BN model legitimately differs from a single-process run. Everything else
(global batches, loss weighting of the short last batch, gradient averaging) must agree.

This file is also the worker script: ``python -m torch.distributed.run ... test_distributed.py
OUT`` runs :func:`worker` in each process. Only loopback (127.0.0.1) is used.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from prunekit.train import TrainConfig, evaluate, fit, load_checkpoint
from prunekit.train import distributed as dist_
from torchrun_launch import run_torchrun

N_SAMPLES = 65  # 4 full global batches of 16 and one of 1 sample, which rank 0 only pads
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, device="cpu", seed=7)


def make_model(batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4) if batchnorm else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
    )


def make_data() -> TensorDataset:
    g = torch.Generator().manual_seed(42)
    return TensorDataset(
        torch.randn(N_SAMPLES, 1, 8, 8, generator=g), torch.randint(0, 6, (N_SAMPLES,), generator=g)
    )


class Interrupt(Exception):
    pass


def worker(out: Path) -> None:
    """Run in each torchrun process: an uninterrupted run, then an interrupted-and-resumed one."""
    data = make_data()
    model = make_model()
    result = fit(model, data, CONFIG, val_set=data, checkpoint=out / "a.pt", progress=False)
    assert dist_.is_distributed() and dist_.world_size() == 2
    state = {
        "weights": model.state_dict(),
        "history": result.history,
        "final": result.final,
        "eval": evaluate(model, data, batch_size=8),
    }

    def crash(event, st):
        if event == "step_end" and st["step"] == 7:  # mid epoch 2, on every rank alike
            raise Interrupt

    resumed = make_model()
    with contextlib.suppress(Interrupt):
        fit(resumed, data, CONFIG, checkpoint=out / "b.pt", callbacks=[crash], progress=False)
    fit(resumed, data, CONFIG, checkpoint=out / "b.pt", progress=False)
    state["resumed_weights"] = resumed.state_dict()

    # BatchNorm runs under DDP and ranks end with equal buffers (64 samples: the ranks' last
    # batches differ, unlike with 65, where both ranks see the one sample of the last batch)
    bn_model = make_model(batchnorm=True)
    fit(bn_model, Subset(data, range(64)), CONFIG, progress=False)
    state["bn_weights"] = bn_model.state_dict()
    torch.save(state, out / f"rank{dist_.rank()}.pt")
    dist_.shutdown()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_process_ddp_matches_single_process(tmp_path):
    run_torchrun(__file__, tmp_path)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model = make_model()
    single = fit(model, make_data(), CONFIG, val_set=make_data(), progress=False)

    for k, v in model.state_dict().items():
        assert not torch.equal(v, make_model().state_dict()[k]), k  # it did train
        for r in ranks:
            assert torch.allclose(r["weights"][k], v, atol=1e-6, rtol=0), k
            assert torch.equal(r["weights"][k], ranks[0]["weights"][k]), k  # ranks agree
            assert torch.equal(r["resumed_weights"][k], r["weights"][k]), k  # resume is exact
    for k, v in ranks[0]["bn_weights"].items():  # BN running stats synced at epoch end
        assert torch.equal(ranks[1]["bn_weights"][k], v), k
    for got, want in zip(ranks[0]["history"], single.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["train_acc"] == pytest.approx(want["train_acc"])
        assert got["lr"] == pytest.approx(want["lr"])
    for r in ranks:  # evaluation counts every sample once, summed over ranks
        assert r["eval"]["n"] == N_SAMPLES
        assert r["eval"]["top1"] == pytest.approx(single.final["top1"])
        assert r["eval"]["top5"] == pytest.approx(single.final["top5"])
        assert r["final"]["top1"] == pytest.approx(single.final["top1"])

    ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "rank0.pt", "rank1.pt"]


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
