"""What operators can see and do: one code path for the CLIs, the web page and the API.

Reads come from the store the daemon writes; writes are runtime settings and
requests that the daemon applies on its next cycle.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from . import budget, cycletime, headroom, history, lifecycle, stats
from .config import CloudConfig, Config
from .lifecycle import State
from .model import CloudHealth, ShapeHealth
from .store import Store

# where the daemon reports a failing cycle when the store cannot be written (its volume is
# full?): outside the state volume, read by scheduler_status
RUNTIME_STATUS = os.environ.get("APPLIANCE_RUNTIME_STATUS", "/run/appliance/scheduler.json")

# the daemon writes a heartbeat every cycle; this many intervals without one means it is down
STALE_INTERVALS = 5
RECENT_SECONDS = 3600


class OpError(Exception):
    """Bad input from an operator: the message says what and why. Maps to exit 1 / HTTP 4xx."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def shown(value: Any) -> str:
    """An operator's input as it goes into a message: as typed if it is plain,
    else quoted and escaped (no control characters or escapes reach a terminal)."""
    text = str(value)
    if text and text.isprintable() and text.strip() == text and len(text) <= 80:
        return text
    return repr(text[:80])


# an operator's reason for an action (cloud_admin --comment, the API's "comment"): at most this long
COMMENT_MAX = 200


