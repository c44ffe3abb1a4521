"""Functional ops that take parameters as arguments: ``F.conv2d(x, self.weight, self.bias, ...)``.

Layers in model libraries often call the functional op themselves: a BatchNorm subclass doing
``F.batch_norm`` then an activation, a LayerNorm applied over channels-first maps, a conv that
standardises its weight before ``F.conv2d``. The graph follows what the code computes, whichever
module holds the parameters:

* a parameter (or buffer) read in the traced code starts a :class:`ParamFlow`, which records, for
  each dimension of a tensor computed from it, which dimensions of the parameter it is made of.
  Reshapes, permutes, element-wise products with other parameters (a gain), reductions and
  ``F.batch_norm`` over a weight (weight standardisation) are followed; anything else loses track
  and the layer that receives the result is pinned, with the reason;
* a functional layer op (conv, conv-transpose, linear, batch/instance/layer/group norm, prelu,
  embedding) whose weight is a followed parameter becomes a site of the graph, with a
  :class:`FunctionalHandler` that slices every parameter involved along the right dimension and
  keeps the attributes that mirror their shapes (``out_channels``, ``num_features``,
  ``normalized_shape`` ...) consistent, since the layer's own forward reads them.

A weight standardised over its input dimensions (``mixes``) changes when an input channel is
removed, even a zero one: the groups of those input channels are marked inexact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.graph.handlers import Call, Handler, slice_tensor

Atoms = tuple[int, ...] | None  # the parameter dims a tensor dim is made of, row-major


@dataclass(frozen=True)
class ParamFlow:
    """A tensor computed from parameter ``path`` (of shape ``shape``): ``dims[i]`` lists the
    parameter dims that tensor dim ``i`` is made of (``None``: lost track). ``extras`` are other
    parameters folded in, each ``(path, its dim, the base dim it runs along)``."""

    path: str
    shape: tuple[int, ...]
    dims: tuple[Atoms, ...]
    mixes: bool = False  # values mixed across parameter dims other than 0 (a standardisation)
    extras: tuple[tuple[str, int, int], ...] = ()

    @staticmethod
    def of(path: str, shape: Sequence[int]) -> ParamFlow:
        return ParamFlow(path, tuple(shape), tuple((d,) for d in range(len(shape))))

    def base_dim(self, i: int) -> int | None:
        """The single non-trivial parameter dim tensor dim ``i`` is, or None."""
        atoms = self.dims[i] if 0 <= i < len(self.dims) else None
        if atoms is None:
            return None
        big = [a for a in atoms if self.shape[a] != 1]
        return big[0] if len(big) == 1 else (atoms[0] if len(atoms) == 1 else None)


def reshape(p: ParamFlow, in_shape: Sequence[int], out_shape: Sequence[int]) -> ParamFlow:
    """Follow a row-major reshape: each run of input dims with the product of a run of output
    dims hands its atoms to those output dims when their sizes line up."""
    from prunekit.graph.ops import reshape_groups

    dims: list[Atoms] = [None] * len(out_shape)
    for ins, outs in reshape_groups(list(in_shape), list(out_shape)) or ():
        atoms: list[int] = []
        for d in ins:
            if p.dims[d] is None:
                atoms = []
                break
            atoms.extend(p.dims[d])  # type: ignore[arg-type]
        atoms = [a for a in atoms if p.shape[a] != 1]
        k = 0
        for d in outs:
            size, taken = out_shape[d], []
            prod = 1
            while (
                k < len(atoms) and prod * p.shape[atoms[k]] <= size and (prod < size or not taken)
            ):
                prod *= p.shape[atoms[k]]
                taken.append(atoms[k])
                k += 1
                if prod == size:
                    break
            dims[d] = tuple(taken) if prod == size else None
    # size-1 dims carry nothing; the rest got atoms or lost track
    dims = [() if out_shape[d] == 1 and dims[d] is None else dims[d] for d in range(len(out_shape))]
    return ParamFlow(p.path, p.shape, tuple(dims), p.mixes, p.extras)


def permute(p: ParamFlow, order: Sequence[int]) -> ParamFlow:
    return ParamFlow(p.path, p.shape, tuple(p.dims[d] for d in order), p.mixes, p.extras)


def reduce(p: ParamFlow, dims: Sequence[int], keepdim: bool) -> ParamFlow | None:
    """A reduction over ``dims`` (a mean or norm of a weight over its input dims)."""
    reduced = {a for d in dims for a in (p.dims[d] or ())}
    if any(p.dims[d] is None for d in dims) or 0 in {a for a in reduced if p.shape[a] != 1}:
        return None  # mixes the output channels, or we lost track
    mixes = p.mixes or any(p.shape[a] != 1 for a in reduced)
    if keepdim:
        new = tuple(() if d in dims else p.dims[d] for d in range(len(p.dims)))
    else:
        new = tuple(p.dims[d] for d in range(len(p.dims)) if d not in dims)
    return ParamFlow(p.path, p.shape, new, mixes, p.extras)


def combine(flows: Sequence[tuple[ParamFlow | None, Sequence[int]]], out_ndim: int) -> Any:
    """An element-wise op between tensors computed from parameters (``w * gain``): the largest
    one is the base; every other one must run along base dims (it is then an extra, sliced with
    them) or be broadcast. Returns the result, or None when the alignment is not followed."""
    known = [(f, s) for f, s in flows if f is not None]
    if len(known) != len(flows):
        return None
    base, base_shape = max(known, key=lambda fs: math.prod(fs[1]))
    pad = out_ndim - len(base_shape)
    dims = [()] * pad + list(base.dims)
    extras = list(base.extras)
    mixes = base.mixes
    for f, shape in known:
        if f is base:
            continue
        mixes = mixes or f.mixes
        extras.extend(f.extras)
        off = out_ndim - len(shape)
        for i, size in enumerate(shape):
            if size == 1:
                continue
            mine, theirs = f.base_dim(i), dims[off + i]
            if mine is None or theirs is None:
                return None
            big = [a for a in theirs if base.shape[a] != 1]
            if len(big) != 1:
                return None
            if f.path == base.path:
                if mine != big[0]:
                    return None
            else:
                extras.append((f.path, mine, big[0]))
    return ParamFlow(base.path, base.shape, tuple(dims), mixes, tuple(dict.fromkeys(extras)))


# ----------------------------------------------------------------------------- the handler


@dataclass
class Ref:
    """One tensor of a functional layer: ``owner.attr``, sliced along ``out_axis`` with the
    layer's output positions and ``in_axis`` with its input positions (None: not sliced).
    ``produces``: zeroing it along ``out_axis`` zeroes those outputs (weights, biases, gains;
    not running statistics)."""

    owner: nn.Module
    attr: str
    out_axis: int | None
    in_axis: int | None = None
    produces: bool = True

    @property
    def tensor(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)


# attributes a layer keeps that mirror the sizes of its parameters, by side
_OUT_MIRRORS = ("out_channels", "num_features", "num_channels", "out_features", "embedding_dim",
                "num_parameters")  # fmt: skip
_IN_MIRRORS = ("in_channels", "in_features")


@dataclass
class FunctionalHandler(Handler):
    """Slices the tensors of one functional layer op (see the module doc). ``kind``: ``conv``,
    ``linear``, ``norm`` (per-channel parameters), ``layer_norm``, ``group_norm``, ``prelu``,
    ``embedding``. ``groups``: a grouped conv's group count (groups are removed whole)."""

    kind: str
    refs: list[Ref] = field(default_factory=list)
    groups: int = 1
    num_groups: int = 1  # group_norm
    conv_in: int | None = None  # a grouped conv's input channels (groups x per-group width)

    def _sizes(self) -> tuple[int | None, int | None]:
        w = self.refs[0]
        t = w.tensor
        n_out = t.shape[w.out_axis] if w.out_axis is not None else None
        n_in = t.shape[w.in_axis] if w.in_axis is not None else None
        return n_in, n_out

    def prune(
        self, module: Any, keep_in: torch.Tensor | None, keep_out: torch.Tensor | None
    ) -> None:
        old_in, old_out = self._sizes()
        if self.kind == "conv" and self.groups > 1:
            keep_in = None  # groups are removed whole: a group's input width stays
        done: set[tuple[int, str, int]] = set()
        for r in self.refs:
            for axis, keep in ((r.out_axis, keep_out), (r.in_axis, keep_in)):
                if axis is None or keep is None or r.tensor is None:
                    continue
                key = (id(r.owner), r.attr, axis)
                if key not in done:
                    done.add(key)
                    slice_tensor(r.owner, r.attr, axis, keep)
        self._mirror(old_in, old_out, keep_in, keep_out)

    def _mirror(
        self,
        old_in: int | None,
        old_out: int | None,
        keep_in: torch.Tensor | None,
        keep_out: torch.Tensor | None,
    ) -> None:
        owner = self.refs[0].owner
        n_out = len(keep_out) if keep_out is not None else old_out
        if self.kind == "conv" and self.groups > 1:
            per_out = (old_out or 1) // self.groups
            new_groups = (n_out or 0) // per_out
            new_in = (self.conv_in or 0) // self.groups * new_groups
            if getattr(owner, "groups", None) == self.groups:
                owner.groups = new_groups
            if getattr(owner, "in_channels", None) == self.conv_in:
                owner.in_channels = new_in
            self.groups, self.conv_in = new_groups, new_in
        elif keep_in is not None and old_in is not None:
            for name in _IN_MIRRORS:
                if getattr(owner, name, None) == old_in:
                    setattr(owner, name, len(keep_in))
        if keep_out is not None and old_out is not None:
            for name in _OUT_MIRRORS:
                if getattr(owner, name, None) == old_out:
                    setattr(owner, name, n_out)
            shape = getattr(owner, "normalized_shape", None)
            if self.kind == "layer_norm" and isinstance(shape, tuple) and shape[-1:] == (old_out,):
                owner.normalized_shape = (*shape[:-1], n_out)
            if self.kind == "group_norm" and self.num_groups > 1:
                size = (old_out or 1) // self.num_groups
                if getattr(owner, "num_groups", None) == self.num_groups:
                    owner.num_groups = (n_out or 0) // size
                self.num_groups = (n_out or 0) // size

    def count(self, module: Any, n_in: int | None, n_out: int | None) -> tuple[int, float]:
        old_in, old_out = self._sizes()
        params = 0
        seen: set[tuple[int, str]] = set()
        for r in self.refs:
            t = r.tensor
            if t is None or (id(r.owner), r.attr) in seen or not isinstance(t, nn.Parameter):
                continue
            seen.add((id(r.owner), r.attr))
            shape = list(t.shape)
            if r.out_axis is not None and n_out is not None:
                shape[r.out_axis] = n_out
            if (
                r.in_axis is not None
                and n_in is not None
                and not (self.kind == "conv" and self.groups > 1)
            ):
                shape[r.in_axis] = n_in
            params += math.prod(shape)
        frac = 1.0
        if self.kind in ("conv", "linear"):
            if n_out is not None and old_out:
                frac *= n_out / old_out
            if n_in is not None and old_in and self.groups == 1:
                frac *= n_in / old_in
        return params, frac

    def zero(self, module: Any, pos: torch.Tensor) -> None:
        for r in self.refs:
            t = r.tensor
            if r.produces and r.out_axis is not None and isinstance(t, torch.Tensor):
                t.index_fill_(r.out_axis, pos.to(t.device), 0.0)

    @property
    def weight(self) -> torch.Tensor | None:
        """The main weight with outputs on dim 0 (for scoring)."""
        r = self.refs[0]
        t = r.tensor
        if t is None or r.out_axis is None or t.dim() == 0:
            return None
        return t.movedim(r.out_axis, 0)


