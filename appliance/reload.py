"""Reloading appliance.yaml without a restart: which configuration is active, the
request an operator makes (cloud_admin --reload, SIGHUP, the page, POST /api/reload),
and what a new file changes (pure: diff and plan).

The daemon's configuration is the active one. It records the text it runs (kv
`config`: source, version, loaded_at, text) and the CLIs and the web app parse that
text, reading the file only when nothing is recorded yet: a file edited but not yet
reloaded changes nothing anywhere until the scheduler takes it.

A request is a kv record (`reload_request`, with an id that only grows); the daemon
takes it at the top of its next cycle and answers in `reload_result` with that id.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import yaml

from . import lifecycle
from .config import CloudConfig, Config, loads, read_text
from .lifecycle import State
from .model import Worker
from .store import Store

REQUEST, RESULT, ACTIVE = "reload_request", "reload_result", "config"
WAIT = 30.0          # seconds a CLI waits for the scheduler's answer
POLL = 0.2

# sections the running processes set up once at start (condor's configuration, tokens):
# a reload keeps the running values and says they apply at the next restart
RESTART_ONLY = ("pool", "federation")


def version_of(text: str) -> str:
    """A short, stable name for a file's content: what cloud_status shows as its version."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def load_file(path: str | None = None) -> tuple[Config, str]:
    """The configuration of the file and its text; ConfigError when it is invalid."""
    path, text = read_text(path)
    return loads(text, path), text


# ------------------------------------------------------------------ the active configuration

# what the recorded text has instead of a webhook's URL (its headers are left out)
REDACTED_URL = "https://redacted.invalid/"


def recordable(cfg: Config, text: str) -> str:
    """The text kept in the store: the file's, but without the webhooks' URLs and headers.
    They are secrets (a token in a Slack URL, a bearer header) and the state database is
    read by the web app and copied with backups; notify takes them from the file itself,
    once its version is the one recorded."""
    if not cfg.notifications.webhooks:
        return text
    data = yaml.safe_load(text)
    for hook in data["notifications"]["webhooks"]:
        hook["url"] = REDACTED_URL
        hook.pop("headers", None)
    return yaml.safe_dump(data, sort_keys=False)


def record_active(store: Store, cfg: Config, text: str, now: float | None = None) -> dict[str, Any]:
    """Record the configuration the scheduler runs: its version is the file's (the SHA-256 of
    all of it), its text the file's without secrets (recordable)."""
    record = {"source": cfg.source, "clouds": list(cfg.cloud_names), "version": version_of(text),
              "loaded_at": time.time() if now is None else now, "text": recordable(cfg, text)}
    store.put(ACTIVE, record)
    return record


def active_record(store: Store) -> dict[str, Any] | None:
    rec, _ = store.get(ACTIVE)
    return rec if isinstance(rec, dict) and isinstance(rec.get("text"), str) else None


def loads_recorded(rec: Mapping[str, Any]) -> Config:
    return loads(rec["text"], rec.get("source") or "<recorded>")


def active_config(store: Store, path: str | None = None) -> Config:
    """The configuration the scheduler runs, or the file's while it has recorded none
    (a first start, an older release's record); ConfigError as load() raises it."""
    rec = active_record(store)
    if rec is None:
        return load_file(path)[0]
    return loads_recorded(rec)


def active_summary(store: Store) -> dict[str, Any] | None:
    """The active file, its version and when the scheduler loaded it (for cloud_status and the page)."""
    rec = active_record(store)
    if rec is None:
        return None
    return {"source": rec.get("source"), "version": rec.get("version"), "loaded_at": rec.get("loaded_at")}


# ------------------------------------------------------------------ requests

def request(store: Store, reset_overrides: bool = False, actor: str = "operator",
            now: float | None = None) -> int:
    """Ask the scheduler to reload; returns the request's id, which its answer carries."""
    with store.tx():
        last = max(int((store.get(REQUEST)[0] or {}).get("id") or 0),
                   int((store.get(RESULT)[0] or {}).get("id") or 0))
        rid = last + 1
        store.put(REQUEST, {"id": rid, "reset_overrides": bool(reset_overrides), "actor": actor,
                            "time": time.time() if now is None else now})
    return rid


def pending(store: Store, done: int) -> dict[str, Any] | None:
    req, _ = store.get(REQUEST)
    return req if isinstance(req, dict) and int(req.get("id") or 0) > done else None


def last_result(store: Store) -> dict[str, Any] | None:
    res, _ = store.get(RESULT)
    return res if isinstance(res, dict) else None


def wait_result(store: Store, rid: int, timeout: float = WAIT, poll: float = POLL,
                sleep=time.sleep, clock=time.monotonic) -> dict[str, Any] | None:
    """The scheduler's answer to request `rid`, or None when none came within timeout."""
    end = clock() + timeout
    while True:
        res = last_result(store)
        if res is not None and int(res.get("id") or 0) >= rid:
            return res
        if clock() >= end:
            return None
        sleep(poll)


