"""Activation criteria read the feature map the next layer consumes (after the nonlinearity,
the pooling and the residual addition), one score per channel group; hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
import prunekit.methods
from nets import ConvBNNet
from prunekit.criteria.activations import readers
from prunekit.criteria.hrank import HRank
from prunekit.criteria.taylor import Taylor
from prunekit.errors import DataError


def conv_bn_relu_net() -> ConvBNNet:
    """Conv-BN-ReLU net whose first layer's channels have different post-ReLU ranks: BN shifts
    from very negative (mostly zero maps) to positive (full-rank maps)."""
    torch.manual_seed(0)
    model = ConvBNNet(widths=(6, 5), classes=3).double().eval()
    with torch.no_grad():
        model.b1.bias.copy_(torch.tensor([0.5, 2.0, -0.8, 0.0, -2.5, -1.5], dtype=torch.float64))
    return model


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)


def ranks(maps: torch.Tensor) -> torch.Tensor:
    """Mean over images of the matrix rank of each channel's map, one image at a time."""
    n, c = maps.shape[:2]
    out = torch.zeros(c, dtype=torch.float64)
    for i in range(n):
        for k in range(c):
            m = maps[i, k]
            m = m.reshape(-1, 1) if m.dim() < 2 else m
            out[k] += int(torch.linalg.matrix_rank(m))
    return out / n


def test_hrank_ranks_the_post_relu_map_and_channels_differ() -> None:
    model = conv_bn_relu_net()
    x = images()
    graph = prunekit.graph.build(model, x[:1])
    scores = HRank([x[:3], x[3:]])(graph.group("c1"))
    with torch.no_grad():
        read_by_c2 = torch.relu(model.b1(model.c1(x)))
        pre_relu = model.b1(model.c1(x))
    expected = ranks(read_by_c2)
    torch.testing.assert_close(scores, expected)
    assert len(set(scores.tolist())) > 2  # channels are told apart
    assert set(ranks(pre_relu).tolist()) == {8.0}  # before the ReLU every map is full rank
    # the last group is read by fc after global pooling: one value per channel, rank 1 unless 0
    with torch.no_grad():
        pooled = torch.relu(model.b2(model.c2(read_by_c2))).mean((2, 3))
    torch.testing.assert_close(HRank([x])(graph.group("c2")), (pooled != 0).double().mean(0))


class PoolFlatten(nn.Module):
    """conv a -> BN -> F.relu -> F.max_pool2d -> conv b -> F.relu -> flatten -> fc: the map b
    reads is pooled; fc reads each channel of b as 4 flattened positions."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 2 * 2, 5)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.a(x))), 2)
        x = F.relu(self.b(x))
        return self.fc(torch.flatten(x, 1))


def test_maps_after_pooling_and_before_a_linear() -> None:
    torch.manual_seed(3)
    model = PoolFlatten().double().eval()
    with torch.no_grad():
        model.bn.bias.copy_(torch.tensor([-2.0, -0.5, 0.3, 2.0], dtype=torch.float64))
        model.b.bias.copy_(torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64))
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    graph = prunekit.graph.build(model, x[:1])
    with torch.no_grad():
        pooled = F.max_pool2d(F.relu(model.bn(model.a(x))), 2)
        into_fc = F.relu(model.b(pooled))
    torch.testing.assert_close(HRank([x])(graph.group("a")), ranks(pooled))
    # a channel before the Linear: its 4 flattened positions are one vector (rank 0 or 1)
    torch.testing.assert_close(HRank([x])(graph.group("b")), ranks(into_fc.flatten(2)))
    taps = {t.key: t for t in readers(graph)}
    assert set(taps) == {"b:in", "fc:in"}
    assert tuple(taps["fc:in"].index.shape) == (3, 4)


def taylor_terms_by_hand(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per example and channel ``|mean over the map of z * dC/dz|``, averaged over examples."""
    return (z * g).flatten(2).mean(2).abs().mean(0)


