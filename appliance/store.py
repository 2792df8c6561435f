"""SQLite (WAL) state: workers, their events, runtime cloud settings and health.

The daemon is the only writer of workers and health; the CLIs and the web app
write runtime settings (enable, disable, max_workers) and operator requests,
which the daemon picks up on its next cycle. Every worker transition is
written together with its event row, in one transaction.

The file outlives releases, so its layout is versioned (PRAGMA user_version) and
moved forward by MIGRATIONS when a newer release first opens it. It is also kept
bounded: `prune` drops old events and long-ended workers, while the transition
counters behind /metrics live in their own table and survive pruning; the pool's
history (appliance.history) keeps six hours of one-minute buckets and no more.

Opening a file checks it before writing anything: one from a newer release
(SchemaTooNew), one that is not an SQLite database, is damaged, or holds another
program's tables (StoreUnusable) is refused with a message that says what to do,
and is left exactly as it was. It is never reset or "repaired" silently.
"""
from __future__ import annotations

import functools
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from . import lifecycle
from .config import Config
from .lifecycle import State
from .model import SPOT_INTERRUPTION, CloudHealth, ShapeHealth, Worker
from .stats import Boot

DEFAULT_PATH = "/var/lib/appliance/state/appliance.db"

# Version 1: the layout of the releases before schema versions existed (their
# databases say user_version 0). Frozen: change the layout with a new migration,
# never by editing this text, or databases made by older releases would differ
# from new ones.
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


def _v1_base_schema(db: sqlite3.Connection) -> None:
    """The original tables; IF NOT EXISTS makes this a no-op on a pre-versioning database."""
    _run(db, SCHEMA)


# transition_counts' key (in to_state) of the failures that were spot interruptions
SPOT_COUNT = "spot-interruption"
# ... and of the failures of workers that never joined the pool (from requested or booting:
# a launch error, a boot timeout, vanished while booting), spot interruptions apart
BOOT_FAILURE_COUNT = "boot-failure"


def _v2_transition_counts(db: sqlite3.Connection) -> None:
    """Counters of worker transitions by (cloud, to_state), kept next to the events.

    /metrics used to count the events table on every scrape, which grows without
    bound and would lose counts once old events are pruned. The counters are
    backfilled from the events already there (a NULL cloud counts as '').
    """
    _run(db, """
    CREATE TABLE IF NOT EXISTS transition_counts (
        cloud TEXT NOT NULL,
        to_state TEXT NOT NULL,
        n INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (cloud, to_state)
    );
    INSERT INTO transition_counts (cloud, to_state, n)
        SELECT COALESCE(cloud, ''), to_state, COUNT(*) FROM events
        WHERE kind = 'worker' AND to_state IS NOT NULL
        GROUP BY COALESCE(cloud, ''), to_state
    """)


def _v3_retention_indexes(db: sqlite3.Connection) -> None:
    """Indexes that keep `prune` cheap: events by time, ended workers by age.

    workers(state, state_since) serves every query workers(state) did, so the
    narrower index goes (one index less to update on each transition).
    """
    _run(db, """
    CREATE INDEX IF NOT EXISTS events_time ON events(time);
    CREATE INDEX IF NOT EXISTS workers_state_since ON workers(state, state_since);
    DROP INDEX IF EXISTS workers_state
    """)


def _v4_worker_shape(db: sqlite3.Connection) -> None:
    """Each worker's shape: the name of one of its cloud's shapes (config `shapes:`),
    which sizes it until it joins and matches it against jobs' Requirements.

    Workers recorded before shapes get '': the scheduler counts them as their cloud's
    only shape (a cloud with one `worker:`, as every cloud was then), else its smallest.
    """
    _run(db, "ALTER TABLE workers ADD COLUMN shape TEXT NOT NULL DEFAULT ''")


def _v5_worker_image(db: sqlite3.Connection) -> None:
    """Each worker's image: the name of one of its cloud's images (config `images:`), which
    jobs asking for an image are placed by. Workers recorded before images get '': their
    cloud's default image, the only one there was."""
    _run(db, "ALTER TABLE workers ADD COLUMN image TEXT NOT NULL DEFAULT ''")


def _v6_history(db: sqlite3.Connection) -> None:
    """The pool over time (appliance.history): per time bucket, each series' value (idle jobs,
    running jobs, workers per state and per cloud, spend per hour). One row per bucket and
    series, so a cycle's sample is one upsert that keeps the larger value, and a new series
    (a cloud added) needs no new column. Bounded: buckets older than history.WINDOW go."""
    _run(db, """
    CREATE TABLE IF NOT EXISTS history (
        bucket INTEGER NOT NULL,
        series TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (bucket, series)
    ) WITHOUT ROWID
    """)


