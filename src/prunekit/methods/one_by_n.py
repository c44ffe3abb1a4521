"""Lin et al. (Mingbao Lin, Rongrong Ji and co-authors), "1xN Pattern for Pruning Convolutional Neural
Networks", IEEE TPAMI 2022.

Output channels are ordered by L1 norm (descending) and consecutive runs of ``block``
(``N``, option, 4) of that order form blocks; a block shares one input-kernel pattern: for
each (block, input channel) the ``N`` kernels are pruned or kept together, the groups with the
smallest L1 first, per layer (:mod:`prunekit.masks` granularity ``"1xn"``; a Linear layer
counts as a conv with 1x1 kernels). The paper
physically permutes the filters (and the next layer's input channels) so blocks are
contiguous in memory; here the rearrangement only decides which channels form blocks — the
same pruning decision, with the permutation recorded in the masks' metadata. A layer whose
output count is not a multiple of ``N`` has one shorter last block. The per-layer count of
pruned groups is rounded, so the overall sparsity is met to within one group per layer.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prunekit import masks
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import (
    check_positive_int,
    share_of_targets,
    target_sparsity,
    targets,
)


@register_method("one_by_n")
class OneByN(Method):
    """Lin et al. (TPAMI 2022): 1xN block pruning — output channels ordered by L1 norm form
    blocks of ``block`` (N, 4), each block shares one input-kernel pattern, the smallest-L1
    (block, input channel) groups pruned first in each layer. See the module docstring."""

    defaults: ClassVar[dict[str, Any]] = {"block": 4}

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        check_positive_int("block", opts["block"])
        s = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, s)
        masks.prune(model, share, granularity="1xn", block=opts["block"], include=list(layers))
        return SparsityReport.measure(model, before)


__all__ = ["OneByN"]
