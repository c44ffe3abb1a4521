"""Expected feature maps from BatchNorm statistics, and the shift a channel's removal causes in
the next layer (feature shift minimisation, Duan et al., ACCV 2022).

A BatchNorm output is, per channel, normalised to zero mean and unit variance over the training
data and then scaled and shifted, so it is modelled as ``N(β, γ²)``. A ReLU after it has the
closed-form expectation of a rectified Gaussian,

    ``E[max(0, z)] = μ Φ(μ/σ) + σ φ(μ/σ)``   for ``z ~ N(μ, σ²)``,

(ReLU6: ``E[min(max(0, z), 6)] = E[max(0, z)] - E[max(0, z - 6)]``). :func:`input_expectations`
follows the traced graph backwards from the input of each layer of interest to the BatchNorm
layers the tensor comes from, through the operations whose effect on the expectation is known:

* a BatchNorm gives ``N(β, γ²)`` per channel (without affine parameters ``N(0, 1)``);
* ReLU / ReLU6 take the expectation of the rectified Gaussian part; a constant part ``m`` (the
  expectation of a non-Gaussian branch added before the ReLU, e.g. a residual input) is carried
  as ``E[relu(G + m)] ≈ E[relu(G)] + m``, as the official ResNet-50 code does for identity
  blocks (``get_relu_expect_resnet_50``: ``_norm.expect(lb=0) + relu_expect_1``);
* additions add the Gaussian parts (independent branches: means and variances add, the official
  code's downsampling blocks) and the constant parts;
* identity, dropout, average / max pooling and a mean over the spatial dims keep the per-channel
  expectation (exact for the average ones; max pooling raises it: an approximation); a flatten
  repeats each channel's value over its positions.

Anything else (another nonlinearity, a concat, a conv without BatchNorm) gives no estimate, and
the caller measures the expectation on calibration data instead.

:func:`next_layer_sums` gives, for a conv or Linear consumer, ``S[o, p]`` = the sum of its
weights connecting input position ``p`` to output ``o`` over the kernel window (zero where a
grouped conv does not connect them): the expected output of ``o`` moves by ``S[o, p] · E_p``
when input ``p`` is removed.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from prunekit.graph.trace import SHAPE, trace

__all__ = [
    "Expectation",
    "input_expectations",
    "next_layer_sums",
    "relu6_expectation",
    "relu_expectation",
]


def relu_expectation(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``E[max(0, z)]`` for ``z ~ N(mu, sigma²)``, elementwise (``sigma = 0``: ``max(0, mu)``)."""
    mu, sigma = mu.double(), sigma.double().abs()
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    t = mu / safe
    pdf = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    value = mu * torch.special.ndtr(t) + safe * pdf
    return torch.where(sigma > 0, value, mu.clamp(min=0))