def ask(store: Store, reset_overrides: bool = False, actor: str = "operator", timeout: float = WAIT,
        path: str | None = None) -> tuple[int, dict[str, Any] | None]:
    """What cloud_admin --reload, the page and the API do: check the file here first (an invalid
    one raises ConfigError and nothing is asked), ask, and wait for the scheduler's answer
    (None: none within timeout; the request stands and is taken when the scheduler runs)."""
    load_file(path)
    rid = request(store, reset_overrides, actor)
    return rid, wait_result(store, rid, timeout)


def answer_line(result: Mapping[str, Any]) -> str:
    """The scheduler's answer in one line, as the CLI prints it and the page flashes it."""
    if result.get("ok"):
        return (f"reloaded {result['source']} version {result['version']}: {result['message']}"
                + ("; runtime overrides reset to the file's values" if result.get("reset_overrides") else ""))
    return f"reload refused, the running configuration stays (version {result.get('version')}): {result['error']}"


# ------------------------------------------------------------------ what a new file changes (pure)

# the fields of a cloud that a reload reports by value (the others by name only)
_SHOWN = ("enabled", "priority", "max_workers", "min_idle")


@dataclass(frozen=True)
class Diff:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)    # cloud -> what changed
    sections: tuple[str, ...] = ()       # global sections changed (scheduler, retention, budget, ...)
    refusal: str = ""                    # why this file cannot be taken without a restart

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.sections)


def cloud_changes(old: CloudConfig, new: CloudConfig) -> tuple[str, ...]:
    """What differs between two versions of one cloud, e.g. ('max_workers 3 -> 5', 'shapes')."""
    out = []
    for f in fields(CloudConfig):
        if f.name in ("name", "settings", "worker"):   # settings mirror options; worker is shapes[0]
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "options":
            a, b = dict(a), dict(b)
        elif f.name == "images":
            a, b = list(dict(a).items()), list(dict(b).items())
        if a != b:
            out.append(f"{f.name} {_value(a)} -> {_value(b)}" if f.name in _SHOWN else f.name)
    return tuple(out)


def _value(v: Any) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else str(v)


def diff(old: Config, new: Config) -> Diff:
    """What taking `new` instead of `old` changes, cloud by cloud and section by section."""
    before = {c.name: c for c in old.clouds}
    after = {c.name: c for c in new.clouds}
    changed = {name: cloud_changes(before[name], after[name]) for name in after if name in before}
    sections = tuple(f.name for f in fields(Config)
                     if f.name not in ("clouds", "source") and getattr(old, f.name) != getattr(new, f.name))
    retyped = [f"{n} ({before[n].type} -> {after[n].type})" for n in after if n in before
               and before[n].type != after[n].type]
    refusal = (f"cloud {', '.join(retyped)} changed type: its workers belong to the old one; remove the cloud, "
               f"reload, then add it under its new type (or restart the appliance)") if retyped else ""
    return Diff(added=tuple(n for n in after if n not in before),
                removed=tuple(n for n in before if n not in after),
                changed={n: what for n, what in changed.items() if what},
                sections=sections, refusal=refusal)


def kept_for_restart(old: Config, new: Config) -> Config:
    """The new configuration with the running values of the sections set up only at start."""
    return replace(new, **{s: getattr(old, s) for s in RESTART_ONLY})


@dataclass(frozen=True)
class Drains:
    """The live workers of each removed cloud that must be drained (asked now), and how many it has."""
    requested: Mapping[str, tuple[str, ...]]
    live: Mapping[str, int]


def drains_for(removed: Iterable[str], workers: Sequence[Worker]) -> Drains:
    """A removed cloud's workers are drained, never killed: running jobs finish. Those already
    draining need no request; a worker still starting has no job and is cancelled by it."""
    gone = set(removed)
    requested: dict[str, list[str]] = {n: [] for n in removed}
    live: dict[str, int] = dict.fromkeys(removed, 0)
    for w in workers:
        if w.cloud in gone and w.state in lifecycle.LIVE:
            live[w.cloud] += 1
            if w.state is not State.DRAINING:
                requested[w.cloud].append(w.id)
    return Drains({n: tuple(ids) for n, ids in requested.items()}, live)


def describe(d: Diff, drains: Drains | None = None) -> str:
    """One line: 'clouds added: x; removed: y (its 2 workers drain); changed: z (max_workers 3 -> 5)'."""
    parts = []
    if d.added:
        parts.append(f"clouds added: {', '.join(d.added)}")
    if d.removed:
        live = (drains.live if drains else {})
        parts.append("removed: " + ", ".join(f"{n} ({_drain_words(live.get(n, 0))})" for n in d.removed))
    if d.changed:
        parts.append("changed: " + ", ".join(f"{n} ({', '.join(what)})" for n, what in d.changed.items()))
    if d.sections:
        later = [s for s in d.sections if s in RESTART_ONLY]
        now = [s for s in d.sections if s not in RESTART_ONLY]
        if now:
            parts.append(f"settings changed: {', '.join(now)}")
        if later:
            parts.append(f"{', '.join(later)} changed: applies at the next restart")
    return "; ".join(parts) or "no change"


def _drain_words(n: int) -> str:
    if n == 0:
        return "no workers"
    return f"its {n} worker{'s' if n != 1 else ''} drain{'s' if n == 1 else ''}"


def removed_note(cloud: str, n: int) -> str:
    return f"reload: cloud {cloud} removed, {_drain_words(n)}"