def parse_comment(value: Any) -> str:
    """An operator's reason for an action, as it goes into the event: one line (runs of
    white space, newlines too, become one space), printable, at most COMMENT_MAX
    characters. None or blank is no comment ('')."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise OpError(f"the comment must be text, got {value!r:.80}")
    text = " ".join(value.split())
    if not text.isprintable():
        raise OpError(f"the comment must be printable text, got {text[:80]!r}")
    if len(text) > COMMENT_MAX:
        raise OpError(f"the comment must be at most {COMMENT_MAX} characters, got {len(text)}")
    return text


def by(actor: str, comment: str = "") -> str:
    """Who acted, and why when they said: 'cloud_admin: "new image fixed"'. What the events
    record after 'by' (e.g. 'disabled by cloud_admin: "quota"'), the audit trail."""
    return f'{actor}: "{comment}"' if comment else actor


class UnknownCloud(OpError):
    def __init__(self, name: str, cfg: Config):
        super().__init__(f"no cloud named {shown(name)} (known: {', '.join(cfg.cloud_names) or 'none'})", 404)


def resolve_cloud(cfg: Config, name: str) -> str:
    if name not in cfg.cloud_names:
        raise UnknownCloud(name, cfg)
    return name


# ------------------------------------------------------------------ reading

def scheduler_status(store: Store, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    beat, _ = store.get("heartbeat")
    failing = _runtime_status()
    if failing and (not beat or failing.get("time", 0) > beat.get("time", 0)):
        beat = failing       # the store could not be written: the daemon said why outside it
    config_error, _ = store.get("config_error")
    if config_error:
        # the scheduler runs, but manages nothing until the file is fixed (it rereads it)
        return {"running": False, "message": f"waiting for a valid configuration: {config_error}",
                "config_error": config_error, "last_cycle_age": None}
    if not beat:
        return {"running": False, "message": "not running: it has not completed a cycle yet",
                "config_error": None, "last_cycle_age": None}
    age = now - beat["time"]
    running = age <= max(STALE_INTERVALS * beat.get("interval", 2.0), 15.0)
    took = cycletime.describe(beat.get("duration") or 0.0, beat.get("phases") or {})
    msg = (f"running (last cycle {age:.0f}s ago, took {took})" if running
           else f"not running: last cycle {age:.0f}s ago")
    if running and beat.get("error"):
        msg = f"running, but its cycles fail: {beat['error']}"
    if running and not beat.get("schedd_ok", True):
        msg += "; the schedd is not answering"
    if running and not beat.get("collector_ok", True):
        msg += "; the collector is not answering"
    return {"running": running, "message": msg, "config_error": None, "last_cycle_age": round(age, 1),
            "cycle": beat.get("cycle"), "cycle_seconds": beat.get("duration"),
            # the last cycle's phases, seconds each (cycletime.PHASES); None before a release that kept them
            "cycle_phases": beat.get("phases")}


def _runtime_status() -> dict | None:
    try:
        with open(RUNTIME_STATUS) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def clouds_status(store: Store, cfg: Config, now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    counts: dict[str, dict[str, int]] = {c.name: {s.value: 0 for s in lifecycle.LIVE} for c in cfg.clouds}
    for w in store.workers():
        if w.cloud in counts:
            counts[w.cloud][w.state.value] += 1
    shape_health = store.shape_health()
    costs = cloud_costs(store, cfg, now) if cfg.priced else {}
    kept_now = store.get("headroom", {})[0] or {}     # the scheduler's last line per cloud
    out = []
    for c, h in zip(cfg.clouds, store.cloud_health(cfg)):
        n = counts[c.name]
        if h.breaker_open:
            health = "stopped"
        elif h.backoff_until > now:
            health = "backoff"
        elif not h.enabled:
            health = "disabled"
        else:
            health = "ok"
        out.append({
            "name": c.name, "type": c.type, "enabled": h.enabled, "priority": c.priority,
            "booting": n["requested"] + n["booting"], "idle": n["idle"], "busy": n["busy"],
            "draining": n["draining"], "max_workers": h.max_workers, "health": health,
            "backoff_seconds": max(round(h.backoff_until - now), 0), "failures": h.failures,
            "last_error": h.last_error, "last_error_at": h.last_error_at or None,
            # its first shape (its one size, for a cloud with a lone `worker:`), as before shapes
            "worker": {"cpus": c.shapes[0].cpus, "memory": c.shapes[0].memory, "disk": c.shapes[0].disk},
            "shapes": [{"name": s.name, "cpus": s.cpus, "memory": s.memory, "disk": s.disk, "gpus": s.gpus,
                        "price": s.price, "min_idle": s.min_idle,
                        **_shape_health(shape_health.get((c.name, s.name)), now)}
                       for s in c.shapes],
            # warm headroom: idle workers kept ready (its own and its shapes'), when, and how it stands
            "min_idle": c.min_idle,
            "min_idle_window": str(c.min_idle_window) if c.min_idle_window is not None else None,
            "headroom": _headroom(c, h, kept_now.get(c.name), now),
            # from its shapes' prices: what its workers cost per hour now and over the last 24 hours
            "cost_per_hour": round(costs[c.name].per_hour, 6) if c.name in costs else None,
            "spend_24h": round(costs[c.name].last_day, 6) if c.name in costs else None,
            "budget": {"max_per_hour": c.budget.max_per_hour, "max_per_day": c.budget.max_per_day},
            # the images jobs may ask for (name -> reference), the default first; cloudscheduler's VMType
            "images": {name: c.images[name] for name in sorted(c.images, key=lambda n: n != c.default_image)},
            "vm_type": c.vm_type,
        })
    return out


def _headroom(c: CloudConfig, h: CloudHealth, line: str | None, now: float) -> dict[str, Any] | None:
    """A cloud's warm headroom: how many idle workers it keeps now (0 when disabled or outside
    its window, `off` saying which) and the scheduler's last line; None when none is configured."""
    want = headroom.wanted(c, h.enabled, now)
    if not want.configured:
        return None
    return {"keep": want.total, "off": want.off or None, "status": line}


def cloud_costs(store: Store, cfg: Config, now: float) -> dict[str, budget.Spend]:
    """Each cloud's cost per hour now and spend over the last 24 hours (the window the
    budgets' max_per_day uses), from its workers' shape prices, counted per second."""
    records = budget.spending_of(store.recent_workers(now - budget.DAY), cfg.priced_shape)
    return {c.name: budget.spend_at([r for r in records if r.cloud == c.name], now) for c in cfg.clouds}


