"""Small models and data shared by the method tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunekit.methods.base import Context


class ConvBNNet(nn.Module):
    """(conv 3x3 -> BatchNorm -> ReLU) per width -> global mean pool -> fc (protected).

    The layers are ``c1, b1, c2, b2, ...`` and ``fc``, registered in that order. Widths 16, 32,
    64 make one channel at most ~3% of the FLOPs, fine enough for a 1% target tolerance."""

    def __init__(
        self, widths: Sequence[int] = (8, 12), in_channels: int = 3, classes: int = 4
    ) -> None:
        super().__init__()
        self.depth = len(widths)
        for i, (cin, cout) in enumerate(zip([in_channels, *widths], widths, strict=False), 1):
            setattr(self, f"c{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            setattr(self, f"b{i}", nn.BatchNorm2d(cout))
        self.fc = nn.Linear(widths[-1], classes)
        self.protected_layers = ("fc",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = torch.relu(getattr(self, f"b{i}")(getattr(self, f"c{i}")(x)))
        return self.fc(x.mean((2, 3)))


def random_data(
    n: int, shape: tuple[int, ...] = (3, 8, 8), classes: int = 4, seed: int = 1
) -> TensorDataset:
    """``n`` seeded Gaussian inputs of ``shape`` with uniform random labels."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


def small_net() -> nn.Sequential:
    """conv 3->8 (no bias) -> BatchNorm -> ReLU -> conv 8->8 -> ReLU -> pool -> Linear(8, 4)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def small_data(n: int = 32) -> TensorDataset:
    """``n`` seeded 3x6x6 Gaussian inputs for :func:`small_net`, labels in 0..3."""
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,)))


def sparse_context(model: nn.Module, work_dir, n: int = 32, **options) -> Context:  # type: ignore[no-untyped-def]
    """A method context on :func:`small_data` (training and validation), 60% sparsity."""
    data = small_data(n)
    return Context(
        model,
        data.tensors[0][:2],
        data,
        data,
        {"target_sparsity": 0.6},
        batch_size=8,
        options={"progress": False, **options},
        work_dir=work_dir,
    )
