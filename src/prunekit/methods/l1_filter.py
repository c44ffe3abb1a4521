"""Methods that choose per-layer widths by measuring pruned models, and the short training and
evaluation loops that the measuring methods share.

* **L1-filter** — Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient
  ConvNets" (ICLR 2017). A filter's score is the L1 norm of its kernel weights
  ``s_j = sum |F_j|``; each layer drops its smallest-norm filters. How many each layer drops
  comes from a *sensitivity analysis*: every layer is pruned on its own (the others untouched)
  at increasing ratios and the pruned model's validation accuracy is measured, without
  retraining. Layers whose accuracy falls quickly are sensitive and lose fewer filters. In
  residual networks only the inner convolutions of each block are pruned (the channels of the
  residual stream are kept). The pruned model is then retrained (the runner's fine-tuning).
* **Random channel pruning** — Li, Adamczewski, Li, Gu, Timofte, Van Gool, "Revisiting Random
  Channel Pruning for Neural Network Compression" (CVPR 2022). Per-layer width configurations
  are sampled at random under the budget; each sampled pruned model is fine-tuned briefly and
  scored on validation data, and the best one is kept and trained further. Which channels a
  layer keeps follows a within-layer criterion (the paper benchmarks several; L1 by default).

The loops live here once: :func:`batch_stream` (endless seeded minibatches), :func:`sgd_steps` (a
few minibatch SGD updates) and :func:`accuracy` (top-1 on the validation set, optionally on its
first batches). The iterative Taylor method (:mod:`prunekit.methods.iterative`) uses the first
two.

How the sensitivity curves become per-layer rates (L1-filter). The paper reads the curves by eye
and picks the layers and rates by hand. Here each prunable group gets a *tolerance*: the largest
ratio ``r`` of ``sensitivity_ratios`` such that the accuracy at ``r`` and at every smaller ratio
stays within ``max_drop`` percentage points of the unpruned accuracy (``min_tolerance``, default
0.05, if not even the smallest ratio does, so every group can still contribute). One global
selection then meets the run's FLOPs or params target with every group losing a fraction of its
channels proportional to its tolerance (:func:`prunekit.methods.common.share_importance`), the
lowest L1 norms first inside each group. During the analysis, "pruning" a group means zeroing
its channels whole (filter, bias and BatchNorm terms), which gives exactly the outputs of the
model with those channels removed; every weight is restored afterwards.

Options and defaults, L1-filter (``ctx.options``):

* ``sensitivity_ratios`` ("0.1,0.2,...,0.9": the fraction of a layer's filters pruned, in
  steps of 10%, comma-separated);
* ``max_drop`` (2.0 percentage points), ``min_tolerance`` (0.05);
* ``val_batches`` (0: the whole validation set; ``n`` > 0: its first ``n`` batches of the run's
  batch size);
* ``only_chains`` (True): prune only groups that are plain layer-to-layer chains
  (:func:`prunekit.methods.common.chains`): the inner convolutions of residual blocks, every
  conv of a plain network. False prunes every group.

Options and defaults, random channel pruning:

* ``candidates`` (8): how many configurations are sampled. The paper studies the effect of the
  number of samples and of the fine-tuning length (a few epochs per candidate there); these
  defaults are small so that a search stays cheap.
* ``candidate_steps`` (50) minibatch SGD updates per candidate on the training set
  (``candidate_lr`` 0.01, momentum 0.9, no weight decay), the same seeded batches for every
  candidate so that they compete on equal terms;
* ``within`` ("l1"): the criterion ordering the channels inside a group (``l1``, ``l2``,
  ``fpgm`` or ``random``);
* ``val_batches`` (0) as above; ``only_chains`` (False: every group is searched).

Deviations a reader should know:

* L1-filter: the filters of all layers are scored on the trained model at once (the paper's
  "independent" strategy; its "greedy" variant, which ignores kernels of already removed
  channels, is not used). Rates come from the tolerance rule above rather than by hand.
* Random channel pruning: sampling "under the budget" is done by rescaling rather than by
  drawing widths and discarding those that miss the budget. Each group's random share
  ``u ~ U(0, 1]`` fixes how its removal compares with the others'; one scale common to all
  groups is then found so the configuration meets the target (within 1%). A configuration is
  redrawn only when its channels are too coarse to meet the target within 1% (one channel of a
  small model can be several percent of its FLOPs), at most 10 times per candidate before the
  error is raised. Candidate scores are validation top-1 after ``candidate_steps`` updates
  rather than after full epochs.
* A group keeps at least one channel; channels of protected layers are kept.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from prunekit import criteria
from prunekit.errors import ConfigError, DataError, UnknownNameError
from prunekit.graph import Graph, Group, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import chains, share_importance
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.train import distributed as dist_
from prunekit.train import evaluate

DEFAULT_RATIOS = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
WITHIN_CRITERIA = ("l1", "l2", "fpgm", "random")
MAX_REJECTED = 10  # per candidate: configurations that cannot meet the target are redrawn


# --------------------------------------------------------------------------- shared loops
def batch_stream(
    dataset: Dataset[Any], batch_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless minibatches of a seeded shuffle of ``dataset``, a new shuffle every pass.

    The first batches equal :meth:`~prunekit.methods.base.Context.calibration` for the same
    data, batch size and seed."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("cannot draw minibatches from an empty data set")
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=g)
    while True:
        yield from loader


def _device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def sgd_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    lr: float,
    *,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> None:
    """``steps`` plain minibatch SGD updates of ``model`` in place (cross-entropy, train mode),
    taking batches from ``batches``. Every module's mode is restored and parameter gradients are
    cleared afterwards. Under torchrun gradients are averaged over ranks and BatchNorm statistics
    taken from rank 0, so every rank keeps the same model."""
    if steps <= 0:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    device = _device(model)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    modes = {m: m.training for m in model.modules()}
    model.train()
    try:
        for _ in range(steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            dist_.average_gradients(params)  # under torchrun every rank takes the same step
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        for m, mode in modes.items():
            m.train(mode)
        dist_.broadcast_buffers(model)


def accuracy(model: nn.Module, dataset: Dataset[Any], batches: int, batch_size: int) -> float:
    """Top-1 accuracy in percent of ``model`` on ``dataset`` (its first ``batches`` batches of
    ``batch_size`` when ``batches > 0``, else all of it)."""
    if batches > 0:
        n = min(len(dataset), batches * batch_size)  # type: ignore[arg-type]
        dataset = Subset(dataset, range(n))
    return float(evaluate(model, dataset, batch_size=batch_size)["top1"])


def _check_common(opts: dict[str, Any]) -> None:
    if opts["val_batches"] < 0:
        raise ConfigError(
            f"val_batches must be >= 0 (0: the whole validation set), got {opts['val_batches']}"
        )


def _prunable(graph: Graph, only_chains: bool) -> list[Group]:
    return [c.group for c in chains(graph)] if only_chains else list(graph.groups)


def _eval_mode(model: nn.Module) -> dict[nn.Module, bool]:
    modes = {m: m.training for m in model.modules()}
    model.eval()  # tracing must not update BatchNorm statistics
    return modes


def _restore(modes: dict[nn.Module, bool]) -> None:
    for m, mode in modes.items():
        m.train(mode)


# --------------------------------------------------------------------------- L1-filter
def parse_ratios(text: str) -> list[float]:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``: increasing fractions in (0, 1)."""
    try:
        values = [float(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if (
        not values
        or any(not 0 < v < 1 for v in values)
        or any(b <= a for a, b in itertools.pairwise(values))
    ):
        raise ConfigError(
            "sensitivity_ratios must be increasing fractions in (0, 1) separated by commas, "
            f"e.g. {DEFAULT_RATIOS!r}; got {text!r}"
        )
    return values


def sensitivity_curves(
    model: nn.Module,
    groups: Sequence[Group],
    val_set: Dataset[Any],
    ratios: Sequence[float],
    *,
    val_batches: int = 0,
    batch_size: int = 64,
    within: criteria.Criterion = criteria.l1_norm,
) -> tuple[float, dict[str, list[tuple[float, float]]]]:
    """The unpruned accuracy and, per group, ``[(ratio, accuracy), ...]`` with only that group
    pruned: its ``floor(ratio * size)`` lowest-``within`` channels (at most ``size - 1``) zeroed
    whole. ``model`` is the graph's model; its weights and buffers are restored exactly after
    each measurement."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    base = accuracy(model, val_set, val_batches, batch_size)
    curves: dict[str, list[tuple[float, float]]] = {}
    try:
        for group in groups:
            order = torch.argsort(within(group).double(), stable=True).tolist()
            curve = []
            for r in ratios:
                k = min(math.floor(r * group.size + 1e-9), group.size - 1)
                if k == 0:
                    curve.append((r, base))
                    continue
                group.zero(order[:k])
                try:
                    curve.append((r, accuracy(model, val_set, val_batches, batch_size)))
                finally:
                    model.load_state_dict(saved)
            curves[group.name] = curve
    finally:
        model.load_state_dict(saved)
    return base, curves


def tolerance(
    curve: Sequence[tuple[float, float]], base: float, max_drop: float, minimum: float
) -> float:
    """The largest ratio whose accuracy, and that of every smaller ratio, stays within
    ``max_drop`` points of ``base``; ``minimum`` if none does (and never less than it)."""
    best = 0.0
    for r, acc in curve:
        if acc < base - max_drop:
            break
        best = r
    return max(best, minimum)


@register_method("l1_filter")
class L1Filter(Method):
    """L1-filter pruning (Li et al., ICLR 2017): filters ranked by the L1 norm of their kernel
    weights, the smallest removed per layer, with per-layer rates from a sensitivity analysis
    (each layer pruned alone at ratios 0.1..0.9, validation accuracy measured). Each group's
    tolerance (largest ratio within ``max_drop`` points) sets its share of one global selection
    that meets the target. Only chains (inner convs of residual blocks) by default.

    After :meth:`prune`: ``baseline_accuracy``, ``sensitivity`` (``{group: [(ratio, acc)]}``)
    and ``tolerances`` (``{group: ratio}``). See the module docstring for options and
    deviations."""

    defaults: ClassVar[dict[str, Any]] = {
        "sensitivity_ratios": DEFAULT_RATIOS,
        "max_drop": 2.0,
        "min_tolerance": 0.05,
        "val_batches": 0,
        "only_chains": True,
    }

    def __init__(self) -> None:
        self.baseline_accuracy: float | None = None
        self.sensitivity: dict[str, list[tuple[float, float]]] = {}
        self.tolerances: dict[str, float] = {}

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        _check_common(opts)
        ratios = parse_ratios(opts["sensitivity_ratios"])
        if not (opts["max_drop"] >= 0 and math.isfinite(opts["max_drop"])):
            raise ConfigError(f"max_drop must be >= 0 percentage points, got {opts['max_drop']}")
        if not 0 < opts["min_tolerance"] < 1:
            raise ConfigError(f"min_tolerance must be in (0, 1), got {opts['min_tolerance']}")
        l1 = criteria.get("l1")
        modes = _eval_mode(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            groups = _prunable(graph, opts["only_chains"])
            if not groups:
                raise ConfigError(
                    "l1_filter found no prunable groups"
                    + (
                        " (only_chains=True: no plain conv-to-conv chains)"
                        if opts["only_chains"]
                        else ""
                    )
                )
            base, curves = sensitivity_curves(
                ctx.model,
                groups,
                ctx.val_set,
                ratios,
                val_batches=opts["val_batches"],
                batch_size=ctx.batch_size,
                within=l1,
            )
            self.baseline_accuracy, self.sensitivity = base, curves
            self.tolerances = {
                name: tolerance(curve, base, opts["max_drop"], opts["min_tolerance"])
                for name, curve in curves.items()
            }
            picks = select_channels(
                graph,
                scope="global",
                normalize=False,
                importance=share_importance(l1, self.tolerances),
                **ctx.target,
            )
            return remove_selected(graph, picks, dense)
        finally:
            _restore(modes)


# --------------------------------------------------------------------------- random channel
@dataclass
class Candidate:
    """One sampled configuration: its shares, the channels it removes, the widths it leaves,
    its FLOPs and params reductions and its validation accuracy after the short fine-tune."""

    shares: dict[str, float]
    picks: dict[str, list[int]]
    widths: dict[str, int]
    flops_reduction: float = 0.0
    params_reduction: float = 0.0
    score: float = float("nan")


def share_stream(names: Sequence[str], seed: int) -> Iterator[dict[str, float]]:
    """Endless random share vectors, one value uniform in (0, 1] per name, from a generator
    seeded by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    while True:
        u = 1.0 - torch.rand(len(names), generator=g, dtype=torch.float64)
        yield {n: float(v) for n, v in zip(names, u.tolist(), strict=True)}


def sample_shares(names: Sequence[str], count: int, seed: int) -> list[dict[str, float]]:
    """The first ``count`` share vectors of :func:`share_stream`."""
    return list(itertools.islice(share_stream(names, seed), count))


def widths_for(
    graph: Graph,
    shares: dict[str, float],
    target: dict[str, float],
    within: criteria.Criterion = criteria.l1_norm,
) -> tuple[dict[str, list[int]], dict[str, int]]:
    """The channels to remove (``{group: indices}``) and the widths left (``{group: width}``,
    every group of the graph) when each group loses a fraction of its channels proportional to
    its share and the whole meets ``target``; inside a group the lowest ``within`` go first."""
    picks = select_channels(
        graph,
        scope="global",
        normalize=False,
        importance=share_importance(within, shares),
        **target,
    )
    widths = {g.name: g.size - len(picks.get(g.name, [])) for g in graph.groups}
    return picks, widths


def _within(name: str) -> criteria.Criterion:
    if name not in WITHIN_CRITERIA:
        raise ConfigError(f"within must be one of {', '.join(WITHIN_CRITERIA)}; got {name!r}")
    try:
        return criteria.get(name)
    except UnknownNameError as err:  # pragma: no cover - the names above are registered
        raise ConfigError(str(err)) from None


@register_method("random_channel")
class RandomChannel(Method):
    """Random channel pruning (Li et al., CVPR 2022): ``candidates`` random per-group width
    configurations meeting the target (random shares rescaled to the budget), each applied to a
    copy of the model, fine-tuned for ``candidate_steps`` SGD updates and scored by validation
    top-1; the best configuration is applied to the model (the runner trains it further).

    After :meth:`prune`: ``candidates`` (every :class:`Candidate`, in sampling order),
    ``best`` (the index of the one applied) and ``rejected`` (configurations redrawn because
    their channels were too coarse to meet the target within 1%). See the module docstring for options and
    deviations."""

    defaults: ClassVar[dict[str, Any]] = {
        "candidates": 8,
        "candidate_steps": 50,
        "candidate_lr": 0.01,
        "within": "l1",
        "val_batches": 0,
        "only_chains": False,
    }

    def __init__(self) -> None:
        self.candidates: list[Candidate] = []
        self.best: int | None = None
        self.rejected = 0

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        _check_common(opts)
        if opts["candidates"] < 1:
            raise ConfigError(f"candidates must be a positive int, got {opts['candidates']}")
        if opts["candidate_steps"] < 0:
            raise ConfigError(f"candidate_steps must be >= 0, got {opts['candidate_steps']}")
        if not (opts["candidate_lr"] > 0 and math.isfinite(opts["candidate_lr"])):
            raise ConfigError(f"candidate_lr must be a positive number, got {opts['candidate_lr']}")
        within = _within(opts["within"])
        modes = _eval_mode(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            names = [g.name for g in _prunable(graph, opts["only_chains"])]
            if not names:
                raise ConfigError("random_channel found no prunable groups")
            self.candidates = []
            self.rejected = 0
            stream = share_stream(names, ctx.seed)
            while len(self.candidates) < opts["candidates"]:
                shares = next(stream)
                try:
                    picks, widths = widths_for(graph, shares, ctx.target, within)
                except ConfigError:
                    # too coarse to meet the budget within the tolerance: draw again
                    self.rejected += 1
                    if self.rejected >= MAX_REJECTED * opts["candidates"]:
                        raise
                    continue
                self.candidates.append(self._score(ctx, opts, Candidate(shares, picks, widths)))
            scores = [c.score for c in self.candidates]
            self.best = max(range(len(scores)), key=lambda i: (scores[i], -i))
            return remove_selected(graph, self.candidates[self.best].picks, dense)
        finally:
            _restore(modes)

    def _score(self, ctx: Context, opts: dict[str, Any], cand: Candidate) -> Candidate:
        """Apply ``cand`` to a copy of the model, fine-tune it briefly, measure it."""
        model = copy.deepcopy(ctx.model).eval()
        graph = build(model, ctx.example_input)
        report = remove_selected(graph, cand.picks, graph.plan([]))
        cand.flops_reduction = report.flops_reduction
        cand.params_reduction = report.params_reduction
        batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed)
        sgd_steps(model, batches, opts["candidate_steps"], opts["candidate_lr"])
        cand.score = accuracy(model, ctx.val_set, opts["val_batches"], ctx.batch_size)
        return cand


__all__ = [
    "Candidate",
    "L1Filter",
    "RandomChannel",
    "accuracy",
    "batch_stream",
    "parse_ratios",
    "sample_shares",
    "sensitivity_curves",
    "sgd_steps",
    "share_stream",
    "tolerance",
    "widths_for",
]
