"""The machinery of the methods that *search* a per-layer channel allocation (LeGR, AMC,
Bayesian optimisation of the rates, ...): one evaluation of a candidate, a budget, progress,
a checkpoint that lets a killed search resume, and evaluations in parallel processes.

* :func:`allocate`: the channels to remove when each group loses a fraction of its channels
  proportional to its rate and the whole meets the run's target (a FLOPs or params fraction,
  within 1%). A rate vector is a direction; the target fixes how far along it the pruning goes
  (one factor common to every group, :func:`prunekit.methods.common.share_importance`), so every
  candidate a search proposes meets the budget.
* :func:`score_picks`: apply a selection to a copy of the model (physical removal through the
  structural core), optionally fine-tune it for a few minibatch SGD steps (the same seeded
  batches for every candidate), and measure validation top-1 and cross-entropy: a
  :class:`Trial`.
* :class:`SearchBudget`: ``search_budget`` in evaluations (``"200"``) or wall-clock seconds
  (``"90s"``, ``"10m"``, ``"1h"``).
* :class:`Search`: runs evaluations for a method, in order, under the budget, with a tqdm bar;
  every finished evaluation is stored at once (atomic write) in
  ``<run folder>/method/<name>.search.pt``. A search is a deterministic function of its seed and
  of the results of its evaluations, so a restarted search *replays*: it runs the method's
  algorithm again from the start and is served the stored results, in order, instead of
  evaluating again, until it reaches the evaluation where it stopped; from there it evaluates.
  The replayed search takes the same decisions as the first (the time budget included: each
  stored result carries the elapsed time at which it finished), so the final result equals the
  one an uninterrupted search gives. A stored result whose candidate differs from the one asked
  (another model, options or seed) is refused with the file to delete.
* ``workers > 1``: a batch of candidates is evaluated in that many forked processes (each with
  one torch thread); results come back in candidate order and equal the serial ones (every
  evaluation seeds its own random state).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import multiprocessing
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from prunekit import criteria
from prunekit.errors import CheckpointError, ConfigError
from prunekit.graph import Graph, build
from prunekit.io import atomic_torch_save
from prunekit.methods.base import Context
from prunekit.methods.common import eval_modes, restore_modes, share_importance
from prunekit.methods.options import Options, option
from prunekit.methods.retraining import batch_stream, sgd_steps
from prunekit.prune import remove_selected, select_channels
from prunekit.targets import Target
from prunekit.train import distributed as dist_

__all__ = [
    "Search",
    "SearchBudget",
    "SearchOptions",
    "Setup",
    "Trial",
    "allocate",
    "group_names",
    "identity",
    "rates_of",
    "score_picks",
    "search_setup",
    "target_keywords",
    "val_metrics",
    "verified",
]

Picks = dict[str, list[int]]


# ---------------------------------------------------------------------- budget
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class SearchBudget:
    """How long a search may run: ``evaluations`` (a count) or ``seconds`` (wall clock)."""

    evaluations: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str | int) -> SearchBudget:
        """``"200"`` (evaluations), ``"90s"``, ``"10m"`` or ``"1.5h"`` (wall-clock time)."""
        raw = str(text).strip().lower()
        m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smh]?)", raw)
        if m is None or float(m.group(1)) <= 0:
            raise ConfigError(
                "search_budget must be a number of evaluations (e.g. 200) or a time "
                f"(e.g. 90s, 10m, 1h) greater than zero; got {text!r}"
            )
        value, unit = float(m.group(1)), m.group(2)
        if unit:
            return cls(seconds=value * _UNITS[unit])
        if not value.is_integer():
            raise ConfigError(f"search_budget in evaluations must be a whole number, got {text!r}")
        return cls(evaluations=int(value))

    def __str__(self) -> str:
        if self.evaluations is not None:
            return f"{self.evaluations} evaluations"
        return f"{self.seconds:g} s"


@dataclass(frozen=True)
class SearchOptions(Options):
    """The options every search method shares (each method adds its own and overrides the
    default budget)."""

    search_budget: str = option(
        "40",
        help="evaluations (e.g. 200) or wall-clock time (e.g. 90s, 10m, 1h) the search may use",
        source="prunekit",
    )
    workers: int = option(
        1,
        help="processes evaluating candidates in parallel (1: in this process)",
        source="prunekit",
        low=1,
    )
    val_batches: int = option(
        0,
        help="validation batches per evaluation (0: the whole validation set)",
        source="prunekit",
        low=0,
    )


# ---------------------------------------------------------------------- allocation
def group_names(graph: Graph) -> list[str]:
    """The groups a search allocates over: every group with at least two channels."""
    return [g.name for g in graph.groups if g.size > 1]


def target_keywords(
    target: Target, graph: Graph, example_input: Any = None, *, progress: bool = False
) -> dict[str, Any]:
    """The keywords :func:`prunekit.prune.select_channels` meets ``target`` with. A FLOPs or
    params target is its flat form; a latency target gets the prediction of a latency table
    built (or read from its cache) once for ``graph``, with the dense model timed once, and no
    verification: a search scores many candidates by prediction, and :func:`verified` turns the
    timed check on for the selection it applies."""
    if target.kind != "latency":
        return target.as_dict()
    from prunekit.measure.latency_table import LatencyMeter

    meter = LatencyMeter(target.setting, verify=False, progress=progress)
    return {"target_latency": target.fraction, "latency": meter.predictor(graph, example_input)}


def verified(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """``keywords`` (from :func:`target_keywords`) with the latency check on: the selection is
    timed on a pruned copy and corrected (the report then states predicted and measured)."""
    predictor = keywords.get("latency")
    if predictor is not None:
        predictor.meter.verify = True
    return dict(keywords)


def allocate(
    graph: Graph,
    rates: Mapping[str, float],
    target: Target | Mapping[str, Any],
    within: str | criteria.Criterion = "l1",
) -> Picks:
    """The channels to remove (``{group: indices}``) when group ``g`` loses a fraction of its
    channels proportional to ``rates[g]`` (0 or absent: kept whole), scaled by one common factor
    so that the whole meets ``target`` within 1% (a :class:`~prunekit.targets.Target`, or the
    keywords of :func:`target_keywords`); inside a group the lowest ``within`` go first.
    A ConfigError when no scaling meets the target (channels too coarse, or too few groups with
    a positive rate)."""
    if not any(float(r) > 0 for r in rates.values()):
        raise ConfigError("a rate vector needs at least one group with a positive rate")
    keywords = target.as_dict() if isinstance(target, Target) else dict(target)
    return select_channels(
        graph,
        scope="global",
        normalize=False,
        importance=share_importance(criteria.get(within), dict(rates)),
        **keywords,
    )


def rates_of(graph: Graph, picks: Picks) -> dict[str, float]:
    """The fraction of each group's channels that ``picks`` removes."""
    return {g.name: len(picks.get(g.name, ())) / g.size for g in graph.groups}


