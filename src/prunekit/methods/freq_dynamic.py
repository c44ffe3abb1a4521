"""Liu, Xu, Peng, Xiong, "Frequency-Domain Dynamic Pruning for Convolutional Neural Networks",
NeurIPS 2018 (no official code was published).

The algorithm, top to bottom:

1. **Kernels in the frequency domain.** Every ``k x k`` kernel ``W`` of a conv layer is
   represented by its 2-D DCT coefficients ``C = D W D^T`` (``D`` the orthonormal DCT-II
   matrix); the network trains on ``C`` and convolves with ``W = D^T (C * T) D``, ``T`` the
   0/1 mask of the coefficients. Here the layer's weight is stored as ``C`` under a
   :class:`prunekit.masks.basis.BasisKernel` parametrization with the fixed DCT basis (paper
   Sec. 3.1); the gradient reaches ``C`` through the inverse transform.
2. **Dynamic pruning** (paper Sec. 3.2, after Dynamic Network Surgery): the mask is updated
   while training, ``T = 0`` where ``|c| < a``, ``T = 1`` where ``|c| > b`` and unchanged in
   between (``a = (1 - margin) r < b = (1 + margin) r``), with probability ``(1 + gamma *
   iter)^(-power)`` after every ``update_every`` steps until ``iter_stop`` of the training;
   pruned coefficients keep receiving gradients (a straight-through mask) and come back when
   they grow. The updates are :class:`prunekit.methods.dns.Surgery` driving the coefficient
   masks, with the thresholds of :func:`prunekit.methods.dns.dns_thresholds`.
3. **Band-adaptive rates** (paper Sec. 3.3, BA-FDNP): the coefficients of a kernel fall into
   frequency bands ``u + v`` (``2k - 1`` bands; :func:`prunekit.masks.basis.frequency_bands`)
   and each band gets its own pruning rate, low-frequency bands (where a kernel's energy
   concentrates) pruned less. Each band of each layer gets thresholds ``a``, ``b`` that put
   its own rate ``s_band`` below ``a`` at the start.
4. **The result.** The masks are made exact (each band of each layer at its rate, keeping the
   surgery's decisions as far as possible, larger coefficients first), made hard (pruned
   coefficients stay zero in later training) and the stored pruned coefficients zeroed. The
   model computes with the spatial kernels rebuilt from the kept coefficients;
   :func:`prunekit.masks.finalize` bakes those kernels into a plain weight.

**Sparsity is counted in coefficients, as the paper counts it**: the report's non-zeros are the
kept DCT coefficients of the conv kernels (plus the weights of Linear and 1x1 layers, whose
only coefficient is the weight). The baked spatial kernels are dense in general: their zeros
are not what is reported.

Band rates: the paper's rule for the per-band rates could not be checked here. prunekit's rule:
the rate rises linearly with the band index, ``s_band = clip(s + band_slope * (z - z_mean) +
delta, 0, 1)`` with ``z`` the band index scaled to [0, 1], ``z_mean`` its mean over the
layer's coefficients and ``delta`` solved so that the layer's coefficients are pruned at
exactly its share ``s`` (:func:`band_rates`); ``band_slope=0`` prunes every band at ``s``
(plain FDNP).

Defaults: ``gamma`` 1e-4, ``power`` 1, ``margin`` 0.1, ``update_every`` 1 and ``iter_stop``
0.75 are Dynamic Network Surgery's (official ``compress_conv_layer.cu`` and README, see
:mod:`prunekit.methods.dns`), whose procedure the paper follows in the frequency domain;
``epochs`` 3 at ``lr`` 0.01 is prunekit's budget; ``band_slope`` 0.5 is prunekit's.

Deviations: 1-D convs get the 1-D DCT (bands: the frequency index); Linear and 1x1 layers are
pruned in their (trivial) 1x1 basis, i.e. by the same dynamic rule on the weights; protected
layers stay dense and the others are pruned a little further to meet the overall target; the
paper's compressed storage (quantised, entropy-coded coefficients) and its frequency-domain
convolution are not reproduced. The method needs a model without masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError
from prunekit.masks.basis import BasisKernel, attach_basis, frequency_bands, kernel_shape
from prunekit.masks.scope import global_keep
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.dns import Surgery, dns_thresholds, surgery_update
from prunekit.methods.fine_grained import share_of_targets, target_sparsity, targets
from prunekit.methods.options import SHARED, Options, option

_DNS = "Dynamic Network Surgery (official compress_conv_layer.cu / README), followed by Sec. 3.2"


def band_rates(counts: list[int], share: float, slope: float) -> list[float]:
    """Per-band pruning rates rising linearly with the band index (``slope`` over the bands,
    clipped to [0, 1]) whose count-weighted mean is ``share``."""
    if len(counts) == 1 or slope == 0:
        return [share] * len(counts)
    z = [b / (len(counts) - 1) for b in range(len(counts))]
    total = sum(counts)
    z_mean = sum(n * zb for n, zb in zip(counts, z, strict=True)) / total

    def rates(delta: float) -> list[float]:
        return [min(max(share + slope * (zb - z_mean) + delta, 0.0), 1.0) for zb in z]

    lo, hi = -1.0 - slope, 1.0 + slope
    for _ in range(100):  # the weighted mean rises with delta: bisect for it to equal share
        mid = 0.5 * (lo + hi)
        mean = sum(n * r for n, r in zip(counts, rates(mid), strict=True)) / total
        lo, hi = (mid, hi) if mean < share else (lo, mid)
    return rates(0.5 * (lo + hi))


def layer_bands(weight: torch.Tensor) -> torch.Tensor:
    """The frequency band of every coefficient of ``weight`` (the weight's shape)."""
    return frequency_bands(kernel_shape(weight)).expand(weight.shape)


class BandSurgery:
    """The surgery step on one layer's coefficient mask: per-entry thresholds ``low`` /
    ``high`` (each band's ``a`` / ``b``), the update of :func:`~prunekit.methods.dns.
    surgery_update` written into the :class:`BasisKernel` mask."""

    def __init__(self, param: BasisKernel, low: torch.Tensor, high: torch.Tensor) -> None:
        self.param, self.low, self.high = param, low, high

    @property
    def mask(self) -> torch.Tensor:
        return self.param.mask

    @torch.no_grad()
    def update(self, coeffs: torch.Tensor) -> None:
        self.param.set_mask(surgery_update(coeffs, self.param.mask, self.low, self.high))


@dataclass(frozen=True)
class FreqDynamicOptions(Options):
    epochs: int = option(
        3,
        help="epochs of training with dynamic pruning in the frequency domain",
        source="prunekit (a budget near the other methods'; the paper trains to convergence)",
        low=0,
    )
    lr: float = option(
        0.01,
        help="learning rate of that training (SGD, momentum 0.9, weight decay 5e-4, cosine)",
        source="prunekit (a trained model is retrained at a tenth of a usual peak rate)",
        low=0,
        low_open=True,
    )
    band_slope: float = option(
        0.5,
        help="rise of the pruning rate from the lowest to the highest frequency band",
        source="prunekit (the paper's per-band rule is not reproduced; 0: one rate)",
        low=0,
    )
    update_every: int = option(
        1, help="training steps between chances of a mask update", source=_DNS, low=1
    )
    gamma: float = option(
        1e-4, help="update probability (1 + gamma * iter)^(-power)", source=_DNS, low=0
    )
    power: float = option(
        1.0, help="update probability (1 + gamma * iter)^(-power)", source=_DNS, low=0
    )
    margin: float = option(
        0.1,
        help="a = (1 - margin) r prunes, b = (1 + margin) r splices back",
        source=_DNS,
        low=0,
        high=1,
        high_open=True,
    )
    iter_stop: float = option(
        0.75,
        help="fraction of the training steps after which the masks stay fixed",
        source=_DNS,
        low=0,
        high=1,
        low_open=True,
    )
    momentum: float = option(0.9, help=SHARED["momentum"], source="prunekit", low=0, high=1)
    weight_decay: float = option(5e-4, help=SHARED["weight_decay"], source="prunekit", low=0)


@register_method("freq_dynamic")
class FrequencyDynamicPruning(Method):
    """Liu et al. (NeurIPS 2018): conv kernels stored as their 2-D DCT coefficients, pruned
    dynamically while training (surgery with splicing), each frequency band at its own rate;
    sparsity counted in coefficients. See the module docstring."""

    Options = FreqDynamicOptions

    def __init__(self) -> None:
        self.rates: dict[str, list[float]] = {}
        self.history: list[dict] = []

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        if masks.get_masks(model):
            raise ConfigError(
                "freq_dynamic starts from a dense model; this model already carries masks"
            )
        layers = targets(model, self.id)
        share = share_of_targets(model, layers, target)
        before = count_nonzero(model)
        params: dict[str, BasisKernel] = {}
        surgery: dict[str, BandSurgery] = {}
        bands: dict[str, torch.Tensor] = {}
        for n, m in layers.items():
            params[n] = attach_basis(m)
            coeffs = _stored(m).detach()
            bands[n] = layer_bands(coeffs).to(coeffs.device)
            count = int(bands[n].max()) + 1
            counts = [int((bands[n] == b).sum()) for b in range(count)]
            self.rates[n] = band_rates(counts, share, opts.band_slope)
            low, high = torch.zeros_like(coeffs), torch.zeros_like(coeffs)
            for b, rate in enumerate(self.rates[n]):
                where = bands[n] == b
                a, bb, _, _ = dns_thresholds({"band": coeffs[where]}, rate, opts.margin)["band"]
                low[where], high[where] = a, bb
            surgery[n] = BandSurgery(params[n], low, high)
            params[n].dynamic = True
        steps = opts.epochs * math.ceil(len(ctx.train_set) / ctx.batch_size)
        surgeon = Surgery(layers, surgery, opts, math.ceil(opts.iter_stop * steps), ctx.seed)
        surgeon.update(0)
        try:
            ctx.train(
                model,
                opts.epochs,
                opts.lr,
                name="freq_dynamic",
                callbacks=[surgeon],
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
                progress=opts.progress,
            )
        finally:
            for p in params.values():
                p.dynamic = False
        self.history = surgeon.history
        for n, m in layers.items():
            keep = exact_band_keep(
                _stored(m).detach(), params[n].mask.bool(), bands[n], self.rates[n]
            )
            params[n].set_mask(keep)
            with torch.no_grad():
                _stored(m).masked_fill_(~keep, 0.0)
        return SparsityReport.measure(model, before)


def _stored(module: nn.Module) -> torch.Tensor:
    return module.parametrizations["weight"].original


def exact_band_keep(
    coeffs: torch.Tensor, keep: torch.Tensor, bands: torch.Tensor, rates: list[float]
) -> torch.Tensor:
    """Keep-mask with each band at exactly its rate: within a band, the entries ``keep`` holds
    rank above the others, each side by ``|c|``."""
    out = torch.zeros_like(keep)
    magnitude = coeffs.abs().double()
    span = float(magnitude.max()) + 1.0 if magnitude.numel() else 1.0
    for b, rate in enumerate(rates):
        where = bands == b
        score = magnitude[where] + span * keep[where].double()
        out[where] = global_keep({"band": score}, rate)["band"]
    return out


__all__ = [
    "BandSurgery",
    "FreqDynamicOptions",
    "FrequencyDynamicPruning",
    "band_rates",
    "exact_band_keep",
    "layer_bands",
]
