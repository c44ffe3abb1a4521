"""Calibration passes shared by the data-driven criteria (HRank, Taylor).

:func:`collect` runs calibration batches through a model in eval mode with forward hooks on a
given set of layers and sums, per layer, one statistic per sample and output channel. When it is
given a loss it also runs a backward pass and hands the statistic the gradient of the loss with
respect to each hooked output. Sums and sample counts are reduced over DDP ranks with
:func:`~prunekit.train.distributed.all_reduce_sum`, so every rank gets the same means.

:class:`ActivationCriterion` is the base of the criteria built on it: constructed with the data,
called per group; the first call on a graph gathers statistics for the output-side layers of all
of that graph's groups in one pass, later calls on the same graph reuse them.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from prunekit.graph import Graph, Group
from prunekit.train.distributed import all_reduce_sum

__all__ = ["ActivationCriterion", "Stat", "channel_dim", "collect", "split_batch"]

#: ``stat(activation, grad)`` -> ``(N, C)`` values per sample and channel; the activation has its
#: channels moved to dim 1 (``(N, C, ...)``), ``grad`` is the loss gradient (same layout) or None.
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
    """The dimension of ``output`` that holds ``module``'s ``width`` output channels.

    Dim 1 for convolutions and channel norms, the last dim for Linear-like layers; for another
    layer type whichever of the two has the right size (dim 1 first). Raises ``ValueError`` if
    neither has ``width`` entries.
    """
    if output.dim() < 2:
        raise ValueError(f"output of shape {tuple(output.shape)} has no batch and channel dims")
    order = (-1, 1) if isinstance(module, _CHANNELS_LAST) else (1, -1)
    for dim in order:
        if output.shape[dim] == width:
            return dim % output.dim()
    raise ValueError(
        f"output of shape {tuple(output.shape)} has no dimension of {width} channels "
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


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]  # (attn_output, attn_weights) of MultiheadAttention
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


def collect(
    model: nn.Module,
    layers: dict[str, tuple[nn.Module, int]],
    batches: Iterable[Any],
    stat: Stat,
    *,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Mean over calibration samples of ``stat`` per output channel of each layer.

    ``layers`` maps a name to ``(module, width)``: the module whose output is hooked and its number
    of output channels. Each batch (see :func:`split_batch`) is moved to the model's device and run
    through ``model`` in eval mode (every module's own mode is restored afterwards). Without
    ``loss_fn`` the pass runs under ``torch.no_grad`` and ``stat(activation, None)`` is evaluated
    in the hook; with it, ``loss_fn(model(x), y)`` is differentiated (with ``torch.autograd.grad``,
    so no parameter's ``.grad`` changes) and ``stat(activation, grad)`` gets the gradient of the
    loss with respect to the layer's output as the layer produced it (before any in-place op that
    follows). A layer called several times counts each call's samples. Per-layer sums and counts
    are summed over DDP ranks, so the result, float64 on the CPU, is identical on every rank. A
    layer never called gets NaN means (it is absent from the result).
    """
    device = _device(model)
    names = sorted(layers)
    sums = {n: torch.zeros(layers[n][1], dtype=torch.float64, device=device) for n in names}
    counts = torch.zeros(len(names), dtype=torch.float64, device=device)
    slot = {n: i for i, n in enumerate(names)}
    tensor_hooks: list[Any] = []

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] += values.detach().to(torch.float64).sum(0).to(device)
        counts[slot[name]] += values.shape[0]

    def make_hook(name: str, width: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = _first_tensor(output)
            if out is None:
                return
            act = out.movedim(channel_dim(module, out, width), 1)
            if loss_fn is None:
                add(name, stat(act.detach(), None))
                return
            if not out.requires_grad:
                return
            # the output may be changed in place later (ReLU(inplace=True)): keep a copy
            saved = act.detach().clone()

            def on_grad(grad: torch.Tensor) -> None:
                dim = channel_dim(module, grad, width)
                add(name, stat(saved, grad.detach().movedim(dim, 1)))

            tensor_hooks.append(out.register_hook(on_grad))

        return hook

    training = {m: m.training for m in model.modules()}
    handles = [layers[n][0].register_forward_hook(make_hook(n, layers[n][1])) for n in names]
    try:
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
            if leaves:  # differentiate w.r.t. the inputs: every hooked output is on the path
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
            for h in tensor_hooks:
                h.remove()
            tensor_hooks.clear()
    finally:
        for h in handles:
            h.remove()
        for h in tensor_hooks:
            h.remove()
        for m, mode in training.items():
            m.train(mode)

    if names:
        flat = all_reduce_sum(torch.cat([*(sums[n] for n in names), counts]))
        total = flat[-len(names) :]
        offset = 0
        for n in names:
            width = layers[n][1]
            sums[n] = flat[offset : offset + width]
            offset += width
        return {n: (sums[n] / total[slot[n]]).cpu() for n in names if total[slot[n]] > 0}
    return {}


def _is_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def _reiterable(batches: Iterable[Any], max_batches: int | None) -> Iterable[Any]:
    """``batches`` itself if it can be iterated again (a list, a DataLoader), else its first
    ``max_batches`` items as a list (a generator is consumed once)."""
    if isinstance(batches, Iterator):
        return list(itertools.islice(batches, max_batches))
    return batches


class ActivationCriterion:
    """Base of criteria computed from activations on calibration data.

    A subclass implements :meth:`gather`, returning one score per output position of each named
    layer; ``criterion(group)`` sums them per unit with :meth:`Group.values`. Statistics are
    gathered once per graph (for every output-side layer of all its groups) and again only if
    a layer's width changed since (the graph was pruned).
    """

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
        self.model = model
        self.max_batches = max_batches
        self._cache: weakref.WeakKeyDictionary[
            Graph, tuple[tuple[tuple[str, int], ...], dict[str, torch.Tensor]]
        ] = weakref.WeakKeyDictionary()

    def gather(self, model: nn.Module, layers: dict[str, tuple[nn.Module, int]]) -> dict[str, Any]:
        """Per-position scores of each layer (see :func:`collect` for ``layers``)."""
        raise NotImplementedError

    def stats(self, graph: Graph) -> dict[str, torch.Tensor]:
        """Scores of every output-side layer of ``graph``'s groups (cached per graph state)."""
        names = sorted({n for g in graph.groups for n in g.out_layers})
        layers = {}
        for n in names:
            site = graph.sites[n]
            width = len(site.out_labels) if site.out_labels is not None else 0
            layers[n] = (site.module, width)
        key = tuple((n, w) for n, (_, w) in layers.items())
        hit = self._cache.get(graph)
        if hit is None or hit[0] != key:
            model = self.model if self.model is not None else graph.model
            hit = (key, self.gather(model, layers))
            self._cache[graph] = hit
        return hit[1]

    def __call__(self, group: Group) -> torch.Tensor:
        stats = self.stats(group.graph)
        return group.values(lambda site: stats.get(site.name))
