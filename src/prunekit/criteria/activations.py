"""Activation statistics at the tensor the next layer reads, shared by every activation-based
criterion (HRank, Taylor, and the ones to come).

A data-driven criterion scores a channel by the feature map that carries it. The map that
matters is the one the following layer consumes: after the nonlinearity, the pooling, the
residual addition; not the raw conv or BatchNorm output, whose maps (before the ReLU) are, for
instance, all of full rank. :func:`readers` finds those tensors in a channel graph: for every
unit of every group, the inputs of the layers that read the unit without passing it through
(a conv with ``groups=1``, a Linear; not the BatchNorm or the depthwise conv of the same
channels, which carry the unit on both sides). Each such input is a :class:`Tap`. A unit read
by no layer (its channels only reach functional ops) is measured at the outputs of the layers
that produce it instead.

:class:`Recorder` holds the hooks (a method whose own training already runs forward and backward
passes records the statistic during them, at no extra cost); :func:`collect` runs calibration
batches through the model in eval mode with a recorder on every tap. Each hook takes each
unit's map out of the tapped tensor (its channel, or the several positions a flatten gives it
before a Linear) and sums one statistic per sample and unit. With a loss it
also runs a backward pass and hands the statistic the loss gradient with respect to the tapped
tensor (the total over everything that reads it). A tensor read by several layers in one pass
(a residual stream read by the next block's conv and by its shortcut) counts once. Sums and
sample counts are reduced over DDP ranks, so every rank gets the same means.

:class:`ActivationCriterion` is the base of the criteria built on it. The first call on a graph
gathers the statistic of every unit of every group in one pass; later calls on the same graph
(until it is pruned) reuse it. A unit that several tapped maps carry (the channels of a
residual stage: the output of every block of the stage) gets the mean of its maps' values, so a
unit's score is on the same scale whether one map or ten carry it; a criterion then turns the
group's vector into scores once (:meth:`ActivationCriterion.finish`, e.g. Taylor's L2
normalisation per group).
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import DataError
from prunekit.graph import Graph, Group
from prunekit.train.distributed import all_reduce_sum

__all__ = [
    "ActivationCriterion",
    "Recorder",
    "Stat",
    "Tap",
    "channel_dim",
    "collect",
    "per_group",
    "readers",
    "split_batch",
]

#: ``stat(maps, grad)`` -> ``(N, U)`` values per sample and unit. ``maps`` is ``(N, U, ...)``:
#: each unit's map (``H x W`` for a conv input; a vector for the several positions a flatten
#: gives a channel before a Linear; nothing for one feature); ``grad`` is the loss gradient in the
#: same layout, or None.
Stat = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# layers whose features are on the last dimension (channels-last)
_CHANNELS_LAST: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
    nn.LayerNorm,
    nn.MultiheadAttention,
)


def channel_dim(module: nn.Module, output: torch.Tensor, width: int) -> int:
    """The dimension of ``output`` (or input) of ``module`` that holds ``width`` channels.

    Dim 1 for convolutions and channel norms, the last dim for Linear-like layers; for another
    layer type whichever of the two has the right size (dim 1 first). Raises ``ValueError`` if
    neither has ``width`` entries.
    """
    if output.dim() < 2:
        raise ValueError(f"tensor of shape {tuple(output.shape)} has no batch and channel dims")
    order = (-1, 1) if isinstance(module, _CHANNELS_LAST) else (1, -1)
    for dim in order:
        if output.shape[dim] == width:
            return dim % output.dim()
    raise ValueError(
        f"tensor of shape {tuple(output.shape)} has no dimension of {width} channels "
        f"({type(module).__name__})"
    )


def split_batch(batch: Any) -> tuple[Any, Any]:
    """``(inputs, labels)`` of a calibration batch: a tensor (no labels) or an ``(x, y, ...)``
    tuple or list."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 0:
            raise ValueError("empty calibration batch")
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


# ------------------------------------------------------------------------------ where to look
@dataclass(frozen=True)
class Tap:
    """A tensor statistics are taken on: the input ``layer`` reads (``side="in"``) or the output
    it makes (``side="out"``, the fallback for units no layer reads). ``roots``: the units it
    carries (graph label roots), one per row of ``index``; ``index[i]``: the positions of unit
    ``roots[i]`` along the tensor's channel dim (one, or several after a flatten); ``width``:
    the size of that dim."""

    layer: str
    side: str
    module: nn.Module
    width: int
    roots: np.ndarray
    index: torch.Tensor

    @property
    def key(self) -> str:
        return f"{self.layer}:{self.side}"


