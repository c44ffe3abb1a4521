"""The channel-coupling graph: build it from a model, read its groups, prune them physically.

:func:`build` traces the model (:mod:`~prunekit.graph.trace`), walks every node in order and lets
a handler (layers) or a rule (functional ops) propagate channel labels (:mod:`~prunekit.graph.flow`).
Each equivalence class of labels that nothing pins is a *unit*; units created by the same set of
layers form a :class:`Group`, the thing a pruning method scores and shrinks. Surgery removes the
positions of the chosen units from every layer that holds them, so the model shrinks for real.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from prunekit.errors import ConfigError, UnsupportedError
from prunekit.graph import ops
from prunekit.graph.flow import Flow, Labels
from prunekit.graph.handlers import Call, Handler, handler_for
from prunekit.graph.trace import SCOPE, SHAPE, record_shapes, trace
from prunekit.measure._inputs import Inputs, as_args

HOW_TO = (
    "register a handler (prunekit.graph.register_handler / register_op) or leave the layer out "
    "with ignore=[...]"
)


@dataclass
class Site:
    """One layer as the graph sees it: the labels along its input and output channel sides.

    ``in_kept``/``out_kept`` are the positions of the *original* layer still present, so a pruned
    model can be saved as "original architecture + kept indices" and rebuilt.
    """

    name: str
    module: nn.Module
    handler: Handler
    in_labels: np.ndarray | None = None
    out_labels: np.ndarray | None = None
    exact: bool = True
    in_kept: np.ndarray | None = None
    out_kept: np.ndarray | None = None
    calls: list[Call] = field(default_factory=list)


@dataclass
class ParamSite:
    """A parameter used directly in an element-wise op (a layer-scale ``gamma``), sliced along
    ``dim`` together with the channels it multiplies."""

    owner: nn.Module
    attr: str
    path: str
    dim: int
    labels: np.ndarray


@dataclass(frozen=True)
class Member:
    layer: str
    side: str  # "in" (input channels) or "out" (output channels / features)
    per_unit: int  # positions of this layer side removed with each unit


@dataclass
class Plan:
    """Predicted size of the model if the given units were removed."""

    params: int
    flops: int


class Group:
    """Channels that must be removed together, indexed ``0 .. size-1``.

    ``group.prune([i, j])`` removes units ``i`` and ``j`` from every member layer at once.
    """

    def __init__(self, graph: Graph, name: str, units: list[int]) -> None:
        self.graph = graph
        self.name = name
        self.units = units  # root labels, in the order of the group's first source layer

    @property
    def size(self) -> int:
        return len(self.units)

    def __len__(self) -> int:
        return len(self.units)

    def __repr__(self) -> str:
        layers = sorted({m.layer for m in self.members})
        return f"Group({self.name!r}, size={self.size}, layers={layers})"

    @property
    def members(self) -> list[Member]:
        return self.graph._members(self)

    @property
    def exact(self) -> bool:
        """False if a member normalises across the channels (LayerNorm): removing zeroed
        channels then changes its statistics, so outputs are not preserved exactly."""
        names = {m.layer for m in self.members}
        return all(self.graph.sites[n].exact for n in names if n in self.graph.sites)

    def _roots(self, indices: Iterable[int]) -> list[int]:
        idx = sorted({int(i) for i in indices})
        if idx and (idx[0] < 0 or idx[-1] >= self.size):
            raise ConfigError(f"group {self.name!r} has {self.size} channels; got indices {idx}")
        return [self.units[i] for i in idx]

    def prune(self, indices: Iterable[int]) -> None:
        """Physically remove units ``indices`` from every member layer."""
        roots = self._roots(indices)
        if len(roots) >= self.size:
            raise ConfigError(
                f"pruning every channel of group {self.name!r} would disconnect the model"
            )
        self.graph.remove(roots)

    def zero(self, indices: Iterable[int], *, filters_only: bool = False) -> None:
        """Zero the output-side parameters of units ``indices`` so those channels output zero
        everywhere (the soft version of :meth:`prune`; used to check surgery). With
        ``filters_only``, only the filters (conv / Linear weights and biases) are zeroed, as soft
        filter pruning does between epochs; norm layers keep their parameters."""
        self.graph.zero(self._roots(indices), filters_only=filters_only)

    def scores(self, fn: Any) -> torch.Tensor:
        """Per-unit sums of ``fn(weight)`` over the output side of every member layer, where
        ``fn`` maps a weight with outputs on dim 0 to one score per output position."""
        return self.graph.unit_scores(self, fn)

    def values(self, fn: Any) -> torch.Tensor:
        """Per-unit sums of ``fn(site)``: one value per output position of each member layer
        (see :meth:`Graph.unit_values`)."""
        return self.graph.unit_values(self, fn)

    @property
    def out_layers(self) -> list[str]:
        """Names of the layers whose outputs carry this group's channels."""
        return [site.name for site, _ in self.graph._out_sites(self)]


