"""Retention: prune keeps the file bounded, cheaply, and the /metrics counters survive it."""
import sqlite3

import pytest

from appliance.lifecycle import State
from appliance.store import BOOT_FAILURE_COUNT, Store

DAY = 86400.0


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "appliance.db"))
    yield s
    s.close()


def test_counters_follow_transitions(store):
    store.add_worker("a", "local", "launch", now=1.0)
    store.transition("a", State.BOOTING, "launched", now=2.0)
    store.transition("a", State.FAILED, "boot timeout", now=3.0)
    store.add_worker("b", "burst", "launch", now=1.0)
    store.event("cloud", "disabled", cloud="local", now=4.0)       # not a transition: not counted
    assert store.event_counts() == {("local", "requested"): 1, ("local", "booting"): 1, ("local", "failed"): 1,
                                    ("local", BOOT_FAILURE_COUNT): 1,      # it failed before joining
                                    ("burst", "requested"): 1}


def test_counters_survive_pruning(store):
    for i in range(5):
        store.add_worker(f"w{i}", "local", "launch", now=1.0)
        store.transition(f"w{i}", State.BOOTING, "launched", now=2.0)
        store.transition(f"w{i}", State.RETIRED, "cancelled", now=3.0)
    before = store.event_counts()
    assert before[("local", "booting")] == 5
    removed = store.prune(now=100 * DAY)
    assert removed == {"events": 15, "workers": 5}
    assert store.events() == [] and store.workers(live_only=False) == []
    assert store.event_counts() == before


def test_old_events_go_first(store):
    for t in (1.0, 2.0, 3.0):
        store.event("admin", f"at {t}", now=t * DAY)
    assert store.prune(now=4.5 * DAY, event_days=2.0, max_events=None, worker_days=None) == {
        "events": 2, "workers": 0}
    assert [e["reason"] for e in store.events()] == ["at 3.0"]


def test_then_the_oldest_beyond_max_events(store):
    for i in range(10):
        store.event("admin", f"e{i}", now=100.0 + i)
    assert store.prune(now=200.0, event_days=30.0, max_events=4) == {"events": 6, "workers": 0}
    assert [e["reason"] for e in store.events()] == ["e6", "e7", "e8", "e9"]
    assert store.prune(now=200.0, max_events=4) == {"events": 0, "workers": 0}
    assert store.prune(now=200.0, max_events=0)["events"] == 4


def test_max_events_with_gaps_in_ids(store):
    """Ids with holes (events pruned by age out of order) are still counted right."""
    for i, t in enumerate((5.0, 1.0, 5.0, 1.0, 5.0, 5.0)):
        store.event("admin", f"e{i}", now=t * DAY)
    assert store.prune(now=10 * DAY, event_days=7.0, max_events=None)["events"] == 2
    assert store.prune(now=10 * DAY, event_days=None, max_events=4)["events"] == 0
    assert store.prune(now=10 * DAY, event_days=None, max_events=3)["events"] == 1
    assert [e["reason"] for e in store.events()] == ["e2", "e4", "e5"]


def test_only_long_ended_workers_go(store):
    for wid, to, at in (("old-retired", State.RETIRED, 1.0), ("old-failed", State.FAILED, 1.0),
                        ("new-failed", State.FAILED, 9.0), ("old-live", State.BOOTING, 1.0)):
        store.add_worker(wid, "local", "launch", now=0.5 * DAY)
        store.transition(wid, to, "x", now=at * DAY)
    assert store.prune(now=10 * DAY, event_days=None, max_events=None, worker_days=5.0) == {
        "events": 0, "workers": 2}
    assert [w.id for w in store.workers(live_only=False)] == ["new-failed", "old-live"]
    assert len(store.events(limit=100)) == 8      # worker rows and events are pruned independently


def test_nothing_to_do_is_cheap(store):
    for i in range(50):
        store.event("admin", "x", now=1000.0 + i)
    assert store.prune(now=1000.0 + DAY) == {"events": 0, "workers": 0}
    plan = " ".join(r[-1] for r in store.db.execute(
        "EXPLAIN QUERY PLAN DELETE FROM events WHERE time < ?", (0.0,)))
    assert "INDEX events_time" in plan
    plan = " ".join(r[-1] for r in store.db.execute(
        "EXPLAIN QUERY PLAN DELETE FROM workers WHERE state IN ('retired', 'failed') AND state_since < ?", (0.0,)))
    assert "INDEX workers_state_since" in plan


def test_prune_is_one_transaction(tmp_path):
    path = str(tmp_path / "appliance.db")
    s = Store(path)
    for i in range(3):
        s.event("admin", "x", now=float(i))
    statements = []
    s.db.set_trace_callback(statements.append)
    assert s.prune(now=100 * DAY)["events"] == 3
    s.db.set_trace_callback(None)
    assert [q for q in statements if q.split()[0] in ("BEGIN", "COMMIT", "ROLLBACK")] == [
        "BEGIN IMMEDIATE", "COMMIT"]
    other = sqlite3.connect(path)
    assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    other.close()
    s.close()


def test_metrics_counters_after_pruning(store):
    """The /metrics text still shows the totals once the events behind them are gone."""
    from prometheus_client.parser import text_string_to_metric_families

    from appliance.config import loads
    from appliance.web.metrics import render
    store.add_worker("a", "local", "launch", now=1.0)
    store.transition("a", State.BOOTING, "launched", now=2.0)
    store.transition("a", State.RETIRED, "drained", now=3.0)
    store.prune(now=100 * DAY)
    text = render(store, loads("clouds: [{name: local, type: local}]")).decode()
    samples = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("appliance_worker_launches_total", (("cloud", "local"),))] == 1
    assert samples[("appliance_worker_retirements_total", (("cloud", "local"),))] == 1
