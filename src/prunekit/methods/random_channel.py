"""Random channel pruning — Li, Adamczewski, Li, Gu, Timofte, Van Gool, "Revisiting Random
Channel Pruning for Neural Network Compression" (CVPR 2022).

Per-layer width configurations
  are sampled at random under the budget; each sampled pruned model is fine-tuned briefly and
  scored on validation data, and the best one is kept and trained further. Which channels a
  layer keeps follows a within-layer criterion (the paper benchmarks several; L1 by default).

Options and defaults:

* ``candidates`` (8): how many configurations are sampled. The paper studies the effect of the
  number of samples and of the fine-tuning length (a few epochs per candidate there); these
  defaults are small so that a search stays cheap.
* ``candidate_steps`` (50) minibatch SGD updates per candidate on the training set
  (``lr`` 0.01, momentum 0.9, no weight decay), the same seeded batches for every
  candidate so that they compete on equal terms;
* ``within`` ("l1"): the criterion ordering the channels inside a group (``l1``, ``l2``,
  ``fpgm`` or ``random``);
* ``val_batches`` (0: the whole validation set; ``n`` > 0: its first ``n`` batches); ``only_chains`` (False: every group is searched).

Deviations a reader should know:

* Sampling "under the budget" is done by rescaling rather than by
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from prunekit import criteria
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.graph import Graph, build
from prunekit.methods.base import Context, Method, register_method
from prunekit.methods.common import (
    eval_modes,
    prunable_groups,
    restore_modes,
    share_importance,
)
from prunekit.methods.options import SHARED, Options, option
from prunekit.methods.retraining import accuracy, batch_stream, sgd_steps
from prunekit.prune import PruneReport, remove_selected, select_channels
from prunekit.targets import Target

WITHIN_CRITERIA = ("l1", "l2", "fpgm", "random")
MAX_REJECTED = 10  # per candidate: configurations that cannot meet the target are redrawn


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
    target: Target,
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
        **Target.of(target).as_dict(),
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


@dataclass(frozen=True)
class RandomChannelOptions(Options):
    renamed = {"candidate_lr": "lr"}  # noqa: RUF012 - a ClassVar of the base

    candidates: int = option(
        8,
        help="random width configurations sampled and scored",
        source="prunekit: small so a search stays cheap (the paper studies the number of samples)",
        low=1,
    )
    candidate_steps: int = option(
        50,
        help="minibatch SGD updates per candidate before it is scored (momentum 0.9)",
        source="prunekit: the paper fine-tunes each candidate for a few epochs",
        low=0,
    )
    lr: float = option(
        0.01,
        help=SHARED["lr"] + " (each candidate's short fine-tune)",
        source="prunekit",
        low=0,
        low_open=True,
    )
    within: str = option(
        "l1",
        help="criterion ordering the channels inside a group",
        source="paper: L1 norm among the within-layer criteria it benchmarks",
        choices=WITHIN_CRITERIA,
    )
    val_batches: int = option(
        0,
        help="validation batches per candidate score (0: the whole validation set)",
        source="prunekit",
        low=0,
    )
    only_chains: bool = option(
        False, help="search only plain layer-to-layer chains", source="paper: every layer"
    )


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

    Options = RandomChannelOptions

    def __init__(self) -> None:
        self.candidates: list[Candidate] = []
        self.best: int | None = None
        self.rejected = 0

    def prune(self, ctx: Context) -> PruneReport:
        opts = self.options(ctx)
        within = _within(opts["within"])
        modes = eval_modes(ctx.model)
        try:
            graph = build(ctx.model, ctx.example_input)
            dense = graph.plan([])
            names = [g.name for g in prunable_groups(graph, opts["only_chains"])]
            if not names:
                raise ConfigError("random_channel found no prunable groups")
            self.candidates = []
            self.rejected = 0
            stream = share_stream(names, ctx.seed)
            while len(self.candidates) < opts["candidates"]:
                shares = next(stream)
                try:
                    picks, widths = widths_for(
                        graph,
                        shares,
                        ctx.target.require("flops", "params", "latency", method=self.id),
                        within,
                    )
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
            restore_modes(modes)

    def _score(self, ctx: Context, opts: RandomChannelOptions, cand: Candidate) -> Candidate:
        """Apply ``cand`` to a copy of the model, fine-tune it briefly, measure it."""
        model = copy.deepcopy(ctx.model).eval()
        graph = build(model, ctx.example_input)
        report = remove_selected(graph, cand.picks, graph.plan([]))
        cand.flops_reduction = report.flops_reduction
        cand.params_reduction = report.params_reduction
        batches = batch_stream(ctx.train_set, ctx.batch_size, ctx.seed)
        sgd_steps(model, batches, opts.candidate_steps, opts.lr)
        cand.score = accuracy(model, ctx.val_set, opts["val_batches"], ctx.batch_size)
        return cand


__all__ = ["Candidate", "RandomChannel", "sample_shares", "share_stream", "widths_for"]
