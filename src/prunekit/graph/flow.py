"""Channel labels: how the core knows which channels of which layers are the same channel.

Every tensor in the traced graph carries a :class:`Flow`: the dimension that holds its channels
and, for each position along it, an integer *label*. A layer that creates channels (a conv's
outputs) draws new labels; a layer that keeps them (BatchNorm, ReLU, pooling) passes them on; a
concat joins label lists; a flatten repeats each label once per spatial position. Where two
tensors must keep the same channels (a residual add, an SE multiply, a depthwise conv), their
labels are united in a union-find. One equivalence class of labels is one prunable *unit*:
removing it removes every position that carries one of its labels, in every layer.

A label can be *fixed* (with the reason): model inputs and outputs, protected layers, and
anything the core does not understand. A class that contains a fixed label is never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Flow:
    """The channel labels of one tensor: ``labels[i]`` is the label of position ``i`` of ``dim``."""

    dim: int
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.dim < 0:
            raise ValueError(f"Flow.dim must be normalised to >= 0, got {self.dim}")

    def __len__(self) -> int:
        return len(self.labels)

    def moved(self, dim: int) -> Flow:
        return Flow(dim, self.labels)


class Labels:
    """Union-find over integer labels, with owners (who created a label) and fixed classes."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self._owner: list[str] = []
        self._fixed: dict[int, str] = {}  # root -> reason
        self._root_table: np.ndarray | None = None  # set by freeze()

    def new(self, n: int, owner: str) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self._owner.extend([owner] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self._parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        self._root_table = None
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra == rb:
            return
        if rb < ra:  # the smaller label stays root, so units keep the order of their sources
            ra, rb = rb, ra
        self._parent[rb] = ra
        if rb in self._fixed:
            self._fixed.setdefault(ra, self._fixed.pop(rb))

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a) != len(b):
            raise ValueError(f"cannot couple {len(a)} channels with {len(b)}")
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.union(x, y)

    def union_all(self, labels: np.ndarray) -> None:
        first = int(labels[0]) if len(labels) else None
        for x in labels.tolist()[1:]:
            self.union(first, x)

    def fix(self, labels: np.ndarray, reason: str) -> None:
        for x in labels.tolist():
            self._fixed.setdefault(self.find(x), reason)

    def roots(self, labels: np.ndarray) -> np.ndarray:
        if self._root_table is not None:
            return self._root_table[labels]
        return np.fromiter(
            (self.find(x) for x in labels.tolist()), dtype=np.int64, count=len(labels)
        )

    def freeze(self) -> None:
        """Tabulate every label's root: once the graph is built nothing merges any more, and
        :meth:`roots` becomes one array lookup instead of a Python loop."""
        self._root_table = np.fromiter(
            (self.find(x) for x in range(len(self._parent))),
            dtype=np.int64,
            count=len(self._parent),
        )

    def fixed_reason(self, root: int) -> str | None:
        return self._fixed.get(self.find(root))

    def fixed_roots(self) -> set[int]:
        """The roots of every pinned class (reasons move to the new root on each union)."""
        return {self.find(r) for r in self._fixed}

    def owner(self, label: int) -> str:
        return self._owner[label]

    def __len__(self) -> int:
        return len(self._parent)
