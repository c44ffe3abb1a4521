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
from prunekit.graph import functional, ops
from prunekit.graph.flow import Flow, Labels
from prunekit.graph.functional import FUNCTIONAL_LAYERS, ParamFlow
from prunekit.graph.handlers import Call, Handler, handler_for, slice_tensor
from prunekit.graph.trace import FLOPS, SCOPE, SHAPE, trace
from prunekit.measure._inputs import Inputs, as_args


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
        return not np.isin(self.units, self.graph.inexact_roots()).any()

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
        self.inexact: list[np.ndarray] = []  # labels whose removal changes outputs (LayerNorm)
        # layers applied along another dim than the channels (token-mixing Linear): not pruned,
        # but their FLOPs scale with the channels that pass through them
        self.through: list[list[Any]] = []  # [layer name, labels]
        self._per_module_flops: dict[str, int] | None = None
        self._roots_cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._out_index: tuple[tuple[str, ...], dict[str, list[tuple[Site, np.ndarray]]]] | None = (
            None
        )
        self.inputs: tuple[Any, ...] = ()
        self.output_labels: list[np.ndarray] = []  # the channels the model returns
        self._last_plan: tuple[bytes, dict[str, int]] | None = None

    # ------------------------------------------------------------------ reading
    def output_layers(self) -> list[str]:
        """The layers whose output channels are channels the model returns (through
        element-wise ops, a softmax, a residual add): its classifier or prediction heads."""
        if not self.output_labels:
            return []
        returned = set(self.labels.roots(np.concatenate(self.output_labels)).tolist())
        return [
            name
            for name, site in self.sites.items()
            if site.out_labels is not None
            and not returned.isdisjoint(self.labels.roots(site.out_labels).tolist())
        ]

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

    def inexact_roots(self) -> np.ndarray:
        if not self.inexact:
            return np.zeros(0, dtype=np.int64)
        return np.unique(self.labels.roots(np.concatenate(self.inexact)))

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
        planned = dict(flops)  # per layer, kept for a removal of exactly these units
        params = sum(p.numel() for p in self.model.parameters())
        kept: dict[str, dict[str, int | None]] = {}
        for site, side, _, roots in self._unit_sides():
            kept.setdefault(site.name, {})[side] = int((~np.isin(roots, removed)).sum())
        for name, sides in kept.items():
            site = self.sites[name]
            dense_params, _ = site.handler.count(site.module, None, None)
            p, _ = site.handler.count(site.module, sides.get("in"), sides.get("out"))
            params += p - dense_params
            planned[name] = site.handler.flops(
                site.module, sides.get("in"), sides.get("out"), flops.get(name, 0), site.calls
            )
        for ps in self.param_sites:
            t = getattr(ps.owner, ps.attr)
            if not isinstance(t, nn.Parameter):
                continue  # a buffer (frozen statistics): sliced, but no parameter
            n = int((~np.isin(self.labels.roots(ps.labels), removed)).sum())
            params -= t.numel() // t.shape[ps.dim] * (t.shape[ps.dim] - n)
        for name, labels in self.through:
            n = int((~np.isin(self.labels.roots(labels), removed)).sum())
            planned[name] = flops.get(name, 0) * n // len(labels)
        total = flops.get("", sum(flops.values()))
        planned[""] = total + sum(v - flops.get(k, 0) for k, v in planned.items() if k)
        self._last_plan = (removed.tobytes(), planned)
        return Plan(int(params), int(planned[""]))

    # ------------------------------------------------------------------ surgery
    def remove(self, roots: Sequence[int]) -> None:
        """Remove every position carrying a label of the units ``roots``, in every layer.

        Either every layer is sliced or, if any slicing fails, the model is left exactly as it
        was: each touched layer's parameters, buffers and attributes are restored."""
        removed = np.asarray(list(roots), dtype=np.int64)
        # per-layer FLOPs afterwards: what the plan predicts (and the tests check against the
        # counter), so surgery needs no second forward pass
        cached = self._last_plan
        if cached is None or cached[0] != removed.tobytes():
            self.plan(removed.tolist())
        flops = self._last_plan[1]  # type: ignore[index]
        state = _Snapshot(self)
        try:
            self._remove(removed)
        except BaseException:
            state.restore()
            raise
        self._per_module_flops = flops
        self._last_plan = None

    def _remove(self, removed: np.ndarray) -> None:
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
                keep = torch.from_numpy(np.nonzero(mask)[0])
                slice_tensor(ps.owner, ps.attr, ps.dim, keep)
                ps.labels = ps.labels[mask]
        for entry in self.through:
            entry[1] = entry[1][~np.isin(self.labels.roots(entry[1]), removed)]
        gone = set(removed.tolist())
        for g in self.groups:
            g.units = [u for u in g.units if u not in gone]
        self.groups = [g for g in self.groups if g.units]
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


