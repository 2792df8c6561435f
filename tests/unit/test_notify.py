"""Webhook notifications: the config, which events are news, the body, the retry schedule,
and delivery to a real HTTP receiver in this process (one failure, then the retry)."""
from __future__ import annotations

import http.server
import json
import logging
import threading
import time

import pytest

from appliance import notify, outcomes, reload
from appliance.config import NOTIFICATION_EVENTS, ConfigError, Webhook, loads
from appliance.model import SPOT_INTERRUPTION
from appliance.store import Store
from tests.unit.test_daemon import Rig, group

SECRET = "s3cr3t-token-value"
URL_SECRET = "T0KEN-IN-THE-PATH"


# ------------------------------------------------------------------ config

def test_webhooks_are_read_with_their_defaults():
    cfg = loads(f"""
notifications:
  webhooks:
    - url: https://hooks.example.org/services/{URL_SECRET}
      headers: {{Authorization: "Bearer {SECRET}"}}
    - {{url: "http://127.0.0.1:9000/x", events: [breaker_open, boot_failed], timeout: 3, name: lab}}
""")
    first, second = cfg.notifications.webhooks
    assert first.events == NOTIFICATION_EVENTS and first.timeout == 10 and dict(first.headers) == {
        "Authorization": f"Bearer {SECRET}"}
    assert first.label == "hooks.example.org" and second.label == "lab"
    assert second.events == ("breaker_open", "boot_failed") and second.timeout == 3
    # secrets never in a repr (a log line or a traceback that prints the config)
    assert SECRET not in repr(cfg) and URL_SECRET not in repr(cfg)


def test_no_notifications_by_default():
    assert loads("").notifications.webhooks == ()


@pytest.mark.parametrize("text,errors", [
    ("notifications: {webhook: []}", [("notifications.webhook", "unknown key (known keys here: webhooks)")]),
    ("notifications: {webhooks: {url: x}}", [("notifications.webhooks", "expected a list of webhooks")]),
    ("notifications: {webhooks: [{events: [breaker_open]}]}", [("notifications.webhooks[0].url", "is required")]),
    (f"notifications: {{webhooks: [{{url: 'ftp://h/{URL_SECRET}'}}]}}",
     [("notifications.webhooks[0].url", "must be an http:// or https:// URL, got 'ftp://...'")]),
    (f"notifications: {{webhooks: [{{url: 'hooks.example.org/{URL_SECRET}'}}]}}",
     [("notifications.webhooks[0].url", "must be an http:// or https:// URL, got a value without a scheme")]),
    ("notifications: {webhooks: [{url: 'https://h/x', events: [breaker_open, boot_failure]}]}",
     [("notifications.webhooks[0].events[1]", "must be one of breaker_open, budget_reached, unschedulable, "
                                              "boot_failed, got 'boot_failure'")]),
    ("notifications: {webhooks: [{url: 'https://h/x', events: []}]}",
     [("notifications.webhooks[0].events", "is empty")]),
    (f"notifications: {{webhooks: [{{url: 'https://h/x', headers: {{X-Token: ['{SECRET}']}}}}]}}",
     [("notifications.webhooks[0].headers.X-Token", "expected a one-line string (the value is not shown")]),
    ("notifications: {webhooks: [{url: 'https://h/x', headers: {Content-Type: text/plain}}]}",
     [("notifications.webhooks[0].headers.Content-Type", "is set by the appliance")]),
    # every problem, in every webhook, at once
    (f"notifications: {{webhooks: [{{url: 'https://h/x', timeout: 0, bogus: 1}}, 7, "
     f"{{url: 'https://h/y', headers: {{Authorization: \"a\\nb{SECRET}\"}}}}]}}",
     [("notifications.webhooks[0].bogus", "unknown key"),
      ("notifications.webhooks[0].timeout", "must be a number from 1 to 120, got 0"),
      ("notifications.webhooks[1]", "expected a mapping with at least a url"),
      ("notifications.webhooks[2].headers.Authorization", "expected a one-line string")]),
    ("notifications: {webhooks: [{url: 'https://h/x', name: a}, {url: 'https://h/y', name: a}]}",
     [("notifications.webhooks[1].name", "duplicate webhook name 'a'")]),
])
def test_bad_webhooks_are_reported_every_one_without_their_secrets(text, errors):
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert [(p, q[:len(want)]) for (p, q), (_, want) in zip(err.value.errors, errors)] == errors, err.value.errors
    assert len(err.value.errors) == len(errors)
    assert SECRET not in str(err.value) and URL_SECRET not in str(err.value)


