"""Run every run of a benchmark spec into a result store, resumably.

A run already ``done`` in the store is skipped; one left ``running`` (its process was killed) or
``failed`` is run again. Each baseline is trained once into ``<work>/baselines/<key>.pt`` and
shared by every run that prunes it; each run works in ``<work>/runs/<id>/``, where its fine-tune
checkpoint lets a killed run resume. Under ``torchrun`` each rank takes every ``world``-th run
(by id) and writes its own shard of the store; with ``workers > 1`` the runs of one process are
spread over a pool of processes writing the same store.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    as_completed,
    wait,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from prunekit.bench.spec import MeasureSpec, RunConfig, Spec, expand, load_spec
from prunekit.bench.store import Store, load_records, shard_path
from prunekit.errors import ConfigError, PrunekitError, StaleCheckpointError, one_line

__all__ = [
    "LAUNCHER_VARS",
    "BaselineError",
    "RunSummary",
    "default_work_dir",
    "measure_run",
    "run_spec",
]

# What torchrun sets for a process group; the runs of a rank are independent, so none may reach
# prunekit.train.fit (which would join a process group on seeing them).
LAUNCHER_VARS = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_USE_AGENT_STORE",
    "TORCHELASTIC_ERROR_FILE",
)

# Keys of run_pruning's metrics that repeat the run config (the store keeps the config).
_CONFIG_ECHO = (
    "model",
    "data",
    "input_shape",
    "epochs",
    "seed",
    "method",
    "target_flops",
    "target_params",
    "target_sparsity",
    "target_latency",
    "train_time_s",
    "pruned_model_file",
)


@dataclass
class RunSummary:
    """What one :func:`run_spec` call did: of ``total`` runs (this rank's), ``skipped_done``
    were already done and ``ran`` were run, ``failed`` of them failing; ``failures`` holds each
    failed run's label and one-line error; ``store`` is the file written."""

    total: int
    skipped_done: int
    ran: int
    failed: int
    store: Path
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Job:
    """What every process running runs of one call needs to know."""

    store: str
    work: str
    measure: MeasureSpec
    workers: int


def default_work_dir(store_path: str | os.PathLike[str]) -> Path:
    """``<store folder>/<store stem>-work``: baselines and per-run folders."""
    path = Path(store_path)
    return path.with_name(f"{path.stem}-work")


def run_spec(
    spec: Spec | str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    *,
    workers: int = 1,
    threads: int | None = None,
    progress: bool = True,
    work_dir: str | os.PathLike[str] | None = None,
    reuse: Sequence[str | os.PathLike[str]] = (),
) -> RunSummary:
    """Run the runs of ``spec`` (a :class:`Spec` or the path of a YAML spec) that ``store_path``
    does not hold as done, recording each as it starts, finishes or fails.

    ``reuse``: other stores (files or folders of shards) whose finished runs this spec also
    has (a run's id hashes its model, data, method, target, seed and schedule, not the spec)
    are copied into this store first and not run again: a larger spec resumes from a smaller
    one's results.

    ``workers``: processes running runs at once (``spawn``ed, each with ``threads`` torch threads,
    default the CPU cores divided among them); ``threads`` with one worker sets this process's
    torch threads for the call. ``work_dir`` defaults to :func:`default_work_dir` of the store
    (shared by the ranks of a ``torchrun`` launch). A run that raises is recorded as failed and the
    others go on. Every run's configuration is checked before any work starts (an unknown
    option, a data folder that is not there ...).
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    for cfg in expand(spec):
        try:
            cfg.prune_config().validate()
        except PrunekitError as e:
            raise ConfigError(f"{spec.source}: run {cfg.label()}: {e}") from None
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ConfigError(f"threads must be an integer >= 1 or None, got {threads!r}")
    rank, world = _leave_launcher()
    store_path = Path(store_path)
    work = Path(work_dir) if work_dir is not None else default_work_dir(store_path)
    shard = shard_path(store_path, rank, world)

    ordered = sorted(expand(spec), key=lambda c: c.id)
    mine = [c for i, c in enumerate(ordered) if i % world == rank]
    with Store(shard) as store:  # created here, before any worker opens it
        if reuse:
            wanted = {c.id for c in mine} - store.done_ids()
            for rec in load_records(list(reuse)):
                if rec.status == "done" and rec.id in wanted:
                    store.adopt(rec)  # the same run (ids hash the run), finished elsewhere
        done = store.done_ids()
    todo = [c for c in mine if c.id not in done]
    todo.sort(key=lambda c: c.baseline_key)  # runs sharing a baseline run back to back
    job = _Job(str(shard), str(work), spec.measure, workers)

    bar = tqdm(
        total=len(mine),
        initial=len(mine) - len(todo),
        desc=f"bench {spec.name}" + (f" rank {rank}/{world}" if world > 1 else ""),
        unit="run",
        disable=not progress,
    )
    try:
        if workers == 1 or not todo:
            failures = _run_here(job, todo, threads, bar)
        else:
            failures = _run_pool(job, todo, threads, bar)
    finally:
        bar.close()
    return RunSummary(
        total=len(mine),
        skipped_done=len(mine) - len(todo),
        ran=len(todo),
        failed=len(failures),
        store=shard,
        failures=failures,
    )


def _leave_launcher() -> tuple[int, int]:
    """This process's ``(rank, world)`` from torchrun's variables, which are then removed from
    ``os.environ``. With several ranks on one machine each keeps to the GPU of its local rank
    (``CUDA_VISIBLE_DEVICES``, unless set already or CUDA is in use)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        raise ConfigError(
            f"WORLD_SIZE and RANK must be integers, got {os.environ.get('WORLD_SIZE')!r} and "
            f"{os.environ.get('RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK must be in [0, WORLD_SIZE), got RANK={rank} WORLD_SIZE={world}")
    local_world = os.environ.get("LOCAL_WORLD_SIZE", "1")
    local_rank = os.environ.get("LOCAL_RANK")
    if (
        local_rank is not None
        and local_world.isdigit()
        and int(local_world) > 1
        and "CUDA_VISIBLE_DEVICES" not in os.environ
        and not torch.cuda.is_initialized()
    ):
        os.environ["CUDA_VISIBLE_DEVICES"] = local_rank
    for name in LAUNCHER_VARS:
        os.environ.pop(name, None)
    return rank, world


# ---------------------------------------------------------------------------------- scheduling


def _run_here(
    job: _Job, todo: list[RunConfig], threads: int | None, bar: Any
) -> list[tuple[str, str]]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    failures = []
    try:
        with _Runner(job) as runner:
            for cfg in todo:
                bar.set_postfix_str(cfg.label())
                error = runner.run(cfg)
                if error is not None:
                    failures.append((cfg.label(), error))
                bar.update()
    finally:
        torch.set_num_threads(before)
    return failures


def _run_pool(
    job: _Job, todo: list[RunConfig], threads: int | None, bar: Any
) -> list[tuple[str, str]]:
    """Baselines first (each once, in parallel), then the runs; a run whose baseline failed is
    recorded as failed without running. The runs go to ``job.workers`` lanes of one fresh worker
    each, at most :data:`RUNS_PER_WORKER` runs per worker (in the order of ``todo``)."""
    per_worker = threads or max(1, _cores() // job.workers)
    failures = []
    firsts: dict[str, RunConfig] = {}
    for cfg in todo:
        firsts.setdefault(cfg.baseline_key, cfg)
    errors: dict[str, str] = {}
    with _pool(job, per_worker) as pool:
        baseline_jobs = {pool.submit(_worker_baseline, cfg): key for key, cfg in firsts.items()}
        for fut in as_completed(baseline_jobs):
            error = fut.result()
            if error is not None:
                errors[baseline_jobs[fut]] = error
    ready = []
    with Store(job.store) as store:
        for cfg in todo:
            if cfg.baseline_key in errors:
                store.start(cfg.id, cfg.to_dict())
                store.fail(cfg.id, errors[cfg.baseline_key])
                failures.append((cfg.label(), errors[cfg.baseline_key]))
                bar.update()
            else:
                ready.append(cfg)

    def done(cfg: RunConfig, error: str | None) -> None:
        if error is not None:
            failures.append((cfg.label(), error))
        bar.set_postfix_str(cfg.label())
        bar.update()

    _lanes(lambda: _pool(job, per_worker, 1), _worker_run, ready, job.workers, done)
    return failures


def _lanes(
    new_lane: Callable[[], Executor],
    task: Callable[[Any], Any],
    items: list[Any],
    lanes: int,
    done: Callable[[Any, Any], None],
) -> None:
    """Run ``task`` on ``items`` (in order) in ``lanes`` one-process executors made by
    ``new_lane``, calling ``done(item, result)`` as each finishes. A lane takes its next item as
    soon as its last one ends, so no lane waits for another's long run, and it is replaced by a
    fresh one after :data:`RUNS_PER_WORKER` items (a worker's memory grows over its runs)."""
    queue = deque(items)
    running: dict[Future[Any], tuple[Executor, int, Any]] = {}

    def feed(lane: Executor, count: int) -> None:
        if not queue:
            lane.shutdown()
            return
        if count >= RUNS_PER_WORKER:
            lane.shutdown()
            lane, count = new_lane(), 0
        item = queue.popleft()
        running[lane.submit(task, item)] = (lane, count + 1, item)

    try:
        for _ in range(min(lanes, len(queue))):
            feed(new_lane(), 0)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                lane, count, item = running.pop(fut)
                done(item, fut.result())
                feed(lane, count)
    finally:
        for lane, _, _ in running.values():
            lane.shutdown(wait=False, cancel_futures=True)


def _pool(job: _Job, per_worker: int, workers: int | None = None) -> ProcessPoolExecutor:
    """``workers`` (default ``job.workers``) fresh ``spawn``ed workers with ``per_worker`` torch
    threads each. (Python's own ``max_tasks_per_child`` would replace workers within one pool,
    but its pool can hang when a worker retires, CPython gh-115634: the runs go to one-worker
    pools that are replaced instead, :func:`_lanes`.)"""
    return ProcessPoolExecutor(
        max_workers=workers or job.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(job, per_worker, os.getpid()),
    )


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_WORKER: _Runner | None = None
# Runs a pool worker takes before the pool is replaced by fresh processes: the resident memory
# of a worker grew by about 5 GB over a dozen MobileNet / ResNet runs on digits-32 (one was
# killed for memory at 14 GB); a new worker reloads its baseline from the finished checkpoint,
# which costs a second.
RUNS_PER_WORKER = 6


def _init_worker(job: _Job, threads: int, runner: int) -> None:
    global _WORKER
    # the runner's pid comes from the runner: one killed while this worker was still starting
    # would otherwise leave it reparented, and its getppid() would name the new parent
    threading.Thread(target=_exit_with_runner, args=(runner,), daemon=True).start()
    torch.set_num_threads(threads)
    _WORKER = _Runner(job)


def _exit_with_runner(runner: int, every: float = 1.0) -> None:
    """End this worker once its runner is gone (killed, even by SIGKILL, which leaves the pool
    no chance to stop it): an orphaned worker would go on with its run, holding a core that the
    resumed runner needs. The interrupted run stays ``running`` in the store, and the resumed
    runner runs it again."""
    while os.getppid() == runner:
        time.sleep(every)
    os._exit(1)


def _worker_baseline(cfg: RunConfig) -> str | None:
    assert _WORKER is not None
    try:
        _WORKER.baseline(cfg)
    except Exception as e:
        return _message(e)
    return None


def _worker_run(cfg: RunConfig) -> str | None:
    assert _WORKER is not None
    return _WORKER.run(cfg)


def _set_aside(run_dir: Path) -> Path:
    """Rename a run's folder to a free ``<id>.stale-N`` beside it (nothing is deleted)."""
    n = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.stale-{n}")).exists():
        n += 1
    run_dir.rename(aside)
    return aside


class BaselineError(RuntimeError):
    """A run's baseline could not be trained (the message says why)."""


def _message(e: BaseException) -> str:
    """The one line a failed run records, with the error's type."""
    text = one_line(str(e))
    return text if isinstance(e, BaselineError) else f"{type(e).__name__}: {text}"


# ---------------------------------------------------------------------------------- one run


class _Runner:
    """Runs runs in this process, keeping the last baseline in memory (runs are ordered so that
    those sharing a baseline come together)."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.work = Path(job.work)
        self.store = Store(job.store)
        self._key: str | None = None
        self._trained: Any = None
        self._baseline_errors: dict[str, str] = {}

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def baseline(self, cfg: RunConfig) -> Any:
        """The trained baseline of ``cfg`` (a :class:`prunekit.workflow.Trained`): from memory,
        from its finished checkpoint, or trained now (resuming an interrupted checkpoint)."""
        from prunekit import workflow

        key = cfg.baseline_key
        if key in self._baseline_errors:  # failed earlier in this call: not tried twice
            raise BaselineError(self._baseline_errors[key])
        if key != self._key:
            job, train_cfg = workflow.baseline_config(cfg.prune_config(for_baseline=True))
            checkpoint = self.work / "baselines" / f"{key}.pt"
            try:
                trained = workflow.train_and_test(
                    job, train_cfg, checkpoint=checkpoint, progress=False
                )
            except Exception as e:
                self._baseline_errors[key] = f"baseline failed: {_message(e)}"
                raise BaselineError(self._baseline_errors[key]) from e
            self._key, self._trained = key, trained
        return self._trained

    def run(self, cfg: RunConfig) -> str | None:
        """Run ``cfg`` and record it; its error (also put in the store) if it raised."""
        self.store.start(cfg.id, cfg.to_dict())
        t0 = time.perf_counter()
        try:
            metrics, timings = self._execute(cfg)
        except Exception as e:
            self.store.fail(cfg.id, _message(e))
            return _message(e)
        timings["total_s"] = time.perf_counter() - t0
        self.store.finish(cfg.id, metrics, timings, self.env())
        return None

    def _execute(self, cfg: RunConfig) -> tuple[dict[str, Any], dict[str, float]]:
        from prunekit import workflow
        from prunekit.bench import peers

        trained = self.baseline(cfg)
        run_dir = self.work / "runs" / cfg.id
        t0 = time.perf_counter()
        # latency is timed by measure_run, with the spec's threads and batch sizes
        config = cfg.prune_config()
        prune = None
        if peers.is_baseline(cfg.method):  # a peer or reference: not a catalogue method

            def prune(step: Any, setup: Any) -> Any:  # each step's target (config.steps)
                return peers.pruner(cfg.method, step, cfg.options, run_dir)(setup)

        def attempt() -> dict[str, Any]:
            return workflow.run_pruning(
                config, out=run_dir, progress=False, baseline=trained, latency=False, prune=prune
            )

        try:
            raw = attempt()
        except StaleCheckpointError:
            # the run's folder holds the checkpoints of another pruning with this run's id (an
            # earlier version's widths): set them aside, kept, and run it from the start
            _set_aside(run_dir)
            raw = attempt()
        pruning_s = time.perf_counter() - t0
        metrics = {k: v for k, v in raw.items() if k not in _CONFIG_ECHO}
        t0 = time.perf_counter()
        metrics.update(measure_run(cfg, trained, run_dir, self.job.measure, metrics))
        if trained.setup.info.num_classes <= 10:
            metrics = {k: v for k, v in metrics.items() if not k.startswith("top5")}
        prune_s, finetune_s = metrics["prune_time_s"], metrics["finetune_time_s"]
        timings = {
            "baseline_s": float(trained.result.train_time_s),
            "prune_s": prune_s,
            "finetune_s": finetune_s,
            "measure_s": max(0.0, pruning_s - prune_s - finetune_s) + time.perf_counter() - t0,
        }
        return metrics, timings

    def env(self) -> dict[str, Any]:
        from prunekit import __version__
        from prunekit.train.device import resolve_device

        return {
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "device": str(resolve_device("auto")),
            "threads": torch.get_num_threads(),
            "workers": self.job.workers,
            "host": socket.gethostname(),
            "prunekit": __version__,
        }


def measure_run(
    cfg: RunConfig,
    trained: Any,
    run_dir: Path,
    measure: MeasureSpec,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The figures a benchmark adds to :func:`prunekit.workflow.run_pruning`'s: accuracy drop,
    file sizes, latency and speed-up (torch and optionally ONNX); measured on the
    pruned model as saved in ``run_dir/pruned.pt`` against the dense baseline."""
    import prunekit
    from prunekit.compress.sparse import save_sparse
    from prunekit.measure import file_size

    pruned_file = run_dir / "pruned.pt"
    pruned = prunekit.load(pruned_file)
    dense = trained.setup.model
    example = trained.setup.example_input()
    out: dict[str, Any] = {"acc_drop": metrics["acc_before"] - metrics["acc_finetuned"]}
    out["bytes_dense"] = file_size(pruned_file)
    sparse_file = run_dir / "pruned.sparse.pt"
    save_sparse(pruned, sparse_file)
    out["bytes_sparse"] = file_size(sparse_file)
    if measure.latency:
        before = _torch_latency(dense, example, measure)
        after = _torch_latency(pruned, example, measure)
        out.update(_latency_keys("latency", "speedup", before, after))
    if measure.onnx:
        from prunekit.export import onnx_latency

        kwargs = {"batch_sizes": tuple(measure.batch_sizes), "threads": measure.threads}
        before = onnx_latency(_dense_onnx(cfg, dense, example, run_dir), example, **kwargs)
        after = onnx_latency(pruned, example, **kwargs)
        out.update(_latency_keys("onnx_latency", "onnx_speedup", before, after))
    if metrics.get("result_file") is not None and metrics.get("bytes_after") is not None:
        # a quantising method's own file, from which the evaluated model was rebuilt
        out["bytes_result_file"] = metrics["bytes_after"]
    return out


def _dense_onnx(cfg: RunConfig, dense: Any, example: torch.Tensor, run_dir: Path) -> Path:
    """The baseline's ONNX file, exported once per baseline (``<work>/baselines/<key>.onnx``)
    and timed afresh in every run, beside the pruned model."""
    from prunekit.export import export_onnx

    path = run_dir.parent.parent / "baselines" / f"{cfg.baseline_key}.onnx"
    if not path.exists():
        export_onnx(dense, example, path)  # atomic: a concurrent worker sees all of it or none
    return path


def _torch_latency(model: Any, example: torch.Tensor, measure: MeasureSpec) -> dict[int, float]:
    from prunekit.measure import batch_of, measure_latency

    return {
        n: measure_latency(model, batch_of(example, n), threads=measure.threads).median_ms
        for n in measure.batch_sizes
    }


def _latency_keys(
    prefix: str, ratio: str, before: dict[int, float], after: dict[int, float]
) -> dict[str, float]:
    """``{batch: ms}`` before and after as ``<prefix>_before_ms`` (batch 1),
    ``<prefix>_b32_before_ms`` ..., and ``<ratio>``, ``<ratio>_b32`` ... (before / after)."""
    out: dict[str, float] = {}
    for n in sorted(before):
        size = "" if n == 1 else f"_b{n}"
        b, a = float(before[n]), float(after[n])
        out[f"{prefix}{size}_before_ms"] = b
        out[f"{prefix}{size}_after_ms"] = a
        if a > 0:
            out[f"{ratio}{size}"] = b / a
    return out
