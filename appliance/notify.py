"""Webhook notifications: operators told, not only shown (notifications.webhooks).

    python3 -m appliance.notify        (a supervisord program of its own)

It follows the events table by id, outside the scheduler's process: a slow or dead
receiver delays notifications, never a scheduling cycle. For each event that is news an
operator chose (notification(): breaker_open, budget_reached, unschedulable, boot_failed)
it POSTs one JSON body (body()) to each webhook that wants it, retrying with exponential
backoff (delays()) and then giving up with one log line and one event.

Each webhook remembers the last event it handled in the store (kv 'notify_cursor:...'),
so a restart neither sends everything again nor loses what happened meanwhile; a webhook
seen for the first time starts at the newest event, not at the history. Delivery is at
least once: an event being retried when the process stops is sent again after it
(receivers may use its `id` to drop a repeat).

A webhook's URL (Slack's and Matrix's carry their token) and its headers' values are
secrets: logs, events and errors name a webhook by its `name` or the URL's host only,
and any error text is scrubbed of them (redact()).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from . import outcomes, reload
from .config import DEFAULT_PATH, Config, ConfigError, NotificationsConfig, Webhook
from .model import SPOT_INTERRUPTION
from .store import DEFAULT_PATH as STORE_PATH
from .store import Store, StoreError

log = logging.getLogger("appliance.notify")

SCHEMA = 1             # the body's "schema": raised only when a field changes meaning or goes
ATTEMPTS = 5           # per event and webhook: the first try and four retries...
FIRST_DELAY = 1.0      # ...after 1, 2, 4 and 8 seconds
MAX_DELAY = 60.0
POLL = 1.0             # seconds between looks at the events table when there was nothing new
CONFIG_POLL = 5.0      # seconds between looks at the configuration file for a change
BATCH = 100
COUNTS_KEY = "notify_counts"      # kv: {delivered, failed, given_up}, for /metrics
CURSOR_KEY = "notify_cursor:"     # + the webhook's id(): the last event id it handled
USER_AGENT = "htcondor-appliance-notify/1"


# ------------------------------------------------------------------ decide (pure)

def notification(event: Mapping) -> str | None:
    """The notification an event is, or None: most events are not news worth a message."""
    kind, reason = event.get("kind"), event.get("reason") or ""
    if kind == "cloud" and reason.startswith(outcomes.BREAKER_OPEN):
        return "breaker_open"
    if kind == "demand" and reason.startswith(outcomes.UNSCHEDULABLE):
        return "unschedulable"
    if kind == "demand" and reason.startswith(outcomes.BUDGET_REACHED):
        return "budget_reached"
    # a worker that never joined (as /metrics' appliance_worker_boot_failures counts them):
    # a launch error, a boot timeout, vanished while booting; a spot interruption is the
    # cloud taking back what it lent, not a failure to boot
    if (kind == "worker" and event.get("to_state") == "failed"
            and event.get("from_state") in ("requested", "booting") and not reason.startswith(SPOT_INTERRUPTION)):
        return "boot_failed"
    return None


TITLES = {"breaker_open": "cloud breaker open", "budget_reached": "budget reached",
          "unschedulable": "jobs unschedulable", "boot_failed": "worker failed to boot"}


def body(event: Mapping, name: str, pool: str) -> dict:
    """The JSON POSTed for one event (docs/operations.md, "Notifications (webhooks)").
    `text` is one line for people, so that Slack's and Mattermost's incoming webhooks
    show it as it is; the other fields are for programs."""
    when = datetime.fromtimestamp(event["time"], UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    where = " ".join(p for p in (f"cloud {event['cloud']}" if event.get("cloud") else "",
                                 f"worker {event['worker_id']}" if event.get("worker_id") else "") if p)
    return {
        "schema": SCHEMA,
        "appliance": pool,
        "event": name,
        "id": event["id"],
        "time": when,
        "kind": event["kind"],
        "cloud": event.get("cloud"),
        "worker": event.get("worker_id"),
        "reason": event.get("reason") or "",
        "text": f"[{pool}] {TITLES.get(name, name)}{f' ({where})' if where else ''}: {event.get('reason') or ''}",
    }


def delays(attempts: int = ATTEMPTS, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> list[float]:
    """The waits before each retry: doubling from `first`, never above `cap`."""
    return [min(first * 2 ** i, cap) for i in range(max(attempts - 1, 0))]


def retryable(status: int | None) -> bool:
    """Worth another attempt: no answer at all (None), a server error, 408 or 429. Any other
    refusal (400, 401, 404...) would only be refused again: it needs the operator."""
    return status is None or status >= 500 or status in (408, 429)


def redact(text: str, hook: Webhook) -> str:
    """An error's text without the webhook's secrets (urllib may quote the URL)."""
    for secret in sorted((hook.url, *hook.headers.values()), key=len, reverse=True):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def hook_id(hook: Webhook) -> str:
    """A stable key for a webhook's cursor that does not reveal its URL."""
    return hashlib.sha256(hook.url.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ act

@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str = ""       # the last attempt's, redacted


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a redirect would carry the secret headers to wherever it points: refused, not followed
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(hook: Webhook, payload: dict) -> int | None:
    """One attempt: the HTTP status, or raise OSError (no answer). Secrets go in the request only."""
    data = json.dumps(payload).encode()
    req = urllib.request.Request(hook.url, data=data, method="POST", headers={
        **hook.headers, "Content-Type": "application/json", "User-Agent": USER_AGENT})
    try:
        with _OPENER.open(req, timeout=hook.timeout) as resp:
            resp.read(65536)
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def deliver(hook: Webhook, payload: dict, sleep: Callable[[float], bool] = lambda s: bool(time.sleep(s)),
            send: Callable[[Webhook, dict], int | None] = post, attempts: int = ATTEMPTS,
            counted: Callable[[str], None] = lambda result: None, first_delay: float = FIRST_DELAY) -> Delivery:
    """POST until a 2xx, a refusal not worth retrying, or `attempts` tries. sleep(s) waits
    and returns True when the process is stopping (then no more attempts). One log line
    per failed attempt and one for the outcome; counted('delivered'|'failed'|'given_up')."""
    what = f"notify: webhook {hook.label}: event {payload['id']} ({payload['event']})"
    waits = delays(attempts, first_delay)
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            status = send(hook, payload)
            error = f"HTTP {status}"
        except (OSError, ValueError) as err:       # refused, timed out, unresolvable, bad TLS...
            status, error = None, redact(f"{type(err).__name__}: {err}", hook)
        if status is not None and 200 <= status < 300:
            counted("delivered")
            log.info("%s delivered%s", what, f" (attempt {attempt})" if attempt > 1 else "")
            return Delivery(True, attempt)
        counted("failed")
        if not retryable(status):
            log.warning("%s refused with %s: not retried (check the webhook's url and headers)", what, error)
            break
        if attempt == attempts:
            break
        log.warning("%s attempt %d of %d failed (%s), retrying in %.0f s", what, attempt, attempts, error,
                    waits[attempt - 1])
        if sleep(waits[attempt - 1]):
            log.info("%s: stopping; sent again after the restart", what)
            return Delivery(False, attempt, error)
    counted("given_up")
    log.error("%s given up after %d attempt(s): %s", what, attempt, error)
    return Delivery(False, attempt, error)


# ------------------------------------------------------------------ follow the events

class Follower:
    """One webhook's thread: its events, in order, each delivered or given up before the next."""

    def __init__(self, hook: Webhook, pool: str, store_path: str | None, stopping: threading.Event,
                 poll: float = POLL, first_delay: float = FIRST_DELAY):
        self.hook, self.pool, self.store_path, self.stopping, self.poll = hook, pool, store_path, stopping, poll
        self.first_delay = first_delay
        self.key = CURSOR_KEY + hook_id(hook)

    def run(self) -> None:
        store, cursor, failing = None, None, ""
        while not self.stopping.is_set():
            more = False
            try:
                if store is None:
                    store = Store(self.store_path, check_pages=False)     # SQLite connections are per thread
                if cursor is None:
                    cursor = self.start(store)
                cursor, more = self.step(store, cursor)
                failing = ""
            except (sqlite3.Error, OSError) as err:     # busy or locked: the next poll tries again
                if str(err) != failing:
                    failing = str(err)
                    log.warning("notify: webhook %s: cannot read the events now: %s", self.hook.label, err)
            if not more:
                self.stopping.wait(self.poll)
        if store is not None:
            store.close()

    def start(self, store: Store) -> int:
        cursor, _ = store.get(self.key)
        if cursor is None:      # new webhook: from now on, not the history
            newest = store.events(limit=1)
            cursor = newest[-1]["id"] if newest else 0
            store.put(self.key, cursor)
        log.info("notify: webhook %s: sending %s, after event %d", self.hook.label,
                 ", ".join(self.hook.events), cursor)
        return cursor

    def step(self, store: Store, cursor: int) -> tuple[int, bool]:
        """Handle the events after `cursor`: (the new cursor, whether there may be more)."""
        # since_id=0 would mean "the newest"; only an empty table at the start gives 0, and
        # then what arrived is all new (more than BATCH in one poll would lose the oldest)
        events = store.events(since_id=cursor, limit=BATCH)
        for event in events:
            if self.stopping.is_set():
                return cursor, False
            name = notification(event)
            if name in self.hook.events:
                result = deliver(self.hook, body(event, name, self.pool), sleep=self.stopping.wait,
                                 counted=lambda r: self.count(store, r), first_delay=self.first_delay)
                if not result.delivered and not self.stopping.is_set():
                    store.event("notify", f"webhook {self.hook.label}: gave up on event {event['id']} ({name}) "
                                          f"after {result.attempts} attempt(s): {result.error}")
                if self.stopping.is_set() and not result.delivered:
                    return cursor, False       # tried again after the restart
            cursor = event["id"]
            store.put(self.key, cursor)
        return cursor, len(events) == BATCH

    def count(self, store: Store, result: str) -> None:
        with store.tx():       # BEGIN IMMEDIATE: the webhooks' threads add to the same counters
            counts, _ = store.get(COUNTS_KEY, {})
            counts = dict(counts or {})
            counts[result] = counts.get(result, 0) + 1
            store.put(COUNTS_KEY, counts)


class Notifier:
    """The followers of the configured webhooks, restarted when the file's notifications change."""

    def __init__(self, store_path: str | None, stopping: threading.Event):
        self.store_path, self.stopping = store_path, stopping
        self.current: tuple[str, NotificationsConfig] | None = None
        self.halt = threading.Event()
        self.threads: list[threading.Thread] = []

    def apply(self, cfg: Config) -> None:
        wanted = (cfg.pool.name, cfg.notifications)
        if wanted == self.current:
            return
        self.stop_followers()
        self.current = wanted
        if not cfg.notifications.webhooks:
            log.info("notify: no webhooks configured (notifications.webhooks)")
            return
        self.halt = threading.Event()
        for hook in cfg.notifications.webhooks:
            f = Follower(hook, cfg.pool.name, self.store_path, self.halt)
            t = threading.Thread(target=f.run, name=f"notify-{hook.label}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop_followers(self) -> None:
        self.halt.set()
        for t in self.threads:
            t.join(timeout=130)        # at most one attempt's timeout
        self.threads = []


def _stat(path: str) -> tuple | None:
    try:
        st = os.stat(path)
        return st.st_mtime_ns, st.st_size, st.st_ino
    except OSError:
        return None


def _wanted(store: Store, path: str) -> tuple:
    """What decides the webhooks to follow: the version the scheduler runs (reload.py; None
    before it has recorded one, at a first start) and the file's identity."""
    rec = reload.active_record(store)
    return (rec.get("version") if rec else None), _stat(path)


def run(stopping: threading.Event, config_path: str | None = None, store_path: str | None = None,
        config_poll: float = CONFIG_POLL) -> None:
    """Follow the events until `stopping`, with the webhooks of the configuration the scheduler
    runs. They are read from the file (the store keeps no secrets, reload.recordable), and only
    while the file is the version the scheduler runs: a file edited but not yet reloaded
    (cloud_admin --reload), or one the scheduler refused, keeps the webhooks as they were."""
    notifier = Notifier(store_path, stopping)
    path = config_path or os.environ.get("APPLIANCE_CONFIG") or DEFAULT_PATH
    store = Store(store_path)
    seen, shown = None, None
    try:
        while not stopping.is_set():
            try:
                wanted = _wanted(store, path)
                if wanted != seen:
                    seen = wanted
                    cfg, text = reload.load_file(path)
                    if wanted[0] is None or reload.version_of(text) == wanted[0]:
                        shown = None
                        notifier.apply(cfg)
                    elif shown != wanted:
                        shown = wanted
                        log.info("notify: %s is not the version the scheduler runs (%s): the webhooks "
                                 "stay as they were until it is reloaded", path, wanted[0])
            except ConfigError as err:
                # the first line only: config.py never shows a webhook's URL or headers back
                if str(err) != shown:
                    shown = str(err)
                    log.warning("notify: the webhooks stay as they were: %s", str(err).splitlines()[0])
            except (sqlite3.Error, StoreError) as err:      # the scheduler migrating, a full volume: next poll
                if str(err) != shown:
                    shown = str(err)
                    log.warning("notify: cannot read the active configuration: %s", err)
            stopping.wait(config_poll)
    finally:
        notifier.stop_followers()
        store.close()


def wait_for_store(stopping: threading.Event, path: str | None = None, every: float = 5.0) -> bool:
    """The scheduler makes and migrates the state database: wait until it can be opened."""
    shown = None
    while not stopping.is_set():
        try:
            if not os.path.exists(path or STORE_PATH):      # made by the scheduler (root), never here
                raise FileNotFoundError(f"{path or STORE_PATH} does not exist yet")
            Store(path).close()
            return True
        except (StoreError, sqlite3.Error, OSError) as err:
            if str(err) != shown:
                shown = str(err)
                log.warning("notify: waiting for the state database: %s", err)
        stopping.wait(every)
    return False


def main() -> int:
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")
    stopping = threading.Event()

    def stop(signum, frame):
        stopping.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if wait_for_store(stopping):
        run(stopping)
    return 0


if __name__ == "__main__":
    sys.exit(main())

