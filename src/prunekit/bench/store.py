"""The result store: one SQLite file (WAL) per machine holding every run's config, metrics,
timings and environment.

Several processes may write one store at once (write-ahead log, a busy timeout, every write in
its own ``BEGIN IMMEDIATE`` transaction), and a process killed at any point leaves it readable:
a run it was doing stays ``running`` and is run again next time. The ``events`` table logs every
start, finish and failure with the writer's pid, so a rerun can be checked to have repeated
nothing that had finished.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "STATUSES",
    "Event",
    "RunRecord",
    "Store",
    "load_records",
    "shard_path",
]

FORMAT = "prunekit-bench-store"
SCHEMA_VERSION = 1
STATUSES = ("running", "done", "failed")
BUSY_TIMEOUT_S = 120.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    timings TEXT NOT NULL DEFAULT '{}',
    env TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL DEFAULT 0,
    finished REAL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    event TEXT NOT NULL,
    time REAL NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id);
"""


@dataclass
class RunRecord:
    """One run as the store keeps it."""

    id: str
    config: dict[str, Any]
    status: str  # "running" | "done" | "failed"
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    started: float = 0.0
    finished: float | None = None
    shard: str = ""


@dataclass(frozen=True)
class Event:
    """One line of the store's log: a run started, finished or failed, when and by which pid."""

    run_id: str
    event: str  # "start" | "finish" | "fail"
    time: float
    pid: int


class Store:
    """A result store file; created (with its folder) when it does not exist.

    An existing file must be a prunekit store of a schema version this code reads, else
    :class:`ConfigError` names it. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise ConfigError(f"result store {self.path} is a folder, expected a SQLite file")
        if not self.path.exists():
            if not create:
                raise ConfigError(f"result store {self.path} does not exist")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        conn = self._conn
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as e:
            raise ConfigError(
                f"{self.path} is not a prunekit result store (not a SQLite database: {e})"
            ) from None
        if tables and "meta" not in tables:
            raise ConfigError(
                f"{self.path} is a SQLite database but not a prunekit result store "
                f"(it has tables {', '.join(sorted(tables))} and no prunekit schema)"
            )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigError(f"result store {self.path} cannot use write-ahead logging ({mode})")
        conn.execute("PRAGMA synchronous = NORMAL")
        if not tables:  # a new (or empty) file: claim it; concurrent creators agree
            with self._write() as c:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
                c.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
                c.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise ConfigError(
                f"{self.path} is not a prunekit result store (format {meta.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        version = meta.get("schema_version", "")
        if not version.isdigit() or int(version) > SCHEMA_VERSION:
            raise ConfigError(
                f"result store {self.path} has schema version {version!r}; this prunekit reads "
                f"up to {SCHEMA_VERSION}"
            )

    # ---------------------------------------------------------------- plumbing

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers queue on the busy
        timeout instead of failing on a lock upgrade."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _event(self, conn: sqlite3.Connection, run_id: str, event: str, now: float) -> None:
        conn.execute(
            "INSERT INTO events (run_id, event, time, pid) VALUES (?, ?, ?, ?)",
            (run_id, event, now, os.getpid()),
        )

    # ---------------------------------------------------------------- writes

    def start(self, record_id: str, config: Mapping[str, Any]) -> None:
        """Mark a run ``running`` (a new attempt: earlier results and errors are cleared)."""
        now = time.time()
        with self._write() as c:
            c.execute(
                """INSERT INTO runs (id, config, status, attempts, started)
                   VALUES (?, ?, 'running', 1, ?)
                   ON CONFLICT (id) DO UPDATE SET
                       config = excluded.config, status = 'running',
                       attempts = runs.attempts + 1, started = excluded.started,
                       finished = NULL, error = NULL,
                       metrics = '{}', timings = '{}', env = '{}'""",
                (record_id, _dumps(config), now),
            )
            self._event(c, record_id, "start", now)

    def finish(
        self,
        record_id: str,
        metrics: Mapping[str, Any],
        timings: Mapping[str, Any],
        env: Mapping[str, Any],
    ) -> None:
        """Mark a started run ``done`` with its results."""
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                """UPDATE runs SET status = 'done', metrics = ?, timings = ?, env = ?,
                   error = NULL, finished = ? WHERE id = ?""",
                (_dumps(metrics), _dumps(timings), _dumps(env), now, record_id),
            )
            if cur.rowcount != 1:
                raise ConfigError(f"run {record_id!r} was never started in {self.path}")
            self._event(c, record_id, "finish", now)

    def adopt(self, record: RunRecord) -> None:
        """Copy a finished run of another store into this one, as it was recorded there (its
        metrics, timings, environment and times); the log notes the adoption."""
        if record.status != "done":
            raise ConfigError(f"only finished runs are adopted; {record.id!r} is {record.status}")
        now = time.time()
        with self._write() as c:
            c.execute(
                """INSERT INTO runs (id, config, status, metrics, timings, env, error,
                                     attempts, started, finished)
                   VALUES (?, ?, 'done', ?, ?, ?, NULL, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE SET
                       config = excluded.config, status = 'done', metrics = excluded.metrics,
                       timings = excluded.timings, env = excluded.env, error = NULL,
                       attempts = excluded.attempts, started = excluded.started,
                       finished = excluded.finished""",
                (
                    record.id,
                    _dumps(record.config),
                    _dumps(record.metrics),
                    _dumps(record.timings),
                    _dumps(record.env),
                    record.attempts,
                    record.started,
                    record.finished,
                ),
            )
            self._event(c, record.id, "adopt", now)

    def fail(self, record_id: str, error: str) -> None:
        """Mark a started run ``failed`` with its error message."""
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "UPDATE runs SET status = 'failed', error = ?, finished = NULL WHERE id = ?",
                (str(error), record_id),
            )
            if cur.rowcount != 1:
                raise ConfigError(f"run {record_id!r} was never started in {self.path}")
            self._event(c, record_id, "fail", now)

    # ---------------------------------------------------------------- reads

    def get(self, record_id: str) -> RunRecord | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (record_id,))
        found = row.fetchone()
        return None if found is None else self._record(found)

    def records(self, status: str | None = None) -> list[RunRecord]:
        """Every record (or those with ``status``), by id."""
        if status is None:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM runs ORDER BY id")
        else:
            if status not in STATUSES:
                raise ConfigError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE status = ? ORDER BY id", (status,)
            )
        return [self._record(r) for r in rows.fetchall()]

    def done_ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT id FROM runs WHERE status = 'done'")}

    def events(self, run_id: str | None = None) -> list[Event]:
        """The log, oldest first (of one run, or of all)."""
        query = "SELECT run_id, event, time, pid FROM events"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            query, args = query + " WHERE run_id = ?", (run_id,)
        return [Event(*r) for r in self._conn.execute(query + " ORDER BY seq", args).fetchall()]

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        rid, config, status, metrics, timings, env, error, attempts, started, finished = row
        return RunRecord(
            id=rid,
            config=json.loads(config),
            status=status,
            metrics=json.loads(metrics),
            timings=json.loads(timings),
            env=json.loads(env),
            error=error,
            attempts=int(attempts),
            started=float(started),
            finished=None if finished is None else float(finished),
            shard=str(self.path),
        )


_COLUMNS = "id, config, status, metrics, timings, env, error, attempts, started, finished"


def _dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(_plain(obj), sort_keys=True)


def _plain(obj: Any) -> Any:
    """JSON-able copy: numpy / torch scalars become numbers, tuples lists; anything else that
    JSON cannot hold is refused."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item"):
        return _plain(obj.item())
    raise ConfigError(f"cannot store {type(obj).__name__} value {obj!r}: not JSON-able")


