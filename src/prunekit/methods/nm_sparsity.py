"""N:M semi-structured sparsity (catalogue entry "N:M semi-structured
sparsity"; the 2:4 pattern sparse tensor cores accelerate).

In every group of ``m`` consecutive input weights (along the input-channel axis, at each
kernel position) the ``n`` largest magnitudes are kept. The sparsity is then ``1 - n/m`` in
every pruned layer. Options ``n`` and ``m`` left unset follow the target: the ``m`` from 4 up
for which ``(1 - target) * m`` is a whole ``n`` and that divides the most layers' input sizes
(2:4 at 50%, the pattern sparse tensor cores accelerate; 1:4 at 75%, 1:8 at 87.5%; 1:5 at 80%
only where input sizes are multiples of 5), as the N:M literature sweeps patterns by their
density; set, they must give the target, and a different ``target_sparsity`` is refused.
Layers whose input size is not divisible by ``m`` are left dense, logged, and listed in the
method's ``skipped`` attribute; the overall sparsity is then below ``1 - n/m``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
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


_DERIVED = f"prunekit: None follows the target (2:4 at 50%, {_AMPERE})"
LARGEST_M = 128


def pattern_for(
    sparsity: float, n: int | None, m: int | None, sizes: Sequence[int] = ()
) -> tuple[int, int]:
    """The ``(n, m)`` of a ``sparsity``: the given ones, the missing one solved from
    ``n / m = 1 - sparsity``, or with both unset the ``m`` from 4 to :data:`LARGEST_M` that makes
    ``n`` whole and divides the most of the layers' input ``sizes`` (the smallest such ``m``);
    a pattern that cannot give the sparsity, or fits none of ``sizes``, is a ConfigError."""
    keep = 1.0 - sparsity

    def whole(x: float) -> int | None:
        r = round(x)
        return r if r >= 1 and abs(x - r) < 1e-6 else None

    if n is None and m is None:
        found = [(n_, m_) for m_ in range(4, LARGEST_M + 1) if (n_ := whole(keep * m_)) and n_ < m_]
        if not found:
            raise ConfigError(
                f"nm_sparsity: no N:M pattern with M <= {LARGEST_M} keeps {keep:g} of the "
                "weights (target_sparsity must be 1 - N/M)"
            )
        if not sizes:
            return found[0]
        fits = [sum(size % m_ == 0 for size in sizes) for _, m_ in found]
        if max(fits) == 0:
            raise ConfigError(
                f"nm_sparsity: no N:M pattern keeping {keep:g} of the weights has an M that "
                f"divides a layer's input size ({', '.join(map(str, sorted(set(sizes))))}); "
                f"the closest patterns are {found[0][0]}:{found[0][1]} and up"
            )
        return found[fits.index(max(fits))]
    if m is None:
        m = whole(n / keep) if keep > 0 else None
        if m is None:
            raise ConfigError(f"nm_sparsity: no M makes {n}:M keep {keep:g} of the weights")
    if n is None:
        n = whole(keep * m)
        if n is None:
            raise ConfigError(f"nm_sparsity: no N makes N:{m} keep {keep:g} of the weights")
    return n, m


@dataclass(frozen=True)
class NMOptions(Options):
    n: int | None = option(
        None,
        help="weights kept in every group of m (None: from the target)",
        source=_DERIVED,
        low=1,
    )
    m: int | None = option(
        None,
        help="consecutive input weights per group, along the input channels (None: from the "
        "target)",
        source=_DERIVED,
        low=2,
    )


@register_method("nm_sparsity")
class NMSparsity(Method):
    """N:M semi-structured sparsity: keep the ``n`` largest of every ``m`` consecutive input
    weights (options ``n``, ``m``; unset, they follow the target: 2:4 at 50%); layers whose
    input size is not a multiple of ``m`` stay dense and are listed in ``skipped``."""

    Options = NMOptions

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.pattern: tuple[int, int] | None = None  # the (n, m) of the last prune

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        s = target_sparsity(ctx, self.id)
        layers = targets(ctx.model, self.id)
        n, m = pattern_for(s, opts.n, opts.m, [mod.weight.shape[1] for mod in layers.values()])
        if not 1 <= n < m:
            raise ConfigError(f"options n and m must satisfy 1 <= n < m, got n={n}, m={m}")
        self.pattern = (n, m)
        implied = 1.0 - n / m
        if abs(s - implied) > 1e-6:
            raise ConfigError(
                f"nm_sparsity with n={n}, m={m} zeros {implied:g} of each layer; "
                f"target_sparsity is {s:g}: expected target_sparsity={implied:g} "
                "(or options n, m that give the target)"
            )
        model = ctx.model
        before = count_nonzero(model)
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


__all__ = ["NMOptions", "NMSparsity", "pattern_for"]