def relu6_expectation(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``E[min(max(0, z), 6)]`` for ``z ~ N(mu, sigma²)``."""
    return relu_expectation(mu, sigma) - relu_expectation(mu - 6.0, sigma)


@dataclass
class Expectation:
    """A tensor per channel as ``G + m``: ``G ~ N(mu, var)`` (absent when ``mu`` is None) plus
    a constant ``offset`` ``m`` (the expectation of the non-Gaussian part)."""

    offset: torch.Tensor
    mu: torch.Tensor | None = None
    var: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        return self.offset if self.mu is None else self.offset + self.mu

    def rectified(self, six: bool) -> Expectation:
        if self.mu is None:
            return Expectation(self.offset.clamp(0, 6) if six else self.offset.clamp(min=0))
        fn = relu6_expectation if six else relu_expectation
        value = fn(self.mu, self.var.sqrt()) + self.offset  # type: ignore[union-attr]
        return Expectation(value.clamp(max=6) if six else value)

    def __add__(self, other: Expectation) -> Expectation:
        if self.offset.shape != other.offset.shape:
            raise ValueError("channel counts differ")
        if self.mu is None or other.mu is None:
            g = self if other.mu is None else other
            return Expectation(self.offset + other.offset, g.mu, g.var)
        return Expectation(
            self.offset + other.offset,
            self.mu + other.mu,
            self.var + other.var,  # type: ignore[operator]
        )


_RELU = {F.relu, torch.relu, torch.relu_, "relu", "relu_"}
_RELU6 = {F.relu6, "relu6"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"}
_SAME = {
    F.dropout, F.dropout2d, F.dropout1d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.max_pool1d, F.max_pool2d, F.adaptive_max_pool2d,
    "contiguous", "clone", "detach", "dropout",
}  # fmt: skip
_SAME_MODULES = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AdaptiveMaxPool2d,
)


class _Walker:
    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.memo: dict[fx.Node, Expectation | None] = {}

    def of(self, node: Any) -> Expectation | None:
        if not isinstance(node, fx.Node):
            return None
        if node not in self.memo:
            self.memo[node] = self._visit(node)
        return self.memo[node]

    def _visit(self, node: fx.Node) -> Expectation | None:
        args = node.args
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                beta = m.bias.detach().double().cpu() if m.bias is not None else torch.zeros(c)
                gamma = m.weight.detach().double().cpu() if m.weight is not None else torch.ones(c)
                return Expectation(torch.zeros(c, dtype=torch.float64), beta, gamma.pow(2))
            if isinstance(m, (nn.ReLU, nn.ReLU6)):
                e = self.of(args[0])
                return None if e is None else e.rectified(isinstance(m, nn.ReLU6))
            if isinstance(m, _SAME_MODULES):
                return self.of(args[0])
            if isinstance(m, nn.Flatten):
                return self._flatten(node, args[0], m.start_dim)
            return None
        if node.op not in ("call_function", "call_method"):
            return None
        target = node.target
        if target in _RELU or target in _RELU6:
            e = self.of(args[0])
            return None if e is None else e.rectified(target in _RELU6)
        if target in _ADD and len(args) >= 2:
            a, b = self.of(args[0]), self.of(args[1])
            if a is None or b is None:
                return None
            try:
                return a + b
            except ValueError:
                return None
        if target in _SAME:
            return self.of(args[0])
        if target == "mean" or target is torch.mean:
            dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            shape = args[0].meta.get(SHAPE) if isinstance(args[0], fx.Node) else None
            if not dims or shape is None or any(d % len(shape) in (0, 1) for d in dims):
                return None
            return self.of(args[0])
        if target in (torch.flatten, "flatten"):
            start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
            return self._flatten(node, args[0], start)
        return None

    def _flatten(self, node: fx.Node, src: Any, start: int) -> Expectation | None:
        shape = src.meta.get(SHAPE) if isinstance(src, fx.Node) else None
        if shape is None or start != 1 or len(shape) < 2:
            return None
        e = self.of(src)
        if e is None:
            return None
        per = math.prod(shape[2:])
        return Expectation(e.mean.repeat_interleave(per))


def input_expectations(
    model: nn.Module, inputs: tuple[Any, ...], modules: list[nn.Module]
) -> dict[nn.Module, Expectation]:
    """For each of ``modules``: the per-channel expectation of its first input, estimated from
    BatchNorm statistics (see the module docstring); a module whose input has no estimate is
    absent. The model is traced once on ``inputs``."""
    named = dict(model.named_modules())
    wanted = {id(m) for m in modules}
    walker = _Walker(named)
    out: dict[nn.Module, Expectation] = {}
    for node in trace(model, inputs=inputs).graph.nodes:
        if node.op != "call_module" or not node.args:
            continue
        m = named.get(str(node.target))
        if m is None or id(m) not in wanted or m in out:
            continue
        e = walker.of(node.args[0])
        if e is not None:
            out[m] = e
    return out


def next_layer_sums(module: nn.Module) -> torch.Tensor | None:
    """``S[o, p]``: the weights of a conv or Linear ``module`` from input position ``p`` to
    output ``o``, summed over the kernel window (float64, ``out x in``); None for other
    layers."""
    if isinstance(module, nn.Linear):
        return module.weight.detach().double().cpu()
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        w = module.weight.detach().double().cpu()
        summed = w.reshape(w.shape[0], w.shape[1], -1).sum(-1)  # out x in/groups
        g = module.groups
        if g == 1:
            return summed
        out_pg, in_pg = w.shape[0] // g, w.shape[1]
        dense = torch.zeros(w.shape[0], in_pg * g, dtype=torch.float64)
        for i in range(g):
            rows = slice(i * out_pg, (i + 1) * out_pg)
            dense[rows, i * in_pg : (i + 1) * in_pg] = summed[rows]
        return dense
    return None
