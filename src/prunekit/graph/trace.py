"""Tracing a model into a graph of operations, with the shapes every node produced.

torch.fx is the tracer: it records module calls with their qualified names and every functional
op with its exact arguments (the ``dim`` of a ``cat``, the sizes of a ``view``), which is what
channel coupling needs, and it runs on any device without executing the model's maths twice.
Its weakness is Python control flow that depends on tensor values. Rather than failing on the
whole model, a submodule that cannot be traced becomes an opaque leaf: the rest of the model is
still traced, and the leaf is either handled by a registered handler or refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import UnsupportedError
from prunekit.graph.handlers import handles_forward

SCOPE = "pk_scope"  # node.meta key: qualified name of the module whose code created the node
SHAPE = "pk_shape"  # node.meta key: torch.Size of a tensor output, or a pytree of them


class _Tracer(fx.Tracer):
    """fx tracer that keeps user-chosen leaves and records each node's enclosing module."""

    def __init__(self, leaves: set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self._scope = [""]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # a layer with a handler (a user's own layer type included) is one call to that handler
        return (
            module_qualified_name in self.leaves
            or handles_forward(m)
            or super().is_leaf_module(m, module_qualified_name)
        )

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self._scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._scope.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[SCOPE] = self._scope[-1]
        return node


@dataclass
class Traced:
    """The traced graph, the opaque leaves the fallback chose, and why each one was needed."""

    graph: fx.Graph
    opaque: dict[str, str] = field(default_factory=dict)


def _trace_error(module: nn.Module, leaves: set[str], prefix: str = "") -> Exception | None:
    try:
        _Tracer({leaf[len(prefix) :] for leaf in leaves if leaf.startswith(prefix)}).trace(module)
    except Exception as exc:  # any tracing failure: control flow, unsupported ops, ...
        return exc
    return None


def _find_untraceable(model: nn.Module, leaves: set[str]) -> dict[str, str]:
    """The deepest submodules that fail to trace on their own (their children all trace)."""
    found: dict[str, str] = {}

    leaf_test = _Tracer(leaves)

    def visit(name: str, module: nn.Module) -> bool:
        """True if ``module`` (with the leaves found so far) traces."""
        prefix = f"{name}." if name else ""
        for child_name, child in module.named_children():
            full = prefix + child_name
            # a leaf (any torch.nn layer) is called, never traced into, so it cannot be the
            # cause; traced on its own it may well fail (BatchNorm checks ``input.dim()``)
            if full in leaves or full in found or leaf_test.is_leaf_module(child, full):
                continue
            if not visit(full, child):
                err = _trace_error(child, leaves | set(found), prefix=full + ".")
                if err is not None:
                    found[full] = _reason(err)
        return _trace_error(module, leaves | set(found), prefix=prefix) is None

    visit("", model)
    return found


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}"


class TraceFailure(UnsupportedError):
    """The model's own ``forward`` (not a submodule) cannot be traced."""

    def __init__(self, model: nn.Module, reason: str) -> None:
        super().__init__(
            f"the forward of the model itself ({type(model).__name__}) cannot be traced by "
            f"torch.fx ({reason}): move the untraceable code into a submodule and pass it in "
            "ignore=[...] (or register a handler for it)"
        )
        self.path, self.reason = "", reason


def trace(model: nn.Module, leaves: set[str] = frozenset()) -> Traced:  # type: ignore[assignment]
    """Trace ``model``; submodules that fx cannot trace become opaque leaves (see module doc)."""
    leaves = set(leaves)
    try:
        return Traced(_Tracer(leaves).trace(model))
    except Exception:
        opaque = _find_untraceable(model, leaves)
    try:
        return Traced(_Tracer(leaves | set(opaque)).trace(model), opaque)
    except Exception as err:  # every submodule traces: the model's own forward is the cause
        raise TraceFailure(model, _reason(err)) from err


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph, storing each node's output shape and the FLOPs of each layer call.

    One FLOP counter runs for the whole pass; each node's FLOPs are the growth of its total
    while the node runs (the counter's own module names are lost inside an Interpreter), keyed by
    the layer's qualified name; ``""`` holds the whole graph's total.
    """

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode) -> None:
        super().__init__(gm)
        self.counter = counter
        self.flops: dict[str, int] = {"": 0}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        out = super().run_node(n)
        flops = int(self.counter.get_total_flops() - before)
        self.flops[""] += flops
        if n.op == "call_module" and flops:
            self.flops[str(n.target)] = self.flops.get(str(n.target), 0) + flops
        n.meta[SHAPE] = tree_map(lambda v: v.shape if isinstance(v, torch.Tensor) else None, out)
        return out


def record_shapes(model: nn.Module, graph: fx.Graph, inputs: tuple[Any, ...]) -> dict[str, int]:
    """Run the graph on ``inputs`` (eval mode, no grad), store each node's shape, and
    return the FLOPs of every module on the way: one forward pass serves both."""
    from prunekit.measure._inputs import inference
    from prunekit.measure.flops import standard_attention

    counter = FlopCounterMode(display=False)
    recorder = _ShapeRecorder(fx.GraphModule(model, graph), counter)
    # eval mode: building a graph must not update BatchNorm statistics; and the same attention
    # path as measure.count_flops, so the plan's FLOPs and the measured ones agree
    with inference(model), standard_attention(), counter:
        recorder.run(*inputs)
    return recorder.flops
