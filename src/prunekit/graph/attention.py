"""``nn.MultiheadAttention``: pruned by whole heads.

The layer's width ``embed_dim`` is used three times: by the query/key/value inputs, inside (the
``num_heads`` heads of ``head_dim`` channels each) and by the output. PyTorch requires the three
to be equal, so one unit is one head ``h`` with everything at positions
``h * head_dim .. (h + 1) * head_dim - 1``: those input channels (of query, key and value alike),
the head's rows of the q, k and v projections, its columns of ``out_proj`` and those output
channels. Removing a head keeps ``head_dim`` and so the softmax scaling, which makes the removal
exact: a head whose value rows are zero adds nothing to the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.graph.flow import Flow
from prunekit.graph.handlers import Call, Handler, register_handler, slice_tensor

_QUERY, _KEY, _VALUE, _ATTN_MASK = 0, 1, 2, 5  # positions in MultiheadAttention.forward


@register_handler(nn.MultiheadAttention)
class MultiheadAttentionHandler(Handler):
    """Heads as units; see the module docstring. Query, key and value share their input
    channels position by position (self-attention passes one tensor three times; for
    cross-attention the key/value producers are coupled to the query's)."""

    def propagate(self, call: Call, m: nn.MultiheadAttention, inputs: list[Flow | None]) -> Any:
        flows = [*inputs, None, None, None][:3]
        shapes = [*call.in_shapes, None, None, None][:3]
        ndim = len(shapes[_QUERY]) if shapes[_QUERY] is not None else 3
        channels = ndim - 1  # the embedding is the last dim, batch first or not
        out = call.new(m.embed_dim)
        why = self._unsupported(m, flows, call)
        query = flows[_QUERY]
        if why is not None:
            for f in (*flows, Flow(channels, out)):
                if f is not None:
                    call.fix(f.labels, why)
            traced = query is not None and query.dim == channels and len(query) == m.embed_dim
            call.record(in_labels=query.labels if traced else None, out_labels=out)
        else:
            assert query is not None
            for f in flows[1:]:
                if f is not None and f is not query:
                    call.labels.union_arrays(query.labels, f.labels)
            d = m.head_dim
            for h in range(m.num_heads):
                block = slice(h * d, (h + 1) * d)
                call.labels.union_all(np.concatenate([query.labels[block], out[block]]))
            call.record(in_labels=query.labels, out_labels=out)
        # (attn_output, attn_weights): the averaged weights have no channel dim
        return (Flow(channels, out), None)

    @staticmethod
    def _unsupported(
        m: nn.MultiheadAttention, flows: Sequence[Flow | None], call: Call
    ) -> str | None:
        """Why the heads cannot be pruned in this call, or None."""
        if not m._qkv_same_embed_dim:
            return "MultiheadAttention with kdim/vdim different from embed_dim"
        q_shape = call.in_shapes[_QUERY] if call.in_shapes else None
        ndim = len(q_shape) if q_shape is not None else 3
        for f in flows:
            if f is None or f.dim != ndim - 1 or len(f) != m.embed_dim:
                return "MultiheadAttention input whose embedding channels are not traced"
        mask = call.in_shapes[_ATTN_MASK] if len(call.in_shapes) > _ATTN_MASK else None
        if mask is not None and len(mask) == 3:
            return "MultiheadAttention with a 3-D attn_mask (one mask per head)"
        out_shape = call.out_shape
        weights = out_shape[1] if isinstance(out_shape, (tuple, list)) else None
        if weights is not None and len(weights) == ndim + 1:  # average_attn_weights=False
            return "MultiheadAttention returning per-head attention weights"
        return None

    def prune(
        self,
        m: nn.MultiheadAttention,
        keep_in: torch.Tensor | None,
        keep_out: torch.Tensor | None,
    ) -> None:
        keep = keep_out if keep_out is not None else keep_in
        if keep is None:
            return
        d, e = m.head_dim, m.embed_dim
        heads = keep.reshape(-1, d) if len(keep) % d == 0 else None
        whole = heads is not None and bool(
            (heads == heads[:, :1] + torch.arange(d)).all() and (heads[:, 0] % d == 0).all()
        )
        if not whole or (keep_in is not None and not torch.equal(keep_in, keep)):
            raise RuntimeError(f"MultiheadAttention can only lose whole heads, got {keep.tolist()}")
        rows = torch.cat([keep, keep + e, keep + 2 * e])  # the head's q, k and v rows
        slice_tensor(m, "in_proj_weight", 0, rows)
        slice_tensor(m, "in_proj_weight", 1, keep)
        slice_tensor(m, "in_proj_bias", 0, rows)
        slice_tensor(m.out_proj, "weight", 0, keep)
        slice_tensor(m.out_proj, "weight", 1, keep)
        slice_tensor(m.out_proj, "bias", 0, keep)
        slice_tensor(m, "bias_k", 2, keep)
        slice_tensor(m, "bias_v", 2, keep)
        m.embed_dim = m.kdim = m.vdim = len(keep)
        m.num_heads = len(keep) // d
        m.out_proj.in_features = m.out_proj.out_features = len(keep)

    def zero(self, m: nn.MultiheadAttention, pos: torch.Tensor) -> None:
        # the output channels, and the heads themselves: with zero value rows (and value bias)
        # a head's output is zero whatever its attention, so nothing of it reaches out_proj
        e = m.embed_dim
        pos = pos.to(m.out_proj.weight.device)
        m.out_proj.weight[pos] = 0
        if m.out_proj.bias is not None:
            m.out_proj.bias[pos] = 0
        if not m._qkv_same_embed_dim:
            return
        rows = torch.cat([pos, pos + e, pos + 2 * e])
        m.in_proj_weight[rows] = 0
        if m.in_proj_bias is not None:
            m.in_proj_bias[rows] = 0
        for extra in (m.bias_k, m.bias_v):
            if extra is not None:
                extra[..., pos] = 0

    def count(
        self, m: nn.MultiheadAttention, n_in: int | None, n_out: int | None
    ) -> tuple[int, float]:
        """Exact parameters. The FLOPs fraction is the projections' ``(e'/e)**2``; the score and
        weighting products scale as ``e'/e``, which :meth:`flops` accounts for exactly."""
        e = m.embed_dim
        n = n_out if n_out is not None else n_in
        if n is None or not m._qkv_same_embed_dim:
            return sum(p.numel() for p in m.parameters()), 1.0
        params = 3 * n * n + n * n  # in_proj (q, k, v) and out_proj weights
        params += 3 * n if m.in_proj_bias is not None else 0
        params += n if m.out_proj.bias is not None else 0
        params += sum(n for b in (m.bias_k, m.bias_v) if b is not None)
        return params, (n / e) ** 2

    def flops(
        self,
        m: nn.MultiheadAttention,
        n_in: int | None,
        n_out: int | None,
        dense: int,
        calls: Sequence[Call],
    ) -> int:
        """The counter sees the four projections (``2 * tokens * e * e`` each, query tokens for
        q and out_proj, key tokens for k and v), which scale as ``(e'/e)**2``, and, depending
        on the code path, the two batched products of the heads, which scale as ``e'/e``. The
        projections are computed from the recorded call shapes; the rest of ``dense`` is the
        products (zero where PyTorch's fused inference path runs, which the counter does not
        see at all)."""
        e = m.embed_dim
        n = n_out if n_out is not None else (n_in if n_in is not None else e)
        projections = 0
        for call in calls:
            q, k = call.in_shapes[_QUERY], call.in_shapes[_KEY]
            tokens_q = int(np.prod(q[:-1])) if q is not None else 0
            tokens_k = int(np.prod(k[:-1])) if k is not None else tokens_q
            projections += 2 * e * e * (2 * tokens_q + 2 * tokens_k)
        if dense < projections:  # a path whose count we cannot split: scale it as a whole
            return round(dense * (n / e) ** 2)
        return projections * n * n // (e * e) + (dense - projections) * n // e