class Graph:
    """Channel-coupling graph of a model for given example inputs; see :func:`build`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.labels = Labels()
        self.sites: dict[str, Site] = {}
        self.param_sites: list[ParamSite] = []
        self.groups: list[Group] = []
        self.opaque: dict[str, str] = {}
        self._per_module_flops: dict[str, int] | None = None
        self._roots_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._out_index: tuple[tuple[str, ...], dict[str, list[tuple[Site, np.ndarray]]]] | None = (
            None
        )
        self.inputs: tuple[Any, ...] = ()

    # ------------------------------------------------------------------ reading
    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.groups)
        raise ConfigError(f"no group {name!r}; groups: {known}")

    def __repr__(self) -> str:
        return f"Graph({len(self.groups)} groups, {len(self.sites)} layers)"

    def _unit_sides(self) -> Iterable[tuple[Site, str, np.ndarray, np.ndarray]]:
        for site in self.sites.values():
            for side, arr in (("in", site.in_labels), ("out", site.out_labels)):
                if arr is not None and len(arr):
                    yield site, side, arr, self._roots(site.name, side, arr)

    def _roots(self, name: str, side: str, arr: np.ndarray) -> np.ndarray:
        """Roots of a label array, cached: labels stop merging once the graph is built, and
        surgery replaces the arrays it shrinks (a new object invalidates the entry)."""
        cached = self._roots_cache.get((name, side))
        if cached is not None and cached[0] is arr:
            return cached[1]
        roots = self.labels.roots(arr)
        self._roots_cache[(name, side)] = (arr, roots)
        return roots

    def _members(self, group: Group) -> list[Member]:
        units = set(group.units)
        out = []
        for site, side, _, roots in self._unit_sides():
            hit = np.isin(roots, list(units))
            if hit.any():
                out.append(Member(site.name, side, int(hit.sum()) // group.size))
        return out

    # ------------------------------------------------------------------ planning
    def per_module_flops(self) -> dict[str, int]:
        if self._per_module_flops is None:
            from prunekit.measure import count_flops

            self._per_module_flops = count_flops(self.model, self.inputs).per_module
        return self._per_module_flops

    def plan(self, removed: Iterable[int]) -> Plan:
        """Params and FLOPs the model would have without the units whose roots are ``removed``."""
        removed = np.fromiter(removed, dtype=np.int64)
        flops = self.per_module_flops()
        total_flops = flops.get("", sum(flops.values()))
        params = sum(p.numel() for p in self.model.parameters())
        kept: dict[str, dict[str, int | None]] = {}
        for site, side, _, roots in self._unit_sides():
            kept.setdefault(site.name, {})[side] = int((~np.isin(roots, removed)).sum())
        new_flops = total_flops
        for name, sides in kept.items():
            site = self.sites[name]
            dense_params, _ = site.handler.count(site.module, None, None)
            p, _ = site.handler.count(site.module, sides.get("in"), sides.get("out"))
            params += p - dense_params
            dense_flops = flops.get(name, 0)
            new_flops += (
                site.handler.flops(
                    site.module, sides.get("in"), sides.get("out"), dense_flops, site.calls
                )
                - dense_flops
            )
        for ps in self.param_sites:
            t = getattr(ps.owner, ps.attr)
            n = int((~np.isin(self.labels.roots(ps.labels), removed)).sum())
            params -= t.numel() // t.shape[ps.dim] * (t.shape[ps.dim] - n)
        return Plan(int(params), int(new_flops))

    # ------------------------------------------------------------------ surgery
    def remove(self, roots: Sequence[int]) -> None:
        """Remove every position carrying a label of the units ``roots``, in every layer."""
        removed = np.asarray(list(roots), dtype=np.int64)
        for site in list(self.sites.values()):
            keeps: dict[str, torch.Tensor | None] = {"in": None, "out": None}
            for side in ("in", "out"):
                arr = getattr(site, f"{side}_labels")
                if arr is None:
                    continue
                mask = ~np.isin(self.labels.roots(arr), removed)
                if mask.all():
                    continue
                keeps[side] = torch.from_numpy(np.nonzero(mask)[0])
                setattr(site, f"{side}_labels", arr[mask])
                orig = getattr(site, f"{side}_kept")
                setattr(site, f"{side}_kept", (np.arange(len(arr)) if orig is None else orig)[mask])
            if keeps["in"] is not None or keeps["out"] is not None:
                site.handler.prune(site.module, keeps["in"], keeps["out"])
        for ps in self.param_sites:
            mask = ~np.isin(self.labels.roots(ps.labels), removed)
            if not mask.all():
                t = getattr(ps.owner, ps.attr)
                keep = torch.from_numpy(np.nonzero(mask)[0]).to(t.device)
                new = nn.Parameter(t.detach().index_select(ps.dim, keep).clone(), t.requires_grad)
                setattr(ps.owner, ps.attr, new)
                ps.labels = ps.labels[mask]
        gone = set(removed.tolist())
        for g in self.groups:
            g.units = [u for u in g.units if u not in gone]
        self.groups = [g for g in self.groups if g.units]
        self._per_module_flops = None
        self._out_index = None
        _record_structure(self)

    def zero(self, roots: Sequence[int], *, filters_only: bool = False) -> None:
        """Zero what produces the units ``roots``: every output-side layer, or with
        ``filters_only`` just the layers with filters (weights of two or more dimensions: convs,
        Linear), leaving norm layers and scale parameters alone."""
        roots_set = np.asarray(list(roots), dtype=np.int64)
        with torch.no_grad():
            for site, side, _, r in self._unit_sides():
                if side != "out":
                    continue
                if filters_only:
                    w = out_weight(site.module)
                    if w is None or w.dim() < 2:
                        continue
                pos = torch.from_numpy(np.nonzero(np.isin(r, roots_set))[0])
                if len(pos):
                    site.handler.zero(site.module, pos)
            if filters_only:
                return
            for ps in self.param_sites:
                pos = torch.from_numpy(
                    np.nonzero(np.isin(self.labels.roots(ps.labels), roots_set))[0]
                )
                t = getattr(ps.owner, ps.attr)
                t.index_fill_(ps.dim, pos.to(t.device), 0.0)  # index_fill_ wants one device

    def _out_sites(self, group: Group) -> list[tuple[Site, np.ndarray]]:
        """The layers whose outputs hold units of ``group``, each with its roots: one pass over
        all layers per graph state (not per group), so scoring every group stays linear."""
        key = tuple(g.name for g in self.groups)
        if self._out_index is None or self._out_index[0] != key:
            owner = {u: g.name for g in self.groups for u in g.units}
            index: dict[str, list[tuple[Site, np.ndarray]]] = {}
            for site, side, _, roots in self._unit_sides():
                if side == "out":
                    for name in {owner[r] for r in np.unique(roots).tolist() if r in owner}:
                        index.setdefault(name, []).append((site, roots))
            self._out_index = (key, index)
        return self._out_index[1].get(group.name, [])

    def unit_scores(self, group: Group, fn: Any) -> torch.Tensor:
        """Sum over the group's output-side layers of ``fn(weight)``, a vector with one score per
        output position (weights have outputs on dim 0, see :func:`out_weight`), per unit."""
        return self.unit_values(group, lambda site: _weight_values(site, fn))

    def unit_values(self, group: Group, values: Any) -> torch.Tensor:
        """Per-unit sums of per-position values of the group's output-side layers.

        ``values(site)`` returns one value per output position of that layer (or ``None`` to
        skip it): filter norms, activation statistics gathered by hooks, anything. A unit's
        score is the sum over every position, in every layer, that carries it.
        """
        units = np.asarray(group.units, dtype=np.int64)
        order = np.argsort(units)
        scores = torch.zeros(group.size, dtype=torch.float64)
        for site, roots in self._out_sites(group):
            slot = np.searchsorted(units, roots, sorter=order).clip(0, len(units) - 1)
            hit = units[order[slot]] == roots
            if not hit.any():
                continue
            per_pos = values(site)
            if per_pos is None:
                continue
            # scores are gathered on the CPU, whatever device the model is on
            per_pos = torch.as_tensor(per_pos, dtype=torch.float64).reshape(-1).cpu()
            if per_pos.numel() != len(roots):
                raise ValueError(
                    f"score function gave {per_pos.numel()} values for {len(roots)} channels of {site.name}"
                )
            idx = torch.from_numpy(order[slot[hit]])
            scores.index_add_(0, idx, per_pos[torch.from_numpy(np.nonzero(hit)[0])])
        return scores


def _weight_values(site: Site, fn: Any) -> Any:
    w = out_weight(site.module)
    return None if w is None else fn(w.detach())


def out_weight(module: nn.Module) -> torch.Tensor | None:
    """The weight with output channels on dim 0 (a view), for scoring; None if not applicable."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        if module.groups != 1:
            return None
        return w.transpose(0, 1)
    if isinstance(module, nn.Embedding):
        return w.t()
    return w


