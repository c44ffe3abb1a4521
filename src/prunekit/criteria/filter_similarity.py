"""Filter-similarity criteria: a filter that another filter of its layer can stand in for is
redundant and goes first.

Three papers of the catalogue score filters by how alike they are, each differently:

* :func:`cosine_redundancy` (Similarity Based Filter Pruning for Efficient
  Super-Resolution Models, BMSB 2020): the cosine
  similarity of two flattened filters, ``cos_ij = <F_i, F_j> / (|F_i| |F_j|)``. Filters are
  removed greedily: the filter most similar to another filter still kept goes first, then the
  similarities are looked at again among the filters left, so a pair of near-copies loses one
  member and the other one, now unique, stays. Of the two members of the most similar pair the
  weaker one (smaller L2 norm) goes and the stronger one stands in for it (the lower index on a
  tie). The score of a unit is its place in that removal order (1 = removed first), so any count
  of removals in a layer is a prefix of the greedy sequence.
* :func:`distance_weighted_redundancy` (FPFS, Neurocomputing 2022): the cosine similarity of
  two filters weighted by a distance weight that decays with their Euclidean distance,
  ``s_ij = exp(-d_ij / mean(d)) * cos_ij`` (``mean(d)``: the mean distance between two filters
  of the layer, so the weight does not depend on the layer's scale). Two filters count as
  redundant when they point the same way *and* lie close: ``F`` and ``10 F`` have cosine 1 but
  are far apart, and both stay. The score of filter ``i`` is ``sum_j (1 - s_ij)`` over the other
  filters of its layer: lowest = most redundant.
* MSVFP's similarity phase uses the summed Euclidean distance of FPGM
  (:func:`prunekit.criteria.fpgm`), its magnitude phase the L2 norm.

A unit produced by several layers (every conv of a residual stage) is compared with the other
units in every such layer: the similarity matrices of its layers are averaged (cosine
redundancy) or its scores summed (distance-weighted). Only layers with filters count (weights of
two or more dimensions; BatchNorm scales are skipped). An all-zero filter has no direction: it
counts as a copy of every other filter (cosine 1), so dead filters go first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from prunekit.graph import Group
from prunekit.graph.core import out_weight

__all__ = [
    "cosine_matrix",
    "cosine_redundancy",
    "distance_weighted_redundancy",
    "distance_weighted_scores",
    "greedy_removal_order",
    "unit_filters",
]


def unit_filters(group: Group) -> list[torch.Tensor]:
    """The filters of ``group``'s units: one ``(units, D)`` float64 matrix per output-side layer
    with filters, row ``i`` the flattened weights that produce unit ``i`` there (all its output
    positions, concatenated)."""
    graph = group.graph
    units = np.asarray(group.units, dtype=np.int64)
    out = []
    for name in group.out_layers:
        site = graph.sites[name]
        w = out_weight(site.module)
        if w is None or w.dim() < 2 or site.out_labels is None:
            continue
        roots = graph.labels.roots(site.out_labels)
        positions = [np.flatnonzero(roots == u) for u in units]
        if len({len(p) for p in positions}) != 1 or not len(positions[0]):
            continue  # a unit with no (or a different number of) filters here
        index = torch.from_numpy(np.stack(positions).reshape(-1))
        rows = w.detach().index_select(0, index.to(w.device)).to("cpu", torch.float64)
        out.append(rows.reshape(len(units), -1))
    return out


def cosine_matrix(filters: torch.Tensor) -> torch.Tensor:
    """``(n, n)`` cosine similarities of the rows of ``filters``; a zero row has similarity 1
    with every row."""
    f = filters.to(torch.float64)
    norms = f.norm(dim=1)
    unit = f / norms.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    cos = unit @ unit.T
    dead = norms == 0
    cos[dead, :] = 1.0
    cos[:, dead] = 1.0
    return cos.clamp(-1.0, 1.0)


def greedy_removal_order(sim: torch.Tensor, norms: torch.Tensor) -> list[int]:
    """The order in which units go when, each time, the weaker (smaller ``norms``) member of
    the most similar pair of remaining units is removed (see the module docstring); ``sim`` is a
    symmetric ``(n, n)`` matrix."""
    n = sim.shape[0]
    remaining = list(range(n))
    order: list[int] = []
    while len(remaining) > 1:
        idx = torch.tensor(remaining)
        sub = sim[idx][:, idx].clone()
        sub.fill_diagonal_(-math.inf)
        best = sub.max(dim=1).values
        top = torch.tensor(float(best.max()), dtype=sub.dtype)
        # the members of the most similar pair(s); the weakest of them goes
        tied = torch.nonzero(torch.isclose(best, top, rtol=0, atol=1e-12)).reshape(-1)
        weakest = torch.argmin(norms.to(torch.float64)[idx][tied])  # the first on a tie
        order.append(remaining.pop(int(tied[weakest])))
    return order + remaining


def cosine_redundancy(group: Group) -> torch.Tensor:
    """Similarity-based filter pruning (BMSB 2020): each unit's place in the greedy removal
    order by cosine similarity to the filters still kept (1 = removed first; higher = keep)."""
    filters = unit_filters(group)
    if not filters:
        return torch.zeros(group.size, dtype=torch.float64)
    sim = torch.stack([cosine_matrix(f) for f in filters]).mean(0)
    norms = torch.stack([f.norm(dim=1) for f in filters]).sum(0)
    order = greedy_removal_order(sim, norms)
    scores = torch.empty(group.size, dtype=torch.float64)
    scores[torch.tensor(order)] = torch.arange(1, group.size + 1, dtype=torch.float64)
    return scores


def distance_weighted_scores(filters: torch.Tensor) -> torch.Tensor:
    """``sum_{j != i} (1 - exp(-d_ij / mean(d)) * cos_ij)`` for each row ``i`` of ``filters``
    (FPFS; see the module docstring): lowest = most redundant."""
    f = filters.to(torch.float64)
    n = f.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.float64)
    d = torch.cdist(f, f)
    mean = d.sum() / (n * (n - 1))
    weight = torch.exp(-d / mean) if mean > 0 else torch.ones_like(d)
    s = weight * cosine_matrix(f)
    s.fill_diagonal_(1.0)  # contributes 1 - 1 = 0
    return (1.0 - s).sum(dim=1)


def distance_weighted_redundancy(group: Group) -> torch.Tensor:
    """FPFS score per unit (higher = keep), summed over the group's layers with filters."""
    total = torch.zeros(group.size, dtype=torch.float64)
    for f in unit_filters(group):
        total += distance_weighted_scores(f)
    return total