# ------------------------------------------------------------------ which events are news

def ev(kind, reason, to_state=None, from_state=None, **kw):
    return {"id": 7, "time": 1_700_000_000.0, "kind": kind, "reason": reason, "from_state": from_state,
            "to_state": to_state, "cloud": kw.get("cloud"), "worker_id": kw.get("worker_id")}


@pytest.mark.parametrize("event,name", [
    (ev("cloud", "breaker open after 5 quick failures: no launches until re-enabled (quota)"), "breaker_open"),
    (ev("cloud", "backing off 20s: quota"), None),
    (ev("cloud", "enabled by operator"), None),
    (ev("demand", "unschedulable: 3 idle job(s): no configured cloud can run it (local: ...)"), "unschedulable"),
    (ev("demand", "budget: max_per_hour 5.00 reached (4.90/h now, +0.17/h): 2 idle job(s) wait"),
     "budget_reached"),
    (ev("worker", "launch failed: quota", "failed", "requested"), "boot_failed"),
    (ev("worker", "not joined after 600s", "failed", "booting"), "boot_failed"),
    (ev("worker", f"{SPOT_INTERRUPTION}: reclaimed", "failed", "booting"), None),
    (ev("worker", "vanished while busy", "failed", "busy"), None),
    (ev("worker", "launched", "booting", "requested"), None),
    (ev("scheduler", "schedd unreachable"), None),
    (ev("notify", "webhook x: gave up on event 3 (breaker_open)"), None),     # never a loop
])
def test_which_events_are_notifications(event, name):
    assert notify.notification(event) == name


def test_the_breaker_note_is_the_breaker_notification():
    from appliance.model import CloudHealth
    (note,) = outcomes.health_notes(CloudHealth("c", True, 1), CloudHealth("c", True, 1, failures=5,
                                                                             breaker_open=True), 0.0)
    assert notify.notification(ev(note.kind, note.event_text)) == "breaker_open"


def row(key, status, reason="", count=1):
    return {"key": key, "status": status, "reason": reason, "count": count}


def test_a_group_is_news_once_when_it_becomes_unschedulable():
    bad = row("a", "unschedulable", "no configured cloud can run it (local: needs 64 cpus)", 3)
    (note,) = outcomes.demand_notes([], [bad])
    assert note.kind == "demand" and note.event_text == ("unschedulable: 3 idle job(s): no configured cloud "
                                                         "can run it (local: needs 64 cpus)")
    assert notify.notification(ev(note.kind, note.event_text)) == "unschedulable"
    assert outcomes.demand_notes([bad], [{**bad, "count": 4}]) == []          # still so: no news
    assert outcomes.demand_notes([row("a", "waiting")], [bad]) != []          # became so again
    assert outcomes.demand_notes([bad], [row("a", "served")]) == []


def test_a_budget_cap_is_news_once_when_it_begins_to_stop_launches():
    why = "budget: docker max_per_hour 2.00 reached (1.90/h now, +0.17/h)"
    waiting = row("a", "waiting", f"2 job(s) without a worker: {why}; max_booting 10 reached", 2)
    (note,) = outcomes.demand_notes([], [waiting, row("b", "served")])
    assert note.event_text == f"{why}: 2 idle job(s) wait" and note.cloud == "docker"
    assert notify.notification(ev(note.kind, note.event_text)) == "budget_reached"
    again = row("a", "waiting", "2 job(s) without a worker: budget: docker max_per_hour 2.00 reached "
                                "(1.95/h now, +0.17/h)", 2)
    assert outcomes.demand_notes([waiting], [again]) == []        # the figures moved, the cap is the same
    glob = row("c", "waiting", "1 job(s) without a worker: budget: max_per_day 60.00 reached (59.00 in the last "
                               "24 h, 1.00/h now, +0.17/h)")
    (note,) = outcomes.demand_notes([waiting], [waiting, glob])
    assert note.event_text.startswith("budget: max_per_day 60.00 reached") and note.cloud is None


