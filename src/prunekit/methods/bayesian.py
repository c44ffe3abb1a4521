"""Bayesian Compression — Louizos, Ullrich and Welling, "Bayesian Compression for Deep Learning",
NeurIPS 2017 (https://arxiv.org/abs/1705.08665); official code
``KarenUllrich/Tutorial_BayesianCompressionForDL`` (``BayesianLayers.py``, ``compression.py``,
``example.py``). The group normal-Jeffreys variant (BC-GNJ, "group variational dropout").

Algorithm, as this method runs it:

1. **Variational posterior with a group sparsity prior.** Every conv / Linear weight gets a
   scale-mixture prior ``w = z * w~`` with one scale ``z_g`` per group (conv: per output filter;
   Linear: per input feature, as ``Conv2dGroupNJ`` / ``LinearGroupNJ``) and the log-uniform
   (Jeffreys) hyper-prior ``p(z) ~ 1/|z|``. The posterior is
   ``q(z_g) = N(mu_z, mu_z^2 alpha_g)``, ``q(w~ | z) = N(z mu_w, z^2 sigma_w^2)``; the layer's
   trained weight is ``mu_w``. Training maximises the variational bound: per sample
   ``cross-entropy + KL / N`` (``example.py``: ``kl_divergence / N``), with
   ``KL(q(z)||p(z)) ~ -sum(k1 sigmoid(k2 + k3 log alpha) - softplus(-log alpha) / 2 - k1)``
   (Molchanov et al. 2017, Eq. 14, ``k = 0.63576, 1.87320, 1.48695``) and
   ``KL(q(w~|z)||p(w~|z)) = sum(-log sigma_w + (sigma_w^2 + mu_w^2) / 2 - 1/2)`` (paper Eq. 8).
   The forward pass samples ``z`` and then the pre-activations by the local reparametrisation
   trick: mean ``conv(x, mu_w) * z``, variance ``conv(x^2, sigma_w^2) * z^2`` (conv), or mean
   ``linear(x z, mu_w)``, variance ``linear((x z)^2, sigma_w^2)`` (Linear).
2. **Prune groups with a high dropout rate.** ``log alpha_g = log sigma_z^2 - log mu_z^2``
   (``get_log_dropout_rates``); groups are removed in decreasing ``log alpha`` until the next
   one would pass the sparsity target (:func:`prune_by_dropout`), within each layer at the
   pruned layers' common rate (``scope="layer"``, as the official per-layer thresholds) or over
   all pruned layers (``"global"``, which can empty a layer of small groups). The
   weights left to remove to meet the target exactly are the kept weights of highest
   posterior dropout rate ``log(Var[w] / E[w]^2)``.
3. **Posterior means as the weights.** ``E[w] = mu_z mu_w`` and
   ``Var[w] = mu_z^2 sigma_w^2 + sigma_z^2 mu_w^2 + sigma_z^2 sigma_w^2``
   (``compute_posterior_params``); ``mu_z`` is folded into the layer (and a conv's bias, which
   the official conv scales by ``z`` too).
4. **Bit precision from the posterior variance** (``compression.py``): a weight of variance
   ``v`` needs ``t`` significant bits while the unit round-off ``2^-t`` stays above ``2 v``;
   the layer takes the ceiling of the mean over its kept weights (``dist_fun=np.mean``) and its
   weights are rounded to the grid of step ``2^-t`` (``special_round``)
   (:func:`significant_bits`, :func:`round_to_bits`). The grid is the layer's codebook
   (:func:`prunekit.compress.deep_compression.share_values`), so the run's result is a Deep
   Compression file with one bit width per layer (``result_file``).

Defaults and their sources:

* ``optimizer`` Adam, ``lr`` 1e-3, ``epochs`` 5, ``schedule`` constant: official ``example.py``
  (``optim.Adam(model.parameters())`` at its default rate, ``--epochs 5``, no schedule). Adam
  matters here: the KL term enters the per-sample loss divided by the training-set size, so its
  gradient on a group's ``log alpha`` is about ``1e-4`` and plain SGD at any usable rate leaves
  ``log alpha`` where it was initialised (the groups would then be ranked mostly by the noise of
  their initialisation); Adam's normalised steps move it by about ``lr`` per
  step in the direction the bound asks. ``momentum`` 0.9 applies when ``optimizer="sgd"``.
* ``weight_decay`` 0: official ``example.py`` (Adam without weight decay; the KL's ``mu^2``
  term is the regulariser).
* ``kl_weight`` 1: official ``example.py`` (``discrimination_error + kl_divergence / N``).
* ``init_logvar`` -9 (``z`` and weight log-variances), ``z_mu`` drawn from ``N(1, 0.01^2)``:
  official ``BayesianLayers.py`` ``reset_parameters``.
* ``max_bits`` 16: prunekit (the codebook limit of the file format; the official code allows
  23 significant bits, which only the fp32 format can hold).

Deviations: the target sparsity replaces the official per-layer thresholds on ``log alpha``
(``example.py``: -2.8, -3, -5) and weights of high dropout rate complete a group count that
stops short of it; biases are point estimates (the official layers give them a variance too);
the official conv file writes the weights' KL with ``logvar`` taken as a log standard
deviation, here both layer kinds use the paper's Eq. 8; training starts from the given trained
weights (the official example trains from scratch); the official clipping of the first
layer's weight variances (``clip_var`` 0.04) is not applied; a kept
weight that rounds to 0 takes the grid's smallest non-zero value of its sign (so the grid
does not prune); protected layers are quantised but not pruned.

The layers are left under :class:`~prunekit.compress.deep_compression.SharedWeights`, so a
runner fine-tune after ``prune`` trains each layer's codebook values (Deep Compression's trained
quantisation) and keeps its bit width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from prunekit.compress.deep_compression import save_deep_compressed, share_values
from prunekit.masks.engine import prunable_layers, weight_name
from prunekit.methods.base import Context, Method, SparsityReport, count_nonzero, register_method
from prunekit.methods.fine_grained import covered_sparsity, target_sparsity, targets
from prunekit.methods.options import SHARED, Options, option
from prunekit.train.config import OPTIMIZERS

# Molchanov et al. 2017, Eq. 14 (official BayesianLayers.py kl_divergence)
K1, K2, K3 = 0.63576, 1.87320, 1.48695
EPS = 1e-8  # official get_log_dropout_rates: log(mu_z^2 + 1e-8)
MAX_SIGNIFICANT = 23  # official compression.py: SIGNIFICANT_BIT_PRECISION for t in 1..23


def group_dim(module: nn.Module) -> int:
    """The weight dimension one ``z`` scales: a conv's output filters, a Linear's inputs."""
    return 1 if isinstance(module, nn.Linear) else 0


def group_shape(module: nn.Module) -> tuple[int, ...]:
    """The shape of ``z`` broadcast against the weight."""
    shape = [1] * module.weight.dim()
    dim = group_dim(module)
    shape[dim] = module.weight.shape[dim]
    return tuple(shape)


class GroupNJ(nn.Module):
    """The variational parameters of one layer: ``z_mu``, ``z_logvar`` (one per group) and
    ``w_logvar`` (one per weight); the means ``mu_w`` are the layer's own weight."""

    def __init__(self, layer: nn.Module, init_logvar: float, generator: torch.Generator) -> None:
        super().__init__()
        w = layer.weight.detach()
        groups = w.shape[group_dim(layer)]

        def normal(n: int | tuple[int, ...], mean: float) -> torch.Tensor:
            size = (n,) if isinstance(n, int) else n
            return mean + 1e-2 * torch.randn(size, generator=generator, dtype=w.dtype)

        self.z_mu = nn.Parameter(normal(groups, 1.0).to(w.device))
        self.z_logvar = nn.Parameter(normal(groups, init_logvar).to(w.device))
        self.w_logvar = nn.Parameter(normal(tuple(w.shape), init_logvar).to(w.device))

    def log_alpha(self) -> torch.Tensor:
        """Log dropout rate of each group: ``log sigma_z^2 - log(mu_z^2 + eps)``."""
        return self.z_logvar - torch.log(self.z_mu.pow(2) + EPS)

    def kl(self, weight: torch.Tensor) -> torch.Tensor:
        log_alpha = self.log_alpha()
        kl_z = -torch.sum(
            K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
        )
        kl_w = torch.sum(-0.5 * self.w_logvar + 0.5 * (self.w_logvar.exp() + weight.pow(2)) - 0.5)
        return kl_z + kl_w


