"""Measurements checked against figures worked out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import measure
from prunekit.errors import ConfigError


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*8*8 outputs x 3*9 MACs each
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 4),  # 512*4 MACs
    )


def test_flops_match_hand_count() -> None:
    model = small_net()
    count = measure.count_flops(model, torch.randn(1, 3, 8, 8))
    conv_macs = 8 * 8 * 8 * 3 * 9
    fc_macs = 512 * 4
    assert count.macs == conv_macs + fc_macs
    assert count.flops == 2 * count.macs
    assert count.per_module["0"] == 2 * conv_macs
    assert count.per_module["4"] == 2 * fc_macs
    # FLOPs scale with the batch given
    assert measure.count_flops(model, torch.randn(3, 3, 8, 8)).flops == 3 * count.flops


def test_params_total_and_nonzero() -> None:
    model = small_net()
    total = 3 * 8 * 9 + 8 + 8 + 8 + 512 * 4 + 4
    with torch.no_grad():
        model[0].weight[:2].zero_()  # 2 filters of 27 weights
    count = measure.count_params(model)
    assert count.total == total
    # BN bias starts at zero (8 values): nonzero excludes it and the zeroed filters
    assert count.nonzero == total - 2 * 27 - 8
    assert count.sparsity == pytest.approx((2 * 27 + 8) / total)


def test_shared_parameters_counted_once() -> None:
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert measure.count_params(model).total == 20


def test_serialized_size_grows_with_weights() -> None:
    small = measure.serialized_size(nn.Linear(10, 10))
    big = measure.serialized_size(nn.Linear(100, 100))
    assert big >= (100 * 100 + 100) * 4  # at least the fp32 bytes of the weights
    assert small < big < (100 * 100 + 100) * 4 + 4096  # plus a small container overhead


def test_peak_memory_counts_live_activations() -> None:
    class TwoLive(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x * 2  # 4 MB
            b = a + 1  # 4 MB, a still alive
            return b.sum()

    x = torch.randn(1000, 1000)
    peak = measure.peak_memory(TwoLive(), x)
    assert 8_000_000 <= peak < 8_100_000

    class OneLive(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ((x * 2) + 1).sum()  # the first product is freed... after the second exists

    # both are alive at the moment the sum's input is produced, so the peak is the same;
    # a chain that frees early must not exceed it
    assert measure.peak_memory(OneLive(), x) <= peak


def test_latency_reports_batch_and_threads() -> None:
    model = small_net()
    lat = measure.measure_latency(model, torch.randn(4, 3, 8, 8), threads=1, min_run_time=0.05)
    assert lat.batch_size == 4 and lat.threads == 1 and lat.device == "cpu"
    assert lat.median_ms > 0 and lat.runs >= 1
    assert lat.per_sample_ms == pytest.approx(lat.median_ms / 4)
    with pytest.raises(ConfigError, match="min_run_time"):
        measure.measure_latency(model, torch.randn(1, 3, 8, 8), min_run_time=0)


def test_measurement_restores_training_mode() -> None:
    model = small_net().train()
    measure.count_flops(model, torch.randn(1, 3, 8, 8))
    assert model.training
    assert model[1].num_batches_tracked.item() == 0  # ran in eval mode: no BN update


def test_summarize_and_layer_table() -> None:
    model = small_net()
    s = measure.summarize(model, torch.randn(2, 3, 8, 8), batch_sizes=(1, 4), min_run_time=0.05)
    assert s["macs"] == 8 * 8 * 8 * 3 * 9 + 512 * 4  # per single sample
    assert s["params"] == measure.count_params(model).total
    assert {"latency_b1_ms", "latency_b4_ms", "bytes", "peak_memory_bytes"} <= set(s)
    rows = measure.layer_table(model, torch.randn(1, 3, 8, 8))
    assert [(r.name, r.kind) for r in rows] == [
        ("0", "Conv2d"),
        ("1", "BatchNorm2d"),
        ("4", "Linear"),
    ]
    assert sum(r.params for r in rows) == s["params"]


def test_measurement_restores_mixed_submodule_modes() -> None:
    model = small_net().train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    measure.count_flops(model, torch.randn(1, 3, 8, 8))
    assert model.training and model[0].training and not model[1].training
