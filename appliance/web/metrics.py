"""/metrics: Prometheus text, computed from the store at scrape time.

The scheduler daemon is a separate process from gunicorn, so nothing here counts
in memory: gauges come from the same ops functions as cloud_status, counters
from the store's transition counts (bumped with each transition's event, so
"launched" is the number of transitions into booting; kept when old events are
pruned, so they never go down), the budget caps reached from the demand the last
cycle recorded, the cycle-duration histogram from the
cumulative buckets the daemon keeps in the store, and the last cycle's duration and
phases from its heartbeat.
"""
from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .. import cycletime, lifecycle, ops
from ..budget import BUDGET_REACHED_RE, CAPS
from ..config import Config
from ..notify import COUNTS_KEY as NOTIFY_COUNTS
from ..store import BOOT_FAILURE_COUNT, SPOT_COUNT, Store
from . import auth, config, store
from .api import error

bp = Blueprint("metrics", __name__)

GROUP_STATUSES = ("served", "launching", "waiting", "unschedulable")
BUDGET_CAPS = CAPS


class StoreCollector:
    def __init__(self, store: Store, cfg: Config):
        self.store, self.cfg = store, cfg

    def collect(self):
        store, cfg = self.store, self.cfg
        sched = ops.scheduler_status(store)
        up = GaugeMetricFamily("appliance_scheduler_up", "1 if the scheduler daemon completed a cycle recently")
        up.add_metric([], 1 if sched["running"] else 0)
        yield up
        beat, _ = store.get("heartbeat")
        if beat and beat.get("time"):
            # for alerts on its age (time() - this): the heartbeat's time, kept while the daemon is down
            at = GaugeMetricFamily("appliance_scheduler_last_cycle_timestamp_seconds",
                                   "Unix time of the scheduler daemon's last cycle (its heartbeat)")
            at.add_metric([], beat["time"])
            yield at
        # the last cycle, as a whole and by phase (the histogram below has them all, as a whole)
        if sched.get("cycle_seconds") is not None:
            last = GaugeMetricFamily("appliance_scheduler_last_cycle_seconds", "Duration of the scheduler's last cycle")
            last.add_metric([], sched["cycle_seconds"])
            yield last
            phases = sched.get("cycle_phases") or {}
            if phases:
                ph = GaugeMetricFamily("appliance_scheduler_last_cycle_phase_seconds",
                                       "Time the scheduler's last cycle spent in each phase (observe_demand, "
                                       "observe_supply, decide, act, record)", labels=["phase"])
                for p in cycletime.PHASES:
                    if p in phases:
                        ph.add_metric([p], phases[p])
                yield ph

        workers = GaugeMetricFamily("appliance_workers", "Live workers by cloud and state", labels=["cloud", "state"])
        counts = {(c, s.value): 0 for c in cfg.cloud_names for s in lifecycle.LIVE}
        for w in ops.workers_status(store):
            counts[(w["cloud"], w["state"])] = counts.get((w["cloud"], w["state"]), 0) + 1
        for (cloud, state), n in sorted(counts.items()):
            workers.add_metric([cloud, state], n)
        yield workers

        q = ops.queue_status(store)
        jobs = GaugeMetricFamily("appliance_idle_jobs", "Idle jobs by what the scheduler can do for them "
                                 "(served, launching, waiting, unschedulable)", labels=["status"])
        by_status = {s: 0 for s in GROUP_STATUSES}
        for grp in q["groups"]:
            by_status[grp["status"]] = by_status.get(grp["status"], 0) + grp["count"]
        for s, n in by_status.items():
            jobs.add_metric([s], n)
        yield jobs
        yield _budget_reached(cfg, q["groups"])

        events = store.event_counts()
        for name, to, text in (("appliance_worker_launches", "booting", "Workers launched (requested -> booting)"),
                               ("appliance_worker_failures", "failed",
                                "Workers failed (launch error, boot timeout, vanished)"),
                               ("appliance_worker_retirements", "retired", "Workers drained and removed")):
            c = CounterMetricFamily(name, text, labels=["cloud"])
            for cloud in cfg.cloud_names:
                c.add_metric([cloud], events.get((cloud, to), 0))
            yield c
        boot = CounterMetricFamily("appliance_worker_boot_failures", "Workers failed before they joined the "
                                   "pool (launch error, boot timeout, vanished while booting; not spot "
                                   "interruptions)", labels=["cloud"])
        for cloud in cfg.cloud_names:
            boot.add_metric([cloud], events.get((cloud, BOOT_FAILURE_COUNT), 0))
        yield boot
        spot = CounterMetricFamily("appliance_spot_interruptions", "Workers failed by a spot interruption "
                                   "(the cloud took the instance back, or the worker reported the notice)",
                                   labels=["cloud"])
        for cloud in cfg.cloud_names:
            spot.add_metric([cloud], events.get((cloud, SPOT_COUNT), 0))
        yield spot

        clouds = ops.clouds_status(store, cfg)
        enabled = GaugeMetricFamily("appliance_cloud_enabled", "1 if the cloud may launch workers", labels=["cloud"])
        maxw = GaugeMetricFamily("appliance_cloud_max_workers", "The cloud's max_workers", labels=["cloud"])
        backoff = GaugeMetricFamily("appliance_cloud_backoff", "1 while the cloud backs off after launch errors",
                                    labels=["cloud"])
        backoff_s = GaugeMetricFamily("appliance_cloud_backoff_seconds", "Seconds left in the cloud's backoff",
                                      labels=["cloud"])
        breaker = GaugeMetricFamily("appliance_cloud_breaker_open",
                                    "1 if the cloud stopped launching after repeated quick failures", labels=["cloud"])
        min_idle = GaugeMetricFamily("appliance_cloud_min_idle", "Idle workers the cloud keeps ready now (warm "
                                     "headroom: 0 while disabled or outside its min_idle_window)", labels=["cloud"])
        for c in clouds:
            min_idle.add_metric([c["name"]], (c.get("headroom") or {}).get("keep", 0))
            enabled.add_metric([c["name"]], int(c["enabled"]))
            maxw.add_metric([c["name"]], c["max_workers"])
            backoff.add_metric([c["name"]], int(c["health"] == "backoff"))
            backoff_s.add_metric([c["name"]], c["backoff_seconds"])
            breaker.add_metric([c["name"]], int(c["health"] == "stopped"))
        yield from (enabled, maxw, backoff, backoff_s, breaker, min_idle)

        if cfg.priced:
            yield from _cost_metrics(store, cfg)

        if cfg.notifications.webhooks:
            yield _notifications(store)

        hist, _ = store.get("cycle_histogram")
        h = HistogramMetricFamily("appliance_scheduler_cycle_seconds", "Duration of the scheduler's cycles")
        if hist:
            buckets = [(_le(le), n) for le, n in zip(hist["buckets"], hist["counts"])] + [("+Inf", hist["count"])]
            h.add_metric([], buckets, hist["sum"])
        else:
            h.add_metric([], [("+Inf", 0)], 0.0)
        yield h


