"""Rules for functional ops and tensor methods: how channel labels cross ``add``, ``cat``,
``flatten``, ``permute`` ...

A rule gets an :class:`OpCall` (the node's arguments with their flows and shapes) and returns
the output flow (a tuple of flows for ops such as ``chunk``). Rules are keyed by the op's name, so
``torch.add``, ``operator.add`` and ``Tensor.add`` share one rule. An op with no rule whose inputs
carry channels is refused by name (see :mod:`prunekit.graph.core`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from prunekit.graph.flow import Flow, Labels

Rule = Callable[["OpCall"], Any]
_RULES: dict[str, Rule] = {}


@dataclass
class OpCall:
    node: fx.Node
    labels: Labels
    flow_of: Callable[[Any], Any]
    shape_of: Callable[[Any], Any]
    where: str  # module path, for messages

    @property
    def out_shape(self) -> Any:
        return self.shape_of(self.node)

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > i:
            return self.node.args[i]
        return self.node.kwargs.get(name, default)

    def fix(self, flow: Flow | None, why: str) -> None:
        if flow is not None:
            self.labels.fix(flow.labels, f"{why} ({self.where or 'model'}: {op_name(self.node)})")


def op_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def register_op(*names: str) -> Callable[[Rule], Rule]:
    """Register a rule for ops called ``names`` (function ``__name__`` or method name)."""

    def decorator(rule: Rule) -> Rule:
        for n in names:
            _RULES[n] = rule
        return rule

    return decorator


def rule_for(node: fx.Node) -> Rule | None:
    return _RULES.get(op_name(node))


def is_multi(shape: Any) -> bool:
    """True for the shapes of a tuple of tensors (a ``torch.Size`` is itself a tuple)."""
    return isinstance(shape, (tuple, list)) and not isinstance(shape, torch.Size)


def _dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


# --------------------------------------------------------------------------- element-wise


UNARY_OPS = frozenset({
    "relu", "relu_", "relu6", "sigmoid", "sigmoid_", "tanh", "tanh_", "gelu", "silu", "hardswish",
    "hardsigmoid", "leaky_relu", "elu", "selu", "celu", "softplus", "mish", "hardtanh", "dropout",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "abs", "neg",
    "exp", "log", "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "clamp_max", "contiguous",
    "clone", "detach", "to", "float", "half", "double", "type_as", "sign", "sin", "cos", "erf",
    "reciprocal", "square", "pow", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample",
    "expand", "expand_as", "requires_grad_", "cpu", "cuda", "zeros_like", "ones_like",
    "empty_like", "full_like", "rand_like", "randn_like",
})  # fmt: skip


@register_op(*sorted(UNARY_OPS))
def unary(op: OpCall) -> Flow | None:
    """Element-wise or spatial: the first tensor argument's channels pass through."""
    return op.flow_of(op.node.args[0]) if op.node.args else None


@register_op("pad")
def pad(op: OpCall) -> Flow | None:
    x = op.flow_of(op.arg(0, "input"))
    widths = op.arg(1, "pad", ())
    ndim = len(op.out_shape)
    if x is not None and len(widths) // 2 > ndim - 1 - x.dim:  # padding reaches the channel dim
        op.fix(x, "padding along the channel dimension")
    return x


BROADCAST_OPS = frozenset({
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div", "div_",
    "itruediv", "maximum", "minimum", "where", "floordiv", "mod", "fmod",
})  # fmt: skip


@register_op(
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div", "div_",
    "itruediv", "maximum", "minimum", "where", "floordiv", "mod", "fmod",
)  # fmt: skip
def broadcast(op: OpCall) -> Flow | None:
    """Tensors combined element-wise keep the same channels: their labels are united.

    An operand broadcast along the channel dimension (size 1) is not coupled. A tensor without
    labels but with the full channel size (a constant of the model) pins the channels.
    """
    out_shape = op.out_shape
    if out_shape is None:
        return None
    ndim = len(out_shape)
    result: Flow | None = None
    pinned: list[str] = []
    operands = [*op.node.args, *op.node.kwargs.values()]
    flows: list[Flow] = []
    for a in operands:
        f = op.flow_of(a)
        shape = op.shape_of(a)
        if f is None:
            if shape is not None and len(shape) > 0:
                pinned.append(str(a))
            continue
        f = f.moved(f.dim + ndim - len(shape))
        if shape[f.dim - (ndim - len(shape))] == 1 and out_shape[f.dim] != 1:
            continue  # broadcast along the channels
        flows.append(f)
    for f in flows:
        if result is None:
            result = f
        elif f.dim != result.dim:
            op.fix(f, "element-wise op on tensors whose channels are on different dimensions")
            op.fix(result, "element-wise op on tensors whose channels are on different dimensions")
        else:
            op.labels.union_arrays(result.labels, f.labels)
    if result is not None and pinned:
        for a in operands:
            shape = op.shape_of(a)
            if op.flow_of(a) is None and shape is not None and len(shape) > 0:
                d = result.dim - (ndim - len(shape))
                if 0 <= d < len(shape) and shape[d] == len(result):
                    op.fix(result, "element-wise op with a tensor of fixed channel count")
    return result


