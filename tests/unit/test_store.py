"""The SQLite store: transitions with their events, runtime settings that persist."""
import os
import stat

import pytest

from appliance.config import loads
from appliance.lifecycle import IllegalTransition, State
from appliance.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "db" / "appliance.db"))
    yield s
    s.close()


def test_each_transition_writes_one_event(store):
    store.add_worker("local-1", "local", "launch: 3 idle jobs", now=1.0)
    store.transition("local-1", State.BOOTING, "launched (pid:9)", now=2.0, resource_id="pid:9")
    store.transition("local-1", State.IDLE, "joined the pool", now=3.0)
    w = store.worker("local-1")
    assert (w.state, w.resource_id, w.state_since, w.reason) == (State.IDLE, "pid:9", 3.0, "joined the pool")
    ev = store.events(worker_id="local-1")
    assert [(e["from_state"], e["to_state"], e["reason"]) for e in ev] == [
        (None, "requested", "launch: 3 idle jobs"), ("requested", "booting", "launched (pid:9)"),
        ("booting", "idle", "joined the pool")]


def test_illegal_transition_changes_nothing(store):
    store.add_worker("w", "local", "x", now=1.0)
    with pytest.raises(IllegalTransition):
        store.transition("w", State.BUSY, "nope", now=2.0)
    assert store.worker("w").state is State.REQUESTED
    assert len(store.events(worker_id="w")) == 1


def test_live_and_recent_workers(store):
    for wid, to in (("a", State.FAILED), ("b", State.BOOTING)):
        store.add_worker(wid, "local", "x", now=1.0)
        store.transition(wid, to, "y", now=5.0)
    assert [w.id for w in store.workers()] == ["b"]
    assert [w.id for w in store.recent_workers(since=4.0)] == ["a", "b"]
    assert [w.id for w in store.recent_workers(since=6.0)] == ["b"]


def test_runtime_cloud_settings_survive_reopen(tmp_path):
    cfg = loads("clouds: [{name: local, type: local, max_workers: 2}, {name: d, type: docker, enabled: false}]")
    path = str(tmp_path / "a.db")
    s = Store(path)
    s.set_cloud("local", enabled=False)
    s.set_cloud("d", enabled=True, max_workers=7)
    s.close()
    s = Store(path)
    h = {x.name: x for x in s.cloud_health(cfg)}
    assert (h["local"].enabled, h["local"].max_workers) == (False, 2)
    assert (h["d"].enabled, h["d"].max_workers) == (True, 7)
    assert [e["reason"] for e in s.events()][-3:] == ["disabled by operator", "enabled by operator",
                                                      "max_workers set to 7 by operator"]


def test_reenabling_resets_an_open_breaker(store):
    from appliance.model import CloudHealth
    cfg = loads("clouds: [{name: local, type: local}]")
    store.save_health(CloudHealth("local", True, 2, backoff_until=99.0, failures=5, last_error="x", breaker_open=True))
    store.set_cloud("local", enabled=True)
    h = store.cloud_health(cfg)[0]
    assert not h.breaker_open and h.failures == 0 and h.backoff_until == 0


def test_kill_requests(store):
    store.request_kill(["a", "b"], now_flag=False)
    store.request_kill(["b"], now_flag=True)
    assert store.pending_kills() == {"a": False, "b": True}
    store.clear_kills(["a", "b"])
    assert store.pending_kills() == {}


def test_kv(store):
    assert store.get("demand", []) == ([], 0.0)
    store.put("demand", [{"count": 3}], now=5.0)
    assert store.get("demand") == ([{"count": 3}], 5.0)


def test_bootstrap_shares_a_db_that_a_cli_made_before_it(tmp_path):
    # `docker exec appliance cloud_status` right at start can create the DB before bootstrap
    # runs: root's files in root's directory, which the web app (group appliance) cannot open
    from appliance.bootstrap import share_state_db
    state = tmp_path / "state"
    s = Store(str(state / "appliance.db"))
    s.event("test", "one write, so the -wal and -shm exist")
    for f in state.iterdir():
        os.chmod(f, 0o600)
    share_state_db(str(state), (os.getuid(), os.getgid()))
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in state.iterdir()}
    assert modes == {"appliance.db": 0o660, "appliance.db-wal": 0o660, "appliance.db-shm": 0o660}, modes
    s.close()