def _record_structure(graph: Graph) -> None:
    """Keep on the model what was removed, relative to the original layers (for saving)."""
    structure = dict(getattr(graph.model, "_prunekit_structure", {}))
    for site in graph.sites.values():
        if site.in_kept is not None or site.out_kept is not None:
            structure[site.name] = {
                "in": None if site.in_kept is None else site.in_kept.tolist(),
                "out": None if site.out_kept is None else site.out_kept.tolist(),
            }
    graph.model._prunekit_structure = structure  # type: ignore[assignment]


# ---------------------------------------------------------------------------------- build


def build(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    ignore: Iterable[str | nn.Module] = (),
    protected: Iterable[str] | None = None,
) -> Graph:
    """Trace ``model`` on ``example_inputs`` and group its prunable channels.

    ``protected`` layers (default: the model's declared ``protected_layers``, e.g. the classifier)
    and ``ignore`` layers keep their output channels; an ignored module the core does not know
    (or cannot trace) is treated as opaque: channels into and out of it are kept.
    """
    from prunekit.models import protected_layers

    names = {id(m): n for n, m in model.named_modules()}
    ignore_names = set()
    for item in ignore:
        name = names.get(id(item)) if isinstance(item, nn.Module) else item
        if name is None or (isinstance(item, str) and item not in dict(model.named_modules())):
            raise ConfigError(f"ignore: {item!r} is not a submodule of the model")
        ignore_names.add(name)
    protect = set(protected_layers(model) if protected is None else protected) | ignore_names
    modules = dict(model.named_modules())
    opaque_ignored = {n for n in ignore_names if handler_for(modules[n]) is None}

    traced = trace(model, leaves=opaque_ignored)
    graph = Graph(model)
    graph.inputs = as_args(example_inputs)
    graph.opaque = dict(traced.opaque)
    graph._per_module_flops = record_shapes(model, traced.graph, graph.inputs)
    _Propagation(graph, modules, protect, opaque_ignored | ignore_names).run(traced.graph)
    graph.labels.freeze()
    _make_groups(graph)
    # a model pruned before: keep counting positions relative to the original layers
    for name, kept in getattr(model, "_prunekit_structure", {}).items():
        site = graph.sites.get(name)
        if site is not None:
            site.in_kept = None if kept["in"] is None else np.asarray(kept["in"], dtype=np.int64)
            site.out_kept = None if kept["out"] is None else np.asarray(kept["out"], dtype=np.int64)
    return graph


