"""Tracing a model into a graph of operations, run on the example inputs as it is traced.

torch.fx is the recorder: it keeps module calls with their qualified names and every functional
op with its exact arguments (the ``dim`` of a ``cat``, the sizes of a ``view``, the parameters
passed to an ``F.conv2d``), which is what channel coupling needs. Plain fx tracing is symbolic and
fails on the Python control flow real layers are full of (``if x.shape[-1] % 2``, ``assert H ==
self.h``, padding computed from the input size). So every proxy here also carries the *concrete*
value the op produced on the example inputs: each op runs as it is recorded, and Python code
that asks a question about shapes or attributes gets the answer it would get at run time.

Only a question about tensor *values* (``if x.max() > 0``, ``x.item()``) has no answer that holds
for every input. The innermost submodule asking it becomes an opaque leaf: it runs as a whole,
the rest of the model is traced as usual, and the graph pins that submodule's channels (with the
reason) rather than refusing the model. The same pass records every node's output shape and the
FLOPs of every op (one forward pass of the model in all).
"""

from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.node import map_aggregate
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import UnsupportedError
from prunekit.graph.handlers import handles_forward

SCOPE = "pk_scope"  # node.meta key: qualified name of the module whose code created the node
SHAPE = "pk_shape"  # node.meta key: torch.Size of a tensor output, or a pytree of them
FLOPS = "pk_flops"  # node.meta key: FLOPs the counter measured while the node ran

# tensor attributes and methods that read metadata, not values: a branch on them is static
_META_ATTRS = frozenset({
    "shape", "dtype", "device", "ndim", "is_cuda", "is_sparse", "is_quantized", "requires_grad",
    "layout", "is_floating_point", "is_complex", "is_contiguous", "size", "dim", "numel",
    "nelement", "ndimension", "get_device", "element_size", "stride",
})  # fmt: skip


class ValueDependentError(RuntimeError):
    """Python code branched on (or read out) the values of a tensor."""


class _Concrete:
    """What the concrete proxies add to fx's: a value, and Python conversions that use it."""

    tracer: _Tracer

    @property
    def value(self) -> Any:
        raise NotImplementedError

    @property
    def data_dependent(self) -> bool:
        raise NotImplementedError

    def concrete(self, what: str) -> Any:
        if self.data_dependent:
            raise ValueDependentError(f"{what} of a value computed from tensor data")
        return self.value

    def __len__(self) -> int:  # a length is a shape: no tensor values are read
        return len(self.value)

    def __index__(self) -> int:
        return operator.index(self.concrete("an index"))

    def __int__(self) -> int:
        return int(self.concrete("int()"))

    def __float__(self) -> float:
        return float(self.concrete("float()"))

    def __ceil__(self) -> int:
        return math.ceil(self.concrete("math.ceil()"))

    def __floor__(self) -> int:
        return math.floor(self.concrete("math.floor()"))

    def __trunc__(self) -> int:
        return math.trunc(self.concrete("math.trunc()"))

    def __round__(self, n: int | None = None) -> Any:
        return round(self.concrete("round()"), n)

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__"):
            raise AttributeError(k)
        return _Attribute(self, k)  # type: ignore[arg-type]


class _Proxy(_Concrete, fx.Proxy):
    def __init__(self, node: fx.Node, tracer: _Tracer, value: Any, data: bool) -> None:
        fx.Proxy.__init__(self, node, tracer)
        self._value, self._data = value, data

    @property
    def value(self) -> Any:
        return self._value

    @property
    def data_dependent(self) -> bool:
        return self._data


class _Attribute(_Concrete, fx.proxy.Attribute):
    @property
    def value(self) -> Any:
        return getattr(self.root.value, self.attr)  # type: ignore[attr-defined]

    @property
    def data_dependent(self) -> bool:
        if self.attr in _META_ATTRS:
            return False
        return self.root.data_dependent  # type: ignore[attr-defined]


def _value(a: Any) -> Any:
    return a.value if isinstance(a, _Concrete) else a


