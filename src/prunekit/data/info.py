"""What a loaded data set is: the facts a model builder and a report need, in one frozen record."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataInfo:
    """Shape, classes and normalisation of a data set as the model will see it.

    ``input_shape`` is the shape of one sample *after* any resize: ``(C, H, W)`` for images or
    ``(C, L)`` for 1-D signals, so a model can be built from it without touching the data.
    ``synthetic`` marks random data (speed measurement only) so no output can pass it off as real.
    ``mean``/``std`` are the per-channel constants the data was normalised with; empty when unknown.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    synthetic: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @property
    def in_channels(self) -> int:
        """Channels of one sample (the first axis of ``input_shape``)."""
        return self.input_shape[0]

    @property
    def dims(self) -> int:
        """Spatial dimensions: 2 for images, 1 for signals (picks Conv2d vs Conv1d)."""
        return len(self.input_shape) - 1
