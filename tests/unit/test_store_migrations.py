"""Schema versions: a database made by the previous release opens, is upgraded in
place with its data intact, and a database from a newer release is refused untouched."""
import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from appliance import store as store_mod
from appliance.config import loads
from appliance.lifecycle import State
from appliance.store import SCHEMA_VERSION, SchemaTooNew, Store

V1_SQL = (Path(__file__).parent / "data" / "store_schema_v1.sql").read_text()


def make_v1_db(path):
    """A database as the release before schema versions left it (user_version 0)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(V1_SQL)
    db.executemany("INSERT INTO workers (id, cloud, state, created_at, state_since, resource_id, condor_name, "
                   "last_seen, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                       ("local-1", "local", "retired", 1.0, 4.0, "pid:9", "slot1@local-1", 3.5, "drained"),
                       ("local-2", "local", "idle", 2.0, 3.0, "pid:10", "slot1@local-2", 3.5, "joined"),
                       ("d-1", "d", "failed", 2.0, 5.0, "", "", 0.0, "boot timeout")])
    db.executemany("INSERT INTO events (time, kind, worker_id, cloud, from_state, to_state, reason) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?)", [
                       (1.0, "worker", "local-1", "local", None, "requested", "launch"),
                       (1.5, "worker", "local-1", "local", "requested", "booting", "launched"),
                       (2.0, "worker", "local-2", "local", None, "requested", "launch"),
                       (2.5, "worker", "local-2", "local", "requested", "booting", "launched"),
                       (3.0, "worker", "local-2", "local", "booting", "idle", "joined"),
                       (3.2, "worker", "local-1", "local", "booting", "idle", "joined"),
                       (4.0, "worker", "local-1", "local", "idle", "retired", "drained"),
                       (2.0, "worker", "d-1", "d", None, "requested", "launch"),
                       (5.0, "worker", "d-1", "d", "requested", "failed", "boot timeout"),
                       (5.1, "worker", "ghost", None, "booting", "failed", "vanished"),
                       (5.2, "cloud", None, "d", None, None, "disabled by operator"),
                       (5.3, "admin", "local-2", None, None, None, "drain and removal requested by operator"),
                       (5.4, "worker", "local-2", "local", None, None, "a worker note without a state")])
    db.execute("INSERT INTO cloud_settings (name, enabled, max_workers, updated_at) VALUES ('d', 0, 7, 5.2)")
    db.execute("INSERT INTO kv (key, value, updated_at) VALUES ('demand', '[{\"count\": 3}]', 5.0)")
    db.execute("INSERT INTO requests (time, worker_id, now) VALUES (5.3, 'local-2', 0)")
    db.commit()
    old_counts = {(r[0] or "", r[1]): r[2] for r in db.execute(
        "SELECT cloud, to_state, COUNT(*) FROM events WHERE kind = 'worker' AND to_state IS NOT NULL "
        "GROUP BY cloud, to_state")}
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return old_counts


def layout(path):
    db = sqlite3.connect(path)
    try:
        return sorted((r[0], r[1], r[2]) for r in db.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        db.close()


def test_previous_release_database_is_upgraded_with_its_data(tmp_path):
    path = str(tmp_path / "appliance.db")
    old_counts = make_v1_db(path)
    s = Store(path)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6

    # the old rows, as the old code would have read them
    assert [w.id for w in s.workers(live_only=False)] == ["local-1", "local-2", "d-1"]
    w = s.worker("local-1")
    assert (w.state, w.resource_id, w.condor_name, w.last_seen, w.reason) == (
        State.RETIRED, "pid:9", "slot1@local-1", 3.5, "drained")
    assert [w.id for w in s.workers()] == ["local-2"]
    assert len(s.events(limit=1000)) == 13
    assert [e["to_state"] for e in s.events(worker_id="local-1")] == ["requested", "booting", "idle", "retired"]
    cfg = loads("clouds: [{name: local, type: local}, {name: d, type: docker}]")
    h = {x.name: x for x in s.cloud_health(cfg)}
    assert (h["d"].enabled, h["d"].max_workers) == (False, 7)
    assert s.get("demand") == ([{"count": 3}], 5.0)
    assert s.pending_kills() == {"local-2": False}

    # the counters were backfilled from the events: the same numbers /metrics showed before
    assert s.event_counts() == old_counts
    assert s.event_counts()[("local", "booting")] == 2
    assert s.event_counts()[("", "failed")] == 1

    # and the new parts work: counters move with transitions, prune uses the new index
    s.transition("local-2", State.DRAINING, "drain", now=6.0)
    s.add_worker("d-2", "d", "launch", now=6.0)
    counts = s.event_counts()
    assert counts[("local", "draining")] == 1 and counts[("d", "requested")] == 2
    assert s.prune(now=6.0, event_days=None, max_events=None, worker_days=1.5 / 86400) == {
        "events": 0, "workers": 1}          # local-1, retired at 4.0; d-1 failed at 5.0 stays
    assert s.worker("local-1") is None and s.worker("d-1") is not None
    s.close()

    # reopening does not migrate (or backfill) again
    s = Store(path)
    assert s.event_counts() == counts
    s.close()


def test_fresh_and_upgraded_databases_have_the_same_layout(tmp_path):
    old, new = str(tmp_path / "old.db"), str(tmp_path / "new.db")
    make_v1_db(old)
    Store(old).close()
    Store(new).close()
    assert layout(old) == layout(new)
    names = {name for _, name, _ in layout(new)}
    assert {"transition_counts", "events_time", "workers_state_since"} <= names
    assert "workers_state" not in names


def test_migrations_run_in_order_one_transaction(tmp_path, monkeypatch):
    """A step that fails leaves the file exactly at its old version: no half upgrade."""
    path = str(tmp_path / "appliance.db")
    make_v1_db(path)
    before = layout(path)

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step 4 failed")
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, broken])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(store_mod.MIGRATIONS))
    with pytest.raises(RuntimeError, match="step 4 failed"):
        Store(path)
    assert layout(path) == before
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()

    monkeypatch.undo()
    s = Store(path)           # and the real steps still apply afterwards
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    s.close()


def test_intermediate_version_runs_only_the_missing_steps(tmp_path, monkeypatch):
    path = str(tmp_path / "appliance.db")
    make_v1_db(path)
    ran = []

    def on_the_file(db):     # Store also runs steps on an in-memory database, to know each version's tables
        return bool(db.execute("PRAGMA database_list").fetchone()[2])
    steps = [lambda db, f=f: (on_the_file(db) and ran.append(f.__name__), f(db)) for f in store_mod.MIGRATIONS]
    db = sqlite3.connect(path)
    store_mod.MIGRATIONS[0](db)
    store_mod.MIGRATIONS[1](db)
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", steps)
    Store(path).close()
    assert ran == ["_v3_retention_indexes", "_v4_worker_shape", "_v5_worker_image", "_v6_history"]


def make_v3_db(path):
    """A database as the release before shapes left it (schema version 3)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    for step in store_mod.MIGRATIONS[:3]:
        step(db)
    db.execute("INSERT INTO workers (id, cloud, state, created_at, state_since, resource_id, condor_name, "
               "last_seen, reason) VALUES ('docker-1', 'docker', 'busy', 1.0, 2.0, 'c0ffee', 'docker-1@h', 2.0, "
               "'running jobs in 1 slot(s)')")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()


