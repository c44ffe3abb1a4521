"""N:M semi-structured sparsity (catalogue entry "N:M semi-structured
sparsity"; the 2:4 pattern sparse tensor cores accelerate).

In every group of ``m`` consecutive input weights (along the input-channel axis, at each
kernel position) the ``n`` largest magnitudes are kept (options ``n`` 2, ``m`` 4). The
sparsity is then ``1 - n/m`` in every pruned layer; a different ``target_sparsity`` is refused.
Layers whose input size is not divisible by ``m`` are left dense, logged, and listed in the
method's ``skipped`` attribute; the overall sparsity is then below ``1 - n/m``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    target_sparsity,
    targets,
)
from prunekit.methods.options import Options, option

log = logging.getLogger(__name__)


_AMPERE = "the 2:4 pattern of sparse tensor cores (Mishra et al. 2021, NVIDIA ASP)"


@dataclass(frozen=True)
class NMOptions(Options):
    n: int = option(2, help="weights kept in every group of m", source=_AMPERE, low=1)
    m: int = option(
        4,
        help="consecutive input weights per group (along the input channels)",
        source=_AMPERE,
        low=2,
    )


@register_method("nm_sparsity")
class NMSparsity(Method):
    """N:M semi-structured sparsity: keep the ``n`` largest of every ``m`` consecutive input
    weights (options ``n`` 2, ``m`` 4; the target must be ``1 - n/m``); layers whose input size
    is not a multiple of ``m`` stay dense and are listed in ``skipped``."""

    Options = NMOptions

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        n, m = opts.n, opts.m
        if not 1 <= n < m:
            raise ConfigError(f"options n and m must satisfy 1 <= n < m, got n={n}, m={m}")
        s = target_sparsity(ctx, self.id)
        implied = 1.0 - n / m
        if abs(s - implied) > 1e-6:
            raise ConfigError(
                f"nm_sparsity with n={n}, m={m} zeros {implied:g} of each layer; "
                f"target_sparsity is {s:g}: expected target_sparsity={implied:g} "
                "(or options n, m that give the target)"
            )
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        eligible = [name for name, mod in layers.items() if mod.weight.shape[1] % m == 0]
        self.skipped = [name for name in layers if name not in eligible]
        if self.skipped:
            log.warning(
                "nm_sparsity: input size not divisible by m=%d, left dense: %s",
                m,
                ", ".join(self.skipped),
            )
        if not eligible:
            raise ConfigError(
                f"nm_sparsity: no layer has an input size divisible by m={m} (input sizes: "
                f"{', '.join(map(str, sorted({mod.weight.shape[1] for mod in layers.values()})))})"
            )
        masks.prune(model, implied, granularity="n:m", n=n, m=m, include=eligible)
        return SparsityReport.measure(model, before)


__all__ = ["NMSparsity"]
