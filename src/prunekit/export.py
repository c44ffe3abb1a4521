"""ONNX export of (pruned) models, a numerical check against torch, and onnxruntime latency.

A channel-pruned model is a plain ``nn.Module`` with narrower layers, so it exports as is; a model
still carrying :mod:`prunekit.masks` parametrizations is exported from a copy whose masks are baked
in with :func:`prunekit.masks.finalize` (pruned weights are stored as zeros, no ``w * m`` in the
graph), and the caller's model keeps its masks.

Exporter: the ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, torch's
default). On torch 2.13 both it and the TorchScript exporter (``dynamo=False``) export every
model of the zoo tried (resnet20/18, vgg11, mobilenetv2 with its depthwise convs, densenet40,
googlenet, lenet5, mnist1d_cnn), dense, channel-pruned and masked, with the same outputs under
onnxruntime (max abs difference 1e-9 to 1e-6 for unit-scale outputs) at batch 1 and batch N. The
TorchScript exporter is 5-20x faster to run (0.1-2 s against 1-10 s per model) but is deprecated
and due to be removed; the default one is the supported path, and names the graph's initializers
after the parameters (``layer1.0.conv1.weight``), so a pruned layer can be found in the file by
its module path. Its cost is the ``onnxscript`` dependency and the slower export.

The exporter writes large weights to a side file (``<name>.data``) when it saves a file itself,
which a rename of a temporary file would break; so the program is taken in memory and its whole
protobuf written through :func:`prunekit.io.atomic_open` (a temporary file in the same folder,
then ``os.replace``). A failed export leaves an existing file untouched.

onnx, onnxscript and onnxruntime are optional: ``pip install prunekit[onnx]``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import re
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.utils.benchmark as tbench
from torch import nn

from prunekit import masks
from prunekit.errors import ConfigError, MissingFileError
from prunekit.io import atomic_open
from prunekit.measure import batch_of
from prunekit.measure._inputs import Inputs, as_args, inference, model_device

INSTALL_HINT = "install it with `pip install prunekit[onnx]`"
WARMUP_RUNS = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _require(name: str) -> ModuleType:
    """Import an optional package, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ConfigError(f"ONNX support needs the {name!r} package: {INSTALL_HINT} ({e})") from e


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()  # the exporter colours its messages for terminals
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


def _reason(e: BaseException) -> str:
    """The error and, when it wraps another, the innermost cause (the exporter wraps the real
    error in its own)."""
    root = e
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    if root is e:
        return _first_line(e)
    return f"{_first_line(e)} (caused by {_first_line(root)})"


def _tensor_args(example_input: Inputs, what: str) -> tuple[torch.Tensor, ...]:
    args = as_args(example_input)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        kinds = ", ".join(type(a).__name__ for a in args) or "nothing"
        raise ConfigError(f"{what} needs example inputs that are tensors, got {kinds}")
    return args  # type: ignore[return-value]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's deprecation chatter and its notes on missing torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _export_copy(model: nn.Module) -> nn.Module:
    """A CPU, eval-mode copy of ``model`` with any prunekit masks baked in; ``model`` itself is
    left as it was (masks included)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"export needs an nn.Module, got {type(model).__name__}")
    clone = copy.deepcopy(model).cpu().eval()
    masks.finalize(clone)
    return clone


def _names(stem: str, n: int) -> list[str]:
    """``[stem]`` for one tensor, ``stem_0, stem_1, ...`` for several."""
    return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]


def export_onnx(
    model: nn.Module,
    example_input: Inputs,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Write ``model`` to ``path`` as ONNX and return the path.

    The model is exported from a deep copy, in eval mode on the CPU, masks baked in; the caller's
    model is left as it was. With ``dynamic_batch`` the first dimension of every input (and of the
    outputs) is symbolic, so one file serves batch 1 and batch N. ``opset`` defaults to the
    exporter's. Inputs are named ``input`` (``input_0``, ``input_1``, ... for several) and
    outputs ``output`` (``output_0``, ...). The write is atomic.
    """
    _require("onnx")
    _require("onnxscript")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 1):
        raise ConfigError(f"opset must be a positive int or None, got {opset!r}")
    clone = _export_copy(model)
    args = tuple(a.detach().cpu() for a in _tensor_args(example_input, "ONNX export"))
    dynamic_shapes = None
    if dynamic_batch:
        # batch 2, not 1: torch.export specialises a dimension of size 1 to a constant
        args = tuple(batch_of(args, 2))
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} if a.dim() else None for a in args)
    try:
        with torch.no_grad():
            outputs = clone(*args)
        n_out = len(outputs) if isinstance(outputs, (tuple, list)) else 1
        with _quiet_exporter():
            program = torch.onnx.export(
                clone,
                args,
                None,
                input_names=_names("input", len(args)),
                output_names=_names("output", n_out),
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                external_data=False,
                verbose=False,
            )
            data = program.model_proto.SerializeToString()
    except Exception as e:  # the exporter raises many types; all mean "could not export"
        raise ConfigError(f"ONNX export of {type(model).__name__} failed: {_reason(e)}") from e
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(data)
    return path


