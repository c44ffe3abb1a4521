"""Stand-in models written the way public model libraries write their code.

Each family module registers small builders (tiny widths, small inputs, fast on the CPU) in
:data:`STANDINS`: name -> :class:`Standin` with the example input shapes, the kind of code it
stands for (``class1`` .. ``class5`` for the kinds of code the structural core must understand,
or the task family) and what the model is expected to do (see :data:`EXPECTS`). The equivalence
suite (``tests/test_standins.py``) and ``benchmarks/coverage.py`` both run over this registry.
"""

from __future__ import annotations

from . import cases, convnext, detection, efficientnet, resnets, segmentation, transformers  # noqa: F401
from ._registry import EXPECTS, KINDS, STANDINS, Standin, standin

__all__ = ["EXPECTS", "KINDS", "STANDINS", "Standin", "standin"]