# --------------------------------------------------------------------------- joining, splitting


def _sequence_flows(op: OpCall, tensors: Any) -> list[Any]:
    """Flows of a list of tensors, or of a tuple that another node produced (``x.chunk(2)[::-1]``)."""
    if isinstance(tensors, fx.Node):
        f = op.flow_of(tensors)
        return list(f) if isinstance(f, tuple) else [f]
    return [op.flow_of(t) for t in tensors]


@register_op("cat", "concat", "concatenate")
def cat(op: OpCall) -> Flow | None:
    flows = _sequence_flows(op, op.arg(0, "tensors"))
    ndim = len(op.out_shape)
    dim = _dim(op.arg(1, "dim", 0), ndim)
    if any(f is None for f in flows):
        for f in flows:
            op.fix(f, "concat with a tensor whose channels are not traced")
        return None
    if all(f.dim == dim for f in flows):
        return Flow(dim, np.concatenate([f.labels for f in flows]))
    if all(f.dim == flows[0].dim for f in flows):
        for f in flows[1:]:
            op.labels.union_arrays(flows[0].labels, f.labels)
        return flows[0]
    for f in flows:
        op.fix(f, "concat of tensors with channels on different dimensions")
    return None


@register_op("stack")
def stack(op: OpCall) -> Flow | None:
    flows = _sequence_flows(op, op.arg(0, "tensors"))
    ndim = len(op.out_shape)
    dim = _dim(op.arg(1, "dim", 0), ndim)
    if any(f is None for f in flows) or any(f.dim != flows[0].dim for f in flows):
        for f in flows:
            op.fix(f, "stack of tensors with different channel layouts")
        return None
    for f in flows[1:]:
        op.labels.union_arrays(flows[0].labels, f.labels)
    return flows[0].moved(flows[0].dim + (1 if dim <= flows[0].dim else 0))


def _pieces(op: OpCall, x: Flow, sizes: list[int], fixed: str | None) -> tuple[Flow, ...]:
    """Split along the channel dim: equal pieces stay equal by uniting their positions.

    ``fixed`` says why the piece sizes cannot follow the pruned width (sizes written into the
    model as numbers); then the channels are pinned.
    """
    if fixed is None and len(set(sizes)) != 1:
        fixed = "split of the channels into unequal pieces"
    if fixed is not None:
        op.fix(x, fixed)
    else:
        parts = np.split(x.labels, len(sizes))
        for p in parts[1:]:
            op.labels.union_arrays(parts[0], p)
    bounds = np.cumsum([0, *sizes])
    return tuple(Flow(x.dim, x.labels[a:b]) for a, b in itertools.pairwise(bounds))


@register_op("chunk", "split", "tensor_split", "unbind")
def split(op: OpCall) -> Any:
    x = op.flow_of(op.node.args[0])
    shapes = op.out_shape
    n = len(shapes)
    name = op_name(op.node)
    if name == "unbind":
        dim = _dim(op.arg(1, "dim", 0), len(op.shape_of(op.node.args[0])))
        if x is not None and x.dim == dim:
            op.fix(x, "unbind along the channels")
            return tuple(None for _ in range(n))
        return tuple(
            None if x is None else x.moved(x.dim - (1 if dim < x.dim else 0)) for _ in range(n)
        )
    dim = _dim(op.arg(2, "dim", 0), len(op.shape_of(op.node.args[0])))
    if x is None or x.dim != dim:
        return tuple(x for _ in range(n))
    # only a number of pieces scales with the width; a size or a list of sizes written as
    # numbers does not (``split(4)`` of 6 channels gives 4 + 2), a size computed from the
    # tensor's own shape (an fx node) does
    how = (
        op.node.args[1]
        if len(op.node.args) > 1
        else next((v for k, v in op.node.kwargs.items() if k != "dim"), None)
    )
    fixed = None
    if name == "chunk":
        if how != n:  # chunk(4) of 6 channels gives 3 pieces: the count depends on the width
            fixed = f"chunk({how}) that gives {n} pieces"
    elif name == "split" and not isinstance(how, fx.Node):
        fixed = f"split of the channels into hard-coded sizes {how}"
    elif name == "tensor_split" and not isinstance(how, int):
        fixed = "tensor_split of the channels at hard-coded indices"
    return _pieces(op, x, [s[dim] for s in shapes], fixed)