def _session(path: str | os.PathLike[str], *, threads: int = 1) -> Any:
    """An onnxruntime CPU session: ``threads`` intra-op threads, one inter-op thread, every graph
    optimisation on."""
    ort = _require("onnxruntime")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive int, got {threads!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX file {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as e:
        raise ConfigError(f"onnxruntime cannot load {path}: {_reason(e)}") from e


def _feed(session: Any, args: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(args):
        raise ConfigError(f"the ONNX graph takes {len(names)} inputs, got {len(args)}")
    return {n: a.detach().cpu().numpy() for n, a in zip(names, args, strict=True)}


def _run(session: Any, feed: dict[str, np.ndarray], path: Path) -> list[np.ndarray]:
    try:
        return session.run(None, feed)
    except Exception as e:
        shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in feed.items())
        raise ConfigError(
            f"onnxruntime failed to run {path} on inputs {shapes} (a file exported with "
            f"dynamic_batch=False takes only its export batch size): {_reason(e)}"
        ) from e


def _torch_outputs(model: nn.Module, args: Sequence[torch.Tensor]) -> list[np.ndarray]:
    device = model_device(model)
    with inference(model):
        out = model(*(a.to(device) for a in args))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.detach().cpu().numpy() for o in outs]


def check_onnx(
    path: str | os.PathLike[str],
    model: nn.Module,
    example_input: Inputs,
    *,
    atol: float = 1e-4,
) -> float:
    """Run ``model`` (eval mode, no grad) and the ONNX file on ``example_input`` and return the
    largest absolute difference over all outputs; ``ConfigError`` when it is above ``atol``."""
    if not atol >= 0:
        raise ConfigError(f"atol must be >= 0, got {atol!r}")
    path = Path(path)
    args = _tensor_args(example_input, "check_onnx")
    session = _session(path)
    got = _run(session, _feed(session, args), path)
    want = _torch_outputs(model, args)
    if len(got) != len(want):
        raise ConfigError(f"{path} has {len(got)} outputs, the model {len(want)}")
    diff = 0.0
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g.shape != w.shape:
            raise ConfigError(
                f"output {i} of {path} has shape {list(g.shape)}, the model's {list(w.shape)}"
            )
        if g.size:
            diff = max(diff, float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))))
    if diff > atol:
        raise ConfigError(
            f"{path} differs from {type(model).__name__} by up to {diff:.3g} (allowed {atol:g})"
        )
    return diff


def _check_batch_sizes(batch_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"batch_sizes must be positive ints, got {batch_sizes!r}")
    return sizes


