"""Peak memory of a forward pass.

On CUDA this is ``torch.cuda.max_memory_allocated``. On the CPU, where PyTorch keeps no such
counter, a dispatch mode records every tensor storage an operator creates and frees it when the
storage is collected, which gives the peak of live activation memory during the pass.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prunekit.measure._inputs import Inputs, as_args, inference, model_device


class _StorageTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._sizes:  # views and in-place results share storage
                continue
            self._sizes[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out


def peak_memory(model: nn.Module, inputs: Inputs) -> int:
    """Peak bytes allocated by one inference forward pass (weights and inputs excluded on CPU)."""
    args = as_args(inputs)
    device = model_device(model)
    with inference(model):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            model(*args)
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base)
        tracker = _StorageTracker()
        with tracker:
            model(*args)
        return int(tracker.peak)