def _forward_args(module: nn.Module, node: fx.Node) -> list[Any]:
    """The arguments of a layer call in the order of its ``forward``'s parameters, keywords put
    in their place (``None`` for one left at its default), so a handler reads ``inputs[i]``
    however the model passed it: ``attn(q, key=k, value=v)`` as ``attn(q, k, v)``."""
    if not node.kwargs:
        return list(node.args)
    try:
        sig = inspect.signature(module.forward)
        bound = sig.bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):  # no inspectable signature: keywords after positionals
        return [*node.args, *node.kwargs.values()]
    out: list[Any] = []
    for pname, param in sig.parameters.items():
        value = bound.get(pname)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            out.extend(value or ())
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            out.extend((value or {}).values())
        else:
            out.append(value)
    return out


class _Propagation:
    def __init__(
        self, graph: Graph, modules: dict[str, nn.Module], protect: set[str], ignored: set[str]
    ) -> None:
        self.g = graph
        self.modules = modules
        self.protect = protect
        self.ignored = ignored
        self.flows: dict[fx.Node, Any] = {}

    def flow_of(self, a: Any) -> Any:
        return self.flows.get(a) if isinstance(a, fx.Node) else None

    @staticmethod
    def shape_of(a: Any) -> Any:
        return a.meta.get(SHAPE) if isinstance(a, fx.Node) else None

    def record(
        self, name: str, in_labels: np.ndarray | None, out_labels: np.ndarray | None, exact: bool
    ) -> None:
        site = self.g.sites[name]
        for side, new in (("in", in_labels), ("out", out_labels)):
            if new is None:
                continue
            old = getattr(site, f"{side}_labels")
            if old is None:
                setattr(site, f"{side}_labels", new)
            else:  # a layer called twice: both calls must keep the same channels
                self.g.labels.union_arrays(old, new)
        site.exact = site.exact and exact

    def _is_ignored(self, scope: str) -> bool:
        return any(scope == n or scope.startswith(n + ".") for n in self.ignored)

    def _all_flows(self, args: Any) -> list[Flow]:
        found: list[Flow] = []

        def visit(a: Any) -> None:
            f = self.flow_of(a)
            if isinstance(f, Flow):
                found.append(f)
            elif isinstance(f, tuple):
                found.extend(x for x in f if isinstance(x, Flow))
            if isinstance(a, (list, tuple)):
                for x in a:
                    visit(x)
            elif isinstance(a, dict):
                for x in a.values():
                    visit(x)

        visit(args)
        return found

    def _opaque(self, node: fx.Node, why: str) -> Any:
        for f in self._all_flows([node.args, node.kwargs]):
            self.g.labels.fix(f.labels, why)
        return self._fresh_fixed(node, why)

    def _fresh_fixed(self, node: fx.Node, why: str) -> Any:
        shape = node.meta.get(SHAPE)
        if isinstance(shape, torch.Size) and len(shape) >= 2:
            labels = self.g.labels.new(shape[1], why)
            self.g.labels.fix(labels, why)
            return Flow(1, labels)
        return None

    def run(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            self.flows[node] = self.visit(node)

    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self._fresh_fixed(node, "model input")
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for f in self._all_flows(node.args):
                self.g.labels.fix(f.labels, "model output")
            return None
        if node.op == "call_module":
            return self.visit_module(node)
        return self.visit_op(node)

    def visit_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        module = self.modules[name]
        args = _forward_args(module, node)
        inputs = [self.flow_of(a) for a in args]
        handler = handler_for(module)
        if isinstance(module, (nn.Flatten, nn.Unflatten)):
            op = self._opcall(node)
            return ops.reshape_flow(op, inputs[0], self.shape_of(node.args[0]), self.shape_of(node))
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            x = inputs[0]
            ndim = len(self.shape_of(node))
            if x is not None and (module.dim is None or module.dim % ndim == x.dim):
                self.g.labels.fix(x.labels, f"softmax across the channels ({name})")
            return x
        if handler is None:
            if name in self.ignored:
                return self._opaque(node, f"ignored layer {name}")
            if not self._all_flows([node.args, node.kwargs]) and not any(
                True for _ in module.parameters()
            ):
                return self._fresh_fixed(node, f"untracked layer {name}")
            reason = self.g.opaque.get(name)
            what = f"could not be traced ({reason})" if reason else "has no pruning handler"
            raise UnsupportedError(f"layer {name!r} ({type(module).__name__}) {what}: {HOW_TO}")
        self.g.sites.setdefault(name, Site(name, module, handler))
        call = Call(
            name,
            self.g.labels,
            [self.shape_of(a) for a in args],
            self.shape_of(node),
            self.record,
        )
        out = handler.propagate(call, module, inputs)
        site = self.g.sites[name]
        site.calls.append(call)
        if name in self.protect and site.out_labels is not None:
            self.g.labels.fix(site.out_labels, f"protected layer {name}")
        return out

    def _opcall(self, node: fx.Node) -> ops.OpCall:
        return ops.OpCall(
            node, self.g.labels, self.flow_of, self.shape_of, node.meta.get(SCOPE, "")
        )

    def visit_op(self, node: fx.Node) -> Any:
        flows = self._all_flows([node.args, node.kwargs])
        rule = ops.rule_for(node)
        scope = node.meta.get(SCOPE, "")
        if rule is None:
            if not flows:
                return None
            if self._is_ignored(scope):
                return self._opaque(node, f"ignored layer {scope}")
            where = (
                f"in layer {scope!r} ({type(self.modules[scope]).__name__})"
                if scope
                else "in the model's forward"
            )
            raise UnsupportedError(
                f"operation {ops.op_name(node)!r} {where} is not understood by the channel graph: {HOW_TO}"
            )
        if ops.op_name(node) in ops.BROADCAST_OPS:
            self._attach_params(node)
        return rule(self._opcall(node))

    def _attach_params(self, node: fx.Node) -> None:
        """A parameter multiplied into the channels (layer scale) is sliced with them."""
        ndim = len(node.meta.get(SHAPE) or ())
        operands = [(a, self.flow_of(a)) for a in node.args]
        carrier = next(((a, f) for a, f in operands if isinstance(f, Flow)), None)
        if carrier is None:
            return
        # operands broadcast from the right: the channel dim in the output's coordinates
        f = carrier[1]
        out_dim = f.dim + ndim - len(self.shape_of(carrier[0]))
        for a in node.args:
            if not (isinstance(a, fx.Node) and a.op == "get_attr"):
                continue
            shape = self.shape_of(a)
            d = out_dim - (ndim - len(shape))
            if 0 <= d < len(shape) and shape[d] == len(f) and len(f) > 1:
                owner_path, _, attr = str(a.target).rpartition(".")
                owner = self.g.model.get_submodule(owner_path)
                if not isinstance(getattr(owner, attr), nn.Parameter):
                    continue
                # flows are in each tensor's own coordinates, as the op rules read them
                self.flows[a] = Flow(d, f.labels)
                known = next((p for p in self.g.param_sites if p.path == str(a.target)), None)
                if known is None:
                    self.g.param_sites.append(ParamSite(owner, attr, str(a.target), d, f.labels))
                elif known.dim == d:  # used again: one parameter, sliced once, same channels
                    self.g.labels.union_arrays(known.labels, f.labels)
                else:
                    self.g.labels.fix(known.labels, f"parameter {a.target} used along two dims")
                    self.g.labels.fix(f.labels, f"parameter {a.target} used along two dims")


def _make_groups(graph: Graph) -> None:
    """Units (unpinned label classes) grouped by the set of layers that created their labels."""
    labels = graph.labels
    used: set[int] = set()
    for _, _, _, roots in graph._unit_sides():
        used.update(roots.tolist())
    for ps in graph.param_sites:
        used.update(labels.roots(ps.labels).tolist())
    # (root, creating layer) pairs over all labels, deduplicated with numpy: a label class is
    # owned by every layer that drew one of its labels
    owner_id = {n: i for i, n in enumerate(sorted(set(labels._owner)))}
    all_roots = labels.roots(np.arange(len(labels), dtype=np.int64))
    ids = np.fromiter((owner_id[o] for o in labels._owner), dtype=np.int64, count=len(labels))
    keep = np.isin(all_roots, np.fromiter(used, dtype=np.int64, count=len(used)))
    pairs = np.unique(np.stack([all_roots[keep], ids[keep]], axis=1), axis=0)  # sorted by root
    fixed = labels.fixed_roots()
    by_key: dict[tuple[int, ...], list[int]] = {}
    cuts = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    for chunk in np.split(pairs, cuts) if len(pairs) else ():
        root = int(chunk[0, 0])
        if root not in fixed:
            by_key.setdefault(tuple(chunk[:, 1].tolist()), []).append(root)
    seen: dict[str, int] = {}
    for _, units in sorted(by_key.items(), key=lambda kv: kv[1][0]):
        first = labels.owner(units[0])
        n = seen.get(first, 0)
        seen[first] = n + 1
        graph.groups.append(Group(graph, first if n == 0 else f"{first}#{n}", units))