@register_op("getitem")
def getitem(op: OpCall) -> Any:
    src, idx = op.node.args[0], op.node.args[1]
    flow = op.flow_of(src)
    if isinstance(flow, tuple):  # an element of split/chunk output, or of a module's tuple output
        if isinstance(idx, (int, slice)):
            return flow[idx]
        for f in flow:  # the pieces' channels are lost from view: they must stay
            op.fix(f if isinstance(f, Flow) else None, "indexing a tuple by a computed index")
        return None
    if flow is None or not isinstance(flow, Flow):
        return None
    return _index(op, flow, idx)


def _index(op: OpCall, x: Flow, idx: Any) -> Flow | None:
    """Tensor indexing: full slices along the channels keep them; anything else pins them."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    in_ndim = len(op.shape_of(op.node.args[0]))
    if any(i is Ellipsis for i in idx):
        k = idx.index(Ellipsis)
        idx = idx[:k] + (slice(None),) * (in_ndim - len(idx) + 1) + idx[k + 1 :]
    out_dim, in_dim = 0, 0
    for i in idx:
        if i is None:
            out_dim += 1
            continue
        if in_dim == x.dim:
            if isinstance(i, slice) and i == slice(None):
                return x.moved(out_dim)
            op.fix(x, "indexing into the channels")
            return None
        if isinstance(i, slice):
            out_dim += 1
        elif not isinstance(i, int):
            op.fix(x, "advanced indexing")
            return None
        in_dim += 1
    return x.moved(out_dim + (x.dim - in_dim))  # the channel dim lies past the index


# --------------------------------------------------------------------------- shapes


def reshape_groups(
    in_shape: Sequence[int], out_shape: Sequence[int]
) -> list[tuple[range, range]] | None:
    """Minimal runs of input and output dimensions with equal products (row-major reshape)."""
    groups = []
    i = j = 0
    while i < len(in_shape) and j < len(out_shape):
        i0, j0 = i, j
        pi, pj = in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(in_shape):
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < len(out_shape):
                pj *= out_shape[j]
                j += 1
            else:
                return None
        groups.append((range(i0, i), range(j0, j)))
    if any(s != 1 for s in in_shape[i:]) or any(s != 1 for s in out_shape[j:]):
        return None
    return groups


def reshape_flow(
    op: OpCall, x: Flow | None, in_shape: Sequence[int], out_shape: Sequence[int]
) -> Flow | None:
    """Map the channel labels through a row-major reshape (view, flatten, squeeze ...).

    If the channel dimension is merged with others into one output dimension, each label repeats
    once per position of the dimensions after it, and the whole block once per position of those
    before it: a flatten into a Linear. Channels split across several dimensions are pinned.
    """
    if x is None:
        return None
    groups = reshape_groups(in_shape, out_shape)
    for ins, outs in groups or ():
        if x.dim not in ins:
            continue
        out_dims = [d for d in outs if out_shape[d] != 1] or [outs[0]]
        if len(out_dims) > 1:
            if not _channel_shuffle(op, x, ins, out_dims, out_shape):
                op.fix(x, "reshape that splits or mixes the channels across dimensions")
            return None
        inner = math.prod(in_shape[x.dim + 1 : ins.stop])
        outer = math.prod(in_shape[ins.start : x.dim])
        return Flow(out_dims[0], np.tile(np.repeat(x.labels, inner), outer))
    if len(x) == 1:  # a size-1 channel dim squeezed away
        return None
    op.fix(x, "reshape")
    return None


SIZED = "pk_sized"  # node.meta key: the op's sizes are computed from the tensor's own shape
SHUFFLED = "pk_shuffled"  # node.meta key: (dim, labels) of a channel shuffle's result


def _channel_shuffle(
    op: OpCall, x: Flow, ins: range, out_dims: list[int], out_shape: Sequence[int]
) -> bool:
    """ShuffleNet's channel shuffle: ``view(n, g, c // g, h, w)``, ``transpose(1, 2)``, then a
    reshape back to ``c`` channels. Channel ``i * (c/g) + j`` goes to ``j * g + i``; with the
    sizes computed from the tensor's shape, removing the ``g`` channels ``i * (c/g) + j`` of one
    ``j`` (one unit) leaves a shuffle of the same kind, so the channels prune in those units.
    Sizes written as numbers could not follow: then (and for any other split) this is False."""
    node = op.node
    if len(ins) != 1 or len(out_dims) != 2 or out_dims[1] != out_dims[0] + 1:
        return False
    if not node.meta.get(SIZED):
        op.fix(x, "channel shuffle whose group sizes are written as numbers")
        return True
    a, b = out_dims
    user = _only_user(node)
    while user is not None and op_name(user) in ("contiguous", "clone"):
        user = _only_user(user)
    if user is None or op_name(user) not in ("transpose", "permute", "swapaxes"):
        return False
    ndim = len(out_shape)
    order = permutation(OpCall(user, op.labels, op.flow_of, op.shape_of, op.where), ndim)
    if order is None or order[a] != b or order[b] != a:
        return False
    merge = _only_user(user)
    while merge is not None and op_name(merge) in ("contiguous", "clone"):
        merge = _only_user(merge)
    if merge is None or op_name(merge) not in ("view", "reshape", "flatten"):
        return False
    merged = op.shape_of(merge)
    if merged is None or len(merged) != ndim - 1 or merged[a] != len(x):
        return False
    grid = x.labels.reshape(out_shape[a], out_shape[b])
    for column in grid.T:
        op.labels.union_all(column)
    merge.meta[SHUFFLED] = (a, grid.T.reshape(-1))
    return True


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


@register_op(
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"
)
def reshape(op: OpCall) -> Flow | None:
    shuffled = op.node.meta.get(SHUFFLED)
    if shuffled is not None:
        return Flow(*shuffled)
    src = op.node.args[0]
    return reshape_flow(op, op.flow_of(src), op.shape_of(src), op.out_shape)


def permutation(op: OpCall, ndim: int) -> list[int] | None:
    """For a permute / transpose / movedim / t: ``order[i]`` is the input dim that becomes
    output dim ``i``."""
    name = op_name(op.node)
    if name == "permute":
        dims = op.node.args[1:] if len(op.node.args) > 2 else op.arg(1, "dims")
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        return [_dim(d, ndim) for d in dims]
    if name == "t":
        return list(range(ndim))[::-1] if ndim == 2 else list(range(ndim))
    a, b = op.arg(1, "dim0", op.arg(1, "source")), op.arg(2, "dim1", op.arg(2, "destination"))
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    a, b = _dim(a, ndim), _dim(b, ndim)
    order = list(range(ndim))
    if name == "movedim":
        order = [d for d in range(ndim) if d != a]
        order.insert(b, a)
        return order
    order[a], order[b] = order[b], order[a]
    return order


@register_op("permute")
def permute(op: OpCall) -> Flow | None:
    x = op.flow_of(op.node.args[0])
    if x is None:
        return None
    dims = op.node.args[1:] if len(op.node.args) > 2 else op.arg(1, "dims")
    dims = [
        _dim(d, len(op.out_shape)) for d in (dims if isinstance(dims, (list, tuple)) else [dims])
    ]
    return x.moved(dims.index(x.dim))


@register_op("transpose", "swapaxes", "movedim")
def transpose(op: OpCall) -> Flow | None:
    x = op.flow_of(op.node.args[0])
    if x is None:
        return None
    ndim = len(op.out_shape)
    a, b = _dim(op.arg(1, "dim0"), ndim), _dim(op.arg(2, "dim1"), ndim)
    if op_name(op.node) == "movedim":
        order = [d for d in range(ndim) if d != a]
        order.insert(b, a)
        return x.moved(order.index(x.dim))
    return x.moved(b if x.dim == a else a if x.dim == b else x.dim)


@register_op("mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod")
def reduce(op: OpCall) -> Any:
    name = op_name(op.node)
    if name in ("max", "min") and (
        isinstance(op.arg(1, "dim"), fx.Node) or "other" in op.node.kwargs
    ):
        return broadcast(op)  # torch.max(a, b): element-wise, not a reduction
    x = op.flow_of(op.node.args[0])
    if x is None:
        return None
    in_ndim = len(op.shape_of(op.node.args[0]))
    dims = op.arg(1, "dim")
    # keepdim's position: (input, dim, keepdim), but (input, p, dim, keepdim) for norm and
    # (input, dim, unbiased, keepdim) for std/var
    keepdim_at = 3 if name in ("norm", "std", "var") else 2
    if name == "norm":
        dims = op.arg(2, "dim")
    keepdim = bool(op.arg(keepdim_at, "keepdim", False))
    if dims is None:
        op.fix(x, "reduction over all dimensions")
        return None
    dims = [_dim(d, in_ndim) for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    if x.dim in dims:
        op.fix(x, "reduction over the channels")
        return None
    out = x if keepdim else x.moved(x.dim - sum(d < x.dim for d in dims))
    if is_multi(op.out_shape):  # max/min with a dim return (values, indices)
        return tuple(out for _ in op.out_shape)
    return out


@register_op("softmax", "log_softmax", "normalize", "cumsum", "cumprod")
def along_dim(op: OpCall) -> Flow | None:
    """Ops that mix values along one dimension: fine elsewhere, pins the channels if on them."""
    x = op.flow_of(op.node.args[0])
    if x is None:
        return None
    name = op_name(op.node)
    default = 1 if name == "normalize" else None
    d = op.arg(1, "dim", default)
    if d is None or _dim(d, len(op.out_shape)) == x.dim:
        op.fix(x, f"{name} across the channels")
    return x


@register_op("size", "dim", "numel", "getattr", "shape")
def no_channels(op: OpCall) -> None:
    return None


# --------------------------------------------------------------------------- library ops


@register_op("roll")
def roll(op: OpCall) -> Flow | None:
    """A shift along spatial dims (shifted windows) keeps the channels where they are; along the
    channels, or over the flattened tensor (no ``dims``), it moves them: pinned."""
    x = op.flow_of(op.node.args[0])
    if x is None:
        return None
    dims = op.arg(2, "dims")
    ndim = len(op.out_shape)
    dims = [] if dims is None else (dims if isinstance(dims, (list, tuple)) else [dims])
    if not dims or any(isinstance(d, int) and _dim(d, ndim) == x.dim for d in dims):
        op.fix(x, "roll that moves the channels")
        return None
    return x


def _contract(op: OpCall, a: Any, b: Any, out_ndim: int) -> Flow | None:
    """``a @ b`` over the last dim of ``a`` and the second-to-last of ``b`` (batch dims
    broadcast): channels on a contracted dim are pinned, others pass to the output."""
    result: Flow | None = None
    for t, keep in ((a, -2), (b, -1)):
        f = op.flow_of(t)
        shape = op.shape_of(t)
        if f is None or shape is None:
            continue
        n = len(shape)
        if n < 2:
            op.fix(f, "matrix product with a vector")
            continue
        if f.dim == n + keep:
            moved = f.moved(out_ndim + keep)
        elif f.dim < n - 2:
            moved = f.moved(f.dim + out_ndim - n)
        else:
            op.fix(f, "matrix product over the channels")
            continue
        if result is None:
            result = moved
        elif result.dim == moved.dim and len(result) == len(moved):
            op.labels.union_arrays(result.labels, moved.labels)
        else:
            op.fix(moved, "matrix product of tensors with channels on different dimensions")
            op.fix(result, "matrix product of tensors with channels on different dimensions")
            result = None
    return result


@register_op("matmul", "bmm", "__matmul__")
def matmul(op: OpCall) -> Flow | None:
    return _contract(op, op.node.args[0], op.node.args[1], len(op.out_shape))


@register_op("scaled_dot_product_attention")
def sdpa(op: OpCall) -> Flow | None:
    """``softmax(q k^T) v``: query and key features are contracted (pinned); the value's pass
    to the output, and batch or head dims shared by all three are coupled."""
    q, k, v = op.arg(0, "query"), op.arg(1, "key"), op.arg(2, "value")
    ndim = len(op.out_shape)
    out: Flow | None = None
    fv = op.flow_of(v)
    if fv is not None:
        n = len(op.shape_of(v))
        if fv.dim == n - 1:
            out = fv.moved(ndim - 1)
        elif fv.dim < n - 2:
            out = fv.moved(fv.dim + ndim - n)
        else:
            op.fix(fv, "attention over the channels")
    for t in (q, k):
        f = op.flow_of(t)
        if f is None:
            continue
        d = f.dim + ndim - len(op.shape_of(t))
        if out is not None and d == out.dim and d < ndim - 2 and len(f) == len(out):
            op.labels.union_arrays(out.labels, f.labels)
        else:
            op.fix(f, "attention over the channels")
    return out
