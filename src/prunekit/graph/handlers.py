"""Per-layer-type handlers: how channel labels cross a layer, and how to slice it.

One handler per layer type, in one registry. A handler does three things:

* ``propagate``: given the input flows, draw or pass on labels, couple what must stay together,
  and record which labels sit along the layer's input and output channel sides;
* ``prune``: rebuild the layer's parameters and buffers keeping the given input/output positions
  and update its attributes (``in_channels``, ``groups``, ``num_features`` ...);
* ``count``: its parameter count and FLOPs scale for given kept widths, without touching it, so
  a pruning plan can be evaluated many times before any surgery.

Two more have defaults that fit most layers: ``zero`` (zero the parameters producing some output
channels; generic for weight/bias layers) and ``flops`` (the planned FLOPs; ``count``'s fraction
of the measured ones, overridden where terms scale differently, as in attention).

Users register handlers for their own layer types with :func:`register_handler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.graph.flow import Flow, Labels

Shape = Sequence[int]


@dataclass
class Call:
    """One call of a layer during propagation: what a handler may read and do."""

    name: str
    labels: Labels
    in_shapes: list[Shape | None]
    out_shape: Any
    record_fn: Callable[..., None]

    def new(self, n: int) -> np.ndarray:
        return self.labels.new(n, self.name)

    def record(
        self,
        *,
        in_labels: np.ndarray | None = None,
        out_labels: np.ndarray | None = None,
        exact: bool = True,
    ) -> None:
        self.record_fn(self.name, in_labels, out_labels, exact)

    def fix(self, labels: np.ndarray, why: str) -> None:
        self.labels.fix(labels, f"{why} ({self.name})")


class Handler:
    """Base class. Subclasses override what applies; a parameter-free layer needs none of it."""

    def propagate(self, call: Call, module: nn.Module, inputs: list[Flow | None]) -> Any:
        raise NotImplementedError

    def prune(
        self, module: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        """Keep positions ``keep_in`` of the input side and ``keep_out`` of the output side."""

    def count(self, module: nn.Module, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        """(parameter count, FLOPs as a fraction of the dense layer's) at the given widths."""
        return sum(p.numel() for p in module.parameters(recurse=False)), 1.0

    def flops(
        self,
        module: nn.Module,
        n_in: int | None,
        n_out: int | None,
        dense: int,
        calls: Sequence[Call],
    ) -> int:
        """FLOPs of the layer at the given widths, from ``dense``, what the counter measured for
        it as it is now, over ``calls`` (its calls while the graph was built, with their shapes).

        The default scales ``dense`` by :meth:`count`'s fraction; a layer whose FLOPs are a sum of
        terms that scale differently (attention: projections and score products) overrides it.
        """
        return round(dense * self.count(module, n_in, n_out)[1])

    def zero(self, module: nn.Module, pos: torch.Tensor) -> None:
        """Zero the parameters producing output positions ``pos``, so those channels are zero
        wherever they go (the soft version of pruning them)."""
        zero_out(module, pos)


_HANDLERS: dict[type, Handler] = {}


def register_handler(*types: type) -> Callable[[type[Handler]], type[Handler]]:
    """Class decorator: ``@register_handler(MyLayer)`` on a :class:`Handler` subclass.

    The most specific registered base class of a layer's type is used, so a subclass of
    ``nn.Conv2d`` is handled as a conv unless it registers its own handler; one that overrides
    ``forward`` is traced into instead (see :func:`handles_forward`).
    """

    def decorator(cls: type[Handler]) -> type[Handler]:
        for t in types:
            _HANDLERS[t] = cls()
        return cls

    return decorator


def handler_for(module: nn.Module) -> Handler | None:
    for t in type(module).__mro__:
        if t in _HANDLERS:
            return _HANDLERS[t]
    return None


def handles_forward(module: nn.Module) -> bool:
    """True if a registered handler covers what ``module`` computes, so the tracer keeps the
    module as one call rather than tracing into it.

    That is the case when the handler is registered for the module's type, or for a base class
    whose ``forward`` the module does not override (a ``Conv2d`` subclass that only sets up its
    arguments). A subclass with its own ``forward`` (``ScaledConv`` multiplying by an extra
    parameter) is traced into instead, so what the base handler would not slice is seen (and
    refused by name until a handler is registered for the subclass).
    """
    mro = type(module).__mro__
    registered = next((t for t in mro if t in _HANDLERS), None)
    if registered is None:
        return False
    defines_forward = next(t for t in mro if "forward" in vars(t))
    return defines_forward in registered.__mro__ or defines_forward.__module__.startswith("torch.")


def zero_out(module: nn.Module, pos: torch.Tensor) -> None:
    """Zero the parameters that produce output positions ``pos`` of a conv, Linear, norm ..."""
    param = next(module.parameters(), None)
    if param is not None:
        pos = pos.to(param.device)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        w = module.weight
        if module.groups == 1:
            w[:, pos] = 0
        else:
            ipg, opg = module.in_channels // module.groups, module.out_channels // module.groups
            for p in pos.tolist():
                g = p // opg
                w[g * ipg : (g + 1) * ipg, p % opg] = 0
    elif isinstance(module, nn.Embedding):
        module.weight[:, pos] = 0
    elif isinstance(getattr(module, "weight", None), torch.Tensor) and (
        not isinstance(module, nn.PReLU) or module.num_parameters > 1
    ):
        module.weight[pos] = 0
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias[pos] = 0


def slice_tensor(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` by its slice along ``dim`` (a new, smaller tensor)."""
    t = getattr(module, name, None)
    if t is None:
        return
    new = t.detach().index_select(dim, keep.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        module._buffers[name] = new


def _channel_input(inputs: list[Flow | None], dim: int, size: int) -> Flow | None:
    x = inputs[0] if inputs else None
    if x is None or x.dim != dim or len(x) != size:
        return None
    return x


def _pin_misplaced(call: Call, inputs: list[Flow | None], x: Flow | None, layer: str) -> None:
    """Channels that reach a layer on another dim than the one it reads as channels (a conv or
    a norm over a channels-last tensor) are mixed or normalised by it as positions: they stay."""
    f = inputs[0] if inputs else None
    if f is not None and x is None:
        call.fix(f.labels, f"{layer} whose input has its channels on another dimension")


# --------------------------------------------------------------------------- convolutions


@register_handler(
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)
class ConvHandler(Handler):
    """Dense, depthwise (``groups == in_channels``) and grouped convolutions, plain or transposed.

    Depthwise: output channel ``j`` is computed from input channel ``j // multiplier`` alone, so
    it carries that channel's label and pruning an input channel drops a whole group. Grouped:
    the inputs and outputs of one group form one unit, so groups are removed whole and every
    remaining group keeps its width.
    """

    @staticmethod
    def _kind(m: nn.Module) -> str:
        if m.groups == 1:
            return "dense"
        return "depthwise" if m.groups == m.in_channels else "grouped"

    def propagate(self, call: Call, m: nn.Module, inputs: list[Flow | None]) -> Flow:
        x = _channel_input(inputs, 1, m.in_channels)
        _pin_misplaced(call, inputs, x, "convolution")
        kind = self._kind(m)
        if kind == "depthwise" and x is not None:
            out = np.repeat(x.labels, m.out_channels // m.groups)
        else:
            out = call.new(m.out_channels)
        if kind == "grouped" and x is not None:
            ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            for k in range(m.groups):
                call.labels.union_all(
                    np.concatenate(
                        [x.labels[k * ipg : (k + 1) * ipg], out[k * opg : (k + 1) * opg]]
                    )
                )
        if x is None and kind != "dense":
            call.fix(out, "grouped conv whose input channels are not traced")
        call.record(in_labels=None if x is None else x.labels, out_labels=out)
        return Flow(1, out)

    def prune(
        self, m: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        kind = self._kind(m)
        if kind == "dense":
            if keep_out is not None:
                slice_tensor(m, "weight", out_axis, keep_out)
                m.out_channels = len(keep_out)
            if keep_in is not None:
                slice_tensor(m, "weight", in_axis, keep_in)
                m.in_channels = len(keep_in)
        else:  # groups are removed whole: slice the axis that indexes groups, keep per-group width
            ipg, opg = m.in_channels // m.groups, m.out_channels // m.groups
            n_in = len(keep_in) if keep_in is not None else m.in_channels
            n_out = len(keep_out) if keep_out is not None else m.out_channels
            if transposed:
                slice_tensor(
                    m, "weight", 0, keep_in if keep_in is not None else torch.arange(m.in_channels)
                )
            else:
                slice_tensor(
                    m,
                    "weight",
                    0,
                    keep_out if keep_out is not None else torch.arange(m.out_channels),
                )
            m.groups = n_in // ipg if kind == "grouped" else n_in
            m.in_channels, m.out_channels = n_in, (n_out if kind == "grouped" else m.groups * opg)
        if keep_out is not None and m.bias is not None:
            slice_tensor(m, "bias", 0, keep_out)

    def count(self, m: nn.Module, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        n_in = m.in_channels if n_in is None else n_in
        n_out = m.out_channels if n_out is None else n_out
        k = math.prod(m.kernel_size)
        bias = n_out if m.bias is not None else 0
        if self._kind(m) == "dense":
            return n_out * n_in * k + bias, (n_out / m.out_channels) * (n_in / m.in_channels)
        per_group = m.in_channels // m.groups  # unchanged: groups are removed whole
        return n_out * per_group * k + bias, n_out / m.out_channels


# --------------------------------------------------------------------------- linear, embedding


@register_handler(nn.Linear)
class LinearHandler(Handler):
    """Features on the last dimension. Applied along another dimension than the channels (a
    token-mixing MLP), it leaves the channel labels alone and is itself not pruned."""

    def propagate(self, call: Call, m: nn.Linear, inputs: list[Flow | None]) -> Flow | None:
        ndim = len(call.out_shape)
        x = inputs[0] if inputs else None
        if x is not None and x.dim != ndim - 1:
            return x
        x = _channel_input(inputs, ndim - 1, m.in_features)
        out = call.new(m.out_features)
        call.record(in_labels=None if x is None else x.labels, out_labels=out)
        return Flow(ndim - 1, out)

    def prune(
        self, m: nn.Linear, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is not None:
            slice_tensor(m, "weight", 0, keep_out)
            slice_tensor(m, "bias", 0, keep_out)
            m.out_features = len(keep_out)
        if keep_in is not None:
            slice_tensor(m, "weight", 1, keep_in)
            m.in_features = len(keep_in)

    def count(self, m: nn.Linear, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        n_in = m.in_features if n_in is None else n_in
        n_out = m.out_features if n_out is None else n_out
        bias = n_out if m.bias is not None else 0
        return n_out * n_in + bias, (n_out / m.out_features) * (n_in / m.in_features)


@register_handler(nn.Embedding)
class EmbeddingHandler(Handler):
    def propagate(self, call: Call, m: nn.Embedding, inputs: list[Flow | None]) -> Flow:
        out = call.new(m.embedding_dim)
        call.record(out_labels=out)
        return Flow(len(call.out_shape) - 1, out)

    def prune(
        self, m: nn.Embedding, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is not None:
            slice_tensor(m, "weight", 1, keep_out)
            m.embedding_dim = len(keep_out)

    def count(self, m: nn.Embedding, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        return m.num_embeddings * (m.embedding_dim if n_out is None else n_out), 1.0


# --------------------------------------------------------------------------- normalisation


@register_handler(nn.modules.batchnorm._NormBase)
class ChannelNormHandler(Handler):
    """BatchNorm, SyncBatchNorm and InstanceNorm: per-channel parameters and statistics."""

    def propagate(self, call: Call, m: nn.Module, inputs: list[Flow | None]) -> Flow | None:
        x = _channel_input(inputs, 1, m.num_features)
        if x is None:
            _pin_misplaced(call, inputs, x, "normalisation")
            return inputs[0] if inputs else None
        call.record(in_labels=x.labels, out_labels=x.labels)
        return x

    def prune(
        self, m: nn.Module, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is None:
            return
        for name in ("weight", "bias", "running_mean", "running_var"):
            slice_tensor(m, name, 0, keep_out)
        m.num_features = len(keep_out)

    def count(self, m: nn.Module, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        n = m.num_features if n_out is None else n_out
        return (2 * n if m.affine else 0), 1.0


@register_handler(nn.GroupNorm)
class GroupNormHandler(Handler):
    """Each normalisation group is one unit: removing whole groups leaves the statistics of the
    other groups, and so the outputs, unchanged."""

    def propagate(self, call: Call, m: nn.GroupNorm, inputs: list[Flow | None]) -> Flow | None:
        x = _channel_input(inputs, 1, m.num_channels)
        if x is None:
            _pin_misplaced(call, inputs, x, "GroupNorm")
            return inputs[0] if inputs else None
        size = m.num_channels // m.num_groups
        for k in range(m.num_groups):
            call.labels.union_all(x.labels[k * size : (k + 1) * size])
        call.record(in_labels=x.labels, out_labels=x.labels)
        return x

    def prune(
        self, m: nn.GroupNorm, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is None:
            return
        size = m.num_channels // m.num_groups
        slice_tensor(m, "weight", 0, keep_out)
        slice_tensor(m, "bias", 0, keep_out)
        m.num_channels = len(keep_out)
        m.num_groups = len(keep_out) // size

    def count(self, m: nn.GroupNorm, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        n = m.num_channels if n_out is None else n_out
        return (2 * n if m.affine else 0), 1.0


@register_handler(nn.LayerNorm)
class LayerNormHandler(Handler):
    """LayerNorm over the channel dimension only (channels-last, as in ConvNeXt) is prunable, but
    not exactly: its mean and variance are taken over the channels, so removing channels changes
    them even when those channels are zero. The graph marks such groups ``exact=False``."""

    def propagate(self, call: Call, m: nn.LayerNorm, inputs: list[Flow | None]) -> Flow | None:
        x = inputs[0] if inputs else None
        if x is None:
            return None
        ndim = len(call.out_shape)
        normalised = range(ndim - len(m.normalized_shape), ndim)
        if len(m.normalized_shape) == 1 and x.dim == ndim - 1:
            call.record(in_labels=x.labels, out_labels=x.labels, exact=False)
        elif x.dim in normalised:
            call.fix(x.labels, "LayerNorm over channels and other dimensions")
        return x

    def prune(
        self, m: nn.LayerNorm, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is None:
            return
        slice_tensor(m, "weight", 0, keep_out)
        slice_tensor(m, "bias", 0, keep_out)
        m.normalized_shape = (len(keep_out),)

    def count(self, m: nn.LayerNorm, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        if n_out is None:
            return super().count(m, n_in, n_out)
        per = (1 if m.weight is not None else 0) + (1 if m.bias is not None else 0)
        return per * n_out, 1.0


@register_handler(nn.PReLU)
class PReLUHandler(Handler):
    def propagate(self, call: Call, m: nn.PReLU, inputs: list[Flow | None]) -> Flow | None:
        x = inputs[0] if inputs else None
        if m.num_parameters == 1 or x is None:
            return x
        if x.dim != 1 or len(x) != m.num_parameters:
            call.fix(x.labels, "PReLU with per-channel slopes on a non-channel dimension")
            return x
        call.record(in_labels=x.labels, out_labels=x.labels)
        return x

    def prune(
        self, m: nn.PReLU, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        if keep_out is not None and m.num_parameters > 1:
            slice_tensor(m, "weight", 0, keep_out)
            m.num_parameters = len(keep_out)

    def count(self, m: nn.PReLU, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        return (m.num_parameters if n_out is None or m.num_parameters == 1 else n_out), 1.0


# --------------------------------------------------------------------------- parameter-free


class PassThroughHandler(Handler):
    """Element-wise or spatial layers: channels in are channels out."""

    def propagate(self, call: Call, module: nn.Module, inputs: list[Flow | None]) -> Flow | None:
        return inputs[0] if inputs else None


register_handler(
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.Upsample,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.ZeroPad2d,
)(PassThroughHandler)  # fmt: skip
