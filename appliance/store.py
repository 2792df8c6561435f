"""SQLite (WAL) state: workers, their events, runtime cloud settings and health.

The daemon is the only writer of workers and health; the CLIs and the web app
write runtime settings (enable, disable, max_workers) and operator requests,
which the daemon picks up on its next cycle. Every worker transition is
written together with its event row, in one transaction.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from . import lifecycle
from .config import Config
from .lifecycle import State
from .model import CloudHealth, Worker

DEFAULT_PATH = "/var/lib/appliance/state/appliance.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    cloud TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    state_since REAL NOT NULL,
    resource_id TEXT NOT NULL DEFAULT '',
    condor_name TEXT NOT NULL DEFAULT '',
    last_seen REAL NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS workers_state ON workers(state);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    worker_id TEXT,
    cloud TEXT,
    from_state TEXT,
    to_state TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_settings (
    name TEXT PRIMARY KEY,
    enabled INTEGER,
    max_workers INTEGER,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cloud_health (
    name TEXT PRIMARY KEY,
    backoff_until REAL NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at REAL NOT NULL DEFAULT 0,
    breaker_open INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    worker_id TEXT NOT NULL,
    now INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL
);
"""

# upper bounds (seconds) of the scheduler cycle duration histogram; counts are cumulative
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_WORKER_COLS = "id, cloud, state, created_at, state_since, resource_id, condor_name, last_seen, reason"