def spend_status(store: Store, cfg: Config, now: float | None = None) -> dict[str, Any]:
    """The whole pool's cost now and over the last 24 hours, with the global budget."""
    now = time.time() if now is None else now
    per_cloud = cloud_costs(store, cfg, now).values()     # only configured clouds' shapes have prices
    per_hour, last_day = sum(c.per_hour for c in per_cloud), sum(c.last_day for c in per_cloud)
    return {"priced": cfg.priced, "cost_per_hour": round(per_hour, 6), "spend_24h": round(last_day, 6),
            "budget": {"max_per_hour": cfg.budget.max_per_hour, "max_per_day": cfg.budget.max_per_day}}


def _shape_health(h: ShapeHealth | None, now: float) -> dict[str, Any]:
    """A shape's own health: 'backoff' after the cloud refused capacity for it, until the delay
    passes; its last capacity error stays until it launches again."""
    if h is None:
        return {"health": "ok", "backoff_seconds": 0, "last_error": ""}
    return {"health": "backoff" if h.backoff_until > now else "ok",
            "backoff_seconds": max(round(h.backoff_until - now), 0), "last_error": h.last_error}


def cloud_status(store: Store, cfg: Config, name: str, now: float | None = None) -> dict[str, Any]:
    resolve_cloud(cfg, name)
    cloud = next(c for c in clouds_status(store, cfg, now) if c["name"] == name)
    cloud["workers"] = [w for w in workers_status(store, now) if w["cloud"] == name]
    cloud["events"] = [e for e in store.events(limit=200) if e["cloud"] == name][-20:]
    return cloud


def workers_status(store: Store, now: float | None = None, include_ended: bool = False) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = store.recent_workers(now - RECENT_SECONDS) if include_ended else store.workers()
    out = []
    for w in rows:
        out.append({
            "id": w.id, "cloud": w.cloud, "state": w.state.value, "condor_name": w.condor_name,
            "age_seconds": round(now - w.created_at), "state_seconds": round(now - w.state_since),
            "idle_seconds": round(now - w.state_since) if w.state is State.IDLE else None,
            "resource_id": w.resource_id, "reason": w.reason, "shape": w.shape, "image": w.image,
        })
    return out


def queue_status(store: Store) -> dict[str, Any]:
    groups, updated = store.get("demand", [])
    return {
        "updated_at": updated or None,
        "idle_jobs": sum(g["count"] for g in groups),
        "unschedulable_jobs": sum(g["count"] for g in groups if g["status"] == "unschedulable"),
        "groups": groups,
    }


def running_status(store: Store) -> dict[str, Any]:
    """The jobs running on our workers (each claimed slot runs one), as the scheduler last
    saw them in the collector: per live worker, and per cloud (clouds by name)."""
    running, updated = store.get("running", {})
    live = {w.id: w for w in store.workers()}
    per_worker = {wid: n for wid, n in (running or {}).items() if wid in live and n > 0}
    clouds: dict[str, dict[str, Any]] = {}
    for wid, n in per_worker.items():
        row = clouds.setdefault(live[wid].cloud, {"cloud": live[wid].cloud, "workers": 0, "jobs": 0})
        row["workers"] += 1
        row["jobs"] += n
    return {"updated_at": updated or None, "running_jobs": sum(per_worker.values()), "workers": per_worker,
            "clouds": [clouds[name] for name in sorted(clouds)]}


def history_status(store: Store, since: float = 0) -> dict[str, Any]:
    """The pool over time (appliance.history): the buckets from the one holding `since` on,
    or the whole window kept (six hours) without it."""
    return history.series(store.history(history.bucket_of(since)))


# the window of the boot and job statistics unless an operator gives another (hours)
STATS_HOURS = 24
STATS_MAX_HOURS = 24 * 366


def stats_window(hours: Any, now: float) -> tuple[int, float]:
    """(hours, since): the last `hours` hours, a whole number from 1 to a year."""
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= STATS_MAX_HOURS:
        raise OpError(f"the window must be a whole number of hours from 1 to {STATS_MAX_HOURS}, got {hours!r}")
    return hours, now - hours * 3600