def _shapes(value: Any) -> Any:
    """The shape of a tensor, or the same structure of shapes for a tuple/list/dict of them."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return (
            type(value)(map(_shapes, value))
            if not hasattr(value, "_fields")
            else tree_map(lambda v: v.shape if isinstance(v, torch.Tensor) else None, value)
        )
    if isinstance(value, dict):
        return tree_map(lambda v: v.shape if isinstance(v, torch.Tensor) else None, value)
    return None


def _run(fn: Any, args: Any, kwargs: Any) -> Any:
    return fn(*map_aggregate(args, _value), **map_aggregate(kwargs, _value))


class _Tracer(fx.Tracer):
    """fx tracer whose proxies carry the values the ops produce on the example inputs."""

    def __init__(
        self,
        leaves: set[str],
        inputs: tuple[Any, ...],
        counter: FlopCounterMode,
        opaque: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        super().__init__()
        self.proxy_buffer_attributes = True
        self._running = False  # a leaf (or an attribute lookup) runs for real
        self._static: set[fx.Node] = set()  # nodes whose value depends on no tensor's values
        self.leaves = leaves
        self.opaque = opaque
        self.inputs = inputs
        self.counter = counter
        self.flops: dict[str, int] = {"": 0}
        self._scope = [""]
        self._placeholders = 0

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a layer with a handler (a user's own layer type included) is one call to that handler
        return (
            module_qualified_name in self.leaves
            or module_qualified_name in self.opaque
            or handles_forward(m)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._running:  # a leaf running for real reads its real parameters
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._running:  # inside a leaf running for real: an ordinary call
            return forward(*args, **kwargs)
        path = self.path_of_module(m)
        self._scope.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # the innermost submodule whose own code failed: it becomes an opaque leaf
            if not hasattr(exc, "_pk_scope"):
                exc._pk_scope = path  # type: ignore[attr-defined]
            raise
        finally:
            self._scope.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE] = self._scope[-1]
        if node.op == "get_attr":  # also made by fx itself for a tensor passed as an argument
            value = self._attr(str(node.target))
            node.meta[SHAPE] = value.shape if isinstance(value, torch.Tensor) else None
        return node

    def _attr(self, path: str) -> Any:
        self._running = True
        try:
            value = self.root
            for part in path.split("."):
                value = getattr(value, part)
        finally:
            self._running = False
        return value

    def create_proxy(
        self,
        kind: str,
        target: Any,
        args: Any,
        kwargs: Any,
        name: str | None = None,
        type_expr: Any = None,
        proxy_factory_fn: Any = None,
    ) -> fx.Proxy:
        args_ = self.create_arg(args)
        kwargs_ = self.create_arg(kwargs)
        node = self.create_node(kind, target, args_, kwargs_, name, type_expr)
        before = self.counter.get_total_flops()
        data = True
        if kind == "placeholder":
            i = self._placeholders
            self._placeholders += 1
            value = self.inputs[i] if i < len(self.inputs) else (args[0] if args else None)
        elif kind == "get_attr":
            value = self._attr(str(target))
        elif kind == "call_module":
            module = self.root.get_submodule(target)
            value = self._call_leaf(str(target), module, args, kwargs)
        elif kind == "call_method":
            value = _run(getattr(_value(args[0]), target), args[1:], kwargs)
            data = target not in _META_ATTRS and (
                isinstance(value, torch.Tensor) or self._reads_data(node)
            )
        else:
            value = _run(target, args, kwargs)
            meta = target is getattr and len(args) > 1 and args[1] in _META_ATTRS
            data = not meta and (isinstance(value, torch.Tensor) or self._reads_data(node))
        if not data:
            self._static.add(node)
        flops = int(self.counter.get_total_flops() - before)
        if flops:
            node.meta[FLOPS] = flops
            self.flops[""] += flops
            if kind == "call_module":
                self.flops[str(target)] = self.flops.get(str(target), 0) + flops
        node.meta[SHAPE] = _shapes(value)
        return _Proxy(node, self, value, data)

    def _reads_data(self, node: fx.Node) -> bool:
        """True if an input of ``node`` holds (or was computed from) tensor values."""
        return any(a not in self._static for a in node.all_input_nodes)

    def _call_leaf(self, name: str, module: nn.Module, args: Any, kwargs: Any) -> Any:
        self._running = True
        try:
            return _run(module, args, kwargs)
        except Exception as exc:  # the model itself fails here: not a tracing matter
            exc._pk_leaf = name  # type: ignore[attr-defined]
            raise
        finally:
            self._running = False

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(obj.concrete("a branch on the truth"))  # type: ignore[attr-defined]

    def iter(self, obj: fx.Proxy) -> Any:
        n = len(obj.value)  # type: ignore[attr-defined]
        return iter([obj[i] for i in range(n)])


@dataclass
class Traced:
    """The traced graph (every node with its shape), the submodules that had to stay opaque and
    why, and the FLOPs of every layer call (``""``: the whole model)."""

    graph: fx.Graph
    opaque: dict[str, str] = field(default_factory=dict)
    flops: dict[str, int] = field(default_factory=dict)


def _reason(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"


class TraceFailure(UnsupportedError):
    """The model's own ``forward`` (not a submodule) cannot be traced."""

    def __init__(self, model: nn.Module, reason: str) -> None:
        self.fix = (
            "move that code into a submodule (which is then kept whole, its channels pinned), "
            "or register an op rule (prunekit.graph.register_op) for the function it calls"
        )
        super().__init__(
            f"the forward of the model itself ({type(model).__name__}) cannot be traced "
            f"({reason}): {self.fix}"
        )
        self.path, self.reason = "", reason


