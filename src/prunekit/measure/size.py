"""Bytes on disk of a model's weights."""

from __future__ import annotations

import io
import os

import torch
from torch import nn


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``: what a plain checkpoint of the model costs."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def file_size(path: str | os.PathLike[str]) -> int:
    return os.path.getsize(path)
