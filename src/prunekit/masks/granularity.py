"""Granularities: which groups of weights are kept or pruned together.

Each granularity turns one layer's importance scores (same shape as the weight) and a target
sparsity into a bool keep-mask plus metadata. Weights are viewed as ``(out, in, K)`` with ``K`` the
flattened spatial size, so a Linear weight is a conv with 1x1 kernels: the same code serves both.
Groups are always ranked by a stable sort, so ties resolve the same way on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from prunekit.errors import ConfigError
from prunekit.registry import Registry


@dataclass(frozen=True)
class PatternOptions:
    """Knobs of the structured patterns: ``n`` of every ``m`` (n:m), the 1xN block size and
    whether 1xN first orders the output channels by L1 (``rearrange``)."""

    n: int = 2
    m: int = 4
    block: int = 4
    rearrange: bool = True

    def validate(self) -> None:
        for key in ("n", "m", "block"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be a positive integer, got {value!r}")
        if self.n >= self.m:
            raise ConfigError(f"n:m needs n < m, got n={self.n}, m={self.m}")


Result = tuple[torch.Tensor, dict[str, Any]]
GranularityFn = Callable[[torch.Tensor, float, str, PatternOptions], Result]

GRANULARITIES: Registry[GranularityFn] = Registry("granularity")


def prune_count(units: int, sparsity: float) -> int:
    """How many of ``units`` groups to prune for ``sparsity`` (rounded to nearest)."""
    return min(units, round(sparsity * units))


def keep_top(unit_scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool keep-mask (same shape) dropping the ``n_prune`` lowest scores, ties by position."""
    flat = unit_scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    return keep.reshape(unit_scores.shape)


def _as_kernels(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.dim() < 2:
        raise ConfigError(f"{name} has {scores.dim()} dimension(s); structured masks need >= 2")
    return scores.reshape(scores.shape[0], scores.shape[1], -1)


@GRANULARITIES.register("element")
def element(scores: torch.Tensor, sparsity: float, name: str, opts: PatternOptions) -> Result:
    """Individual weights: keep exactly the top ``numel - round(sparsity * numel)`` scores."""
    return keep_top(scores, prune_count(scores.numel(), sparsity)), {}


@GRANULARITIES.register("kernel")
def kernel(scores: torch.Tensor, sparsity: float, name: str, opts: PatternOptions) -> Result:
    """Whole ``kh x kw`` kernels, ranked by the L2 norm of their scores."""
    k = _as_kernels(scores, name)
    norms = k.abs().pow(2).sum(-1)
    keep = keep_top(norms, prune_count(norms.numel(), sparsity))
    return keep.unsqueeze(-1).expand_as(k).reshape(scores.shape), {}


@GRANULARITIES.register("channel")
def channel(scores: torch.Tensor, sparsity: float, name: str, opts: PatternOptions) -> Result:
    """Whole output filters (soft structured pruning: shapes stay, filters are zeroed)."""
    if scores.dim() < 1:
        raise ConfigError(f"{name} is a scalar; channel masks need an output dimension")
    norms = scores.reshape(scores.shape[0], -1).abs().pow(2).sum(-1)
    keep = keep_top(norms, prune_count(norms.numel(), sparsity))
    return keep.reshape(-1, *([1] * (scores.dim() - 1))).expand_as(scores).clone(), {}


@GRANULARITIES.register("n:m")
def n_of_m(scores: torch.Tensor, sparsity: float, name: str, opts: PatternOptions) -> Result:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input-channel axis.

    Groups run along dim 1 at each spatial position, the layout sparse tensor cores accelerate.
    The pattern fixes the sparsity at ``1 - n/m``, so ``sparsity`` must equal that.
    """
    opts.validate()
    implied = 1 - opts.n / opts.m
    if abs(sparsity - implied) > 1e-6:
        raise ConfigError(
            f"n:m with n={opts.n}, m={opts.m} means sparsity {implied:g}, got {sparsity:g}; "
            "pass the matching sparsity"
        )
    k = _as_kernels(scores, name)
    n_in = k.shape[1]
    if n_in % opts.m:
        raise ConfigError(f"{name}: input dimension {n_in} is not divisible by m={opts.m}")
    groups = k.movedim(1, -1).reshape(k.shape[0], k.shape[2], n_in // opts.m, opts.m)
    top = groups.topk(opts.n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    keep = keep.reshape(k.shape[0], k.shape[2], n_in).movedim(-1, 1)
    return keep.reshape(scores.shape).contiguous(), {"n": opts.n, "m": opts.m}


@GRANULARITIES.register("1xn")
def one_by_n(scores: torch.Tensor, sparsity: float, name: str, opts: PatternOptions) -> Result:
    """1xN blocks (Lin et al. 2022): ``N`` consecutive output channels share one kernel pattern.

    Output channels are first ordered by L1 norm (descending, stable) so that similar filters share
    a block (unless ``opts.rearrange`` is False: then blocks are runs of consecutive channels);
    the order is kept in ``meta["permutation"]`` (row ``i`` of the rearranged weight is
    original row ``permutation[i]``). Each (block, input channel) kernel group is scored by the L1
    of its scores and the lowest groups are pruned, as many as bring the pruned weights closest to
    ``sparsity`` of the layer. A last, shorter block is allowed.
    """
    opts.validate()
    k = _as_kernels(scores, name).abs()
    out, n_in, _ = k.shape
    if opts.rearrange:
        perm = torch.argsort(k.sum((1, 2)), descending=True, stable=True)
    else:
        perm = torch.arange(out)
    n_blocks = -(-out // opts.block)
    padded = k.new_zeros(n_blocks * opts.block, n_in, k.shape[2])
    padded[:out] = k[perm]
    block_scores = padded.reshape(n_blocks, opts.block, n_in, -1).sum((1, 3))
    # a shorter last block holds fewer weights: count weights, not groups, toward the target
    rows = torch.full((n_blocks,), opts.block)
    rows[-1] = out - (n_blocks - 1) * opts.block
    sizes = (rows * k.shape[2]).unsqueeze(1).expand(n_blocks, n_in).reshape(-1)
    order = torch.argsort(block_scores.reshape(-1), stable=True)
    pruned = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(sizes[order], 0)])
    want = prune_count(out * n_in * k.shape[2], sparsity)
    n_prune = int(torch.argmin((pruned - want).abs()))  # the group count closest to the target
    keep_blocks = keep_top(block_scores, n_prune)
    keep_sorted = keep_blocks.repeat_interleave(opts.block, dim=0)[:out]
    keep = torch.empty_like(keep_sorted)
    keep[perm] = keep_sorted
    keep = keep.unsqueeze(-1).expand_as(k).reshape(scores.shape).clone()
    return keep, {"permutation": perm, "block": opts.block}
