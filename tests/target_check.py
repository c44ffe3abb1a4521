"""Shared by the method tests of the scoring, similarity and reconstruction papers: run a method
on the residual or the depthwise net of ``test_every_method`` and measure the FLOPs it removed."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.prune import PruneReport
from test_every_method import NETS


def prune_net(method_id: str, net: str, target: float, **options: Any) -> tuple[PruneReport, float]:
    """``(report, measured FLOPs fraction removed)`` of ``method_id`` on ``NETS[net]``."""
    build, shape, classes = NETS[net]
    torch.manual_seed(0)
    model = build()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, *shape, generator=g), torch.randint(0, classes, (32,)))
    example = data.tensors[0][:2]
    ctx = methods.Context(
        model,
        example,
        data,
        data,
        {"target_flops": target},
        calib_batches=2,
        batch_size=16,
        options={"progress": False, **options},
    )
    report = methods.get(method_id).prune(ctx)
    dense = measure.count_flops(build(), example).flops
    after = measure.count_flops(model, example).flops
    with torch.no_grad():
        out = model.eval()(example)
    assert torch.isfinite(out).all()
    return report, 1 - after / dense
