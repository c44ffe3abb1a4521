"""ThiNet — Luo, Wu, Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network
Compression" (ICCV 2017). Sample ``(image, location, output channel)`` triples of the
consumer's output; for each sample ``i`` the consumer's pre-bias output is the sum over its
input channels ``c`` of the contribution ``x̂_ic = sum over the kernel window of W[o, c] *
x[c]`` (the input patch comes from :func:`torch.nn.functional.unfold`; for a Linear consumer
``x̂_ic = W[o, c] x_c``, summed over the channel's positions when a flatten gives it several). The removed set ``T`` starts empty and grows greedily: each step
adds the channel ``c`` minimising ``sum_i (sum_{j in T ∪ {c}} x̂_ij)^2``, the squared change of
the sampled outputs if ``T ∪ {c}`` were removed. Then the kept channels are rescaled by the
least-squares ``w = argmin_w sum_i (ŷ_i - w · x̂_i,kept)^2`` (``ŷ_i`` the sampled pre-bias
output with every channel present); each kept input channel of the consumer's weight is
multiplied by its ``w_c``. Paper default: 10 samples per image (option
``samples_per_image``), drawn from a subset of the ImageNet training images; here from the
run's calibration batches (``calib_batches`` x ``batch_size`` images, 4 x 64 by default).

The chain budget, the order, the removal and the deviations shared with LASSO channel pruning
are in :mod:`prunekit.methods.reconstruct`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods.base import register_method
from prunekit.methods.common import Chain
from prunekit.methods.reconstruct import (
    ReconstructionMethod,
    all_ranks,
    as_rows,
    draw_locations,
    forward_with_hooks,
    kernel_weight,
    patches_at,
    rcond_for,
    unit_contributions,
    unit_weight,
)


def thinet_greedy(contrib: torch.Tensor, n_remove: int) -> list[int]:
    """ThiNet's greedy removal: ``contrib`` is ``samples x channels`` (``x̂_ic``); returns the
    ``n_remove`` channels removed, in the order chosen.

    Each step adds to the removed set ``T`` the channel ``c`` minimising ``sum_i (sum_{j in T ∪
    {c}} x̂_ij)^2``; ties go to the lower index.
    """
    if contrib.dim() != 2:
        raise ConfigError(f"contributions must be samples x channels, got {tuple(contrib.shape)}")
    n, channels = contrib.shape
    if not 0 <= n_remove <= channels:
        raise ConfigError(f"n_remove must be in [0, {channels}], got {n_remove}")
    contrib = contrib.double()
    running = torch.zeros(n, dtype=torch.float64, device=contrib.device)
    free = torch.ones(channels, dtype=torch.bool, device=contrib.device)
    removed: list[int] = []
    for _ in range(n_remove):
        cost = ((running[:, None] + contrib) ** 2).sum(0)
        cost[~free] = math.inf
        c = int(torch.argmin(cost))  # the first minimum: the lower index on ties
        removed.append(c)
        free[c] = False
        running += contrib[:, c]
    return removed


def thinet_scales(
    contrib_kept: torch.Tensor, target: torch.Tensor, rcond: float | None = None
) -> torch.Tensor:
    """``w = argmin_w sum_i (target_i - w · contrib_kept_i)^2``: one scale per kept channel
    (minimum-norm when the kept contributions are collinear). ``rcond`` defaults to
    :func:`rcond_for` the inputs' dtype."""
    a = contrib_kept.double().cpu()
    b = target.double().cpu().reshape(-1, 1)
    cut = rcond_for(contrib_kept.dtype) if rcond is None else rcond
    return torch.linalg.lstsq(a, b, rcond=cut, driver="gelsd").solution[:, 0]


@register_method("thinet")
class ThiNet(ReconstructionMethod):
    """ThiNet (Luo, Wu, Lin, ICCV 2017): per chain, the consumer's input channels are removed
    greedily so that the sampled outputs change least (sum of squared summed contributions of the
    removed channels), then the kept channels are rescaled by least squares. 10 samples
    (location, output channel) per calibration image (option ``samples_per_image``); one uniform
    rate over the chains meets the target. See the module docstring for the details and
    deviations."""

    # the greedy removal ``(contributions, n_remove) -> removed``; a variant may swap it
    greedy = staticmethod(thinet_greedy)

    def refit_chains(
        self,
        model: nn.Module,
        found: list[Chain],
        counts: dict[str, int],
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        opts: dict[str, Any],
        picks: dict[str, list[int]],
    ) -> None:
        for chain in found:
            n_remove = counts[chain.group.name]
            if not n_remove:
                continue
            contrib, target = all_ranks(
                *self._samples(model, chain, batches, g, opts["samples_per_image"])
            )
            removed = self.greedy(contrib, n_remove)
            new_weight = None
            if opts["rescale"]:
                kept = [u for u in range(chain.group.size) if u not in set(removed)]
                rcond = rcond_for(chain.consumer.module.weight.dtype)
                scales = thinet_scales(contrib[:, kept], target, rcond)
                w = unit_weight(chain)[:, kept]
                new_weight = w.double().cpu() * scales[None, :, None]
            self.apply_choice(chain, removed, new_weight)
            picks[chain.group.name] = sorted(removed)

    @staticmethod
    def _samples(
        model: nn.Module,
        chain: Chain,
        batches: list[tuple[torch.Tensor, Any]],
        g: torch.Generator,
        per_image: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contributions ``x̂`` (samples x units of the chain) and the pre-bias outputs ``ŷ``."""
        module = chain.consumer.module
        weight = kernel_weight(module)
        contribs: list[torch.Tensor] = []

        def take(_: int, x: torch.Tensor, out: torch.Tensor) -> None:
            rows = as_rows(module, out)
            pos = draw_locations(g, rows.shape[0], rows.shape[1], per_image)
            channel = torch.randint(weight.shape[0], tuple(pos.shape), generator=g)
            patch = patches_at(module, x, pos.to(x.device))
            per_channel = (patch * weight[channel.reshape(-1).to(weight.device)]).sum(-1)
            contribs.append(per_channel.double().cpu())

        forward_with_hooks(model, batches, {module: take}, stop_at=module)
        full = torch.cat(contribs)
        return unit_contributions(chain, full), full.sum(1)


__all__ = ["ThiNet", "thinet_greedy", "thinet_scales"]
