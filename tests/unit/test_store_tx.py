"""Re-entrant transactions (one write transaction per daemon cycle) and file modes without a umask."""
import os
import sqlite3
import stat

import pytest

from appliance.lifecycle import IllegalTransition, State
from appliance.model import CloudHealth
from appliance.store import Store
from appliance.web import auth


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "appliance.db")


@pytest.fixture
def store(path):
    s = Store(path)
    yield s
    s.close()


def committed(path, sql):
    """What another process (the web app) sees: only committed data."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def trace(store):
    statements = []
    store.db.set_trace_callback(statements.append)
    return statements


def tx_statements(statements):
    return [q for q in statements if q.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")]


def every_write(store):
    store.add_worker("w1", "local", "launch", now=1.0)
    store.transition("w1", State.BOOTING, "launched", now=2.0, resource_id="pid:1")
    store.mark_seen({"w1": "slot1@w1"}, now=3.0)
    store.mark_last_seen({"w1": 3.5})
    store.event("admin", "note", now=3.0)
    store.put("demand", [1], now=3.0)
    store.save_health(CloudHealth("local", True, 2, failures=1))
    store.observe_cycle(0.1, now=3.0)
    store.request_kill(["w1"], now_flag=False, now=3.0)
    store.clear_kills(["w1"])
    store.set_cloud("local", max_workers=3, now=3.0)
    store.prune(now=3.0)
    auth.note_failure(store, "1.2.3.4", now=3.0)


def test_writes_inside_tx_join_one_transaction(store, path):
    statements = trace(store)
    with store.tx():
        every_write(store)
        # inside, this connection sees its own writes; others see nothing yet
        assert store.worker("w1").state is State.BOOTING
        assert committed(path, "SELECT COUNT(*) FROM events") == [(0,)]
    store.db.set_trace_callback(None)
    assert tx_statements(statements) == ["BEGIN IMMEDIATE", "COMMIT"]
    assert committed(path, "SELECT id, state FROM workers") == [("w1", "booting")]
    assert store.event_counts() == {("local", "requested"): 1, ("local", "booting"): 1}


def test_exception_rolls_back_the_outermost_transaction(store, path):
    store.put("before", 1, now=0.5)
    with pytest.raises(RuntimeError):
        with store.tx():
            every_write(store)
            raise RuntimeError("cycle failed")
    assert committed(path, "SELECT key FROM kv") == [("before",)]
    assert committed(path, "SELECT COUNT(*) FROM events") == [(0,)]
    assert store.event_counts() == {}
    store.put("after", 2)               # and the store is usable again
    assert store.get("after")[0] == 2


def test_exception_from_a_joined_write_rolls_back_everything(store, path):
    with pytest.raises(KeyError):
        with store.tx():
            store.add_worker("w1", "local", "launch", now=1.0)
            store.transition("nope", State.BOOTING, "x")
    assert committed(path, "SELECT COUNT(*) FROM workers") == [(0,)]


def test_a_caught_failure_undoes_only_its_own_writes(store, path):
    """A joined block runs in a savepoint: the daemon can log a failed step and go on."""
    store.add_worker("w1", "local", "launch", now=1.0)
    with store.tx():
        store.put("kept", 1)
        with pytest.raises(ValueError):
            with store.tx() as db:
                db.execute("INSERT INTO kv (key, value, updated_at) VALUES ('undone', '1', 0)")
                raise ValueError("step failed")
        with pytest.raises(IllegalTransition):
            store.transition("w1", State.BUSY, "not from requested")
        store.transition("w1", State.BOOTING, "launched")
    assert committed(path, "SELECT key FROM kv ORDER BY key") == [("kept",)]
    assert committed(path, "SELECT state FROM workers") == [("booting",)]
    assert store.event_counts() == {("local", "requested"): 1, ("local", "booting"): 1}


def test_tx_alone_still_commits_each_call(store, path):
    statements = trace(store)
    store.put("a", 1)
    store.put("b", 2)
    store.db.set_trace_callback(None)
    assert tx_statements(statements) == ["BEGIN IMMEDIATE", "COMMIT"] * 2
    assert committed(path, "SELECT COUNT(*) FROM kv") == [(2,)]


# ------------------------------------------------------------------ file modes

def test_store_leaves_the_umask_alone(tmp_path):
    old = os.umask(0o022)
    try:
        Store(str(tmp_path / "new" / "appliance.db")).close()
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(old)


def test_files_are_group_writable_under_a_strict_umask(tmp_path):
    """The web app (group appliance) writes the daemon's (root's) files, -wal and -shm included."""
    directory = tmp_path / "state" / "db"
    old = os.umask(0o077)
    try:
        s = Store(str(directory / "appliance.db"))
        s.put("x", 1)
        modes = {name: stat.S_IMODE(os.stat(directory / name).st_mode)
                 for name in ("appliance.db", "appliance.db-wal", "appliance.db-shm")}
        s.close()
    finally:
        os.umask(old)
    assert modes == dict.fromkeys(modes, 0o660)
    assert stat.S_IMODE(os.stat(directory).st_mode) & 0o777 == 0o770
    assert os.stat(directory).st_mode & stat.S_ISGID    # new files keep the directory's group


def test_an_existing_directory_keeps_its_mode(tmp_path):
    os.chmod(tmp_path, 0o755)
    Store(str(tmp_path / "appliance.db")).close()
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755