def unit_groups(labels: np.ndarray, groups: int) -> list[np.ndarray]:
    n = len(labels) // groups
    return [labels[k * n : (k + 1) * n] for k in range(groups)]


__all__ = ["Call", "FunctionalHandler", "ParamFlow", "Ref"]


# ----------------------------------------------------------------------------- propagation

FUNCTIONAL_LAYERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("conv1d", "conv2d", "conv3d"),
        ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    ),
    **dict.fromkeys(
        ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
        ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
    ),
    "linear": ("input", "weight", "bias"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps"),
    "instance_norm": ("input", "running_mean", "running_var", "weight", "bias",
                      "use_input_stats", "momentum", "eps"),
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "group_norm": ("input", "num_groups", "weight", "bias", "eps"),
    "prelu": ("input", "weight"),
    "embedding": ("input", "weight"),
}  # fmt: skip
_PARAM_ARGS = ("weight", "bias", "running_mean", "running_var")


def _owner(model: nn.Module, path: str) -> tuple[str, nn.Module, str]:
    owner_path, _, attr = path.rpartition(".")
    return owner_path, model.get_submodule(owner_path), attr


def layer(
    prop: Any,
    node: Any,
    name: str,
    args: dict[str, Any],
    x: Any,
    x_shape: Any,
    out_shape: Any,
) -> Any:
    """Propagate through a functional layer op; returns the output flow, or a string saying why
    its channels must stay (the caller pins them)."""
    from prunekit.graph.core import Site
    from prunekit.graph.flow import Flow

    g = prop.g
    pf = {k: prop._param_of(args.get(k)) for k in _PARAM_ARGS if args.get(k) is not None}
    w = pf.get("weight")
    ndim = len(out_shape) if isinstance(out_shape, torch.Size) else 0
    transposed = name.startswith("conv_transpose")
    # the weight's (output, input) dims, as dims of the parameter it is computed from
    if name.startswith("conv") or name == "linear":
        out_w, in_w = (1, 0) if transposed else (0, 1)
        o, i = w.base_dim(out_w), w.base_dim(in_w)  # type: ignore[union-attr]
        if o is None or (i is None and not w.mixes):  # type: ignore[union-attr]
            return "weight reshaped in a way the graph does not follow"
    elif name == "embedding":
        o, i = w.base_dim(1), None  # type: ignore[union-attr]
    else:
        o, i = 0, None
    refs: list[Ref] = []
    for key, f in pf.items():
        if f is None:
            return f"{key} computed by code the graph does not follow"
        owner_path, owner, attr = _owner(g.model, f.path)
        axis = o if key == "weight" else f.base_dim(0)
        if axis is None:
            return f"{key} reshaped in a way the graph does not follow"
        in_axis = i if key == "weight" else None
        refs.append(Ref(owner, attr, axis, in_axis, produces=not key.startswith("running")))
        for path, dim, base in f.extras:
            if base == (o if key == "weight" else 0):
                _, eo, ea = _owner(g.model, path)
                refs.append(Ref(eo, ea, dim))
            else:
                return f"{path} scales the weight along another dimension than its outputs"
    if w is None:  # a norm without affine parameters: nothing to slice, channels pass
        if x is not None and name == "layer_norm":
            shape = tuple(args.get("normalized_shape") or ())
            if x.dim >= ndim - len(shape):
                if len(shape) != 1:
                    return "LayerNorm over the channels and other dimensions"
                if isinstance(shape[0], int):
                    return f"LayerNorm whose normalized_shape {shape} is written as a number"
                g.inexact.append(x.labels)
        if x is not None and name == "group_norm":
            groups = int(args.get("num_groups") or 1)
            if groups == 1:
                g.inexact.append(x.labels)
            for part in unit_groups(x.labels, groups) if groups > 1 else ():
                g.labels.union_all(part)
        return x
    owner_path, owner, attr = _owner(g.model, w.path)
    site_name = owner_path if attr == "weight" and owner_path else w.path
    handler = FunctionalHandler(
        "conv" if name.startswith("conv") else "norm" if name in ("batch_norm", "instance_norm")
        else name, refs)  # fmt: skip
    inexact_in = bool(w.mixes)
    channel_last = ndim - 1
    in_labels = out_labels = None
    exact = True
    if name.startswith("conv"):
        c_in = x_shape[1]
        w_shape = prop.shape_of(args["weight"])
        per_group = w_shape[0] if transposed else w_shape[1]
        groups = c_in // per_group if per_group else 1
        n_out = out_shape[1]
        if x is None or x.dim != 1 or len(x) != c_in:
            if x is not None:
                g.labels.fix(
                    x.labels,
                    f"convolution whose input has its channels on another dimension ({site_name})",
                )
            x = None
        if transposed and groups != 1:
            return "grouped transposed convolution"
        if (
            groups > 1
            and isinstance(args.get("groups"), int)
            and getattr(owner, "groups", None) != groups
        ):
            # whole groups could go, but the count is written into the code as a number
            return f"grouped conv whose group count {groups} is not the layer's groups"
        handler.groups, handler.conv_in = groups, c_in
        if groups == 1:
            out_labels = g.labels.new(n_out, site_name)
        elif x is None:
            out_labels = g.labels.new(n_out, site_name)
            g.labels.fix(
                out_labels, f"grouped conv whose input channels are not traced ({site_name})"
            )
        elif groups == c_in:
            out_labels = np.repeat(x.labels, n_out // groups)
        else:
            out_labels = g.labels.new(n_out, site_name)
            ipg, opg = c_in // groups, n_out // groups
            for k in range(groups):
                g.labels.union_all(np.concatenate(
                    [x.labels[k * ipg : (k + 1) * ipg], out_labels[k * opg : (k + 1) * opg]]))  # fmt: skip
        in_labels = None if x is None else x.labels
        result = Flow(1, out_labels)
    elif name == "linear":
        if x is not None and x.dim != channel_last:
            # along another dim than the channels: they pass, the weight stays, and its FLOPs
            # scale with them
            g.through.append([site_name, x.labels])
            flops = node.meta.get("pk_flops", 0)
            if flops:
                g._per_module_flops[site_name] = g._per_module_flops.get(site_name, 0) + flops
            return x
        if x is not None and len(x) != x_shape[-1]:
            x = None
        out_labels = g.labels.new(out_shape[-1], site_name)
        in_labels = None if x is None else x.labels
        result = Flow(channel_last, out_labels)
    elif name == "embedding":
        out_labels = g.labels.new(out_shape[-1], site_name)
        result = Flow(channel_last, out_labels)
    else:  # norms and prelu: per-channel parameters along the channels
        if x is None:
            return None
        if name == "layer_norm":
            shape = tuple(args.get("normalized_shape") or ())
            if x.dim < ndim - len(shape):
                return x  # normalises other dims; its parameters are not along the channels
            if len(shape) != 1 or x.dim != channel_last:
                return "LayerNorm over the channels and other dimensions"
            if isinstance(shape[0], int) and getattr(owner, "normalized_shape", None) != shape:
                # the width could follow, but it is written into the code as a number
                return f"LayerNorm whose normalized_shape {shape} is written as a number"
            exact = False  # statistics over the channels: removing one changes the others
        elif x.dim != 1:
            if name == "prelu" and math.prod(w.shape) == 1:
                return x
            return "normalisation whose input has its channels on another dimension"
        if name == "group_norm":
            groups = args.get("num_groups") or 1
            if not isinstance(groups, int):
                return "GroupNorm with a computed group count"
            handler.num_groups = groups
            if groups > 1 and getattr(owner, "num_groups", None) != groups:
                # whole groups could go, but the count is written into the code as a number
                return f"GroupNorm whose group count {groups} is not the layer's num_groups"
            if groups == 1:
                exact = False  # one group: statistics over every channel, as a LayerNorm
            else:
                for part in unit_groups(x.labels, groups):
                    g.labels.union_all(part)
        if name == "prelu" and math.prod(w.shape) == 1:
            return x
        in_labels = out_labels = x.labels
        result = x
    site = g.sites.get(site_name)
    if site is None:
        site = g.sites[site_name] = Site(site_name, owner, handler)
    elif not isinstance(site.handler, FunctionalHandler) or site.handler.kind != handler.kind:
        return "a parameter used by two different layer ops"
    prop.record(site_name, in_labels, out_labels, exact)
    if inexact_in and in_labels is not None:
        g.inexact.append(in_labels)  # the standardised weight mixes its inputs' statistics
    call = Call(site_name, g.labels, [x_shape], out_shape, prop.record)
    site.calls.append(call)
    flops = node.meta.get("pk_flops", 0)
    if flops:
        g._per_module_flops[site_name] = g._per_module_flops.get(site_name, 0) + flops
    if site_name in prop.protect and site.out_labels is not None:
        g.labels.fix(site.out_labels, f"protected layer {site_name}")
    return result
