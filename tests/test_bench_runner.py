"""The result store and the benchmark runner: records, shards, resuming, failures, torchrun
partitions, worker pools and a runner killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from prunekit.bench import Store, expand, load_records, parse_spec, run_spec
from prunekit.bench.runner import LAUNCHER_VARS, default_work_dir
from prunekit.bench.spec import Spec
from prunekit.bench.store import shard_path
from prunekit.errors import ConfigError

HELPER = Path(__file__).with_name("bench_kill_helper.py")


def tiny(**overrides: Any) -> dict[str, Any]:
    """A spec of quick runs: lenet5 on digits, one baseline epoch, no fine-tuning, no timing."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "models": ["lenet5"],
        "datasets": [{"name": "digits", "image_size": 28}],
        "methods": ["hrank", {"id": "magnitude", "options": {"rounds": 1, "retrain_epochs": 0}}],
        "targets": {"flops": [0.3], "sparsity": [0.5]},
        "seeds": [0],
        "baseline": {"epochs": 1},
        "finetune": {"epochs": 0},
        "measure": {"latency": False},
    }
    spec.update(overrides)
    return spec


def finishes(store_path: Path) -> Counter[str]:
    with Store(store_path, create=False) as store:
        return Counter(e.run_id for e in store.events() if e.event == "finish")


# ---------------------------------------------------------------------------------- store


def test_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "results.sqlite"
    with Store(path) as store:
        store.start("a", {"model": "lenet5"})
        rec = store.get("a")
        assert rec is not None
        assert (rec.status, rec.attempts, rec.finished, rec.shard) == (
            "running",
            1,
            None,
            str(path),
        )
        assert rec.started > 0
        store.finish("a", {"acc": 91.5, "n": np.int64(3)}, {"total_s": 2.0}, {"host": "h"})
        store.start("b", {"model": "vgg"})
        store.fail("b", "ValueError: boom")
        with pytest.raises(ConfigError, match="never started"):
            store.finish("zzz", {}, {}, {})
        with pytest.raises(ConfigError, match="status must be one of"):
            store.records("finished")
    with Store(path) as store:  # everything survives reopening
        a, b = store.get("a"), store.get("b")
        assert a is not None and b is not None
        assert (a.status, a.config, a.metrics) == (
            "done",
            {"model": "lenet5"},
            {"acc": 91.5, "n": 3},
        )
        assert (a.timings, a.env, a.error) == ({"total_s": 2.0}, {"host": "h"}, None)
        assert a.finished is not None and a.finished >= a.started
        assert (b.status, b.error) == ("failed", "ValueError: boom")
        assert store.done_ids() == {"a"}
        assert [r.id for r in store.records("failed")] == ["b"]
        assert store.get("nothing") is None
        store.start("b", {"model": "vgg"})  # a new attempt clears the old error
        b = store.get("b")
        assert b is not None and (b.status, b.attempts, b.error) == ("running", 2, None)
        assert [e.event for e in store.events("b")] == ["start", "fail", "start"]
        assert {e.pid for e in store.events()} == {os.getpid()}


