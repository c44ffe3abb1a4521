"""Low-complexity modified ThiNet: the Gram-matrix greedy step worked by hand, its equivalence
with ThiNet's greedy selection, and the end-to-end path on a residual and a depthwise net (FLOPs
target met within 1%, pruned model equal to the zeroed and refitted one)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from prunekit import measure, methods
from prunekit.errors import ConfigError
from prunekit.graph import build
from prunekit.methods.thinet import thinet_greedy
from prunekit.methods.thinet_lc import gram_greedy, lc_greedy
from test_every_method import TinyMobileNet, TinyResNet

# Contributions of four channels on two samples: c0 tiny, c1 and c2 cancel, c3 medium.
CONTRIB = torch.tensor([[0.2, 2.0, -2.0, 0.5], [0.0, 0.0, 0.0, 1.9]])


def test_gram_greedy_by_hand() -> None:
    gram = CONTRIB.double().T @ CONTRIB.double()
    # step 1: 2*0 + diag = [0.04, 4, 4, 3.86]                               -> c0
    # step 2: s = G[0] = [0.04, 0.4, -0.4, 0.1]; 2s + diag = [., 4.8, 3.2, 4.06] -> c2
    # step 3: s += G[2] = [-0.36, -3.6, 3.6, -0.9]; 2s + diag = [., -3.2, ., 2.06] -> c1
    assert gram_greedy(gram, 1) == [0]
    assert gram_greedy(gram, 3) == [0, 2, 1]
    # a magnitude rule (smallest energy sum_i x̂_ic^2) would remove c0, c3, c1
    energy = gram.diagonal()
    assert sorted(range(4), key=lambda c: (float(energy[c]), c))[:3] == [0, 3, 1]


@pytest.mark.parametrize("seed", range(5))
def test_the_cheaper_criterion_selects_what_thinet_selects(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    contrib = torch.randn(60, 12, generator=g, dtype=torch.float64)
    contrib[:, 3] = -contrib[:, 7] + 0.01 * contrib[:, 1]  # a near-cancelling pair
    for n_remove in (1, 5, 11):
        assert lc_greedy(contrib, n_remove) == thinet_greedy(contrib, n_remove)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="square"):
        gram_greedy(torch.zeros(2, 3), 1)
    with pytest.raises(ConfigError, match="n_remove"):
        gram_greedy(torch.zeros(3, 3), 4)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_end_to_end_meets_the_target_and_equals_the_zeroed_model(net) -> None:
    torch.manual_seed(0)
    model = net().eval()
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 3, 8, 8, generator=g), torch.randint(0, 4, (32,)))
    x = data.tensors[0][:4]
    ctx = methods.Context(
        model, x[:2], data, data, {"target_flops": 0.3}, calib_batches=2, batch_size=8
    )
    method = methods.get("thinet_lc")
    zeroed = copy.deepcopy(model)
    zctx = methods.Context(
        zeroed, x[:2], data, data, {"target_flops": 0.3}, calib_batches=2, batch_size=8
    )
    picks = method.select_and_refit(zctx, build(zeroed, x[:2]))
    report = method.prune(ctx)
    assert abs(report.flops_reduction - 0.3) <= 0.01
    dense = measure.count_flops(net(), x[:2]).flops
    assert abs(1 - measure.count_flops(model, x[:2]).flops / dense - 0.3) <= 0.01
    assert report.removed == picks
    with torch.no_grad():
        assert torch.allclose(model(x), zeroed.eval()(x), atol=1e-5)