def test_taylor_score_is_the_post_relu_term_normalised_per_layer() -> None:
    model = conv_bn_relu_net()
    x = images(8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    graph = prunekit.graph.build(model, x[:1])
    crit = Taylor([(x[:4], y[:4]), (x[4:], y[4:])])
    with torch.enable_grad():
        z = torch.relu(model.b1(model.c1(x))).detach().requires_grad_(True)
        out = model.fc(torch.relu(model.b2(model.c2(z))).mean((2, 3)))
        (g,) = torch.autograd.grad(F.cross_entropy(out, y, reduction="sum"), z)
    raw = taylor_terms_by_hand(z.detach(), g)
    torch.testing.assert_close(crit(graph.group("c1")), raw / raw.norm())
    assert Taylor([(x, y)], normalize=False)(graph.group("c1")).sub(raw).abs().max() < 1e-9


class Residual(nn.Module):
    """stem conv -> ReLU = s; block: y = relu(s + bn(conv2(relu(conv1(s))))); a 1x1 ``side``
    conv reads s too; head: fc(mean(y) + mean(side(s))). The stem's channels are carried by s
    (read by conv1 and side: one tensor) and by the pooled y (read by fc)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.side = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(5, 3)
        self.protected_layers = ("fc", "head")

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = F.relu(self.stem(x))
        return s, self.bn(self.conv2(F.relu(self.conv1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, r = self.parts(x)
        y = F.relu(s + r)
        return self.fc(y.mean((2, 3))) + self.head(self.side(s).mean((2, 3)))


def test_coupled_group_one_normalised_score_per_group() -> None:
    torch.manual_seed(5)
    model = Residual().double().eval()
    x = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    graph = prunekit.graph.build(model, x[:1])
    group = graph.group("stem")
    assert sorted(group.out_layers) == ["bn", "conv2", "stem"]
    with torch.enable_grad():
        s = F.relu(model.stem(x)).detach().requires_grad_(True)
        r = model.bn(model.conv2(F.relu(model.conv1(s))))
        pooled = F.relu(s + r).mean((2, 3))
        pooled.retain_grad()
        out = model.fc(pooled) + model.head(model.side(s).mean((2, 3)))
        F.cross_entropy(out, y, reduction="sum").backward()
    # each map: per example |mean(z * dC/dz)|; the unit: the mean over its two maps
    raw = (taylor_terms_by_hand(s.detach(), s.grad) + (pooled * pooled.grad).abs().mean(0)) / 2
    got = Taylor([(x, y)])(group)
    torch.testing.assert_close(got, raw / raw.norm())
    torch.testing.assert_close(got.norm(), torch.tensor(1.0, dtype=torch.float64))
    # HRank: the mean of the two maps' average ranks (s counted once, though two layers read it)
    expected = (ranks(s.detach()) + ranks(pooled.detach())) / 2
    torch.testing.assert_close(HRank([x])(group), expected)


@pytest.mark.parametrize("make", [HRank, Taylor])
def test_a_criterion_without_calibration_data_is_an_error(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="needs calibration batches"):
        make([])
    with pytest.raises(DataError, match="needs calibration batches"):
        make(iter([]))


def test_hrank_method_removes_the_lowest_post_relu_ranks() -> None:
    """``prunekit.methods.get("hrank")`` on the conv-BN-ReLU net: the channels of c1 with the
    lowest post-ReLU ranks go (the bias-shifted ones), whatever their filter norms."""
    from torch.utils.data import TensorDataset

    model = conv_bn_relu_net().float()
    with torch.no_grad():  # make the low-rank channels the largest filters: not a magnitude rule
        for k, s in enumerate([1.0, 1.0, 1.0, 1.0, 8.0, 6.0]):
            model.c1.weight[k] *= s
        model.b1.running_var[4:] *= torch.tensor([64.0, 36.0])  # same BN output as before
    x = images(32).float()
    data = TensorDataset(x, torch.zeros(32, dtype=torch.long))
    with torch.no_grad():
        expected = ranks(torch.relu(model.b1(model.c1(x))))
    ctx = prunekit.methods.Context(
        model, x[:1], data, data, {"target_flops": 0.27}, calib_batches=1, batch_size=32
    )
    report = prunekit.methods.get("hrank").prune(ctx)
    removed = report.removed["c1"]
    assert removed
    kept = [i for i in range(6) if i not in removed]
    assert max(expected[removed]) <= min(expected[kept])