# MIGRATIONS[i] takes a database from version i to version i + 1. Append only;
# never edit or reorder a released step. All pending steps run in one
# transaction when a Store opens the file, so an upgrade happens entirely or not
# at all.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _v1_base_schema,
    _v2_transition_counts,
    _v3_retention_indexes,
    _v4_worker_shape,
    _v5_worker_image,
    _v6_history,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(sqlite3.DatabaseError):
    """The state database cannot be used by this release; the file was left unchanged.

    A sqlite3.DatabaseError, so what already reports database errors reports
    these too (the CLIs: exit 4, "cannot open the appliance state: ...").
    """

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class SchemaTooNew(StoreError):
    """The database was written by a newer release; this code must not touch it."""

    def __init__(self, path: str, found: int, known: int):
        super().__init__(path, f"{path}: database schema version {found} is newer than this release's "
                               f"version {known}; run a release that knows version {found} (the file was left "
                               "unchanged)")
        self.found, self.known = found, known


# What an operator does about a file that is not a usable appliance database.
MOVE_ASIDE = ("move it aside, with its -wal and -shm files if there are any (e.g. `mv appliance.db "
              "appliance.db.broken`), and restart the appliance: it then starts with an empty state. The job "
              "queue, the pool key and /home are kept (they are not in this file); cloud settings changed at "
              "runtime go back to appliance.yaml; workers still running are found again as orphans and removed, "
              "and their jobs run again")
CHECK_ACCESS = ("check that it is a regular file the appliance may read and write: owner root, group appliance, "
                "mode 0660, in a directory of group appliance with mode 2770 (bootstrap makes "
                "/var/lib/appliance/state so)")


class StoreUnusable(StoreError):
    """Not an SQLite file, a damaged one, or another program's database: refused, never reset."""

    def __init__(self, path: str, problem: str, advice: str = MOVE_ASIDE):
        super().__init__(path, f"{path}: {problem}. The file was left unchanged. To go on, {advice}.")
        self.problem, self.advice = problem, advice


# upper bounds (seconds) of the scheduler cycle duration histogram; counts are cumulative
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_WORKER_COLS = "id, cloud, state, created_at, state_since, resource_id, condor_name, last_seen, reason, shape, image"