def _budget_reached(cfg: Config, groups: list[dict]) -> GaugeMetricFamily:
    """1 for each budget cap (global: cloud="", or a cloud's) that stops launches idle jobs
    wait for now, as the scheduler's last cycle reported them; 0 for the other caps set."""
    g = GaugeMetricFamily("appliance_budget_reached", "1 while a budget cap (cloud=\"\" for the global "
                          "budget) stops launches that idle jobs wait for", labels=["cloud", "cap"])
    reached = {(c.name, cap): 0 for c in cfg.clouds for cap in BUDGET_CAPS if getattr(c.budget, cap) is not None}
    reached.update({("", cap): 0 for cap in BUDGET_CAPS if getattr(cfg.budget, cap) is not None})
    for grp in groups:
        if grp.get("status") == "waiting":
            for cloud, cap in BUDGET_REACHED_RE.findall(grp.get("reason") or ""):
                reached[(cloud, cap)] = 1
    for (cloud, cap), value in sorted(reached.items()):
        g.add_metric([cloud, cap], value)
    return g


def _notifications(store: Store) -> CounterMetricFamily:
    """Webhook deliveries (appliance/notify.py): attempts that failed, notifications delivered
    and given up on after their retries."""
    c = CounterMetricFamily("appliance_notifications", "Webhook notifications: delivered, failed (an attempt "
                            "that will be retried or was refused), given_up (after its retries)", labels=["result"])
    counts, _ = store.get(NOTIFY_COUNTS, {})
    for result in ("delivered", "failed", "given_up"):
        c.add_metric([result], (counts or {}).get(result, 0))
    return c


def _cost_metrics(store: Store, cfg: Config):
    """What priced workers cost: per hour now (live workers, by their shapes' prices) and in
    all (the scheduler's running totals, which only grow)."""
    rate = GaugeMetricFamily("appliance_cost_per_hour", "Cost per hour of the live workers, from their shapes' "
                             "prices", labels=["cloud", "shape"])
    now_rate = {(c.name, s.name): 0.0 for c in cfg.clouds for s in c.shapes if s.price}
    for w in store.workers():
        shape, price = cfg.priced_shape(w.cloud, w.shape)
        if price:
            now_rate[(w.cloud, shape)] = now_rate.get((w.cloud, shape), 0.0) + price
    for (cloud, shape), value in sorted(now_rate.items()):
        rate.add_metric([cloud, shape], value)
    yield rate
    total = CounterMetricFamily("appliance_spend", "Spend on workers since the appliance began counting, "
                                "per second of each worker's life at its shape's price", labels=["cloud", "shape"])
    totals, _ = store.get("spend_total", {})
    seen = {f"{c}/{s}": (c, s) for c, s in now_rate}
    for key, value in sorted((totals or {}).items()):
        if key != "_until":
            seen.pop(key, None)
            total.add_metric(key.split("/", 1), value)
    for cloud, shape in seen.values():
        total.add_metric([cloud, shape], 0.0)
    yield total


def _le(value: float) -> str:
    return repr(float(value))


def render(store: Store, cfg: Config) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store, cfg))
    return generate_latest(registry)


@bp.get("/metrics")
def metrics():
    a = auth.authenticate(store())
    if not a.ok:
        return error(a.status, a.message, **({"Retry-After": str(a.retry_after)} if a.status == 429 else {}))
    return Response(render(store(), config()), content_type=CONTENT_TYPE_LATEST)