# ---------------------------------------------------------------------- one evaluation
@dataclass
class Trial:
    """One evaluated candidate: validation top-1 (percent) and cross-entropy after the
    optional short fine-tune, the FLOPs and params reductions reached, and the seconds it
    took. ``feasible`` is False for a candidate that could not meet the budget (scored
    ``-inf``)."""

    accuracy: float
    loss: float
    flops_reduction: float = 0.0
    params_reduction: float = 0.0
    seconds: float = 0.0
    feasible: bool = True

    @property
    def key(self) -> tuple[float, float]:
        """The ordering of candidates: higher accuracy first, lower loss breaking ties."""
        if not self.feasible:
            return (-math.inf, -math.inf)
        return (self.accuracy, -self.loss)

    @classmethod
    def infeasible(cls) -> Trial:
        return cls(accuracy=-math.inf, loss=math.inf, feasible=False)


@torch.no_grad()
def val_metrics(
    model: nn.Module, dataset: Dataset[Any], batches: int, batch_size: int
) -> tuple[float, float]:
    """Top-1 (percent) and mean cross-entropy of ``model`` in eval mode on the first ``batches``
    batches of ``dataset`` (0: all); module modes are restored."""
    if batches > 0:
        dataset = Subset(dataset, range(min(len(dataset), batches * batch_size)))  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    correct, loss, n = 0.0, 0.0, 0
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
            n += len(y)
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return 100.0 * correct / max(n, 1), loss / max(n, 1)