# ---------------------------------------------------------------------------------- shards


def shard_path(store_path: str | os.PathLike[str], rank: int, world: int) -> Path:
    """The file rank ``rank`` of ``world`` writes: ``results.sqlite`` ->
    ``results.rank1-of-2.sqlite`` when ``world > 1``, ``store_path`` itself otherwise."""
    path = Path(store_path)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, world) with world >= 1, got rank {rank} of {world}")
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}")


def _files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(path.glob("*.sqlite"))
            if not found:
                raise ConfigError(f"folder {path} holds no result stores (*.sqlite)")
            out.extend(found)
        elif path.exists():
            out.append(path)
        else:
            raise ConfigError(f"result store {path} does not exist")
    return list(dict.fromkeys(out))


def load_records(paths: Sequence[str | os.PathLike[str]]) -> list[RunRecord]:
    """The records of one or more stores (a folder stands for every ``*.sqlite`` in it, sorted),
    merged: one record per run id, a ``done`` one winning over any other, then the latest."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    best: dict[str, RunRecord] = {}
    for path in _files(paths):
        with Store(path, create=False) as store:
            for rec in store.records():
                old = best.get(rec.id)
                if old is None or _rank(rec) > _rank(old):
                    best[rec.id] = rec
    return [best[k] for k in sorted(best)]


def _rank(rec: RunRecord) -> tuple[bool, float, float]:
    return (rec.status == "done", rec.finished or 0.0, rec.started)