class _Snapshot:
    """What surgery may change, kept so a failed removal can put it all back: every touched
    module's parameter and buffer dicts and plain attributes (``out_channels`` ...), and the
    graph's own bookkeeping. Tensors are not copied: slicing replaces them, never edits them."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        modules: dict[int, nn.Module] = {}
        for site in graph.sites.values():
            if isinstance(site.module, nn.Module):
                for m in site.module.modules():
                    modules[id(m)] = m
            for ref in getattr(site.handler, "refs", ()):
                modules[id(ref.owner)] = ref.owner
        for ps in graph.param_sites:
            modules[id(ps.owner)] = ps.owner
        self.modules = [
            (m, dict(m._parameters), dict(m._buffers), {k: v for k, v in vars(m).items()
             if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor))})
            for m in modules.values()
        ]  # fmt: skip
        self.sites = {
            n: (s.in_labels, s.out_labels, s.in_kept, s.out_kept, dict(vars(s.handler)))
            for n, s in graph.sites.items()
        }
        self.params = [ps.labels for ps in graph.param_sites]
        self.through = [list(e) for e in graph.through]
        self.groups = (list(graph.groups), [list(g.units) for g in graph.groups])
        self.structure = getattr(graph.model, "_prunekit_structure", None)

    def restore(self) -> None:
        for m, params, buffers, attrs in self.modules:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for k in [k for k in vars(m) if k not in attrs and not k.startswith("_")]:
                if not isinstance(vars(m)[k], (nn.Module, torch.Tensor)):
                    delattr(m, k)
            for k, v in attrs.items():
                object.__setattr__(m, k, v)
        for n, (il, ol, ik, ok, handler) in self.sites.items():
            site = self.graph.sites[n]
            site.in_labels, site.out_labels, site.in_kept, site.out_kept = il, ol, ik, ok
            site.handler.__dict__.update(handler)
        for ps, labels in zip(self.graph.param_sites, self.params, strict=True):
            ps.labels = labels
        self.graph.through = self.through
        self.graph.groups = self.groups[0]
        for g, units in zip(*self.groups, strict=True):
            g.units = units
        if self.structure is None:
            self.graph.model.__dict__.pop("_prunekit_structure", None)
        else:
            self.graph.model._prunekit_structure = self.structure  # type: ignore[assignment]
        self.graph._out_index = None
        self.graph._roots_cache.clear()


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

    graph = Graph(model)
    graph.inputs = as_args(example_inputs)
    traced = trace(model, leaves=opaque_ignored, inputs=graph.inputs)
    graph.opaque = dict(traced.opaque)
    graph._per_module_flops = traced.flops
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
        self.pflows: dict[fx.Node, ParamFlow | None] = {}
        self.sizes: dict[fx.Node, list[tuple[Flow, int | None]]] = {}
        self.ndims: dict[fx.Node, int] = {}  # the rank of the tensor a whole shape was read from
        self.tensors = {n for n, _ in graph.model.named_parameters()} | {
            n for n, _ in graph.model.named_buffers()
        }

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
            if not exact:
                self.g.inexact.append(new)
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
            shape = node.meta.get(SHAPE)
            if str(node.target) in self.tensors and isinstance(shape, torch.Size):
                self.pflows[node] = ParamFlow.of(str(node.target), shape)
            return None
        if node.op == "output":
            for f in self._all_flows(node.args):
                self.g.labels.fix(f.labels, "model output")
                self.g.output_labels.append(f.labels)
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
            if reason is not None:  # kept whole: its channels stay, the rest of the model prunes
                return self._opaque(node, f"layer {name} kept whole ({reason})")
            fix = (
                f"register a handler for {type(module).__name__} "
                f"(prunekit.graph.register_handler), or pass ignore=[{name!r}] to keep it whole"
            )
            err = UnsupportedError(
                f"layer {name!r} ({type(module).__name__}) has no pruning handler: {fix}"
            )
            err.fix = fix  # type: ignore[attr-defined]
            raise err
        self.g.sites.setdefault(name, Site(name, module, handler))
        call = Call(
            name,
            self.g.labels,
            [self.shape_of(a) for a in args],
            self.shape_of(node),
            self.record,
        )
        out = handler.propagate(call, module, inputs)
        if isinstance(module, nn.Linear) and out is inputs[0] and isinstance(out, Flow):
            self.g.through.append([name, out.labels])  # token mixing: FLOPs scale with channels
        site = self.g.sites[name]
        site.calls.append(call)
        if name in self.protect and site.out_labels is not None:
            self.g.labels.fix(site.out_labels, f"protected layer {name}")
        return out

    def _refuse(self, node: fx.Node) -> Any:
        """An op the graph does not understand, with channels on its inputs: refused, with the
        fix that applies where it is."""
        scope = node.meta.get(SCOPE, "")
        if self._is_ignored(scope):
            return self._opaque(node, f"ignored layer {scope}")
        op = ops.op_name(node)
        if scope:
            where = f"in layer {scope!r} ({type(self.modules[scope]).__name__})"
            fix = (
                f"register a rule for it (prunekit.graph.register_op({op!r})), or pass "
                f"ignore=[{scope!r}] to keep that layer whole"
            )
        else:  # ignore=[...] takes submodules: it cannot help with the model's own code
            where = "in the model's own forward"
            fix = (
                f"register a rule for it (prunekit.graph.register_op({op!r})), or move that "
                "code into a submodule and pass it in ignore=[...]"
            )
        err = UnsupportedError(
            f"operation {op!r} {where} is not understood by the channel graph: {fix}"
        )
        err.fix = fix  # type: ignore[attr-defined]
        raise err

    def _opcall(self, node: fx.Node) -> ops.OpCall:
        return ops.OpCall(
            node, self.g.labels, self.flow_of, self.shape_of, node.meta.get(SCOPE, "")
        )

    def visit_op(self, node: fx.Node) -> Any:
        flows = self._all_flows([node.args, node.kwargs])
        rule = ops.rule_for(node)
        scope = node.meta.get(SCOPE, "")
        handled, out = self._size_deps(node)
        if handled:
            return out
        if (self._has_params(node) or (flows and ops.op_name(node) in FUNCTIONAL_LAYERS)) and not (
            flows and self._is_ignored(scope)
        ):
            return self.visit_param_op(node, flows)
        if rule is None:
            if not flows:
                return None
            if self._is_ignored(scope):
                return self._opaque(node, f"ignored layer {scope}")
            return self._refuse(node)
        out = rule(self._opcall(node))
        if isinstance(out, Flow) and node.meta.get(FLOPS):
            self._through_products(node, out)
        return out

    def _through_products(self, node: fx.Node, out: Flow) -> None:
        """A matrix product (or attention) whose output keeps tracked channels: its FLOPs are
        linear in their count (in the value width alone, for attention's second product)."""
        flops = node.meta[FLOPS]
        name = ops.op_name(node)
        if name == "scaled_dot_product_attention" and out.dim == len(self.shape_of(node)) - 1:
            e = self.shape_of(node.args[0])[-1]
            ev = self.shape_of(node.args[2] if len(node.args) > 2 else node.kwargs["value"])[-1]
            flops = flops * ev // (e + ev)  # the weighting by the values: 2 L S Ev per head
        elif name not in ("matmul", "bmm", "scaled_dot_product_attention", "__matmul__"):
            return
        key = f"op:{node.name}"
        self.g._per_module_flops[key] = flops  # type: ignore[index]
        self.g.through.append([key, out.labels])

    # ------------------------------------------------------------ sizes read from tensors
    def _size_deps(self, node: fx.Node) -> tuple[bool, Any]:
        """Track Python ints computed from a tensor's channel count (``B, C, H, W = x.shape``).

        Such a number used as a size ties the result to that tensor's channels at run time:
        ``y.reshape(B, C, -1)`` must keep ``x``'s channels in ``y``'s. Where the graph sees the
        tie (the size lands on the result's channel dim), the channels are coupled; anywhere
        else they are pinned. Returns ``(handled, flow)``."""
        name = ops.op_name(node)
        args = node.args
        x = self.flow_of(args[0]) if args else None
        if name == "getattr" and len(args) > 1 and args[1] == "shape" and isinstance(x, Flow):
            self.sizes[node] = [(x, None)]
            self.ndims[node] = len(self.shape_of(args[0]))
            return True, None
        if name == "size" and node.op == "call_method" and isinstance(x, Flow):
            d = args[1] if len(args) > 1 else node.kwargs.get("dim")
            if d is None:
                self.sizes[node] = [(x, None)]
                self.ndims[node] = len(self.shape_of(args[0]))
            elif isinstance(d, int) and d % len(self.shape_of(args[0])) == x.dim:
                self.sizes[node] = [(x, x.dim)]
            return True, None
        if not self.sizes:
            return False, None
        deps = [d for a in node.all_input_nodes for d in self.sizes.get(a, ())]
        if not deps:
            return False, None
        where = node.meta.get(SCOPE) or "model"
        if name == "getitem" and args[0] in self.sizes:  # an element (or a slice) of a shape
            i = args[1]
            picked = []
            for f, d in self.sizes[args[0]]:
                if d is not None:
                    picked.append((f, d))
                elif isinstance(i, int) and (i - f.dim) % self.ndims.get(args[0], 1 << 30) == 0:
                    picked.append((f, f.dim))
                elif isinstance(i, slice):
                    picked.append((f, None))
            if picked:
                self.sizes[node] = picked
            return True, None
        channel = [f for f, d in deps if d is not None]
        if not _holds_tensors(self.shape_of(node)):  # arithmetic on sizes
            if channel:
                self.sizes[node] = [(f, f.dim) for f in channel]
            return True, None
        if not channel:
            return False, None
        if (
            name == "layer_norm"
            and not self._is_ignored(node.meta.get(SCOPE, ""))
            and self._normalises_own_count(node)
        ):
            return True, self.visit_param_op(node, self._all_flows([node.args, node.kwargs]))
        rule = ops.rule_for(node)
        node.meta[ops.SIZED] = True
        out = rule(self._opcall(node)) if rule is not None else None
        if name == "split":  # a size computed from the split tensor's own channels scales
            return True, out
        users = list(node.users)
        if any(ops.SHUFFLED in n.meta for u in users for n in (u, *u.users, *(
                w for v in u.users for w in v.users))):  # fmt: skip
            return True, out  # a channel shuffle: the sizes follow the units it prunes in
        why = f"channel count read as a size by {name} ({where})"
        for f in channel:
            if isinstance(out, Flow) and np.array_equal(np.sort(out.labels), np.sort(f.labels)):
                continue  # the same channels (maybe reordered): their count follows by itself
            if isinstance(out, Flow) and len(out) == len(f):
                self.g.labels.union_arrays(out.labels, f.labels)
            else:
                self.g.labels.fix(f.labels, why)
                for g in self._all_flows([node.args, node.kwargs, out]):
                    self.g.labels.fix(g.labels, why)
        return True, out

    def _normalises_own_count(self, node: fx.Node) -> bool:
        """``F.layer_norm(x, (x.shape[-1],), w, b)``: every channel count among the sizes is
        read directly (``shape[i]``, ``size(i)``) from the channels the op normalises, at the
        position of ``normalized_shape`` that lies on them, so it follows their pruned width."""
        sig = FUNCTIONAL_LAYERS["layer_norm"]
        args = dict(zip(sig, node.args, strict=False))
        args.update({k: v for k, v in node.kwargs.items() if k in sig})
        x = self.flow_of(args.get("input"))
        shape = args.get("normalized_shape")
        if not isinstance(x, Flow) or not isinstance(shape, (tuple, list)):
            return False
        ndim = len(self.shape_of(args["input"]))
        covered = set()
        for k, s in enumerate(shape):
            deps = self.sizes.get(s, []) if isinstance(s, fx.Node) else []
            channel = [f for f, d in deps if d is not None]
            if not channel:
                continue
            if ops.op_name(s) not in ("getitem", "size") or ndim - len(shape) + k != x.dim:
                return False
            for f in channel:
                if not np.array_equal(np.sort(f.labels), np.sort(x.labels)):
                    return False
            covered.add(s)
        others = [a for a in node.all_input_nodes if a not in covered]
        return bool(covered) and not any(
            d is not None for a in others for _, d in self.sizes.get(a, ())
        )

    # ------------------------------------------------------------ parameters in the code
    def _param_of(self, a: Any) -> ParamFlow | None:
        return self.pflows.get(a) if isinstance(a, fx.Node) else None

    def _has_params(self, node: fx.Node) -> bool:
        return any(a in self.pflows for a in node.all_input_nodes)

    def visit_param_op(self, node: fx.Node, flows: list[Flow]) -> Any:
        """An op with a parameter (or a tensor computed from one) among its arguments."""
        name = ops.op_name(node)
        if name in FUNCTIONAL_LAYERS and flows:
            return self._functional_layer(node, name)
        if not flows:  # computing from parameters only: follow which dims are which
            self.pflows[node] = self._derive(node, name)
            return None
        rule = ops.rule_for(node)
        if rule is not None:  # a parameter along the channels (layer scale, class token)
            self._attach_params(node)
            return rule(self._opcall(node))
        return self._refuse(node)

    def _derive(self, node: fx.Node, name: str) -> ParamFlow | None:
        """The :class:`ParamFlow` of a tensor computed from parameters only, or None."""
        args = node.args
        src = self._param_of(args[0]) if args else None
        out_shape = self.shape_of(node)
        if not isinstance(out_shape, torch.Size):
            return None
        if name in ("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
                    "reshape_as", "expand", "expand_as"):  # fmt: skip
            if src is None:
                return None
            if name.startswith("expand"):  # size-1 dims repeated: they carry no parameter dim
                in_shape = tuple(self.shape_of(args[0]))
                if len(in_shape) != len(out_shape):
                    return None
                dims = tuple(
                    d if i == o else ()
                    for d, i, o in zip(src.dims, in_shape, out_shape, strict=True)
                )
                return ParamFlow(src.path, src.shape, dims, src.mixes, src.extras)
            return functional.reshape(src, self.shape_of(args[0]), out_shape)
        if name in ("permute", "transpose", "t", "movedim", "swapaxes"):
            if src is None:
                return None
            op = self._opcall(node)
            order = ops.permutation(op, len(out_shape))
            return None if order is None else functional.permute(src, order)
        if name in ops.UNARY_OPS:
            return src
        if name == "getitem" and src is not None:  # w[:, None, None]: new size-1 dims only
            idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(i is Ellipsis for i in idx):
                k = idx.index(Ellipsis)
                idx = idx[:k] + (slice(None),) * (len(src.dims) - len(idx) + 1) + idx[k + 1 :]
            dims: list[Any] = []
            rest = list(src.dims)
            for i in idx:
                if i is None:
                    dims.append(())
                elif i == slice(None) and rest:
                    dims.append(rest.pop(0))
                else:
                    return None
            return ParamFlow(src.path, src.shape, (*dims, *rest), src.mixes, src.extras)
        if name in ops.BROADCAST_OPS:
            operands = [(self._param_of(a), self.shape_of(a)) for a in [*args, *node.kwargs.values()]
                        if isinstance(a, fx.Node) and isinstance(self.shape_of(a), torch.Size)]  # fmt: skip
            return functional.combine(operands, len(out_shape))
        if name in ("mean", "sum", "std", "var", "norm", "amax", "amin", "var_mean", "std_mean"):
            dims = node.args[2] if name == "norm" and len(args) > 2 else (
                node.args[1] if len(args) > 1 else node.kwargs.get("dim"))  # fmt: skip
            if src is None or dims is None:
                return None
            ndim = len(self.shape_of(args[0]))
            dims = [d % ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
            return functional.reduce(src, dims, bool(node.kwargs.get("keepdim", False)))
        if name == "batch_norm" and src is not None:  # standardising a weight per output
            ndim = len(out_shape)
            others = [d for d in range(ndim) if d != 1]
            red = functional.reduce(src, others, keepdim=True)
            if red is None:
                return None
            extras = list(src.extras)
            channel = src.base_dim(1)
            for key in ("weight", "bias"):
                i = 3 if key == "weight" else 4
                a = args[i] if len(args) > i else node.kwargs.get(key)
                f = self._param_of(a)
                if a is None:
                    continue
                if f is None or f.base_dim(0) is None or channel is None:
                    return None
                extras.extend(f.extras)
                if f.path != src.path:
                    extras.append((f.path, f.base_dim(0), channel))  # type: ignore[arg-type]
            return ParamFlow(src.path, src.shape, src.dims, red.mixes, tuple(dict.fromkeys(extras)))
        return None

    def _attach_params(self, node: fx.Node) -> None:
        """A parameter multiplied into the channels (layer scale) is sliced with them."""
        nodes: list[fx.Node] = []
        fx.node.map_aggregate(node.args, lambda a: nodes.append(a) if isinstance(a, fx.Node) else a)
        operands = [(a, self.flow_of(a)) for a in nodes]
        carrier = next(((a, f) for a, f in operands if isinstance(f, Flow)), None)
        if carrier is None:
            return
        # operands broadcast from the right: the channel dim in the output's coordinates
        f = carrier[1]
        ndim = max(len(self.shape_of(a) or ()) for a in nodes)
        out_dim = f.dim + ndim - len(self.shape_of(carrier[0]))
        for a in nodes:
            pf = self._param_of(a)
            if pf is None:
                continue
            shape = self.shape_of(a)
            d = out_dim - (ndim - len(shape))
            if not (0 <= d < len(shape) and shape[d] == len(f) and len(f) > 1):
                continue
            pd = pf.base_dim(d)
            if pd is None or pf.mixes:
                continue
            # flows are in each tensor's own coordinates, as the op rules read them
            self.flows[a] = Flow(d, f.labels)
            for path, dim in [(pf.path, pd), *((p, dm) for p, dm, b in pf.extras if b == pd)]:
                self._param_site(path, dim, f.labels)

    def _param_site(self, path: str, dim: int, labels: np.ndarray) -> None:
        owner_path, _, attr = path.rpartition(".")
        owner = self.g.model.get_submodule(owner_path)
        if not isinstance(getattr(owner, attr, None), torch.Tensor):
            return
        known = next((p for p in self.g.param_sites if p.path == path), None)
        if known is None:
            self.g.param_sites.append(ParamSite(owner, attr, path, dim, labels))
        elif known.dim == dim:  # used again: one parameter, sliced once, same channels
            self.g.labels.union_arrays(known.labels, labels)
        else:
            self.g.labels.fix(known.labels, f"parameter {path} used along two dims")
            self.g.labels.fix(labels, f"parameter {path} used along two dims")

    def _functional_layer(self, node: fx.Node, name: str) -> Any:
        """A conv, linear, norm ... called as a function on parameters: a site of the graph."""
        sig = FUNCTIONAL_LAYERS[name]
        args = dict(zip(sig, node.args, strict=False))
        args.update({k: v for k, v in node.kwargs.items() if k in sig})
        x_node = args.get("input")
        x = self.flow_of(x_node)
        x = x if isinstance(x, Flow) else None
        x_shape = self.shape_of(x_node)
        out_shape = self.shape_of(node)
        where = node.meta.get(SCOPE) or "model"
        weight = self._param_of(args.get("weight"))
        why = None
        if weight is None and (
            args.get("weight") is not None or name.startswith("conv") or name == "linear"
        ):
            why = f"F.{name} whose weight is computed by code the graph does not follow ({where})"
        if why is None and any(
            isinstance(args.get(k), fx.Node) and self._param_of(args.get(k)) is None
            for k in ("bias", "running_mean", "running_var")
        ):
            why = f"F.{name} whose bias or statistics are computed by code the graph does not follow ({where})"
        if why is not None:
            return self._opaque(node, why)
        built = functional.layer(self, node, name, args, x, x_shape, out_shape)
        if isinstance(built, str):
            return self._opaque(node, f"{built} ({where}: F.{name})")
        return built


def _holds_tensors(shape: Any) -> bool:
    """True for the recorded shape of a tensor or of a tuple/list holding one."""
    if isinstance(shape, torch.Size):
        return True
    return isinstance(shape, (tuple, list)) and any(_holds_tensors(s) for s in shape)


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