def score_picks(
    model: nn.Module,
    example_input: torch.Tensor,
    picks: Picks,
    train_set: Dataset[Any],
    val_set: Dataset[Any],
    *,
    batch_size: int,
    seed: int,
    steps: int = 0,
    lr: float = 0.01,
    val_batches: int = 0,
) -> Trial:
    """Remove ``picks`` from a copy of ``model``, fine-tune it for ``steps`` minibatch SGD
    updates (momentum 0.9, the seeded batches of :func:`batch_stream`) and measure it on the
    first ``val_batches`` batches of ``val_set`` (0: all). ``model`` is left untouched."""
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pruned = copy.deepcopy(model).eval()
        graph = build(pruned, example_input)
        report = remove_selected(graph, picks, graph.plan([]))
        if steps > 0:
            sgd_steps(pruned, batch_stream(train_set, batch_size, seed), steps, lr)
        acc, loss = val_metrics(pruned, val_set, val_batches, batch_size)
    return Trial(
        accuracy=acc,
        loss=loss,
        flops_reduction=report.flops_reduction,
        params_reduction=report.params_reduction,
        seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------- parallel workers
_WORKER: dict[str, Any] = {}  # what a forked worker evaluates with (inherited, not pickled)


def _worker_init() -> None:
    torch.set_num_threads(1)


def _worker_score(picks: Picks) -> Trial:
    return score_picks(_WORKER["model"], _WORKER["example"], picks, **_WORKER["kwargs"])


def _worker_custom(candidate: Any) -> Trial:
    return _WORKER["scorer"](candidate)


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


# ---------------------------------------------------------------------- the search
def _fingerprint(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class Search:
    """The evaluations of one search, budgeted, shown, checkpointed and resumable.

    ``evaluate(candidates)`` takes a batch of selections (``{group: indices}``, or None for a
    candidate that cannot meet the budget; with ``scorer``, any JSON-able candidate that
    ``scorer(candidate) -> Trial`` evaluates) and returns their :class:`Trial` in order, evaluating
    at most what the budget leaves (check :attr:`exhausted` and :meth:`remaining` before
    proposing). ``steps`` / ``lr``: the short fine-tune of every evaluation (0: none).
    ``identity``: what makes two searches the same search (method, options, target, seed); a
    checkpoint written by another is refused.

    With ``ctx.work_dir``, results go to ``work_dir/<name>.search.pt`` after each evaluation;
    see the module docstring for how a restarted search replays them. Use it as a context
    manager so that the worker processes are ended.
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        budget: SearchBudget,
        identity: Mapping[str, Any],
        *,
        steps: int = 0,
        lr: float = 0.01,
        val_batches: int = 0,
        workers: int = 1,
        progress: bool = True,
        scorer: Callable[[Any], Trial] | None = None,
    ) -> None:
        self.ctx, self.name, self.budget = ctx, name, budget
        self.scorer = scorer
        self.identity = _fingerprint(dict(identity))
        self.kwargs = {
            "train_set": ctx.train_set,
            "val_set": ctx.val_set,
            "batch_size": ctx.batch_size,
            "seed": ctx.seed,
            "steps": steps,
            "lr": lr,
            "val_batches": val_batches,
        }
        self.workers = workers
        self.records: list[dict[str, Any]] = []  # stored results, in evaluation order
        self.done = 0  # evaluations served so far in this run (replayed or new)
        self.path: Path | None = None
        if ctx.work_dir is not None:
            self.path = Path(ctx.work_dir) / f"{name}.search.pt"
            self._load()
        self.trials: list[Trial] = []
        self.best: int | None = None  # index into trials of the best feasible one
        self._stored = len(self.records)  # results a restarted search replays
        self._base = float(self.records[-1]["elapsed"]) if self.records else 0.0
        self._clock = time.perf_counter()  # reset when the replay ends
        self._pool: Any = None
        self._bar: Any = None
        if progress and dist_.rank() == 0:
            from tqdm.auto import tqdm

            total = budget.evaluations if budget.evaluations is not None else None
            self._bar = tqdm(total=total, desc=name, unit="eval", leave=False)

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        assert self.path is not None
        if not self.path.exists():
            return
        try:
            state = torch.load(self.path, weights_only=True)
        except Exception as e:  # a torn file cannot happen (atomic writes); a foreign one can
            raise CheckpointError(f"cannot read search state {self.path}: {e}") from None
        if state.get("identity") != self.identity:
            raise CheckpointError(
                f"search state {self.path} was written by another search (model, options, "
                "target or seed differ); delete it or use another run folder"
            )
        self.records = list(state["records"])

    def _save(self) -> None:
        if self.path is not None and dist_.rank() == 0:
            atomic_torch_save({"identity": self.identity, "records": self.records}, self.path)

    # ------------------------------------------------------------------ budget
    def elapsed(self) -> float:
        """Seconds the search has used: while replaying, the time stored with the last result
        served; afterwards, the time stored with the last replayed result plus the time since
        the replay ended."""
        if self.done < self._stored:
            return float(self.records[self.done - 1]["elapsed"]) if self.done else 0.0
        return self._base + time.perf_counter() - self._clock

    def remaining(self) -> int | None:
        """Evaluations the budget leaves (None for a time budget)."""
        if self.budget.evaluations is None:
            return None
        return max(0, self.budget.evaluations - self.done)

    @property
    def exhausted(self) -> bool:
        if self.budget.evaluations is not None:
            return self.done >= self.budget.evaluations
        return self.elapsed() >= float(self.budget.seconds or 0.0)

    # ------------------------------------------------------------------ evaluating
    def evaluate(self, candidates: Sequence[Picks | None]) -> list[Trial]:
        """The trials of ``candidates`` (as many as the budget allows, in order); a None
        candidate (one that cannot meet the budget) is an infeasible trial."""
        if self.exhausted:
            return []
        left = self.remaining()
        batch = list(candidates if left is None else candidates[:left])
        keys = [_fingerprint(p) for p in batch]
        out: list[Trial | None] = [None] * len(batch)
        for i, key in enumerate(keys):
            n = self.done + i
            if n < len(self.records):
                if self.records[n]["key"] != key:
                    raise CheckpointError(
                        f"search state {self.path} does not match this search at evaluation "
                        f"{n + 1} (the candidate differs: options changed?); delete it or use another "
                        "run folder"
                    )
                out[i] = Trial(**self.records[n]["trial"])
            elif batch[i] is None:
                out[i] = Trial.infeasible()
        todo = [i for i, t in enumerate(out) if t is None]
        fresh = self._results([batch[i] for i in todo])  # lazily, in candidate order
        for i, key in enumerate(keys):
            if out[i] is None:
                out[i] = next(fresh)
            trial = out[i]
            assert trial is not None
            if self.done >= len(self.records):  # stored at once: a kill loses no finished one
                self.records.append({"key": key, "trial": asdict(trial), "elapsed": self.elapsed()})
                self._save()
            self._served(trial)
        return [t for t in out if t is not None]

    def _served(self, trial: Trial) -> None:
        self.done += 1
        if self.done == self._stored:  # the replay ends: the clock runs from here
            self._clock = time.perf_counter()
        self.trials.append(trial)
        if trial.feasible and (self.best is None or trial.key > self.trials[self.best].key):
            self.best = len(self.trials) - 1
        if self._bar is not None:
            self._bar.update(1)
            if self.best is not None:
                self._bar.set_postfix(best=f"{self.trials[self.best].accuracy:.2f}")

    def _results(self, candidates: list[Any]) -> Iterator[Trial]:
        """The trials of ``candidates`` in order, each computed when asked for (in this
        process), or computed ahead by the worker processes."""
        if not candidates:
            return iter(())
        if self.scorer is not None:
            score: Callable[[Any], Trial] = self.scorer
            task: Callable[[Any], Trial] = _worker_custom
            _WORKER.update(scorer=self.scorer)
        else:
            model, example, kwargs = self.ctx.model, self.ctx.example_input, self.kwargs

            def score(picks: Any) -> Trial:
                # looked up at call time, so a test can stand in for the evaluation
                return globals()["score_picks"](model, example, picks, **kwargs)

            task = _worker_score
            _WORKER.update(model=model, example=example, kwargs=kwargs)
        if self.workers <= 1 or len(candidates) == 1 or not _can_fork():
            return (score(c) for c in candidates)
        if self._pool is None:
            self._pool = multiprocessing.get_context("fork").Pool(
                self.workers, initializer=_worker_init
            )
        return self._pool.imap(task, candidates, chunksize=1)

    # ------------------------------------------------------------------ ending
    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
            _WORKER.clear()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Search:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Setup:
    """What every search method starts from (:func:`search_setup`): its target and budget, the
    model's graph and dense plan, the groups it allocates over, and the target's selection
    keywords (:func:`target_keywords`; a latency target's predictor is built once)."""

    method: str
    ctx: Context
    opts: Any  # the method's options: a SearchOptions subclass
    target: Target
    budget: SearchBudget
    graph: Graph
    dense: Any  # the dense model's plan
    names: list[str]
    keywords: dict[str, Any]

    def search(self, **kwargs: Any) -> Search:
        """A :class:`Search` of this method under its budget, identified by its options, with its
        validation batches, workers and progress; ``kwargs`` add or override (``steps``, ``lr``,
        ``scorer``)."""
        settings = {
            "val_batches": self.opts.val_batches,
            "workers": self.opts.workers,
            "progress": self.opts.progress,
            **kwargs,
        }
        ident = identity(self.method, self.opts, self.ctx, self.graph)
        return Search(self.ctx, self.method, self.budget, ident, **settings)

    def remove(self, picks: Picks) -> Any:
        """Remove the chosen channels from the model: the method's :class:`PruneReport`."""
        return remove_selected(self.graph, picks, self.dense)


@contextmanager
def search_setup(
    method_id: str, ctx: Context, opts: Any, kinds: Sequence[str] = ("flops", "params", "latency")
) -> Iterator[Setup]:
    """The prologue every search method shares: the run's target (one of ``kinds``, else a clear
    error), the budget parsed, the model's modes saved and set to eval (restored on the way out,
    whatever happens), the graph built, the groups of two or more channels (none: an error
    naming the method) and the target's keywords."""
    target = ctx.target.require(*kinds, method=method_id)
    budget = SearchBudget.parse(opts.search_budget)
    modes = eval_modes(ctx.model)
    try:
        graph = build(ctx.model, ctx.example_input)
        names = group_names(graph)
        if not names:
            raise ConfigError(f"{method_id} found no prunable groups")
        keywords = target_keywords(target, graph, ctx.example_input, progress=opts.progress)
        yield Setup(method_id, ctx, opts, target, budget, graph, graph.plan([]), names, keywords)
    finally:
        restore_modes(modes)


def identity(method_id: str, opts: Options, ctx: Context, graph: Graph, **extra: Any) -> dict:
    """What identifies a search: the method, its options (less those that do not change the
    result: progress, workers; the budget, so a search can be extended), the target, the seed, the groups and their sizes."""
    settings = {
        k: v for k, v in opts.as_dict().items() if k not in ("progress", "workers", "search_budget")
    }
    return {
        "method": method_id,
        "options": settings,
        "target": repr(ctx.target),
        "seed": ctx.seed,
        "groups": [(g.name, g.size) for g in graph.groups],
        **extra,
    }