def posterior(layer: nn.Module, q: GroupNJ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E[w], Var[w])`` of the layer's weights under ``q`` (official
    ``compute_posterior_params``)."""
    shape = group_shape(layer)
    mu_w, var_w = layer.weight.detach(), q.w_logvar.detach().exp()
    mu_z, var_z = q.z_mu.detach().reshape(shape), q.z_logvar.detach().exp().reshape(shape)
    return mu_w * mu_z, mu_z.pow(2) * var_w + var_z * mu_w.pow(2) + var_z * var_w


def _sample(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``mean + sqrt(var + eps) * noise``: the ``eps`` keeps the square root's gradient finite
    where an input window is all zero (the official layers add the bias's variance instead)."""
    return mean + (var.clamp_min(0) + EPS).sqrt() * torch.randn_like(mean)


def _variational_forward(q: GroupNJ) -> Any:
    """A forward hook replacing the layer's output by a sample of the local reparametrisation
    (training) or its mean (eval)."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        sampling = module.training
        var_w = q.w_logvar.exp()
        if isinstance(module, nn.Linear):
            z = q.z_mu
            if sampling:  # one z per sample (official: z_mu.repeat(batch_size, 1))
                noise = torch.randn(
                    (x.shape[0],) + (1,) * (x.dim() - 2) + (z.shape[0],),
                    dtype=z.dtype,
                    device=z.device,
                )
                z = z + q.z_logvar.exp().sqrt() * noise
            xz = x * z
            mean = F.linear(xz, module.weight, module.bias)
            if not sampling:
                return mean
            return _sample(mean, F.linear(xz.pow(2), var_w))
        n = x.shape[0]
        view = (n, -1) + (1,) * (output.dim() - 2)
        if sampling:
            mu_z = q.z_mu.expand(n, -1)
            z = _sample(mu_z, q.z_logvar.exp().expand(n, -1)).reshape(view)
        else:
            z = q.z_mu.reshape((1, -1) + (1,) * (output.dim() - 2))
        mean = output * z
        if not sampling:
            return mean
        var = module._conv_forward(x.pow(2), var_w, None) * z.pow(2)
        return _sample(mean, var)

    return hook


def significant_bits(variance: torch.Tensor) -> torch.Tensor:
    """Per weight, the number of ``t`` in 1..23 whose unit round-off ``2^-t`` exceeds
    ``2 * variance`` (official ``float_precision(2 * x)``)."""
    t = torch.arange(1, MAX_SIGNIFICANT + 1, dtype=torch.float64)
    round_off = 0.5 * 2.0 ** (1.0 - t)
    return (2 * variance.double().reshape(-1, 1) < round_off).sum(1).reshape(variance.shape)


def layer_bits(variance: torch.Tensor, keep: torch.Tensor) -> int:
    """The layer's significant bits: the ceiling of the mean over its kept weights (official
    ``compute_reduced_weights``, ``dist_fun=np.mean``); at least 1."""
    kept = variance[keep]
    if kept.numel() == 0:
        return 1
    return max(1, math.ceil(float(significant_bits(kept).double().mean())))


def round_to_bits(values: torch.Tensor, bits: int, keep: torch.Tensor) -> torch.Tensor:
    """``values`` rounded to the grid of step ``2^-bits`` (official ``special_round``), zero
    where not kept; a kept value that rounds to 0 takes ``+-2^-bits`` by its sign."""
    delta = 2.0**-bits
    out = torch.floor(values / delta + 0.5) * delta
    small = keep & (out == 0)
    out = torch.where(small, torch.where(values < 0, -delta, delta).to(out.dtype), out)
    return torch.where(keep, out, torch.zeros_like(out))


def grid_levels(values: torch.Tensor, bits: int) -> int:
    """Points of the ``2^-bits`` grid spanning ``[-max|v|, max|v|]``."""
    top = float(values.abs().max()) if values.numel() else 0.0
    return 2 * math.floor(top / 2.0**-bits + 0.5) + 1


def prune_by_dropout(
    group_alpha: dict[str, torch.Tensor],
    weight_alpha: dict[str, torch.Tensor],
    gdim: dict[str, int],
    count: int,
) -> dict[str, torch.Tensor]:
    """Keep-masks removing ``count`` weights: whole groups in decreasing group ``log alpha`` (over
    all layers) while the next group fits in ``count``, then single kept weights in decreasing
    weight ``log alpha`` for the rest. ``group_alpha[name]`` has one entry per slice of the
    weight ``weight_alpha[name]`` along ``gdim[name]``."""
    keep = {n: torch.ones_like(a, dtype=torch.bool) for n, a in weight_alpha.items()}
    rows = [(float(a), n, g) for n, alphas in group_alpha.items() for g, a in enumerate(alphas)]
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    removed = 0
    for _, name, g in rows:
        size = weight_alpha[name].numel() // weight_alpha[name].shape[gdim[name]]
        if removed + size > count:
            break
        keep[name].select(gdim[name], g).fill_(False)
        removed += size
    rest = count - removed
    if rest > 0:
        names = list(weight_alpha)
        scores = torch.cat(
            [weight_alpha[n].masked_fill(~keep[n], -math.inf).reshape(-1).double() for n in names]
        )
        order = torch.argsort(scores, descending=True, stable=True)[:rest]
        flat = torch.cat([keep[n].reshape(-1) for n in names])
        flat[order] = False
        offset = 0
        for n in names:
            k = keep[n].numel()
            keep[n] = flat[offset : offset + k].reshape(keep[n].shape)
            offset += k
    return keep


@dataclass(frozen=True)
class BayesianOptions(Options):
    epochs: int = option(
        5, help="epochs of variational training", source="official example.py (--epochs 5)", low=0
    )
    optimizer: str = option(
        "adam",
        help="adam or sgd for the variational training",
        source="official example.py (optim.Adam(model.parameters()))",
        choices=OPTIMIZERS,
    )
    lr: float = option(
        1e-3,
        help=SHARED["lr"],
        source="official example.py (Adam's default rate, 1e-3)",
        low=0,
        low_open=True,
    )
    momentum: float = option(
        0.9,
        help=SHARED["momentum"] + " (sgd only)",
        source="prunekit (the usual SGD setting)",
        low=0,
        high=1,
    )
    weight_decay: float = option(
        0.0,
        help=SHARED["weight_decay"],
        source="official example.py (no weight decay; the KL regularises)",
        low=0,
    )
    schedule: str = option(
        "constant", help=SHARED["schedule"], source="official example.py (a fixed rate)"
    )
    kl_weight: float = option(
        1.0,
        help="factor on KL / N in the per-sample loss",
        source="official example.py (cross-entropy + kl_divergence / N)",
        low=0,
    )
    init_logvar: float = option(
        -9.0,
        help="initial log-variance of z and of the weights",
        source="official BayesianLayers.py reset_parameters (normal(-9, 1e-2))",
    )
    scope: str = option(
        "layer",
        help="layer: each pruned layer loses the same fraction, groups ranked within it; "
        "global: one ranking of groups over all pruned layers",
        source="official example.py (one log-alpha threshold per layer)",
        choices=("layer", "global"),
    )
    max_bits: int = option(
        16,
        help="most significant bits a layer may keep (its grid must fit a 2**16 codebook)",
        source="prunekit (the file format's codebook limit)",
        low=1,
        high=16,
    )


@register_method("bayesian")
class BayesianCompression(Method):
    """Bayesian Compression with group normal-Jeffreys priors (Louizos et al., NeurIPS 2017).

    Variational training of a per-group multiplicative noise ``z`` and per-weight variances,
    pruning of the groups (then weights) with the highest dropout rate ``log alpha``, the
    posterior means as weights and one fixed-point bit width per layer from the posterior
    variances; the result is written as a Deep Compression file. See the module docstring.
    """

    Options = BayesianOptions
    result_file: ClassVar[str] = "model.deepc"

    def __init__(self) -> None:
        super().__init__()
        self.bits: dict[str, int] = {}
        self.log_alpha: dict[str, list[float]] = {}

    def write_result(self, model: nn.Module, path: Any, options: dict[str, Any]) -> None:
        """The model, its grid values exactly, in the Deep Compression format."""
        save_deep_compressed(model, path)

    def prune(self, ctx: Context) -> SparsityReport:
        opts = self.options(ctx)
        target = target_sparsity(ctx, self.id)
        model = ctx.model
        before = count_nonzero(model)
        pruned = targets(model, self.id)
        layers = {weight_name(n): m for n, m in prunable_layers(model).items()}
        generator = torch.Generator().manual_seed(ctx.seed)
        qs = {n: GroupNJ(m, opts.init_logvar, generator) for n, m in layers.items()}
        handles: list[RemovableHandle] = []
        for name, module in layers.items():
            module.add_module("bayes_q", qs[name])  # trained and checkpointed with the model
            handles.append(module.register_forward_hook(_variational_forward(qs[name])))
        n_train = len(ctx.train_set)  # type: ignore[arg-type]

        def loss(x: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            kl = sum(q.kl(layers[n].weight) for n, q in qs.items())
            return F.cross_entropy(logits, y, reduction="none") + opts.kl_weight * kl / n_train

        try:
            ctx.train(
                model,
                opts.epochs,
                opts.lr,
                name="variational",
                optimizer=opts.optimizer,
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
                schedule=opts.schedule,
                progress=opts.progress,
                loss=loss,
            )
        finally:
            for h in handles:
                h.remove()
            for module in layers.values():
                del module.bayes_q

        with torch.no_grad():
            means, variances = {}, {}
            for name, module in layers.items():
                means[name], variances[name] = posterior(module, qs[name])
                self.log_alpha[name] = qs[name].log_alpha().tolist()
            rate = covered_sparsity(model, target)
            weight_alpha = {
                n: torch.log(variances[n] + EPS) - torch.log(means[n].pow(2) + EPS) for n in pruned
            }
            group_alpha = {n: qs[n].log_alpha() for n in pruned}
            gdims = {n: group_dim(layers[n]) for n in pruned}
            if opts.scope == "global":
                count = round(rate * sum(layers[n].weight.numel() for n in pruned))
                keep = prune_by_dropout(group_alpha, weight_alpha, gdims, count)
            else:  # each layer by its own ranking, as the official per-layer thresholds
                keep = {}
                for n in pruned:
                    keep.update(
                        prune_by_dropout(
                            {n: group_alpha[n]},
                            {n: weight_alpha[n]},
                            {n: gdims[n]},
                            round(rate * layers[n].weight.numel()),
                        )
                    )
            for name, module in layers.items():
                kept = keep.get(name, torch.ones_like(means[name], dtype=torch.bool))
                if not isinstance(module, nn.Linear) and module.bias is not None:
                    module.bias.mul_(qs[name].z_mu)  # the official conv scales its bias by z
                bits = min(layer_bits(variances[name], kept), opts.max_bits)
                while bits > 1 and grid_levels(means[name][kept], bits) > 2**opts.max_bits:
                    bits -= 1
                self.bits[name] = bits
                values = round_to_bits(means[name], bits, kept)
                share_values(module, values, kept, meta={"bits": bits})
        return SparsityReport.measure(model, before)


__all__ = [
    "BayesianCompression",
    "GroupNJ",
    "grid_levels",
    "layer_bits",
    "posterior",
    "prune_by_dropout",
    "round_to_bits",
    "significant_bits",
]