def test_store_uses_write_ahead_logging(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    Store(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    Store(path).close()

    def write(prefix: str) -> None:
        with Store(path) as store:
            for i in range(30):
                store.start(f"{prefix}{i}", {})
                store.finish(f"{prefix}{i}", {"i": i}, {}, {})

    threads = [threading.Thread(target=write, args=(p,)) for p in "xyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Store(path) as store:
        assert len(store.done_ids()) == 90
        assert len(store.events()) == 180


def test_a_file_that_is_not_a_store_is_refused_untouched(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, just some words that fill a page " * 20)
    before = text.read_bytes()
    with pytest.raises(ConfigError, match=r"notes\.sqlite is not a prunekit result store"):
        Store(text)
    assert text.read_bytes() == before

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"other\.sqlite is a SQLite database but not a prunekit"):
        Store(other)

    future = tmp_path / "future.sqlite"
    Store(future).close()
    conn = sqlite3.connect(future)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="schema version '99'"):
        Store(future)

    with pytest.raises(ConfigError, match=r"missing\.sqlite does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)


def test_shard_path() -> None:
    assert shard_path("out/results.sqlite", 1, 2) == Path("out/results.rank1-of-2.sqlite")
    assert shard_path("out/results.sqlite", 0, 1) == Path("out/results.sqlite")
    with pytest.raises(ConfigError, match="rank"):
        shard_path("results.sqlite", 2, 2)


def test_load_records_merges_shards_done_winning(tmp_path: Path) -> None:
    with Store(shard_path(tmp_path / "r.sqlite", 0, 2)) as s0:
        s0.start("a", {"k": "a"})
        s0.finish("a", {"acc": 1.0}, {}, {})
        s0.start("b", {"k": "b"})
        s0.fail("b", "boom")
    with Store(shard_path(tmp_path / "r.sqlite", 1, 2)) as s1:
        s1.start("b", {"k": "b"})
        s1.finish("b", {"acc": 2.0}, {}, {})
        s1.start("c", {"k": "c"})
    (tmp_path / "notes.txt").write_text("ignored")
    merged = load_records([tmp_path])
    assert [(r.id, r.status) for r in merged] == [("a", "done"), ("b", "done"), ("c", "running")]
    b = merged[1]
    assert b.metrics == {"acc": 2.0} and b.shard.endswith("r.rank1-of-2.sqlite")
    # files named one by one give the same merge, whatever their order
    files = sorted(tmp_path.glob("*.sqlite"), reverse=True)
    assert [(r.id, r.status) for r in load_records(files)] == [(r.id, r.status) for r in merged]
    with pytest.raises(ConfigError, match=r"gone\.sqlite does not exist"):
        load_records([tmp_path / "gone.sqlite"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no result stores"):
        load_records([tmp_path / "empty"])


# ---------------------------------------------------------------------------------- runner


def test_runs_then_skips_what_is_done(tmp_path: Path) -> None:
    spec = parse_spec(tiny())
    store = tmp_path / "results.sqlite"
    summary = run_spec(spec, store, progress=False)
    assert (summary.total, summary.skipped_done, summary.ran, summary.failed) == (2, 0, 2, 0)
    assert summary.store == store
    records = {r.config["method"]: r for r in load_records([store])}
    assert {r.status for r in records.values()} == {"done"}
    for rec in records.values():
        m = rec.metrics
        assert m["acc_drop"] == pytest.approx(m["acc_before"] - m["acc_finetuned"])
        assert m["bytes_dense"] > 0 and m["bytes_sparse"] > 0
        assert not any(k.startswith(("top5", "latency", "speedup", "onnx")) for k in m)
        assert set(rec.timings) == {"baseline_s", "prune_s", "finetune_s", "measure_s", "total_s"}
        assert set(rec.env) >= {"torch", "python", "platform", "device", "threads", "workers"}
        assert {"host", "prunekit"} <= set(rec.env)
        assert rec.env["workers"] == 1
    hrank, magnitude = records["hrank"].metrics, records["magnitude"].metrics
    assert hrank["flops_after"] < hrank["flops_before"]
    assert "bytes_deep_compression" not in hrank
    assert "bytes_deep_compression" not in magnitude  # its evaluated model is not quantised
    assert magnitude["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert magnitude["bytes_sparse"] < magnitude["bytes_dense"]

    work = tmp_path / "results-work"
    (baseline,) = (work / "baselines").glob("*.pt")  # one baseline serves both runs
    assert {p.name for p in (work / "runs").iterdir()} == {r.id for r in records.values()}

    again = run_spec(spec, store, progress=False)
    assert (again.total, again.skipped_done, again.ran, again.failed) == (2, 2, 0, 0)
    assert finishes(store) == Counter({r.id: 1 for r in records.values()})

    # a new store with the same work folder finds the baseline trained and does not retrain it
    stamp = baseline.stat().st_mtime_ns
    fresh = run_spec(spec, tmp_path / "other.sqlite", progress=False, work_dir=work)
    assert (fresh.ran, fresh.failed) == (2, 0)
    assert baseline.stat().st_mtime_ns == stamp


def test_a_larger_spec_reuses_the_finished_runs_of_another_store(tmp_path: Path) -> None:
    """Run ids hash the run, not the spec: a spec with one more target adopts the two finished
    runs of a smaller spec's store (metrics as recorded there) and runs only the third."""
    small = tmp_path / "small.sqlite"
    run_spec(parse_spec(tiny()), small, progress=False)
    before = {r.id: r for r in load_records([small])}
    larger = parse_spec(tiny(targets={"flops": [0.3, 0.5], "sparsity": [0.5]}))
    big = tmp_path / "big.sqlite"
    summary = run_spec(larger, big, progress=False, reuse=[small], work_dir=tmp_path / "w")
    assert (summary.total, summary.skipped_done, summary.ran, summary.failed) == (3, 2, 1, 0)
    after = {r.id: r for r in load_records([big])}
    assert set(before) < set(after) and len(after) == 3
    for rid, rec in before.items():
        assert after[rid].metrics == rec.metrics and after[rid].finished == rec.finished
    with Store(big, create=False) as store:
        adopted = {e.run_id for e in store.events() if e.event == "adopt"}
        assert adopted == set(before)
        store.start("x", {"model": "lenet5"})
        with pytest.raises(ConfigError, match="only finished runs are adopted"):
            store.adopt(store.get("x"))


def test_latency_and_onnx_figures(tmp_path: Path) -> None:
    spec = parse_spec(
        tiny(
            methods=["hrank"],
            measure={"latency": True, "batch_sizes": [1, 2], "onnx": True, "threads": 1},
        )
    )
    store = tmp_path / "results.sqlite"
    assert run_spec(spec, store, progress=False).failed == 0
    (rec,) = load_records([store])
    m = rec.metrics
    for key in ("latency", "latency_b2", "onnx_latency", "onnx_latency_b2"):
        assert m[f"{key}_before_ms"] > 0 and m[f"{key}_after_ms"] > 0
    assert m["speedup"] == pytest.approx(m["latency_before_ms"] / m["latency_after_ms"])
    assert m["speedup_b2"] == pytest.approx(m["latency_b2_before_ms"] / m["latency_b2_after_ms"])
    assert m["onnx_speedup"] == pytest.approx(
        m["onnx_latency_before_ms"] / m["onnx_latency_after_ms"]
    )
    assert "onnx_speedup_b2" in m
    # the dense model is exported once per baseline and reused by later runs
    (dense,) = (default_work_dir(store) / "baselines").glob("*.onnx")
    stamp = dense.stat().st_mtime_ns
    with Store(store) as s:
        s.fail(rec.id, "forced rerun")
    assert run_spec(spec, store, progress=False).ran == 1
    assert dense.stat().st_mtime_ns == stamp


def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    missing = tmp_path / "no-mnist-here"
    missing.mkdir()  # a folder, but without the IDX files: the baseline fails when it loads them
    spec = parse_spec(
        tiny(
            methods=["hrank"],
            datasets=[
                {"name": "digits", "image_size": 28},
                {"name": "mnist", "root": str(missing)},
            ],
        )
    )
    store = tmp_path / "results.sqlite"
    summary = run_spec(spec, store, progress=False)
    assert (summary.total, summary.ran, summary.failed) == (2, 2, 1)
    records = {r.config["data"]: r for r in load_records([store])}
    assert records["digits"].status == "done"
    failed = records["mnist"]
    assert failed.status == "failed"
    assert (failed.error or "").startswith("baseline failed: MissingFileError: ")
    assert str(missing) in (failed.error or "")

    again = run_spec(spec, store, progress=False)  # failed runs are run again, done ones not
    assert (again.skipped_done, again.ran, again.failed) == (1, 1, 1)
    with Store(store) as s:
        retried = s.get(failed.id)
        assert retried is not None and retried.attempts == 2
    assert finishes(store) == Counter({records["digits"].id: 1})


def test_torchrun_ranks_split_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_spec(tiny(targets={"flops": [0.3, 0.5], "sparsity": [0.5]}))
    ordered = sorted(r.id for r in expand(spec))
    assert len(ordered) == 3
    store = tmp_path / "results.sqlite"
    for rank in (0, 1):
        for name, value in {
            "WORLD_SIZE": "2",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": "29999",
            "GROUP_RANK": "0",
            "ROLE_RANK": str(rank),
        }.items():
            monkeypatch.setenv(name, value)
        summary = run_spec(spec, store, progress=False)
        assert summary.store == tmp_path / f"results.rank{rank}-of-2.sqlite"
        assert not any(name in os.environ for name in LAUNCHER_VARS)
        assert not torch.distributed.is_initialized()
        with Store(summary.store) as shard:
            assert sorted(shard.done_ids()) == ordered[rank::2]
    assert not (tmp_path / "results.sqlite").exists()
    merged = load_records([tmp_path])
    assert sorted(r.id for r in merged) == ordered
    assert {r.status for r in merged} == {"done"}


TORCHRUN_SCRIPT = """
import sys
from pathlib import Path

from prunekit.bench import run_spec

out = Path(sys.argv[1])
run_spec(out.parent / "spec.yaml", out / "results.sqlite", progress=False,
         work_dir=out.parent / "work")
"""


def test_a_real_torchrun_launch_splits_the_runs_into_shards(tmp_path: Path) -> None:
    from torchrun_launch import run_torchrun

    spec = tiny(targets={"flops": [0.3, 0.5], "sparsity": [0.5]})
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    script = tmp_path / "bench_under_torchrun.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    run_torchrun(str(script), out)
    shards = sorted(p.name for p in out.glob("*.sqlite"))
    assert shards == ["results.rank0-of-2.sqlite", "results.rank1-of-2.sqlite"]
    per_shard = [finishes(out / name) for name in shards]
    assert all(len(c) >= 1 for c in per_shard)  # both ranks ran runs
    assert not set(per_shard[0]) & set(per_shard[1])  # and no run was run on both
    merged = load_records([out])
    assert sorted(r.id for r in merged) == sorted(r.id for r in expand(parse_spec(spec)))
    assert {r.status for r in merged} == {"done"}


def test_two_workers_share_one_store(tmp_path: Path) -> None:
    missing = tmp_path / "no-mnist-here"
    missing.mkdir()  # a folder, but without the IDX files: the baseline fails when it loads them
    datasets = [{"name": "digits", "image_size": 28}, {"name": "mnist", "root": str(missing)}]
    spec = parse_spec(tiny(datasets=datasets))
    store = tmp_path / "results.sqlite"
    summary = run_spec(spec, store, workers=2, threads=1, progress=False)
    assert (summary.total, summary.ran, summary.failed) == (4, 4, 2)
    records = load_records([store])
    done = [r for r in records if r.status == "done"]
    assert {r.config["data"] for r in done} == {"digits"} and len(done) == 2
    assert {r.env["workers"] for r in done} == {2}
    assert {r.env["threads"] for r in done} == {1}
    for rec in records:
        if rec.config["data"] == "mnist":  # its baseline failed once, both runs recorded so
            assert rec.status == "failed"
            assert (rec.error or "").startswith("baseline failed: MissingFileError")
    with Store(store) as s:
        finish_pids = {e.pid for e in s.events() if e.event == "finish"}
    assert os.getpid() not in finish_pids  # the workers wrote them
    assert len(list((tmp_path / "results-work" / "baselines").glob("*.pt"))) == 1


def test_bad_worker_counts_are_refused(tmp_path: Path) -> None:
    spec = parse_spec(tiny())
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        run_spec(spec, tmp_path / "r.sqlite", workers=0)
    with pytest.raises(ConfigError, match="threads must be"):
        run_spec(spec, tmp_path / "r.sqlite", threads=True)


# ---------------------------------------------------------------------------------- kill -9


def _progress(store_path: Path) -> tuple[list[Any], list[Any]] | None:
    if not store_path.exists():
        return None
    try:
        with Store(store_path, create=False) as store:
            return store.records("done"), store.records("running")
    except (ConfigError, sqlite3.OperationalError):
        return None  # the runner is creating it


def _start_runner(spec_file: Path, store: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    """``tests/bench_kill_helper.py`` running ``spec_file`` into ``store`` in a subprocess."""
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(spec_file), str(store), str(workers)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_for(proc: subprocess.Popen[bytes], store: Path, ready: Any, timeout_message: str) -> None:
    """Poll ``store`` until ``ready(done, running)`` holds; the runner must still be running."""
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, "the runner ended before it could be killed"
        assert time.monotonic() < deadline, timeout_message
        seen = _progress(store)
        if seen is not None and ready(*seen):
            return
        time.sleep(0.02)


def test_a_killed_runner_resumes_without_repeating_finished_runs(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(tiny(methods=["hrank"], targets={"flops": [0.3, 0.5]}, seeds=[0, 1]))
    )
    spec: Spec = parse_spec(yaml.safe_load(spec_file.read_text()))
    assert len(expand(spec)) == 4
    store = tmp_path / "results.sqlite"
    proc = _start_runner(spec_file, store)

    def one_done_then_another_started(done: list[Any], running: list[Any]) -> bool:
        last = max((r.finished for r in done), default=None)
        return last is not None and any(r.started >= last for r in running)

    try:
        _wait_for(proc, store, one_done_then_another_started, "no run finished in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with Store(store, create=False) as s:
        finished_before = {r.id: r.finished for r in s.records("done")}
        interrupted = [r.id for r in s.records("running")]
    assert finished_before and interrupted

    summary = run_spec(spec, store, progress=False)
    assert summary.skipped_done == len(finished_before)
    assert summary.failed == 0
    with Store(store) as s:
        records = {r.id: r for r in s.records()}
        events = s.events()
    assert {r.status for r in records.values()} == {"done"} and len(records) == 4
    assert Counter(e.run_id for e in events if e.event == "finish") == Counter(
        {rid: 1 for rid in records}
    )
    for rid, finished in finished_before.items():
        assert records[rid].finished == finished
        assert records[rid].attempts == 1
    for rid in interrupted:
        assert records[rid].attempts == 2


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's reaping is left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_end_when_their_runner_is_killed(tmp_path: Path) -> None:
    """SIGKILL gives the pool no chance to stop its workers: each ends by itself once its runner
    is gone, instead of finishing its run on a core the resumed runner needs."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        yaml.safe_dump(tiny(methods=["hrank"], targets={"flops": [0.3, 0.5]}, seeds=[0, 1]))
    )
    store = tmp_path / "results.sqlite"
    proc = _start_runner(spec_file, store, workers=2)
    try:
        _wait_for(proc, store, lambda done, running: bool(running), "no run started in time")
        workers = _children(proc.pid)
        assert workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for w in _children(proc.pid):
            os.kill(w, signal.SIGKILL)


def test_a_run_folder_left_by_another_pruning_is_set_aside(tmp_path: Path) -> None:
    """A run's folder whose fine-tuning checkpoint does not fit the pruned model (written for other
    widths with the same run id, e.g. by an earlier version) is renamed aside, kept, and the run
    starts over instead of failing."""
    spec = parse_spec(tiny(methods=["hrank"], targets={"flops": [0.3]}, finetune={"epochs": 1}))
    store = tmp_path / "results.sqlite"
    work = tmp_path / "w"
    assert run_spec(spec, store, progress=False, work_dir=work).failed == 0
    (rec,) = load_records([store])
    run_dir = work / "runs" / rec.id
    ckpt = torch.load(run_dir / "finetune.pt", weights_only=False)
    name = next(k for k, v in ckpt["model"].items() if v.ndim == 4)
    ckpt["model"][name] = ckpt["model"][name][:1]  # one filter: another pruning's width
    torch.save(ckpt, run_dir / "finetune.pt")
    with Store(store) as s:
        s.fail(rec.id, "forced rerun")
    summary = run_spec(spec, store, progress=False, work_dir=work)
    assert (summary.ran, summary.failed) == (1, 0)
    (again,) = load_records([store])
    assert again.status == "done"
    aside = work / "runs" / f"{rec.id}.stale-1" / "finetune.pt"
    assert torch.load(aside, weights_only=False)["model"][name].shape[0] == 1
    assert (run_dir / "finetune.pt").exists()


def test_pool_workers_are_replaced_after_their_quota_of_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's memory grows over its runs, so each lane's worker is replaced after
    ``RUNS_PER_WORKER`` runs; the fresh workers reload their baselines and the runs all
    finish."""
    from prunekit.bench import runner

    monkeypatch.setattr(runner, "RUNS_PER_WORKER", 1)
    spec = parse_spec(tiny(seeds=[0, 1, 2]))
    store = tmp_path / "results.sqlite"
    summary = run_spec(spec, store, workers=2, threads=1, progress=False)
    assert (summary.total, summary.ran, summary.failed) == (6, 6, 0)
    with Store(store) as s:
        finish_pids = {e.pid for e in s.events() if e.event == "finish"}
    assert len(finish_pids) == 6  # one run per worker: every run in a fresh process


def test_a_lane_takes_the_next_run_while_another_lane_is_still_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Lanes are not batched: the long first item holds one lane until the three short ones have
    all finished on the other (which is renewed after its quota of two), so a barrier between
    batches would leave the long one waiting for ever (here: for its 10 s timeout)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from prunekit.bench import runner

    monkeypatch.setattr(runner, "RUNS_PER_WORKER", 2)
    released = threading.Event()
    lanes_made, order, results = [], [], {}

    def new_lane() -> ThreadPoolExecutor:
        lanes_made.append(ThreadPoolExecutor(max_workers=1))
        return lanes_made[-1]

    def task(item: str) -> str:
        if item == "long":
            return "released" if released.wait(timeout=10) else "timed out"
        return item.upper()

    def done(item: str, result: str) -> None:
        order.append(item)
        results[item] = result
        if item == "c":
            released.set()

    runner._lanes(new_lane, task, ["long", "a", "b", "c"], 2, done)
    assert order == ["a", "b", "c", "long"]
    assert results == {"long": "released", "a": "A", "b": "B", "c": "C"}
    assert len(lanes_made) == 3  # the short lane was renewed after a and b