def test_workers_of_the_release_before_shapes_get_no_shape_and_new_ones_keep_theirs(tmp_path):
    path = str(tmp_path / "appliance.db")
    make_v3_db(path)
    s = Store(path)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = s.worker("docker-1")
    assert (old.state, old.resource_id, old.shape) == (State.BUSY, "c0ffee", "")   # the scheduler sizes it by its cloud
    s.add_worker("docker-2", "docker", "launch", now=3.0, shape="big")
    s.transition("docker-2", State.BOOTING, "launched", now=4.0, resource_id="beef")
    assert [(w.id, w.shape) for w in s.workers()] == [("docker-1", ""), ("docker-2", "big")]
    assert s.recent_workers(0)[1].shape == "big"
    s.close()
    v3, fresh = str(tmp_path / "v3.db"), str(tmp_path / "fresh.db")
    make_v3_db(v3)
    Store(v3).close()
    Store(fresh).close()
    assert layout(v3) == layout(fresh)


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_newer_database_is_refused_and_left_unchanged(tmp_path, journal):
    path = str(tmp_path / "appliance.db")
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.execute("CREATE TABLE from_the_future (x)")
    db.commit()
    db.close()
    digest = _digest(path)
    with pytest.raises(SchemaTooNew) as err:
        Store(path)
    msg = str(err.value)
    assert path in msg and f"version {SCHEMA_VERSION + 1}" in msg and f"version {SCHEMA_VERSION}" in msg
    assert (err.value.found, err.value.known) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)
    assert _digest(path) == digest
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == journal
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    db.close()


def test_opening_a_current_database_takes_no_write_lock(tmp_path):
    """Each web thread opens its own Store: that must not wait behind the daemon's transaction."""
    path = str(tmp_path / "appliance.db")
    Store(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        s = Store(path)
        assert time.monotonic() - start < 2
        assert s.event_counts() == {}
        s.close()
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_daemon_and_web_opening_an_old_file_together_migrate_once(tmp_path):
    import threading
    path = str(tmp_path / "appliance.db")
    old_counts = make_v1_db(path)
    results, barrier = [], threading.Barrier(4)

    def open_it():
        barrier.wait()
        s = Store(path)
        results.append(s.event_counts())
        s.close()
    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [old_counts] * 4
