"""Baselines a benchmark runs beside prunekit's methods, and that are not prunekit's methods.

* **Peers** (``peer:...``): the importance criteria of Torch-Pruning (Fang et al., DepGraph,
  CVPR 2023), scored and selected by its ``MetaPruner`` exactly as a Torch-Pruning user would,
  to the same FLOPs or params target as every other run (the pruner's ratio is searched by
  bisection until the measured reduction is within 1% of the dense figure; where one channel
  more jumps over that band, the nearest ratio removing more than asked, up to 3% more, so a
  peer never stops short of the target). The channels it
  picks are then removed by prunekit's graph (the same surgery, so the pruned model saves,
  loads and is measured like every other). They need the ``bench`` extra
  (``pip install 'prunekit[bench]'``); a spec naming one without it fails at validation.
* **The unstructured peer** (``peer:torch_l1``): what a user of PyTorch itself does,
  ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` over every conv and
  Linear weight, ``amount`` the run's sparsity (the PyTorch pruning tutorial's global
  pruning). The masks it computes then become prunekit's masks (its reparametrization is
  removed), so the runner fine-tunes, finalises and measures the model like every other.
  Needs nothing beyond torch.
* **References** (``ref:...``): ``ref:width_scaled`` is the dense network made uniformly
  narrower to the same FLOPs or params and trained from scratch with the baseline's schedule,
  then given the same fine-tuning as the pruned networks (Liu et al., "Rethinking the Value of
  Network Pruning", ICLR 2019, make the case for this control).

They live in their own small registry, :data:`BASELINES`, never in the method catalogue: a
report sets their rows apart. The runner gets a pruning function from :func:`pruner` and hands
it to :func:`prunekit.workflow.run_pruning`, so they share the baseline, the fine-tuning and
every measurement with the catalogue methods.

Torch-Pruning settings, from its ``reproduce/main.py`` (the script behind its published CIFAR
tables): the criteria are ``MagnitudeImportance(p=2)`` (group L2), ``GroupTaylorImportance()``,
``LAMPImportance(p=2)``, ``BNScaleImportance()`` and ``RandomImportance()``; the classifier is
ignored (the model's ``protected_layers`` and whatever layer writes the model's output, so a
model that declares nothing keeps its logits too); ``max_pruning_ratio`` 1.0; pruning is global
(``global_pruning=True``, the ``reproduce/scripts/prune/*/global_*.sh`` runs), which is also
what lets a small network meet a target within 1%. Taylor scores come from the gradients of the cross-entropy on the
``calib_batches`` calibration batches (the model in eval mode, so BatchNorm statistics stay).
BN scale is the criterion alone, without the sparsity training of network slimming.
A run's ``steps`` and ``step_epochs`` (a spec's method entry) give the iterative form of
Torch-Pruning's README (``MetaPruner(iterative_steps=N)``, one ``pruner.step()`` per step with
the user's fine-tuning between): :func:`prunekit.workflow.prune_in_steps` reaches the target in
``steps`` equal shares, each met within 1% as above, with ``step_epochs`` epochs of fine-tuning
after every step but the last, as it does for prunekit's own methods. That gives a peer the
training budget a catalogue method spends inside its own pruning (the run's ``method_epochs``),
for comparisons at equal epochs.
"""

from __future__ import annotations

import copy
import importlib.util
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from prunekit.errors import ConfigError
from prunekit.registry import Registry

__all__ = [
    "BASELINES",
    "PREFIXES",
    "Baseline",
    "get",
    "is_baseline",
    "method_kind",
    "method_type",
    "pruner",
]

PREFIXES = ("peer:", "ref:")
TOLERANCE = 0.01  # a target is met within 1% of the dense figure, as prunekit.prune does
FALLBACK_TOLERANCE = 0.03  # where no ratio lands within 1%: the nearest removing more, up to 3%
SEARCH_STEPS = 24  # bisection steps over the pruner's ratio