class ModelFailure(UnsupportedError):
    """The model raises on the example inputs."""

    def __init__(self, where: str, err: BaseException) -> None:
        super().__init__(
            f"the model fails on the example inputs in layer {where!r} ({_reason(err)}): "
            "check the input shapes"
        )


def _arguments(model: nn.Module, inputs: tuple[Any, ...]) -> dict[str, Any]:
    """Keyword arguments the root's forward leaves at their defaults, as concrete fx args."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for p in params[len(inputs) :]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[p.name] = None if p.default is inspect.Parameter.empty else p.default
    return out


def trace(
    model: nn.Module,
    leaves: set[str] = frozenset(),  # type: ignore[assignment]
    inputs: tuple[Any, ...] = (),
) -> Traced:
    """Trace ``model`` on ``inputs`` (eval mode, no grad); see the module doc."""

    leaves = set(leaves)
    opaque: dict[str, str] = {}
    defaults = _arguments(model, inputs)
    own = set(vars(model))
    try:
        return _trace(model, leaves, inputs, opaque, defaults)
    finally:  # fx keeps tensors made in forward as attributes of the root: take them off
        for key in set(vars(model)) - own:
            delattr(model, key)


def _trace(
    model: nn.Module,
    leaves: set[str],
    inputs: tuple[Any, ...],
    opaque: dict[str, str],
    defaults: dict[str, Any],
) -> Traced:
    from prunekit.measure._inputs import inference
    from prunekit.measure.flops import standard_attention

    while True:
        counter = FlopCounterMode(display=False)
        tracer = _Tracer(leaves, inputs, counter, set(opaque))
        try:
            # eval mode: building a graph must not update BatchNorm statistics; and the same
            # attention path as measure.count_flops, so the plan's FLOPs and the measured agree
            with inference(model), standard_attention(), counter:
                graph = tracer.trace(model, concrete_args=defaults or None)
        except Exception as err:
            leaf = getattr(err, "_pk_leaf", None)
            if leaf is not None:
                raise ModelFailure(leaf, err) from err
            scope = getattr(err, "_pk_scope", "")
            if not scope or scope in opaque:
                raise TraceFailure(model, _reason(err)) from err
            opaque[scope] = _reason(err)
            continue
        return Traced(graph, opaque, tracer.flops)