def test_the_daemon_records_an_unschedulable_group_once_across_cycles_and_restarts(tmp_path):
    rig = Rig(tmp_path)
    try:
        rig.condor.groups = (group(2, cpus=64, key="huge"),)

        def news():
            return [e for e in rig.store.events(limit=1000) if e["kind"] == "demand"]
        rig.cycle()
        (first,) = news()
        assert notify.notification(first) == "unschedulable"
        rig.cycle()
        rig.restart()
        rig.cycle()
        assert len(news()) == 1
        rig.condor.schedd_down = True       # an unreadable queue is no news
        rig.cycle()
        rig.condor.schedd_down = False
        rig.cycle()
        assert len(news()) == 1
        rig.condor.groups = ()              # the jobs went, then came again: news again
        rig.cycle()
        rig.condor.groups = (group(2, cpus=64, key="huge"),)
        rig.cycle()
        assert len(news()) == 2
    finally:
        rig.daemon.pool.shutdown(wait=True)
        rig.store.close()


# ------------------------------------------------------------------ the body and the schedule

def test_the_body_has_the_documented_fields():
    event = ev("cloud", "breaker open after 5 quick failures: no launches until re-enabled (quota)", cloud="ec2")
    b = notify.body(event, "breaker_open", "lab-pool")
    assert b == {"schema": 1, "appliance": "lab-pool", "event": "breaker_open", "id": 7,
                 "time": "2023-11-14T22:13:20Z", "kind": "cloud", "cloud": "ec2", "worker": None,
                 "reason": event["reason"],
                 "text": f"[lab-pool] cloud breaker open (cloud ec2): {event['reason']}"}
    json.dumps(b)


def test_the_retry_delays_double_up_to_a_cap():
    assert notify.delays() == [1, 2, 4, 8]
    assert notify.delays(8, 1, 10) == [1, 2, 4, 8, 10, 10, 10]
    assert notify.delays(1) == []


@pytest.mark.parametrize("status,again", [(None, True), (500, True), (503, True), (429, True), (408, True),
                                          (400, False), (401, False), (404, False), (302, False)])
def test_what_is_retried(status, again):
    assert notify.retryable(status) is again


def test_errors_are_scrubbed_of_secrets():
    hook = Webhook(f"https://h.example/{URL_SECRET}", headers={"Authorization": f"Bearer {SECRET}"})
    assert notify.redact(f"<urlopen error https://h.example/{URL_SECRET}: Bearer {SECRET}>", hook) == \
        "<urlopen error ***: ***>"


# ------------------------------------------------------------------ delivery to a real receiver