@dataclass(frozen=True)
class Baseline:
    """A peer or reference baseline: ``kind`` ``"peer"`` or ``"reference"``, what it is
    (``title``, ``source``), the module it needs, its options with defaults, and ``prune``:
    ``(baseline, job) -> PruneReport``, pruning ``job.setup.model`` in place."""

    id: str
    kind: str
    title: str
    source: str
    prune: Callable[[Baseline, _Job], Any]
    type: str = "S"  # "S": meets a FLOPs or params target; "U": a weight sparsity
    requires: str | None = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``defaults`` updated by ``options``, each converted to its default's type."""
        out = dict(self.defaults)
        for key, value in options.items():
            if key not in self.defaults:
                known = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items()) or "none"
                raise ConfigError(f"{self.id} has no option {key!r}; its options: {known}")
            out[key] = _convert(self.id, key, value, self.defaults[key])
        return out

    def available(self) -> None:
        """Raise :class:`ConfigError` when the library this baseline needs is missing."""
        if self.requires and importlib.util.find_spec(self.requires) is None:
            raise ConfigError(
                f"{self.id} runs {self.title} from the {self.requires} package, which is not "
                "installed: pip install 'prunekit[bench]'"
            )


def _convert(owner: str, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return text in ("true", "1", "yes", "on")
    elif isinstance(default, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
            if isinstance(default, int):
                if number.is_integer():
                    return int(number)
            else:
                return number
        except (TypeError, ValueError):
            pass
    raise ConfigError(
        f"option {key!r} of {owner} expects {type(default).__name__} (default {default!r}), "
        f"got {value!r}"
    )


BASELINES: Registry[Baseline] = Registry("peer or reference baseline")


def is_baseline(method_id: str) -> bool:
    """True for a ``peer:`` or ``ref:`` id (one that is not a catalogue method)."""
    return isinstance(method_id, str) and method_id.startswith(PREFIXES)


def get(method_id: str) -> Baseline:
    """The registered baseline ``method_id``; an unknown id, or one whose library is missing,
    is a :class:`ConfigError` that says so."""
    if method_id not in BASELINES:
        known = ", ".join(BASELINES.names())
        raise ConfigError(f"unknown peer or reference baseline {method_id!r}; known: {known}")
    baseline = BASELINES.get(method_id)
    baseline.available()
    return baseline


def method_type(method_id: str) -> str:
    """Catalogue type of a run's method: a peer's or reference's own (``"S"``: it removes
    channels; ``"U"``: it zeroes weights), else the catalogue's."""
    if is_baseline(method_id):
        return BASELINES.get(method_id).type if method_id in BASELINES else "S"
    from prunekit import methods

    return methods.entry(method_id).type


def method_kind(method_id: str) -> str:
    """``"prunekit"``, ``"peer"`` or ``"reference"``: how a report groups a method's rows."""
    if isinstance(method_id, str) and method_id.startswith("peer:"):
        return "peer"
    if isinstance(method_id, str) and method_id.startswith("ref:"):
        return "reference"
    return "prunekit"


# ---------------------------------------------------------------------------------- running


@dataclass
class _Job:
    """What a baseline's ``prune`` gets: the setup whose model it prunes, the run's config
    (a :class:`prunekit.workflow.PruneConfig`), its options and a folder for checkpoints."""

    setup: Any
    config: Any
    options: dict[str, Any]
    work: Path | None

    @property
    def target(self) -> tuple[str, float]:
        """``("flops" | "params" | "sparsity", fraction removed)``."""
        ((key, value),) = self.config.target().items()
        return key.removeprefix("target_"), float(value)

    def calibration(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``calib_batches`` batches of a shuffle seeded by the run's seed (the
        batches a catalogue method's context gives it)."""
        g = torch.Generator().manual_seed(self.config.seed)
        loader = DataLoader(
            self.setup.train_set, batch_size=self.config.batch_size, shuffle=True, generator=g
        )
        return list(itertools.islice(iter(loader), self.config.calib_batches))


def pruner(
    method_id: str, config: Any, options: Mapping[str, Any], work: Path | None = None
) -> Callable[[Any], Any]:
    """A ``prune(setup)`` for :func:`prunekit.workflow.run_pruning` that runs baseline
    ``method_id`` with ``options`` under ``config`` (its target, seed, calibration batches,
    baseline schedule and ``round_to``); ``work`` holds any checkpoint it writes."""
    baseline = get(method_id)
    resolved = baseline.resolve(options)
    return lambda setup: baseline.prune(baseline, _Job(setup, config, resolved, work))


def _measure(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    from prunekit.measure import count_flops, count_params

    return count_params(model).total, count_flops(model, (example,)).flops


def _widths(model: nn.Module) -> dict[str, int]:
    return {
        n: int(m.weight.shape[0])
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


def _report(before: tuple[int, int], model: nn.Module, example: torch.Tensor, widths: Any) -> Any:
    from prunekit.prune import GroupChange, PruneReport

    params, flops = _measure(model, example)
    now = _widths(model)
    return PruneReport(
        params_before=before[0],
        params_after=params,
        flops_before=before[1],
        flops_after=flops,
        groups=[GroupChange(n, widths[n], now.get(n, 0)) for n in widths],
    )


# ---------------------------------------------------------------------------------- Torch-Pruning


def _out_side(handler: Any) -> bool | None:
    """True for a Torch-Pruning handler that removes output channels, False for inputs."""
    name = getattr(handler, "__name__", "")
    if name.endswith("out_channels"):
        return True
    if name.endswith("in_channels"):
        return False
    return None


def _kept_whole(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The layers the peer must leave whole: those the model declares (``protected_layers``) and
    every layer whose outputs the model returns (:meth:`prunekit.graph.Graph.output_layers`).
    Torch-Pruning prunes whatever it is not told to ignore, the classifier included (its
    examples pass the classifier in ``ignored_layers`` by hand), so a user's model that declares
    nothing would otherwise lose logits."""
    from prunekit.graph import build
    from prunekit.models import protected_layers

    writes_output = build(model, (example,), protected=()).output_layers()
    return sorted(set(protected_layers(model)) | set(writes_output))


def _tp_step(
    model: nn.Module,
    example: torch.Tensor,
    job: _Job,
    importance: Any,
    ratio: float,
    keep: Sequence[str],
) -> dict[str, dict[str, list[int] | None]]:
    """Prune ``model`` in place with Torch-Pruning's ``MetaPruner`` at ``ratio``; returns what
    was kept of each layer, as positions of the layer before this step (``{name: {"in",
    "out"}}``), which prunekit's saved-model format records."""
    import torch_pruning as tp

    torch.manual_seed(job.config.seed)  # the random criterion draws the same scores each time
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in keep if n in modules]
    meta = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        pruning_ratio=ratio,
        max_pruning_ratio=job.options.get("max_pruning_ratio", 1.0),
        global_pruning=job.options.get("global_pruning", True),
        ignored_layers=ignored,
        round_to=job.config.round_to,
    )
    kept: dict[str, dict[str, list[int] | None]] = {}
    sizes = {n: _sides(m) for n, m in modules.items()}
    for group in meta.step(interactive=True):
        seen = set()
        for dep, idxs in group:
            module = dep.target.module
            name = names.get(id(module))
            out = _out_side(dep.handler)
            if name is None or out is None or (name, out) in seen or name not in sizes:
                continue
            seen.add((name, out))
            # a norm and a depthwise conv lose the same positions on both sides (Torch-Pruning
            # calls a depthwise conv's input handler by its output handler's name)
            both = _is_norm(module) or _is_depthwise(module)
            sides = ("out", "in") if both else ("out",) if out else ("in",)
            rec = kept.setdefault(name, {"in": None, "out": None})
            for side in sides:
                current = rec[side] if rec[side] is not None else list(range(sizes[name][side]))
                drop = set(int(i) for i in idxs)
                rec[side] = [p for i, p in enumerate(current) if i not in drop]
        group.prune()
    return kept


def _gradients(model: nn.Module, job: _Job) -> None:
    """Accumulate the cross-entropy gradients of the calibration batches on ``model`` (in eval
    mode: BatchNorm statistics stay as trained), for the Taylor criterion."""
    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()
    for x, y in job.calibration():
        F.cross_entropy(model(x), y).backward()
    model.train(was_training)


def _copy_with_grads(model: nn.Module) -> nn.Module:
    trial = copy.deepcopy(model)
    for p, q in zip(trial.parameters(), model.parameters(), strict=True):
        p.grad = None if q.grad is None else q.grad.clone()
    return trial


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def _is_depthwise(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _sides(module: nn.Module) -> dict[str, int]:
    w = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        return {"in": module.in_channels, "out": module.out_channels}
    if isinstance(module, nn.Linear):
        return {"in": module.in_features, "out": module.out_features}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return {"in": module.num_features, "out": module.num_features}
    n = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() else 0
    return {"in": n, "out": n}


def _compose(
    structure: dict[str, dict[str, list[int] | None]],
    step: dict[str, dict[str, list[int] | None]],
) -> None:
    """Fold one pruning step's kept positions into ``structure`` (positions of the original)."""
    for name, rec in step.items():
        old = structure.setdefault(name, {"in": None, "out": None})
        for side in ("in", "out"):
            if rec[side] is None:
                continue
            old[side] = rec[side] if old[side] is None else [old[side][i] for i in rec[side]]


def _tp_prune(baseline: Baseline, job: _Job) -> Any:
    """Search the ``MetaPruner`` ratio whose pruned copy meets the target within 1%, then
    prune the model itself at that ratio (the iterative form is the run's ``steps``:
    :func:`prunekit.workflow.prune_in_steps` calls this once per step)."""
    if baseline.extra.get("needs_norm") and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in job.setup.model.modules()
    ):
        raise ConfigError(
            f"{baseline.id} ranks channels by BatchNorm scales, and model "
            f"{job.config.model!r} has no BatchNorm layer"
        )
    model, example = job.setup.model, job.setup.example_input()
    before = _measure(model, example)
    widths = _widths(model)
    keep = _kept_whole(model, example)  # one graph per run, not one per ratio tried
    ratio = _tp_ratio(baseline, job, model, example, job.target[1], before, keep)
    step = _tp_step(model, example, job, baseline.extra["importance"](), ratio, keep)
    structure = copy.deepcopy(getattr(model, "_prunekit_structure", {}) or {})
    model.zero_grad(set_to_none=True)
    _compose(structure, step)
    model._prunekit_structure = structure  # type: ignore[assignment]
    return _report(before, model, example, widths)


def _tp_ratio(
    baseline: Baseline,
    job: _Job,
    model: nn.Module,
    example: torch.Tensor,
    fraction: float,
    before: tuple[int, int],
    keep: Sequence[str],
) -> float:
    """The ``MetaPruner`` ratio that, applied to ``model`` as it is now, leaves ``1 -
    fraction`` of the dense model's FLOPs (or params, ``before``) within 1%, by bisection; where
    one channel more jumps over that band, the nearest ratio removing more, up to 3% more."""
    kind = job.target[0]
    dense = before[1] if kind == "flops" else before[0]
    goal = (1.0 - fraction) * dense
    make = baseline.extra["importance"]
    if baseline.extra.get("needs_grad"):
        _gradients(model, job)

    def removed(ratio: float) -> float:
        trial = _copy_with_grads(model)
        _tp_step(trial, example, job, make(), ratio, keep)
        params, flops = _measure(trial, example)
        return (flops if kind == "flops" else params) - goal

    lo, hi = 0.0, 1.0
    best, best_gap, over, over_gap, error = None, float("inf"), None, float("inf"), None
    for _ in range(SEARCH_STEPS):
        mid = (lo + hi) / 2
        try:
            gap = removed(mid)
        except (AssertionError, ValueError, RuntimeError, IndexError) as e:  # refused: too much
            error, hi = e, mid
            continue
        if abs(gap) < best_gap:
            best, best_gap = mid, abs(gap)
        if gap <= 0 and -gap < over_gap:
            over, over_gap = mid, -gap
        if abs(gap) <= TOLERANCE * dense:
            break
        lo, hi = (mid, hi) if gap > 0 else (lo, mid)
    if best is None:
        raise ConfigError(f"{baseline.id}: Torch-Pruning failed at every ratio: {error}")
    if best_gap > TOLERANCE * dense:
        # one channel more is a step larger than the tolerance: never stop short of the target
        if over is None or over_gap > FALLBACK_TOLERANCE * dense:
            raise ConfigError(
                f"{baseline.id} cannot meet target_{kind}={fraction:g}: the closest "
                f"Torch-Pruning ratio ({best:.4f}) misses it by {best_gap / dense:.3f} of the "
                "dense figure"
            )
        best = over
    return best


def _register_tp(
    short: str, title: str, importance: str, kwargs: dict[str, Any], **extra: Any
) -> None:
    def make() -> Any:
        import torch_pruning as tp

        return getattr(tp.importance, importance)(**kwargs)

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    BASELINES.add(
        f"peer:tp_{short}",
        Baseline(
            id=f"peer:tp_{short}",
            kind="peer",
            title=f"Torch-Pruning {title}",
            source=f"torch_pruning.importance.{importance}({args}) through MetaPruner",
            prune=_tp_prune,
            requires="torch_pruning",
            defaults={"global_pruning": True, "max_pruning_ratio": 1.0},
            extra={"importance": make, **extra},
        ),
    )


_register_tp("l2", "group L2 magnitude", "MagnitudeImportance", {"p": 2})
_register_tp("taylor", "group Taylor", "GroupTaylorImportance", {}, needs_grad=True)
_register_tp("lamp", "LAMP", "LAMPImportance", {"p": 2})
_register_tp("bn", "BatchNorm scale", "BNScaleImportance", {}, needs_norm=True)
_register_tp("random", "random", "RandomImportance", {})


# ---------------------------------------------------------------------------------- width


def _width_scaled(baseline: Baseline, job: _Job) -> Any:
    """Make the network uniformly narrower to the target (one width ratio for every channel
    group, single channels closing the last gap, widths rounded to ``round_to``), draw fresh
    weights with the model's own initialisation and the run's seed, and train it from scratch
    with the baseline's schedule; the runner then fine-tunes it like every pruned model."""
    from prunekit.models.core import init_weights
    from prunekit.prune import prune_channels
    from prunekit.train import fit

    model, example = job.setup.model, job.setup.example_input()
    kind, fraction = job.target
    report = prune_channels(
        model,
        example,
        scope="layer",
        importance="l1",
        round_to=job.config.round_to,
        **{f"target_{kind}": fraction},
    )
    torch.manual_seed(job.config.seed)
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    init_weights(model)
    from prunekit.workflow import baseline_config

    _, train_cfg = baseline_config(job.config)
    fit(
        model,
        job.setup.train_set,
        train_cfg,
        val_set=job.setup.val_set,
        checkpoint=None if job.work is None else job.work / "scratch.pt",
        progress=False,
    )
    return report


BASELINES.add(
    "ref:width_scaled",
    Baseline(
        id="ref:width_scaled",
        kind="reference",
        title="uniform width scaling, trained from scratch",
        source="Liu et al., Rethinking the Value of Network Pruning (ICLR 2019)",
        prune=_width_scaled,
    ),
)


# ---------------------------------------------------------------------------------- torch


def _torch_l1(baseline: Baseline, job: _Job) -> Any:
    """``torch.nn.utils.prune.global_unstructured(L1Unstructured)`` over every conv and Linear
    weight to the run's sparsity; its masks are moved to prunekit's (the same zeros)."""
    from torch.nn.utils import prune as torch_prune

    from prunekit import masks
    from prunekit.masks.engine import prunable_layers, weight_name
    from prunekit.methods.base import SparsityReport, count_nonzero

    model = job.setup.model
    kind, fraction = job.target
    if kind != "sparsity":
        raise ConfigError(f"{baseline.id} zeroes weights: give it a sparsity target, not {kind}")
    if masks.get_masks(model):
        raise ConfigError(f"{baseline.id} starts from a dense model; this one carries masks")
    before = count_nonzero(model)
    layers = prunable_layers(model)
    torch_prune.global_unstructured(
        [(m, "weight") for m in layers.values()],
        pruning_method=torch_prune.L1Unstructured,
        amount=fraction,
    )
    found = {}
    for name, module in layers.items():
        found[weight_name(name)] = masks.Mask(module.weight_mask.detach().bool().clone())
        torch_prune.remove(module, "weight")  # the weight keeps its zeros, as a plain tensor
    masks.apply_masks(model, found)
    return SparsityReport.measure(model, before)


BASELINES.add(
    "peer:torch_l1",
    Baseline(
        id="peer:torch_l1",
        kind="peer",
        title="torch.nn.utils.prune global L1",
        source="torch.nn.utils.prune.global_unstructured(pruning_method=L1Unstructured)",
        prune=_torch_l1,
        type="U",
    ),
)