def _model_session(
    model: nn.Module, args: Sequence[torch.Tensor], threads: int
) -> tuple[Any, Path]:
    """``model`` exported (dynamic batch) to a temporary file and loaded in a session; the
    session holds the graph in memory, so the file goes. Returns the session and the file's
    name, for error messages."""
    with tempfile.TemporaryDirectory(prefix="prunekit-onnx-") as tmp:
        path = export_onnx(model, args, Path(tmp) / "model.onnx")
        return _session(path, threads=threads), path


def _layout(model: nn.Module) -> tuple[Any, ...]:
    """What decides a model's compute, not its values: every module's type and settings
    (``extra_repr``: channels, groups, strides) and every parameter's and buffer's shape."""
    return tuple(
        (
            name,
            type(m).__qualname__,
            m.extra_repr(),
            tuple((k, tuple(t.shape)) for k, t in m.named_parameters(recurse=False)),
            tuple((k, tuple(t.shape)) for k, t in m.named_buffers(recurse=False) if t is not None),
        )
        for name, m in model.named_modules()
    )


class _SessionCache:
    """The last few models' onnxruntime sessions, each kept while its model object lives and
    its :func:`_layout` and the inputs' shapes are unchanged (a pruning step in place changes
    the layout, so the model is exported again)."""

    KEPT = 4

    def __init__(self) -> None:
        self._entries: list[tuple[weakref.ref[nn.Module], tuple[Any, ...], Any, Path]] = []

    def get(self, model: nn.Module, args: Sequence[torch.Tensor], threads: int) -> tuple[Any, Path]:
        key = (_layout(model), tuple((tuple(a.shape), a.dtype) for a in args), threads)
        for ref, k, session, path in self._entries:
            if ref() is model and k == key:
                return session, path
        session, path = _model_session(model, args, threads)
        alive = [e for e in self._entries if e[0]() is not None and e[0]() is not model]
        self._entries = [*alive[-(self.KEPT - 1) :], (weakref.ref(model), key, session, path)]
        return session, path


_SESSIONS = _SessionCache()


def onnx_latency(
    model_or_path: nn.Module | str | os.PathLike[str],
    example_input: Inputs,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    threads: int = 1,
    min_run_time: float = 0.5,
    reuse: bool = False,
) -> dict[int, float]:
    """Median latency in milliseconds of one onnxruntime run, per batch size.

    ``model_or_path`` is an ONNX file, or a model that is first exported (dynamic batch) to a
    temporary file. The example inputs are repeated or cut to each batch size. The session runs on
    the CPU provider with ``threads`` intra-op threads and one inter-op thread, graph
    optimisations on; a few warm-up runs precede ``torch.utils.benchmark``'s blocked autorange
    for at least ``min_run_time`` seconds.

    ``reuse``: time the session exported for this same model object by an earlier call, as long
    as its layers are unchanged in shape (:class:`_SessionCache`). A latency depends on the
    shapes, not on the weights' values, and an export costs seconds, so code that times the same
    models again and again (a latency target's verification rounds) exports each once.
    """
    sizes = _check_batch_sizes(batch_sizes)
    if not min_run_time > 0:
        raise ConfigError(f"min_run_time must be > 0 seconds, got {min_run_time!r}")
    args = _tensor_args(example_input, "onnx_latency")
    if isinstance(model_or_path, nn.Module) and reuse:
        session, path = _SESSIONS.get(model_or_path, args, threads)
    elif isinstance(model_or_path, nn.Module):
        session, path = _model_session(model_or_path, args, threads)
    else:
        path = Path(model_or_path)
        session = _session(path, threads=threads)
    out: dict[int, float] = {}
    for n in sizes:
        feed = _feed(session, batch_of(args, n))
        for _ in range(WARMUP_RUNS):
            _run(session, feed, path)
        timer = tbench.Timer(
            stmt="run(None, feed)",
            globals={"run": session.run, "feed": feed},
            num_threads=threads,
        )
        out[n] = timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    return out


__all__ = ["check_onnx", "export_onnx", "onnx_latency"]