def _unit_blocks(
    labels_roots: np.ndarray, wanted: set[int]
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """Positions of each wanted root in ``labels_roots``, grouped by how many each has:
    ``[(roots, index (U, P)), ...]``."""
    by_count: dict[int, list[tuple[int, np.ndarray]]] = {}
    for r in np.unique(labels_roots).tolist():
        if r in wanted:
            pos = np.flatnonzero(labels_roots == r)
            by_count.setdefault(len(pos), []).append((r, pos))
    out = []
    for _, items in sorted(by_count.items()):
        roots = np.array([r for r, _ in items], dtype=np.int64)
        index = torch.from_numpy(np.stack([p for _, p in items]).astype(np.int64))
        out.append((roots, index))
    return out


def readers(graph: Graph) -> list[Tap]:
    """The taps that measure every unit of ``graph``'s groups: the input of every layer that
    reads units without producing them, and, for units that no layer reads, the outputs of the
    layers that produce them."""
    units = {u for g in graph.groups for u in g.units}
    taps: list[Tap] = []
    read: set[int] = set()
    produced: dict[str, np.ndarray] = {}
    for site in graph.sites.values():
        if site.out_labels is not None and len(site.out_labels):
            produced[site.name] = graph.labels.roots(site.out_labels)
    for site in graph.sites.values():
        if site.in_labels is None or not len(site.in_labels):
            continue
        roots = graph.labels.roots(site.in_labels)
        own = set(produced.get(site.name, np.empty(0, np.int64)).tolist())
        wanted = (set(roots.tolist()) & units) - own
        for i, (r, index) in enumerate(_unit_blocks(roots, wanted)):
            name = site.name if i == 0 else f"{site.name}#{i}"
            taps.append(Tap(name, "in", site.module, len(roots), r, index))
            read.update(r.tolist())
    unread = units - read
    if unread:
        for site in graph.sites.values():
            roots = produced.get(site.name)
            if roots is None:
                continue
            for i, (r, index) in enumerate(_unit_blocks(roots, unread)):
                name = site.name if i == 0 else f"{site.name}#{i}"
                taps.append(Tap(name, "out", site.module, len(roots), r, index))
    return taps


# ------------------------------------------------------------------------------ the pass
def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]  # a layer's first input; (attn_output, attn_weights) of attention
    return None


def _device(model: nn.Module) -> torch.device:
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