def boot_status(store: Store, cfg: Config, hours: int = STATS_HOURS, now: float | None = None) -> dict[str, Any]:
    """Each cloud's workers launched in the last `hours`: how their starts ended (joined,
    failed, interrupted, cancelled, still starting), the share that joined, and how long
    joining took; and each failed start, with why (cloudscheduler's -b and -z)."""
    now = time.time() if now is None else now
    hours, since = stats_window(hours, now)
    boots = store.boots(since)
    return {"hours": hours, "since": round(since, 3), "clouds": stats.boot_stats(boots, cfg.cloud_names),
            "failures": stats.boot_failures(boots)}


def job_time_status(cfg: Config, hours: int = STATS_HOURS, now: float | None = None,
                    completed=None) -> dict[str, Any]:
    """How long the jobs that completed on each cloud's workers in the last `hours` ran
    (their last run), from the schedd's history (cloudscheduler's -g). `completed`:
    condor.completed_jobs, or a stand-in."""
    now = time.time() if now is None else now
    hours, since = stats_window(hours, now)
    if completed is None:
        # the bindings only when asked
        from .condor import completed_jobs as completed
    runs = [stats.JobRun(cloud, worker, seconds) for cloud, worker, seconds in completed(since)]
    return {"hours": hours, "since": round(since, 3), "clouds": stats.job_times(runs, cfg.cloud_names)}


def events(store: Store, since: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    return store.events(since_id=since, limit=limit)


# ------------------------------------------------------------------ writing

def set_enabled(store: Store, cfg: Config, name: str, enabled: bool, actor: str = "operator",
                comment: str | None = None) -> dict[str, Any]:
    resolve_cloud(cfg, name)
    store.set_cloud(name, enabled=enabled, actor=by(actor, parse_comment(comment)))
    return next(c for c in clouds_status(store, cfg) if c["name"] == name)


def parse_count(value: Any, what: str = "max_workers") -> int:
    if isinstance(value, bool):
        raise OpError(f"{what} must be a whole number >= 0, got {value!r}")
    if isinstance(value, str):
        value = value.strip()
        if not (value.isascii() and value.isdigit()):     # 0-9 only: int() refuses '²' and takes '٣'
            raise OpError(f"{what} must be a whole number >= 0, got {value[:80]!r}")
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > 100000:
        raise OpError(f"{what} must be a whole number from 0 to 100000, got {value!r}")
    return value


def set_max_workers(store: Store, cfg: Config, name: str, value: Any, actor: str = "operator",
                    comment: str | None = None) -> dict[str, Any]:
    resolve_cloud(cfg, name)
    n = parse_count(value)
    store.set_cloud(name, max_workers=n, actor=by(actor, parse_comment(comment)))
    return next(c for c in clouds_status(store, cfg) if c["name"] == name)


def kill_workers(store: Store, cfg: Config, cloud: str, worker_id: str | None, everything: bool,
                 now_flag: bool, actor: str = "operator", comment: str | None = None,
                 retire: bool = False) -> list[str]:
    """Ask the daemon to drain and remove workers (or remove at once with now_flag).

    A drain is a retirement after the running jobs (retire: asked so, `cloud_admin -o`):
    the worker takes no new job, its running ones finish however long they take, then
    it is removed. A worker that has not joined yet has none: it is cancelled."""
    if retire and now_flag:
        raise OpError("a retirement lets the running jobs finish: it cannot be at once (now)")
    resolve_cloud(cfg, cloud)
    who = by(actor, parse_comment(comment))
    live = [w for w in store.workers() if w.cloud == cloud]
    if everything:
        ids = [w.id for w in live if w.state is not State.DRAINING or now_flag]
    elif worker_id:
        match = [w for w in live if w.id == worker_id]
        if not match:
            known = ", ".join(w.id for w in live) or "none"
            raise OpError(f"no live worker {shown(worker_id)} in cloud {cloud} (live: {known})", 404)
        ids = [worker_id]
    else:
        raise OpError("say which workers: a worker id, or all")
    store.request_kill(ids, now_flag, actor=who, retire=retire)
    return ids