class Store:
    def __init__(self, path: str | None = None, check_pages: bool = True):
        """check_pages=False skips quick_check's read of every page: for a process that
        reopens a file it has already checked (the web app opens one per request)."""
        self.path = path or os.environ.get("APPLIANCE_DB") or DEFAULT_PATH
        self._depth = 0          # how many tx() blocks are open on this connection
        # The daemon (root) and the web app (group appliance) share these files.
        # No umask change here: that is process-wide and would leak into whatever
        # else the caller creates. The modes are set explicitly instead: the
        # directory below, the database file in _group_writable, and SQLite gives
        # the -wal and -shm files the database file's mode itself.
        _check_file(self.path)
        directory = os.path.dirname(self.path)
        if directory:
            _make_dir(directory)
        _group_writable(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreUnusable(self.path, f"SQLite cannot open it ({err})", CHECK_ACCESS) from None
        try:
            self.db.row_factory = sqlite3.Row
            # refuse a newer, damaged or foreign file before anything (even the journal mode) is written
            self._check_usable(check_pages)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=10000")
            self._migrate()
        except BaseException:
            self.db.close()
            raise

    def _check_usable(self, check_pages: bool = True) -> None:
        """Raise SchemaTooNew or StoreUnusable for a file this code must not touch; reads only.

        One read transaction, so a migration another process commits meanwhile is
        seen whole or not at all. quick_check reads every page (a few ms for a
        full-size file, 100 000 events) and finds truncation and broken pages
        that the first reads alone would not meet.
        """
        self.db.execute("BEGIN")
        try:
            version = self._version()
            self._check_version(version)
            found = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")] if check_pages else ["ok"]
            if found != ["ok"]:
                raise StoreUnusable(self.path, f"it is damaged (SQLite's check found: {_clip('; '.join(found))})")
            problem = _layout_problem(version, _tables(self.db))
            if problem:
                raise StoreUnusable(self.path, problem)
        except StoreError:
            raise
        except sqlite3.DatabaseError as err:
            problem = _unreadable(err)
            if problem is None:      # busy, locked, I/O: not a verdict on the file
                raise
            raise StoreUnusable(self.path, problem) from None
        finally:
            try:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(self.path, version, SCHEMA_VERSION)

    def _migrate(self) -> None:
        """Bring the file to SCHEMA_VERSION, all steps in one transaction.

        An up-to-date file costs one read and no write lock, so every web thread
        can open its own Store cheaply. The version is read again under the
        write lock: when the daemon and the web app open an old file together,
        one migrates and the other then finds nothing to do.
        """
        if self._version() == SCHEMA_VERSION:
            return
        with self.tx() as db:
            version = self._version()
            self._check_version(version)
            for step in MIGRATIONS[version:]:
                step(db)
            if version != SCHEMA_VERSION:
                db.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so writers never deadlock.

        Re-entrant: a tx() inside an open tx() of this Store joins it, so a caller
        can make several writes (the daemon's whole record step) one transaction
        and one fsync; nothing is committed before the outermost block ends, and
        an exception that leaves it rolls everything back. A joined block runs in
        a savepoint, so an exception it raises and the caller catches undoes only
        that block's writes, as if it had been a transaction of its own.
        """
        if self._depth:
            name = f"tx{self._depth}"
            self.db.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self.db
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute(f"ROLLBACK TO {name}")
                    self.db.execute(f"RELEASE {name}")
                raise
            else:
                self.db.execute(f"RELEASE {name}")
            finally:
                self._depth -= 1
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            # SQLite may already have rolled back (e.g. disk full); a second
            # ROLLBACK would hide the real error
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # ------------------------------------------------------------ workers
    def add_worker(self, worker_id: str, cloud: str, reason: str, now: float | None = None,
                   shape: str = "", image: str = "") -> Worker:
        now = time.time() if now is None else now
        lifecycle.check(None, State.REQUESTED)
        with self.tx() as db:
            db.execute("INSERT INTO workers (id, cloud, state, created_at, state_since, reason, shape, image) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (worker_id, cloud, State.REQUESTED.value, now, now, reason, shape, image))
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

    def mark_last_seen(self, times: Mapping[str, float]) -> None:
        """When workers were last seen in the collector (never moved back in time)."""
        if not times:
            return
        with self.tx() as db:
            db.executemany("UPDATE workers SET last_seen = ? WHERE id = ? AND last_seen < ?",
                           [(t, wid, t) for wid, t in times.items()])

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
        """Append an event; a worker transition also bumps its counter, in the same transaction."""
        db.execute("INSERT INTO events (time, kind, worker_id, cloud, from_state, to_state, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (now, kind, worker_id, cloud, from_state, to_state, reason))
        if kind == "worker" and to_state is not None:
            db.execute("INSERT INTO transition_counts (cloud, to_state, n) VALUES (?, ?, 1) "
                       "ON CONFLICT(cloud, to_state) DO UPDATE SET n = n + 1", (cloud or "", to_state))
            if to_state == "failed" and (reason or "").startswith(SPOT_INTERRUPTION):
                # a counter of its own, in the same table under a key no state has
                db.execute("INSERT INTO transition_counts (cloud, to_state, n) VALUES (?, ?, 1) "
                           "ON CONFLICT(cloud, to_state) DO UPDATE SET n = n + 1", (cloud or "", SPOT_COUNT))
            elif to_state == "failed" and from_state in ("requested", "booting"):
                db.execute("INSERT INTO transition_counts (cloud, to_state, n) VALUES (?, ?, 1) "
                           "ON CONFLICT(cloud, to_state) DO UPDATE SET n = n + 1", (cloud or "", BOOT_FAILURE_COUNT))

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

    def boots(self, since: float) -> list[Boot]:
        """Each worker launched since `since`, and how its start ended: its one transition
        out of requested/booting other than to booting (joined, failed or cancelled), from
        the events; none yet while it starts, or when that event was pruned."""
        ends = {r["worker_id"]: r for r in self.db.execute(
            "SELECT worker_id, time, to_state, reason FROM events WHERE kind = 'worker' AND time >= ? "
            "AND from_state IN ('requested', 'booting') AND to_state != 'booting'", (since,))}
        out = []
        for r in self.db.execute("SELECT id, cloud, created_at FROM workers WHERE created_at >= ? "
                                 "ORDER BY created_at", (since,)):
            end = ends.get(r["id"])
            out.append(Boot(r["id"], r["cloud"], r["created_at"], end["time"] if end else None,
                            end["to_state"] if end else None, end["reason"] if end else ""))
        return out

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

    def clear_cloud_settings(self, names: Iterable[str], now: float | None = None,
                             actor: str = "operator") -> list[str]:
        """Drop the runtime settings (enabled, max_workers) of these clouds, so the file's values
        apply again (a reload that resets overrides, a removed cloud); returns the clouds that had some."""
        now = time.time() if now is None else now
        cleared = []
        with self.tx() as db:
            for name in names:
                if db.execute("DELETE FROM cloud_settings WHERE name = ? AND (enabled IS NOT NULL OR "
                              "max_workers IS NOT NULL)", (name,)).rowcount:
                    cleared.append(name)
                    self._event(db, now, "cloud", f"runtime settings cleared by {actor}: the file's apply",
                                None, name, None, None)
                db.execute("DELETE FROM cloud_settings WHERE name = ?", (name,))
        return cleared

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

    def shape_health(self) -> dict[tuple[str, str], ShapeHealth]:
        """Shapes backing off after a capacity error (or that did, until they launch again)."""
        rows, _ = self.get("shape_health", [])
        return {(r["cloud"], r["shape"]): ShapeHealth(**r) for r in rows or []}

    def save_shape_health(self, shapes: Mapping[tuple[str, str], ShapeHealth]) -> None:
        self.put("shape_health", [asdict(h) for h in shapes.values()])

    # ------------------------------------------------------------ operator requests
    def request_kill(self, worker_ids: Iterable[str], now_flag: bool, now: float | None = None,
                     actor: str = "operator", retire: bool = False) -> None:
        """A drain and removal (retire: the same, asked as `cloud_admin -o`), or with now_flag a
        removal without draining, for the daemon's next cycle."""
        now = time.time() if now is None else now
        how = ("removal without draining" if now_flag else
               "retirement after the running jobs" if retire else "drain and removal")
        with self.tx() as db:
            for wid in worker_ids:
                db.execute("INSERT INTO requests (time, worker_id, now) VALUES (?, ?, ?)", (now, wid, int(now_flag)))
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
        source of the launch, failure and retirement counters.

        Read from transition_counts, a handful of rows, not by counting the
        events table on every scrape; and unlike events it is never pruned, so
        the counters stay monotonic as Prometheus expects."""
        rows = self.db.execute("SELECT cloud, to_state, n FROM transition_counts")
        return {(r["cloud"], r["to_state"]): r["n"] for r in rows}

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

    # ------------------------------------------------------------ retention
    def prune(self, now: float, event_days: float | None = 30.0, max_events: int | None = 100_000,
              worker_days: float | None = 30.0) -> dict[str, int]:
        """Keep the file bounded; returns {"events": removed, "workers": removed}.

        Drops events older than `event_days`, then the oldest beyond the newest
        `max_events`, and ended (retired/failed) workers whose state_since is
        older than `worker_days`. None disables a limit. One transaction. With
        nothing to remove it costs a few index look-ups, so it may run often.
        The transition counters are not touched: /metrics keeps its totals.
        """
        removed = {"events": 0, "workers": 0}
        with self.tx() as db:
            if event_days is not None:
                removed["events"] += db.execute("DELETE FROM events WHERE time < ?",
                                                (now - event_days * 86400,)).rowcount
            if max_events is not None:
                removed["events"] += self._cap_events(db, max(int(max_events), 0))
            if worker_days is not None:
                ended = tuple(s.value for s in lifecycle.ENDED)
                removed["workers"] += db.execute(
                    f"DELETE FROM workers WHERE state IN ({','.join('?' * len(ended))}) AND state_since < ?",
                    (*ended, now - worker_days * 86400)).rowcount
        return removed

    @staticmethod
    def _cap_events(db: sqlite3.Connection, keep: int) -> int:
        """Delete all but the newest `keep` events (by id, i.e. insertion order)."""
        bounds = db.execute("SELECT MIN(id), MAX(id) FROM events").fetchone()
        if bounds[0] is None or bounds[1] - bounds[0] + 1 <= keep:
            # ids only grow, so the id span bounds the row count: nothing to do,
            # known from the two ends of the primary key without counting rows
            return 0
        if keep == 0:
            return db.execute("DELETE FROM events").rowcount
        return db.execute("DELETE FROM events WHERE id <= "
                          "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)", (keep,)).rowcount

    # ------------------------------------------------------------ the pool over time
    def live_counts(self) -> list[tuple[str, str, str, int]]:
        """(cloud, shape, state, how many) of the live workers: counted by SQLite on the
        (state, state_since) index, without building a row per worker."""
        states = tuple(s.value for s in lifecycle.LIVE)
        rows = self.db.execute(f"SELECT cloud, shape, state, COUNT(*) FROM workers WHERE state IN "
                               f"({','.join('?' * len(states))}) GROUP BY cloud, shape, state", states)
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def record_history(self, bucket: int, sample: Mapping[str, float]) -> None:
        """Add a sample to its bucket: each series keeps the larger of its stored value and this one."""
        with self.tx() as db:
            db.executemany("INSERT INTO history (bucket, series, value) VALUES (?, ?, ?) "
                           "ON CONFLICT(bucket, series) DO UPDATE SET value = MAX(value, excluded.value)",
                           [(bucket, name, value) for name, value in sample.items()])

    def history(self, since: float = 0) -> list[tuple[int, str, float]]:
        """(bucket, series, value) of the buckets that start at or after `since`, oldest first."""
        rows = self.db.execute("SELECT bucket, series, value FROM history WHERE bucket >= ? ORDER BY bucket",
                               (since,))
        return [(r[0], r[1], r[2]) for r in rows]

    def prune_history(self, before: float) -> int:
        """Drop the buckets that start before `before`; how many rows went."""
        with self.tx() as db:
            return db.execute("DELETE FROM history WHERE bucket < ?", (before,)).rowcount

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
    """A row selected as _WORKER_COLS, whose order is Worker's: read by position, which
    halves what building 10,000 of them costs every cycle (bench/workers.py)."""
    return Worker(row[0], row[1], State(row[2]), *row[3:])


def _tables(db: sqlite3.Connection) -> dict[str, frozenset[str]]:
    """table -> its column names, SQLite's own tables (sqlite_*) left out."""
    names = [r[0] for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
    return {n: frozenset(r[0] for r in db.execute("SELECT name FROM pragma_table_info(?)", (n,))) for n in names}


@functools.cache
def expected_tables(version: int) -> dict[str, frozenset[str]]:
    """The tables and columns of schema `version`, as MIGRATIONS[:version] make them."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for step in MIGRATIONS[:version]:
            step(db)
        return _tables(db)
    finally:
        db.close()


def _layout_problem(version: int, tables: dict[str, frozenset[str]]) -> str | None:
    """What makes these tables not the appliance's schema `version`, or None.

    Version 0 is a new, empty file or one of a release before schema versions
    (which made all of version 1's tables at once). Every table of the version
    must be there with exactly its columns; tables of no version of ours are
    left alone (they might be an operator's), unless they are all there is.
    """
    if version < 0:
        return f"its schema version is {version}, which no release of the appliance writes: it is another " \
               "program's database"
    if version == 0 and not tables:
        return None
    expected = expected_tables(max(version, 1))
    if not set(expected) & set(tables):
        return f"it holds none of the appliance's tables, only {_names(tables)}: it is another program's database"
    for name in expected:       # in the order the schema makes them: workers first
        if name in tables and tables[name] != expected[name]:
            return (f"its table {name} has the columns {_names(tables[name])}, not the appliance's "
                    f"{_names(expected[name])}: it is another program's database, or was changed by hand")
    missing = sorted(set(expected) - set(tables))
    if missing:
        return f"the appliance's tables {_names(missing)} are missing: it is damaged, or another program's database"
    return None


def _unreadable(err: sqlite3.DatabaseError) -> str | None:
    """What an SQLite error says about the file itself, or None if it says nothing (busy, I/O, ...)."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err)
    if name == "SQLITE_NOTADB" or "not a database" in text:
        return f"it is not an SQLite database (SQLite: {text})"
    if name.startswith("SQLITE_CORRUPT") or "malformed" in text:
        return f"it is damaged, e.g. truncated or overwritten (SQLite: {text})"
    return None


def _names(names: Iterable[str]) -> str:
    return _clip(", ".join(sorted(names)), 200)


def _clip(text: str, limit: int = 300) -> str:
    """One line (SQLite's reports span several), at most `limit` characters."""
    text = " ".join(text.replace("*** in database main ***", "").split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_file(path: str) -> None:
    """Refuse a directory or other non-file where the database should be, before creating anything."""
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return              # a new install: created next
    except OSError as err:
        raise StoreUnusable(path, f"it cannot be examined ({err.strerror})", CHECK_ACCESS) from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreUnusable(path, "it is a directory, not a database file")
    if not stat.S_ISREG(st.st_mode):
        raise StoreUnusable(path, "it is not a regular file")


def _run(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated statements inside the open transaction.

    Not executescript: it COMMITs first, which would split a migration.
    """
    for stmt in script.split(";"):
        if stmt.strip():
            db.execute(stmt)


def _make_dir(directory: str, mode: int = 0o2770) -> None:
    """Create the database's directory shared by owner and group (setgid: new files keep its group).

    Explicit chmod, because makedirs' mode is filtered by the umask. A directory
    that already exists is left as it is (bootstrap creates the real one).
    """
    try:
        os.makedirs(directory, mode=mode)
    except FileExistsError:
        return
    try:
        os.chmod(directory, mode)
    except OSError:
        pass


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