def unit_maps(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``(N, U, ...)``: the map of each unit of ``index`` (``U x P`` positions along ``dim``) in
    ``t``. One position per unit keeps the other dims (``H x W``); several are flattened with
    the other dims into one vector per unit."""
    moved = t.movedim(dim, 1)
    n, rest = moved.shape[0], moved.shape[2:]
    u, p = index.shape
    picked = moved.index_select(1, index.reshape(-1).to(moved.device))
    if p == 1:
        return picked
    return picked.reshape(n, u, p * math.prod(rest))


class Recorder:
    """Hooks that sum ``stat`` per unit of each tap over every forward pass while installed.

    ``with Recorder(model, taps, stat, grad=...) as rec: ...`` runs whatever passes the caller
    makes (a calibration loop, or the minibatch updates of a fine-tuning phase, whose backward
    passes then feed a gradient statistic at no extra cost); :meth:`means` gives the per-unit
    means. Without ``grad`` the statistic is evaluated in the forward hook as ``stat(maps,
    None)``; with it, when the gradient with respect to the tapped tensor arrives in a backward
    pass (a copy of the tensor is kept, so an in-place op after the read does not change it). A
    tensor tapped at several layers in one pass counts once, at the first; a layer called
    several times counts each call's samples.
    """

    def __init__(self, model: nn.Module, taps: Iterable[Tap], stat: Stat, *, grad: bool) -> None:
        self.model = model
        self.taps = list(taps)
        keys = [t.key for t in self.taps]
        if len(set(keys)) != len(keys):
            raise ValueError(f"taps must be distinct, got {keys}")
        self.stat = stat
        self.grad = grad
        self.device = _device(model)
        self.sums = [torch.zeros(len(t.roots), dtype=torch.float64) for t in self.taps]
        self.counts = torch.zeros(len(self.taps), dtype=torch.float64)
        self._handles: list[Any] = []
        self._tensor_hooks: list[Any] = []
        self._seen: dict[int, torch.Tensor] = {}  # tapped this pass (kept alive: ids stay unique)

    # ------------------------------------------------------------------ hooks
    def _add(self, i: int, values: torch.Tensor) -> None:
        self.sums[i] += values.detach().to(torch.float64).sum(0).cpu()
        self.counts[i] += values.shape[0]

    def _take(self, i: int, tap: Tap, t: torch.Tensor | None) -> None:
        if t is None or t.dim() < 2:
            return
        # the same tensor read by several layers (a residual stream): once per pass
        if id(t) in self._seen and self._seen[id(t)] is t:
            return
        try:
            dim = channel_dim(tap.module, t, tap.width)
        except ValueError:  # the module's first input is not the tapped one: skip it
            return
        self._seen[id(t)] = t
        maps = unit_maps(t, dim, tap.index)
        if not self.grad:
            self._add(i, self.stat(maps.detach(), None))
            return
        if not t.requires_grad:
            return
        saved = maps.detach().clone()

        def on_grad(g: torch.Tensor) -> None:
            self._add(i, self.stat(saved, unit_maps(g.detach(), dim, tap.index)))

        self._tensor_hooks.append(t.register_hook(on_grad))

    def _hook(self, i: int, tap: Tap) -> Callable[..., None]:
        if tap.side == "in":
            return lambda module, args: self._take(i, tap, _first_tensor(args))
        return lambda module, args, output: self._take(i, tap, _first_tensor(output))

    def new_pass(self, *_: Any) -> None:
        """Forget which tensors this pass tapped and drop the gradient hooks of earlier passes
        (called before every forward of the model)."""
        self._seen.clear()
        for h in self._tensor_hooks:
            h.remove()
        self._tensor_hooks.clear()

    def __enter__(self) -> Recorder:
        self._handles.append(self.model.register_forward_pre_hook(self.new_pass))
        for i, tap in enumerate(self.taps):
            if tap.side == "in":
                h = tap.module.register_forward_pre_hook(self._hook(i, tap))
            else:
                h = tap.module.register_forward_hook(self._hook(i, tap))
            self._handles.append(h)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.new_pass()
        for h in self._handles:
            h.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ result
    def means(self) -> dict[str, torch.Tensor]:
        """``{tap.key: (U,)}``, the mean per unit in the order of ``tap.roots``, float64 on the
        CPU; sums and counts are summed over DDP ranks, so every rank gets the same. A tap that
        saw no sample is absent."""
        if not self.taps:
            return {}
        flat = torch.cat([*self.sums, self.counts]).to(self.device)
        flat = all_reduce_sum(flat).cpu()
        total = flat[-len(self.taps) :]
        out = {}
        offset = 0
        for i, tap in enumerate(self.taps):
            width = len(tap.roots)
            if total[i] > 0:
                out[tap.key] = flat[offset : offset + width] / total[i]
            offset += width
        return out


def collect(
    model: nn.Module,
    taps: Iterable[Tap],
    batches: Iterable[Any],
    stat: Stat,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over calibration samples of ``stat`` per unit of each tap: ``{tap.key: (U,)}`` in
    the order of ``tap.roots`` (see :class:`Recorder`).

    Each batch (see :func:`split_batch`) is moved to the model's device and run through
    ``model`` in eval mode (every module's own mode is restored afterwards). Without ``loss_fn``
    the pass runs under ``torch.no_grad``; with it, ``loss_fn(model(x), y)`` is differentiated
    (with ``torch.autograd.grad``, so no parameter's ``.grad`` changes) and ``stat(maps, grad)``
    gets the gradient of the loss with respect to the tapped tensor. The result, float64 on the
    CPU, is identical on every DDP rank.
    """
    device = _device(model)
    training = {m: m.training for m in model.modules()}
    try:
        with Recorder(model, taps, stat, grad=loss_fn is not None) as rec:
            model.eval()
            for batch in itertools.islice(batches, max_batches):
                x, y = split_batch(batch)
                x, y = _to(x, device), _to(y, device)
                if loss_fn is None:
                    with torch.no_grad():
                        model(x)
                    continue
                xs = x if isinstance(x, (tuple, list)) else (x,)
                leaves = [t.detach().requires_grad_(True) for t in xs if _is_float(t)]
                if leaves:  # differentiate w.r.t. the inputs: every tapped tensor is on the path
                    it = iter(leaves)
                    xs = tuple(next(it) if _is_float(t) else t for t in xs)
                    wrt = leaves
                else:  # integer inputs (token ids): w.r.t. the trainable parameters instead
                    wrt = [p for p in model.parameters() if p.requires_grad]
                with torch.enable_grad():
                    out = model(*xs) if isinstance(x, (tuple, list)) else model(xs[0])
                    loss = loss_fn(out, y)
                    if wrt and loss.requires_grad:
                        torch.autograd.grad(loss, wrt, allow_unused=True)
    finally:
        for m, mode in training.items():
            m.train(mode)
    return rec.means()


def per_group(
    graph: Graph, taps: Iterable[Tap], per_tap: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``{group name: per-unit values}``: each unit's mean over the taps that carry it (NaN for
    a unit no tap saw)."""
    total: dict[int, float] = {}
    count: dict[int, int] = {}
    for tap in taps:
        values = per_tap.get(tap.key)
        if values is None:
            continue
        for r, v in zip(tap.roots.tolist(), values.tolist(), strict=True):
            total[r] = total.get(r, 0.0) + v
            count[r] = count.get(r, 0) + 1
    return {
        g.name: torch.tensor(
            [total[u] / count[u] if u in count else math.nan for u in g.units],
            dtype=torch.float64,
        )
        for g in graph.groups
    }


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _reiterable(batches: Iterable[Any], max_batches: int | None) -> Iterable[Any]:
    """``batches`` itself if it can be iterated again (a list, a DataLoader), else its first
    ``max_batches`` items as a list (a generator is consumed once)."""
    if isinstance(batches, Iterator):
        return list(itertools.islice(batches, max_batches))
    return batches


def _is_empty(batches: Iterable[Any]) -> bool:
    try:
        return len(batches) == 0  # type: ignore[arg-type]
    except TypeError:  # no length: look at the first item (a re-iterable gives it again)
        return next(iter(batches), None) is None


# ------------------------------------------------------------------------------ the criterion
class ActivationCriterion:
    """Base of criteria computed from feature maps on calibration data.

    A subclass implements :meth:`gather` (per-unit values of each tap, usually one
    :func:`collect`) and may override :meth:`finish` (the group's vector of per-unit values ->
    its scores). ``criterion(group)`` returns ``finish`` of the mean, per unit, of the values of
    the taps that carry it. Statistics are gathered once per graph for all of its groups and
    again only when the graph changed (it was pruned). ``batches`` must hold at least one batch:
    a criterion with no calibration data is an error.
    """

    name = "activation criterion"

    def __init__(
        self,
        batches: Iterable[Any],
        *,
        model: nn.Module | None = None,
        max_batches: int | None = None,
    ) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be positive, got {max_batches}")
        self.batches = _reiterable(batches, max_batches)
        if _is_empty(self.batches):
            raise DataError(
                f"{self.name} needs calibration batches (inputs or (x, y) pairs); got none"
            )
        self.model = model
        self.max_batches = max_batches
        self._cache: weakref.WeakKeyDictionary[Graph, tuple[Any, dict[str, torch.Tensor]]] = (
            weakref.WeakKeyDictionary()
        )

    def gather(self, model: nn.Module, taps: list[Tap]) -> dict[str, torch.Tensor]:
        """Per-unit values of each tap (``{tap.key: (U,)}``, see :func:`collect`)."""
        raise NotImplementedError

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """A group's scores from its per-unit values (default: the values themselves)."""
        return values

    def stats(self, graph: Graph) -> dict[str, torch.Tensor]:
        """``{group name: per-unit values}`` for every group of ``graph``, before
        :meth:`finish` (cached per graph state)."""
        key = tuple((g.name, tuple(g.units)) for g in graph.groups)
        hit = self._cache.get(graph)
        if hit is not None and hit[0] == key:
            return hit[1]
        taps = readers(graph)
        model = self.model if self.model is not None else graph.model
        out = per_group(graph, taps, self.gather(model, taps))
        self._cache[graph] = (key, out)
        return out

    def __call__(self, group: Group) -> torch.Tensor:
        values = self.stats(group.graph)[group.name]
        if torch.isnan(values).any():
            missing = int(torch.isnan(values).sum())
            raise ValueError(
                f"{self.name}: {missing} channel(s) of group {group.name!r} were never seen "
                "in the calibration pass (no layer read them)"
            )
        return self.finish(values)