class Receiver:
    """An HTTP server on 127.0.0.1 answering each POST with the next status in `answers` (then 200)."""

    def __init__(self, answers=(500,)):
        self.answers = list(answers)
        self.requests: list[tuple[dict, dict]] = []     # (headers, body)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append((dict(self.headers), json.loads(data)))
                status = outer.answers.pop(0) if outer.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook/{URL_SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def hook_to(receiver, **kw):
    return Webhook(receiver.url, headers={"Authorization": f"Bearer {SECRET}"}, timeout=5, **kw)


def test_a_failed_delivery_is_retried_after_a_backoff_and_no_secret_is_logged(receiver, caplog):
    caplog.set_level(logging.DEBUG)
    waited, counted = [], []
    payload = notify.body(ev("cloud", "breaker open after 5 quick failures", cloud="ec2"), "breaker_open", "p")
    result = notify.deliver(hook_to(receiver), payload, sleep=lambda s: bool(waited.append(s)),
                            counted=counted.append)
    assert result == notify.Delivery(True, 2)
    assert waited == [1.0] and counted == ["failed", "delivered"]
    assert len(receiver.requests) == 2
    headers, got = receiver.requests[1]
    assert got == payload and headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["Content-Type"] == "application/json"
    assert "attempt 1 of 5 failed (HTTP 500), retrying in 1 s" in caplog.text
    assert "delivered (attempt 2)" in caplog.text and "webhook 127.0.0.1:" in caplog.text
    assert SECRET not in caplog.text and URL_SECRET not in caplog.text


def test_a_refusal_is_not_retried_and_a_dead_receiver_is_given_up(receiver, caplog):
    receiver.answers = [404]
    counted = []
    result = notify.deliver(hook_to(receiver), {"id": 1, "event": "boot_failed"}, sleep=lambda s: False,
                            counted=counted.append)
    assert result == notify.Delivery(False, 1, "HTTP 404") and counted == ["failed", "given_up"]
    dead = Webhook(f"http://127.0.0.1:1/{URL_SECRET}", headers={"X-Key": SECRET}, timeout=2)
    result = notify.deliver(dead, {"id": 2, "event": "boot_failed"}, sleep=lambda s: False, attempts=3)
    assert not result.delivered and result.attempts == 3 and "Connection refused" in result.error
    assert "given up after 3 attempt(s)" in caplog.text
    assert SECRET not in caplog.text and URL_SECRET not in caplog.text


def test_a_redirect_is_not_followed_with_the_secret_headers(receiver):
    receiver.answers = [302]
    result = notify.deliver(hook_to(receiver), {"id": 1, "event": "boot_failed"}, sleep=lambda s: False)
    assert not result.delivered and result.attempts == 1 and len(receiver.requests) == 1


def test_a_follower_sends_what_its_webhook_chose_once_and_resumes_after_a_restart(receiver, tmp_path, caplog):
    path = str(tmp_path / "state.db")
    store = Store(path)
    store.event("cloud", "breaker open after 5 quick failures: old news", cloud="old")   # before the webhook
    hook = hook_to(receiver, events=("breaker_open", "boot_failed"))
    stopping = threading.Event()
    follower = notify.Follower(hook, "lab", path, stopping, poll=0.01, first_delay=0.0)
    cursor = follower.start(store)
    store.event("cloud", "breaker open after 5 quick failures: quota", cloud="ec2")
    store.event("demand", "unschedulable: 1 idle job(s): no configured cloud can run it")    # not chosen
    store.event("scheduler", "schedd unreachable")
    cursor, more = follower.step(store, cursor)
    assert not more
    assert [b["event"] for _, b in receiver.requests] == ["breaker_open", "breaker_open"]   # a 500, then 200
    assert receiver.requests[1][1]["cloud"] == "ec2"
    assert store.get(notify.COUNTS_KEY)[0] == {"failed": 1, "delivered": 1}
    # a restart: the stored cursor, not the history and not the newest
    store.event("worker", "launch failed: quota", "w1", "ec2")
    with store.tx() as db:
        db.execute("UPDATE events SET from_state = 'requested', to_state = 'failed' WHERE reason LIKE 'launch%'")
    again = notify.Follower(hook, "lab", path, stopping, poll=0.01, first_delay=0.0)
    cursor = again.start(store)
    again.step(store, cursor)
    assert [b["event"] for _, b in receiver.requests][2:] == ["boot_failed"]
    assert SECRET not in caplog.text and URL_SECRET not in caplog.text
    store.close()


def test_giving_up_is_an_event(tmp_path):
    path = str(tmp_path / "state.db")
    store = Store(path)
    hook = Webhook(f"http://127.0.0.1:1/{URL_SECRET}", timeout=1, name="lab")
    follower = notify.Follower(hook, "lab", path, threading.Event(), first_delay=0.0)
    cursor = follower.start(store)
    store.event("cloud", "breaker open after 5 quick failures: quota", cloud="ec2")
    follower.step(store, cursor)
    (gave_up,) = [e for e in store.events(limit=10) if e["kind"] == "notify"]
    assert gave_up["reason"].startswith("webhook lab: gave up on event ") and URL_SECRET not in gave_up["reason"]
    assert store.get(notify.COUNTS_KEY)[0] == {"failed": 5, "given_up": 1}
    store.close()


def test_a_changed_file_restarts_the_followers_and_an_unchanged_one_does_not(tmp_path, receiver):
    path = str(tmp_path / "state.db")
    Store(path).close()
    notifier = notify.Notifier(path, threading.Event())
    try:
        cfg = loads(f"notifications: {{webhooks: [{{url: '{receiver.url}', name: a}}]}}")
        notifier.apply(cfg)
        (first,) = notifier.threads
        notifier.apply(loads(f"notifications: {{webhooks: [{{url: '{receiver.url}', name: a}}]}}"))
        assert notifier.threads == [first]                   # the same webhooks: left running
        notifier.apply(loads(f"notifications: {{webhooks: [{{url: '{receiver.url}', name: b}}]}}"))
        assert not first.is_alive() and len(notifier.threads) == 1 and notifier.threads[0].name == "notify-b"
        notifier.apply(loads(""))
        assert notifier.threads == []
    finally:
        notifier.stop_followers()


def test_the_webhooks_followed_are_those_of_the_version_the_scheduler_runs(tmp_path, receiver, caplog):
    """The file's webhooks (the store keeps no secrets), but only in the version the scheduler
    recorded: an edited file changes them once it is reloaded (cloud_admin --reload)."""
    caplog.set_level(logging.INFO)
    path, conf = str(tmp_path / "state.db"), tmp_path / "appliance.yaml"
    store = Store(path)

    def hook(name: str) -> str:
        return (f"notifications: {{webhooks: [{{url: '{receiver.url}', name: {name}, "
                f"headers: {{X-Token: {SECRET}}}}}]}}\n")

    def followers(expected: list[str]) -> list[str]:
        """The follower threads' names once they are `expected` (or after 10 s, as they are)."""
        deadline = time.monotonic() + 10
        while True:
            names = sorted(th.name for th in threading.enumerate() if th.name.startswith("notify-"))
            if names == expected or time.monotonic() > deadline:
                return names
            time.sleep(0.02)

    conf.write_text(hook("first"))
    stopping = threading.Event()
    t = threading.Thread(target=notify.run, args=(stopping, str(conf), path, 0.02))
    t.start()
    try:
        assert followers(["notify-first"]) == ["notify-first"]     # nothing recorded yet: the file's
        reload.record_active(store, loads(hook("first"), str(conf)), hook("first"))
        conf.write_text(hook("edited"))                              # edited, not reloaded
        deadline = time.monotonic() + 10
        while "is not the version the scheduler runs" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "is not the version the scheduler runs" in caplog.text
        assert followers(["notify-first"]) == ["notify-first"]
        reload.record_active(store, loads(hook("edited"), str(conf)), hook("edited"))    # reloaded
        assert followers(["notify-edited"]) == ["notify-edited"]
        assert SECRET not in caplog.text and SECRET not in json.dumps(reload.active_record(store))
    finally:
        stopping.set()
        t.join(10)
        store.close()


def test_the_recorded_configuration_keeps_no_webhook_secret():
    text = (f"# the lab's hooks\nnotifications:\n  webhooks:\n    - url: https://hooks.example/{URL_SECRET}\n"
            f"      headers: {{X-Token: {SECRET}}}\n      name: lab\n")
    kept = reload.recordable(loads(text), text)
    assert SECRET not in kept and URL_SECRET not in kept
    (hook,) = loads(kept).notifications.webhooks                # still a valid configuration
    assert hook.name == "lab" and hook.url == reload.REDACTED_URL and not hook.headers
    plain = "clouds: [{name: local, type: local}]   # a comment\n"
    assert reload.recordable(loads(plain), plain) == plain      # nothing to hide: the file as it is