class Store:
    def __init__(self, path: str | None = None):
        self.path = path or os.environ.get("APPLIANCE_DB") or DEFAULT_PATH
        # the daemon (root) and the web app (group appliance) share these files,
        # including the -wal and -shm files SQLite creates on the fly
        os.umask(0o007)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        _group_writable(self.path)
        self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        with self.tx():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so writers never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ workers
    def add_worker(self, worker_id: str, cloud: str, reason: str, now: float | None = None) -> Worker:
        now = time.time() if now is None else now
        lifecycle.check(None, State.REQUESTED)
        with self.tx() as db:
            db.execute("INSERT INTO workers (id, cloud, state, created_at, state_since, reason) "
                       "VALUES (?, ?, ?, ?, ?, ?)", (worker_id, cloud, State.REQUESTED.value, now, now, reason))
            self._event(db, now, "worker", reason, worker_id, cloud, None, State.REQUESTED.value)
        return self.worker(worker_id)

    def transition(self, worker_id: str, to: State, reason: str, now: float | None = None,
                   resource_id: str | None = None) -> Worker:
        now = time.time() if now is None else now
        with self.tx() as db:
            row = db.execute(f"SELECT {_WORKER_COLS} FROM workers WHERE id = ?", (worker_id,)).fetchone()
            if row is None:
                raise KeyError(worker_id)
            current = State(row["state"])
            lifecycle.check(current, to)
            db.execute("UPDATE workers SET state = ?, state_since = ?, reason = ?, "
                       "resource_id = COALESCE(?, resource_id) WHERE id = ?",
                       (to.value, now, reason, resource_id, worker_id))
            self._event(db, now, "worker", reason, worker_id, row["cloud"], current.value, to.value)
        return self.worker(worker_id)

    def mark_seen(self, seen: dict[str, str], now: float) -> None:
        if not seen:
            return
        with self.tx() as db:
            db.executemany("UPDATE workers SET condor_name = ?, last_seen = ? WHERE id = ?",
                           [(name, now, wid) for wid, name in seen.items()])

    def worker(self, worker_id: str) -> Worker | None:
        row = self.db.execute(f"SELECT {_WORKER_COLS} FROM workers WHERE id = ?", (worker_id,)).fetchone()
        return _worker(row) if row else None

    def workers(self, live_only: bool = True) -> list[Worker]:
        if live_only:
            states = tuple(s.value for s in lifecycle.LIVE)
            q = f"SELECT {_WORKER_COLS} FROM workers WHERE state IN ({','.join('?' * len(states))}) ORDER BY created_at"
            rows = self.db.execute(q, states)
        else:
            rows = self.db.execute(f"SELECT {_WORKER_COLS} FROM workers ORDER BY created_at")
        return [_worker(r) for r in rows]

    def recent_workers(self, since: float) -> list[Worker]:
        """Live workers plus those that ended after `since` (for status pages)."""
        states = tuple(s.value for s in lifecycle.LIVE)
        rows = self.db.execute(
            f"SELECT {_WORKER_COLS} FROM workers WHERE state IN ({','.join('?' * len(states))}) "
            "OR state_since >= ? ORDER BY created_at", (*states, since))
        return [_worker(r) for r in rows]

    # ------------------------------------------------------------ events
    def event(self, kind: str, reason: str, worker_id: str | None = None, cloud: str | None = None,
              now: float | None = None) -> None:
        with self.tx() as db:
            self._event(db, time.time() if now is None else now, kind, reason, worker_id, cloud, None, None)

    @staticmethod
    def _event(db, now, kind, reason, worker_id, cloud, from_state, to_state) -> None:
        db.execute("INSERT INTO events (time, kind, worker_id, cloud, from_state, to_state, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (now, kind, worker_id, cloud, from_state, to_state, reason))

    def events(self, since_id: int = 0, limit: int = 100, worker_id: str | None = None) -> list[dict]:
        """Events after `since_id`, oldest first; without since_id, the newest `limit`."""
        where, args = ["id > ?"], [since_id]
        if worker_id:
            where.append("worker_id = ?")
            args.append(worker_id)
        order = "ASC" if since_id else "DESC"
        rows = self.db.execute(f"SELECT * FROM events WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?",
                               (*args, limit)).fetchall()
        out = [dict(r) for r in rows]
        return out if since_id else out[::-1]

    # ------------------------------------------------------------ clouds
    def set_cloud(self, name: str, *, enabled: bool | None = None, max_workers: int | None = None,
                  now: float | None = None, actor: str = "operator") -> None:
        now = time.time() if now is None else now
        with self.tx() as db:
            db.execute("INSERT INTO cloud_settings (name, updated_at) VALUES (?, ?) "
                       "ON CONFLICT(name) DO NOTHING", (name, now))
            if enabled is not None:
                db.execute("UPDATE cloud_settings SET enabled = ?, updated_at = ? WHERE name = ?",
                           (int(enabled), now, name))
                if enabled:   # re-enabling is how an operator resets a tripped breaker
                    db.execute("UPDATE cloud_health SET breaker_open = 0, failures = 0, backoff_until = 0 "
                               "WHERE name = ?", (name,))
                self._event(db, now, "cloud", f"{'enabled' if enabled else 'disabled'} by {actor}",
                            None, name, None, None)
            if max_workers is not None:
                db.execute("UPDATE cloud_settings SET max_workers = ?, updated_at = ? WHERE name = ?",
                           (max_workers, now, name))
                self._event(db, now, "cloud", f"max_workers set to {max_workers} by {actor}",
                            None, name, None, None)

    def cloud_health(self, cfg: Config) -> list[CloudHealth]:
        """Each configured cloud: the file's settings overlaid with runtime ones and health."""
        settings = {r["name"]: r for r in self.db.execute("SELECT * FROM cloud_settings")}
        health = {r["name"]: r for r in self.db.execute("SELECT * FROM cloud_health")}
        out = []
        for c in cfg.clouds:
            s, h = settings.get(c.name), health.get(c.name)
            out.append(CloudHealth(
                name=c.name,
                enabled=bool(s["enabled"]) if s is not None and s["enabled"] is not None else c.enabled,
                max_workers=s["max_workers"] if s is not None and s["max_workers"] is not None else c.max_workers,
                backoff_until=h["backoff_until"] if h else 0.0,
                failures=h["failures"] if h else 0,
                last_error=h["last_error"] if h else "",
                last_error_at=h["last_error_at"] if h else 0.0,
                breaker_open=bool(h["breaker_open"]) if h else False,
            ))
        return out

    def save_health(self, h: CloudHealth) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO cloud_health (name, backoff_until, failures, last_error, last_error_at, "
                       "breaker_open) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "backoff_until = excluded.backoff_until, failures = excluded.failures, "
                       "last_error = excluded.last_error, last_error_at = excluded.last_error_at, "
                       "breaker_open = excluded.breaker_open",
                       (h.name, h.backoff_until, h.failures, h.last_error, h.last_error_at, int(h.breaker_open)))

    # ------------------------------------------------------------ operator requests
    def request_kill(self, worker_ids: Iterable[str], now_flag: bool, now: float | None = None,
                     actor: str = "operator") -> None:
        now = time.time() if now is None else now
        with self.tx() as db:
            for wid in worker_ids:
                db.execute("INSERT INTO requests (time, worker_id, now) VALUES (?, ?, ?)", (now, wid, int(now_flag)))
                how = "removal without draining" if now_flag else "drain and removal"
                self._event(db, now, "admin", f"{how} requested by {actor}", wid, None, None, None)

    def pending_kills(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for r in self.db.execute("SELECT worker_id, now FROM requests ORDER BY id"):
            out[r["worker_id"]] = out.get(r["worker_id"], False) or bool(r["now"])
        return out

    def clear_kills(self, worker_ids: Iterable[str]) -> None:
        ids = list(worker_ids)
        if ids:
            with self.tx() as db:
                db.executemany("DELETE FROM requests WHERE worker_id = ?", [(i,) for i in ids])

    # ------------------------------------------------------------ metrics
    def event_counts(self) -> dict[tuple[str, str], int]:
        """(cloud, to_state) -> how many transitions into that state ever: the
        source of the launch, failure and retirement counters."""
        rows = self.db.execute("SELECT cloud, to_state, COUNT(*) AS n FROM events WHERE kind = 'worker' "
                               "AND to_state IS NOT NULL GROUP BY cloud, to_state")
        return {(r["cloud"] or "", r["to_state"]): r["n"] for r in rows}

    def observe_cycle(self, seconds: float, now: float | None = None) -> None:
        """Add one scheduler cycle's duration to the cumulative histogram in kv."""
        now = time.time() if now is None else now
        with self.tx() as db:
            row = db.execute("SELECT value FROM kv WHERE key = 'cycle_histogram'").fetchone()
            h = json.loads(row["value"]) if row else None
            if not h or h.get("buckets") != list(CYCLE_BUCKETS):
                h = {"buckets": list(CYCLE_BUCKETS), "counts": [0] * len(CYCLE_BUCKETS), "count": 0, "sum": 0.0}
            for i, le in enumerate(CYCLE_BUCKETS):
                if seconds <= le:
                    h["counts"][i] += 1
            h["count"] += 1
            h["sum"] = round(h["sum"] + seconds, 6)
            db.execute("INSERT INTO kv (key, value, updated_at) VALUES ('cycle_histogram', ?, ?) "
                       "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                       (json.dumps(h), now))

    # ------------------------------------------------------------ small snapshots
    def put(self, key: str, value: Any, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.tx() as db:
            db.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = excluded.value, updated_at = excluded.updated_at", (key, json.dumps(value), now))

    def get(self, key: str, default: Any = None) -> tuple[Any, float]:
        row = self.db.execute("SELECT value, updated_at FROM kv WHERE key = ?", (key,)).fetchone()
        return (json.loads(row["value"]), row["updated_at"]) if row else (default, 0.0)


def _worker(row: sqlite3.Row) -> Worker:
    return Worker(id=row["id"], cloud=row["cloud"], state=State(row["state"]), created_at=row["created_at"],
                  state_since=row["state_since"], resource_id=row["resource_id"],
                  condor_name=row["condor_name"], last_seen=row["last_seen"], reason=row["reason"])


def _group_writable(path: str) -> None:
    """Make the database file (and its -wal/-shm) writable by the group.

    SQLite creates a new database with mode 0644 (less the umask), so the web
    app (user appliance, group appliance) could only read it. Creating the file
    first with 0660 fixes that; SQLite gives -wal and -shm the database file's
    mode. Files from an older install are opened up here by their owner.
    """
    if path == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o660))
    except OSError:
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            st = os.stat(name)
            if st.st_uid == os.getuid() and st.st_mode & 0o060 != 0o060:
                os.chmod(name, (st.st_mode | 0o060) & 0o7777)
        except OSError:
            pass
