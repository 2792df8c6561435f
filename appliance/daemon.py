"""The scheduler daemon: observe -> decide -> act -> record, every interval.

    python3 -m appliance.daemon

Observing reads HTCondor and each cloud; deciding is scheduler.decide (pure);
acting calls the cloud drivers and condor_off; recording writes the store.
Logs are one line per decision, with its reason, and never a secret.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace

from . import budget, cycletime, federation, history, lifecycle, outcomes, reload
from .clouds.base import CloudError, Driver, make_driver
from .condor import Condor, CondorError, QueueLog, job_queue_log_path
from .config import CloudConfig, Config, ConfigError
from .lifecycle import State
from .matching import template_ads
from .model import CloudHealth, Observation, SlotSummary, Worker
from .ops import RUNTIME_STATUS
from .scheduler import CloudView, Launch, Plan, RedrainEntry, StrandedJobs, Terminate, decide, group_row
from .store import Store, StoreError
from .workerconf import WorkerSpec

log = logging.getLogger("appliance")

POOL_ID_FILE = os.environ.get("APPLIANCE_POOL_ID_FILE", "/var/lib/appliance/pool-id")
# While a worker is starting, cycle this often (seconds) instead of every
# interval: the cycle that sees it join asks for a negotiation at once, so each
# part of a second saved here is saved on every cold submit-to-running
# (bench/latency.py). It only reads the collector, the queue and the clouds.
BOOT_POLL = 0.25
# A kept headroom worker's startd shuts itself down after this long unclaimed (a day): the
# scheduler then replaces it; an appliance that is gone leaves it running no longer than this.
HEADROOM_NOCLAIM_SHUTDOWN = 86400
# Between cycles the daemon looks at the schedd's job queue log this often (a stat), and a
# change (a submit) starts the next cycle at once, but never sooner than QUEUE_GAP after
# the last one began: a new job's worker is launched in tens of milliseconds instead of
# up to an interval later (bench/latency.py's "see" phase), at the cost of a stat.
QUEUE_WATCH = 0.05
QUEUE_GAP = 0.25
STORE_POLL = 5.0       # seconds between attempts to open a state database that was refused
CONFIG_POLL = 2.0      # seconds between readings of an invalid configuration file
RELOAD_POLL = 0.5      # between cycles, how often a reload request (store, SIGHUP) is looked for


class Daemon:
    """Runs the cycle. Every decision is made by pure code (scheduler.decide,
    outcomes.*); this class only observes, executes and writes."""

    def __init__(self, cfg: Config, store: Store, condor: Condor, drivers: Mapping[str, Driver],
                 clock: Callable[[], float] = time.time,
                 driver_factory: Callable[[CloudConfig], Driver] | None = None,
                 retiring: Mapping[str, CloudConfig] | None = None):
        # shapes that left their size to the cloud, sized as it said (kept in the store)
        self.cfg = cfg.with_shape_sizes(store.get("shape_sizes", {})[0])
        # reload (appliance/reload.py): the file's configuration as read (a reload compares the
        # new file with it), how drivers are made for clouds it adds, the last request answered,
        # and SIGHUP's flag
        self.file_cfg = cfg
        self.driver_factory = driver_factory or (lambda c: make_driver(c, cfg.pool.name, pool_id()))
        self.reload_done = int((reload.last_result(store) or {}).get("id") or 0)
        self.reload_signal = threading.Event()
        self._reload_looked = 0.0
        # clouds a reload removed whose workers still drain: their config and driver (in
        # self.drivers) stay, so their workers are still observed and removed, until none is left
        self.retiring: dict[str, CloudConfig] = dict(retiring or {})
        self.store = store
        self.condor = condor
        self.drivers = dict(drivers)
        self.clock = clock
        self.templates = template_ads(self.cfg.clouds, self.cfg.pool.name)
        # the federation.flock_to pools our schedd flocks to (bootstrap installed their tokens)
        self.flock_to = federation.flock_targets_in_use(cfg)
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="act")
        self.stopping = threading.Event()
        self.cycles = 0
        self.started = clock()     # workers get their full boot/lost grace from here
        self.last_prune = 0.0
        self._warned: dict[str, str] = {}
        self._failing: str | None = None
        # drains to (re)send. After a restart every draining worker gets its drain
        # again: it is idempotent, and the old process may have died before sending it.
        self.redrain: dict[str, RedrainEntry] = {
            w.id: RedrainEntry(0.0, 0) for w in store.workers() if w.state is State.DRAINING}
        # removed workers whose jobs may still show as running; kept in the store
        # because the usual case is a restart of the whole appliance
        self.stranded: dict[str, StrandedJobs] = load_stranded(store)
        # shapes backing off after a capacity error, kept in the store for cloud_status
        self.shape_health = store.shape_health()
        # slow cycles are logged sparingly (cycletime.judge)
        self.slow = cycletime.SlowCycles()
        self.slow_cycle = cycletime.SLOW_CYCLE
        # each cloud's warm headroom line, and the workers kept as headroom, as last logged
        self.headroom: dict[str, str] = {}
        self.kept: set[str] = set()
        # jobs running on each worker (its claimed slots), as last written for the page
        self.running: dict[str, int] | None = None
        # the schedd's job queue log: a change between cycles starts the next one early
        self.queue_log = QueueLog(job_queue_log_path())
        # when this process last saw each live worker in the collector; its row's last_seen
        # is written only when that matters (see sightings), not for every worker every cycle
        self.seen_at: dict[str, float] = {}
        # the history bucket last written: a new one prunes those past history.WINDOW
        self.history_bucket = 0
        # the last cycle's job groups, to see a group become unschedulable or a budget begin
        # to stop launches once (outcomes.demand_notes); from the store, so a restart is no news
        self.demand: list[dict] = store.get("demand", [])[0] or []

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        log.info("scheduler started: %d clouds (%s), interval %.1fs", len(self.cfg.clouds),
                 ", ".join(f"{c.name}/{c.type}" for c in self.cfg.clouds), self.cfg.scheduler.interval)
        while not self.stopping.is_set():
            started = time.monotonic()
            queue = self.queue_log.mark()
            try:
                self.cycle()
                self.cycle_succeeded()
            except Exception as err:   # one bad cycle must not end the daemon; the next one retries
                self.cycle_failed(err)
            self.wait_next(started, queue)
        self.shutdown()

    def wait_next(self, started: float, queue: tuple | None) -> None:
        """Wait for the next cycle: its interval after `started`, or less when the job queue
        changed since the cycle began (a submit), but at least QUEUE_GAP after `started`."""
        due = started + max(self.next_wait(), 0.05)
        earliest = started + QUEUE_GAP
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= due:
                return
            if queue is not None and now >= earliest and self.queue_log.mark() != queue:
                return
            if self.reload_wanted(now):
                return
            self.stopping.wait(min(QUEUE_WATCH if queue is not None else RELOAD_POLL, due - now))

    def reload_wanted(self, now: float) -> bool:
        """A reload was asked for (SIGHUP at once; the store every RELOAD_POLL): start the next
        cycle now, so the operator waiting on it has the answer in well under a second."""
        if self.reload_signal.is_set():
            return True
        if now - self._reload_looked < RELOAD_POLL:
            return False
        self._reload_looked = now
        try:
            return reload.pending(self.store, self.reload_done) is not None
        except Exception:
            return False

    def next_wait(self) -> float:
        """Seconds from one cycle's start to the next: short while a worker is starting."""
        interval = self.cfg.scheduler.interval
        try:
            if any(w.state in lifecycle.STARTING for w in self.store.workers()):
                return min(interval, BOOT_POLL)
        except Exception:
            pass
        return interval

    def cycle_failed(self, err: Exception) -> None:
        text = f"{type(err).__name__}: {err}"
        if text != self._failing:     # the traceback once, not every cycle
            log.exception("scheduler cycle failed: %s", text)
            self._failing = text
        beat = {"time": self.clock(), "pid": os.getpid(), "cycle": self.cycles,
                "interval": self.cfg.scheduler.interval, "error": text}
        try:
            self.store.put("heartbeat", beat)
        except Exception:
            # the store itself cannot be written (its volume is full?): say why where the
            # CLIs and the page still look, outside the state volume
            write_runtime_status(beat)

    def cycle_succeeded(self) -> None:
        if self._failing is not None:
            self._failing = None
            clear_runtime_status()
            log.info("scheduler cycles succeed again")

    def cycle(self) -> Plan:
        self.take_reload()
        now = self.clock()
        timer = cycletime.PhaseTimer()
        self.read_shape_sizes()
        obs = self.observe(now, timer)
        views = self.views()
        with timer.phase("decide"):
            workers, last_seen = sightings(self.store.workers(), obs.slots, self.seen_at)
            plan = decide(obs, workers, views, self.cfg.scheduler, self.store.pending_kills(),
                          self.templates, self.redrain, self.stranded, flock_to=self.flock_to,
                          budget=self.cfg.budget, spending=self.spending(now))
            self.seen_at = {w.id: self.seen_at[w.id] for w in workers if w.id in self.seen_at}
            self.seen_at.update(dict.fromkeys(plan.seen, now))
        health = {v.name: v.health for v in views}
        with timer.phase("record"):
            launches = self.record_plan(plan, health, now, named(plan.seen, workers), last_seen)
        health.update(plan.health)

        # act: execute the plan, nothing else
        with timer.phase("act"):
            drained = self.send_drains(plan)
            removed = self.remove(plan.terminations + plan.orphans)
            requeued = self.requeue(plan.requeues)
            launched = self.launch(launches) if launches else []
            if plan.reschedule:
                self.condor.reschedule()
            if plan.flock_outs:
                self.send_away(plan)

        # what the results mean (pure), then one write
        with timer.phase("decide"):
            followup = outcomes.judge_launches(launched, health, now, self.cfg.scheduler.backoff_base,
                                               self.shape_health, self.cfg.shaped_clouds)
            self.redrain, drain_notes = outcomes.judge_drains(plan.redrain, drained, now)
            stranded, requeue_notes = outcomes.judge_requeues(self.stranded, requeued, plan.requeues_abandoned, now)
            stranded.update(outcomes.stranded_by_removals(removed, now))
        self.cycles += 1
        with timer.phase("record"), self.store.tx():
            self.write(followup.records, now)
            self.save_health(health, followup.health, now)
            if followup.shape_health is not None:
                self.shape_health = followup.shape_health
                self.store.save_shape_health(followup.shape_health)
            self.note(drain_notes + outcomes.judge_removals(removed) + requeue_notes + followup.notes, now)
            if stranded != self.stranded:
                self.stranded = stranded
                save_stranded(self.store, stranded)
            self.store.clear_kills(plan.requests_done)
            self.account_spend(now)
            demand = [group_row(g) for g in plan.groups]
            if obs.schedd_ok:     # an unreadable queue is no news about its jobs
                self.note(outcomes.demand_notes(self.demand, demand), now)
                self.demand = demand
            self.store.put("demand", demand)
            self.store.put("schedds", [asdict(s) for s in plan.schedds])
            self.report_headroom(plan)
            self.report_running(obs)
            self.record_history(plan, now)
            # last in the transaction, so that its figures cover all of the cycle but the commit
            duration, phases = timer.elapsed(), timer.phases()
            self.store.put("heartbeat", {"time": now, "pid": os.getpid(), "cycle": self.cycles,
                                         "duration": round(duration, 4), "phases": phases,
                                         "interval": self.cfg.scheduler.interval,
                                         "schedd_ok": obs.schedd_ok, "collector_ok": obs.slots is not None})
            self.store.observe_cycle(duration, now)     # for /metrics' cycle duration histogram
        self.slow, line = cycletime.judge(self.slow, duration, phases, now, self.slow_cycle)
        if line:
            log.warning("%s", line)
        self.housekeeping(now)
        self.retire_drained(now)
        return plan

    def report_running(self, obs: Observation) -> None:
        """The jobs running on each of our workers (its claimed slots, one job each), for the
        page: written when it changes; kept as it was while the collector does not answer."""
        if obs.slots is None:
            return
        running = {wid: s.claimed for wid, s in sorted(obs.slots.items()) if s.claimed}
        if running != self.running:
            self.running = running
            self.store.put("running", running)

    def record_history(self, plan: Plan, now: float) -> None:
        """The pool's figures for the page's charts and /api/history (history.py): from what
        this cycle already has, plus one grouped count of the live workers; no HTCondor query.
        Once a minute, when a new bucket starts, the buckets past the window go: the bound
        holds whatever retention.prune_every says."""
        bucket = history.bucket_of(now)
        sample = history.sample(sum(g.count for g in plan.groups), sum((self.running or {}).values()),
                                self.store.live_counts(), self.cfg.cloud_names,
                                self.cfg.priced_shape if self.cfg.priced else None)
        self.store.record_history(bucket, sample)
        if bucket != self.history_bucket:
            self.history_bucket = bucket
            self.store.prune_history(bucket - history.WINDOW + history.BUCKET)   # WINDOW / BUCKET buckets kept

    def report_headroom(self, plan: Plan) -> None:
        """Warm headroom: a cloud's line when it changes, and each worker the first cycle it is
        kept past idle_timeout (or kept starting for no job); the lines go to the store for cloud_status."""
        for cloud, line in plan.headroom.items():
            if self.headroom.get(cloud) != line:
                log.info("cloud %s: %s", cloud, line)
        if plan.headroom != self.headroom:
            self.headroom = dict(plan.headroom)
            self.store.put("headroom", self.headroom)
        for wid, why in plan.kept.items():
            if wid not in self.kept:
                log.info("worker %s: %s", wid, why)
        self.kept = set(plan.kept)

    def read_shape_sizes(self) -> None:
        """Ask each cloud whose shapes left their size out (ec2: by instance type) how big
        they are: once, kept in the store; until then the cloud launches nothing."""
        unsized = {c.name: [s.name for s in c.shapes if not s.sized] for c in self.cfg.clouds}
        unsized = {name: shapes for name, shapes in unsized.items() if shapes}
        if not unsized:
            return
        sizes = dict(self.store.get("shape_sizes", {})[0] or {})
        for name, shapes in unsized.items():
            try:
                found = self.drivers[name].shape_sizes(shapes)
            except CloudError as err:
                self._warn_once(f"sizes:{name}", f"cloud {name}: cannot read its shapes' sizes, launching "
                                                 f"nothing until it can: {err}")
                continue
            self._recovered(f"sizes:{name}")
            sizes[name] = {**sizes.get(name, {}), **{shape: size_record(size) for shape, size in found.items()}}
            log.info("cloud %s: shape sizes read from the cloud: %s", name,
                     "; ".join(f"{shape} {size[0]} cpus, {size[1]} MiB, {size[2]} gpus"
                               + (f", {size[3]} MB disk" if len(size) > 3 and size[3] else "")
                               for shape, size in found.items()))
        self.store.put("shape_sizes", sizes)
        self.cfg = self.cfg.with_shape_sizes(sizes)
        self.templates = template_ads(self.cfg.clouds, self.cfg.pool.name)

    def views(self) -> list[CloudView]:
        return [CloudView(self.cfg.cloud(h.name), h,
                          {shape: sh for (cloud, shape), sh in self.shape_health.items() if cloud == h.name})
                for h in self.store.cloud_health(self.cfg)]

    def spending(self, now: float) -> list[budget.Spending]:
        """What the workers cost, for the budgets: the live ones, and those of the last 24 hours
        when a max_per_day is set. Nothing when no budget is (the query is then saved)."""
        if not self.cfg.budgets:
            return []
        workers = self.store.recent_workers(now - budget.DAY) if self.cfg.daily_budgets else self.store.workers()
        return budget.spending_of(workers, self.cfg.priced_shape)

    def account_spend(self, now: float) -> None:
        """Add what priced workers cost since the last cycle to the running totals by cloud and
        shape (/metrics' appliance_spend_total): kept in the store, so they only grow, across
        restarts and pruning; a restart counts the time the scheduler was down too."""
        if not self.cfg.priced:
            return
        totals, _ = self.store.get("spend_total", {})
        since = (totals or {}).get("_until", now)
        records = budget.spending_of(self.store.recent_workers(since), self.cfg.priced_shape)
        totals = budget.add_spend(totals or {}, records, since, now)
        self.store.put("spend_total", totals)

    # ------------------------------------------------------------ reload
    def take_reload(self) -> dict | None:
        """Answer a pending reload request (cloud_admin --reload, the page, the API) or SIGHUP,
        at the top of a cycle: the cycle then runs on the configuration it leaves."""
        req = reload.pending(self.store, self.reload_done)
        if req is None and not self.reload_signal.is_set():
            return None
        self.reload_signal.clear()
        req = req or {}
        result = self.reload(bool(req.get("reset_overrides")), str(req.get("actor") or "SIGHUP"))
        self.reload_done = int(req.get("id") or self.reload_done)
        self.store.put(reload.RESULT, {**result, "id": self.reload_done, "time": self.clock()})
        return result

    def reload(self, reset_overrides: bool = False, actor: str = "operator") -> dict:
        """Read the file again and take it: observe (the file, the live workers), decide (reload.diff,
        reload.drains_for: pure), act (drivers), record (drain requests, events, the active config).
        An invalid file, or one that cannot be taken without a restart, changes nothing."""
        now = self.clock()
        source = self.file_cfg.source
        try:
            new, text = reload.load_file(None if source.startswith("<") else source)
        except ConfigError as err:
            return self.refuse_reload(str(err), actor, now)
        change = reload.diff(self.file_cfg, new)
        if change.refusal:
            return self.refuse_reload(f"{new.source}: {change.refusal}", actor, now)
        new = reload.kept_for_restart(self.file_cfg, new)
        # new drivers for clouds added (or added back while they drain) and those whose options
        # changed, before anything is swapped: one that cannot be made refuses the whole file
        remake = [c for c in new.clouds if c.name in change.added or c.name in self.retiring
                  or "options" in change.changed.get(c.name, ())]
        fresh: dict[str, Driver] = {}
        for c in remake:
            try:
                fresh[c.name] = self.driver_factory(c)
            except Exception as err:
                for d in fresh.values():
                    d.close()
                return self.refuse_reload(f"{new.source}: cloud {c.name}: cannot set up its driver: {err}", actor, now)
        drains = reload.drains_for(change.removed, self.store.workers())
        line = reload.describe(change, drains)
        version = reload.version_of(text)
        with self.store.tx():
            for name in change.removed:
                self.store.request_kill(drains.requested[name], False, now, actor=f"reload (cloud {name} removed)")
            # a removed cloud's runtime settings go with it; reset: all of them, the file's values apply
            self.store.clear_cloud_settings(list(change.removed) + (list(new.cloud_names) if reset_overrides else []),
                                            now, actor=f"reload ({actor})")
            notes = ([(n, f"reload: cloud {n} added") for n in change.added]
                     + [(n, reload.removed_note(n, drains.live[n])) for n in change.removed]
                     + [(n, f"reload: cloud {n} changed: {', '.join(what)}") for n, what in change.changed.items()])
            for cloud, note in notes:      # one event per decision, with its reason
                log.info("%s", note)
                self.store.event("config", note, cloud=cloud, now=now)
            self.store.event("config", f"configuration reloaded by {actor}: {new.source} version {version}: {line}"
                             + ("; runtime overrides reset" if reset_overrides else ""), now=now)
            active = reload.record_active(self.store, new, text, now)
        log.info("configuration reloaded by %s: %s version %s: %s", actor, new.source, version, line)
        old = self.file_cfg
        self.file_cfg = new
        self.cfg = new.with_shape_sizes(self.store.get("shape_sizes", {})[0])
        self.templates = template_ads(self.cfg.clouds, self.cfg.pool.name)
        for name in change.removed:
            if drains.live[name]:
                self.retiring[name] = old.cloud(name)
            else:
                self.drivers.pop(name).close()
        for name, driver in fresh.items():
            previous = self.drivers.get(name)
            if previous is not None:
                previous.close()
            self.drivers[name] = driver
            self.retiring.pop(name, None)
        return {"ok": True, "source": new.source, "version": version, "loaded_at": active["loaded_at"],
                "message": line, "added": list(change.added), "removed": list(change.removed),
                "changed": {n: list(w) for n, w in change.changed.items()},
                "draining": {n: drains.live[n] for n in change.removed}, "reset_overrides": reset_overrides}

    def refuse_reload(self, problem: str, actor: str, now: float) -> dict:
        """The file is refused: one line in the log and an event; the running configuration stays."""
        log.error("reload refused, the running configuration stays: %s", problem)
        self.store.event("config", f"reload by {actor} refused, the running configuration stays: {problem}", now=now)
        rec = reload.active_record(self.store) or {}
        return {"ok": False, "error": problem, "source": rec.get("source"), "version": rec.get("version"),
                "loaded_at": rec.get("loaded_at")}

    def retire_drained(self, now: float) -> None:
        """A removed cloud whose last worker is gone: its driver is closed and it is forgotten."""
        if not self.retiring:
            return
        live = {w.cloud for w in self.store.workers()}
        for name in [n for n in self.retiring if n not in live]:
            del self.retiring[name]
            driver = self.drivers.pop(name, None)
            if driver is not None:
                driver.close()
            log.info("reload: cloud %s removed: its last worker is gone", name)
            self.store.event("config", f"reload: cloud {name} removed: its last worker is gone", cloud=name, now=now)

    def cloud_config(self, name: str) -> CloudConfig:
        """A configured cloud's, or a removed one's whose workers still drain."""
        return self.retiring[name] if name in self.retiring else self.cfg.cloud(name)

    # ------------------------------------------------------------ observe
    def observe(self, now: float, timer: cycletime.PhaseTimer | None = None) -> Observation:
        timer = timer or cycletime.PhaseTimer()
        with timer.phase("observe_demand"):
            try:
                groups, schedd_ok = self.condor.demand(), True
                self._recovered("schedd")
            except CondorError as err:
                groups, schedd_ok = (), False
                self._warn_once("schedd", str(err))
            # remote schedds allowed to flock here (cloud_admin --allow-schedd): their demand, and
            # what was found of each; one that cannot be read is reported, not an error
            remote, schedds = (), ()
            allowed = federation.allowed_schedds()
            if allowed:
                remote, schedds = self.condor.remote_demand(allowed)
        with timer.phase("observe_supply"):
            try:
                slots = self.condor.supply()
                self._recovered("collector")
            except CondorError as err:
                slots = None
                self._warn_once("collector", str(err))
            resources = {}
            for name, driver in self.drivers.items():
                try:
                    resources[name] = driver.list()
                    self._recovered(f"list:{name}")
                except CloudError as err:
                    resources[name] = None
                    self._warn_once(f"list:{name}", f"cloud {name}: cannot list workers: {err}")
        return Observation(now, tuple(groups) + tuple(remote), slots, resources, schedd_ok,
                           watching_since=self.started, schedds=tuple(schedds))

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.get(key) != message:
            self._warned[key] = message
            log.warning("%s", message)
            self.store.event("scheduler", message)

    def _recovered(self, key: str) -> None:
        if self._warned.pop(key, None) is not None:
            log.info("%s: reachable again", key)

    # ------------------------------------------------------------ record
    def record_plan(self, plan: Plan, health: Mapping[str, CloudHealth], now: float,
                    seen: Mapping[str, str] | None = None,
                    last_seen: Mapping[str, float] | None = None) -> list[tuple[str, Launch]]:
        """Write the decision before acting on it: a launch's row exists before
        the cloud call, so a scheduler that dies during it finds the row and
        adopts (or fails) the worker. seen: the workers to record as seen now (all
        the plan saw, unless given); last_seen: when workers now missing were last seen."""
        with self.store.tx():
            self.store.mark_seen(plan.seen if seen is None else seen, now)
            self.store.mark_last_seen(last_seen or {})
            self.write([outcomes.Record(t.worker_id, t.to, t.reason) for t in plan.transitions], now)
            self.save_health(health, plan.health, now)
            rows = []
            for launch in plan.launches:
                wid = self._new_id(launch.cloud)
                self.store.add_worker(wid, launch.cloud, f"launch: {launch.reason}", now, shape=launch.shape,
                                      image=launch.image)
                log.info("worker %s (%s): launching: %s", wid, launch.cloud, launch.reason)
                rows.append((wid, launch))
        return rows

    def write(self, records: list[outcomes.Record], now: float) -> None:
        for r in records:
            before = self.store.worker(r.worker_id)
            if before is None:
                continue
            self.store.transition(r.worker_id, r.to, r.reason, now, resource_id=r.resource_id)
            if not r.quiet:
                log.info("worker %s (%s): %s -> %s: %s", r.worker_id, before.cloud, before.state, r.to, r.reason)

    def save_health(self, old: Mapping[str, CloudHealth], new: Mapping[str, CloudHealth], now: float) -> None:
        for name, h in new.items():
            self.store.save_health(h)
            self.note(outcomes.health_notes(old[name], h, now), now)

    def note(self, notes: list[outcomes.Note], now: float) -> None:
        for n in notes:
            log.log(n.level, "%s", n.text)
            if n.kind:
                self.store.event(n.kind, n.event_text or n.text, n.worker_id, n.cloud, now)

    def housekeeping(self, now: float) -> None:
        if now - self.last_prune < self.cfg.retention.prune_every:
            return
        self.last_prune = now
        r = self.cfg.retention
        removed = self.store.prune(now, event_days=r.event_days, max_events=r.max_events,
                                   worker_days=r.worker_days)
        if any(removed.values()):
            log.info("store: pruned %s (retention: events %.0f days or %d at most, ended workers %.0f days)",
                     ", ".join(f"{n} {what}" for what, n in removed.items()), r.event_days, r.max_events,
                     r.worker_days)

    # ------------------------------------------------------------ act: executes, never decides
    def send_drains(self, plan: Plan) -> list[outcomes.DrainResult]:
        futures = [(d, self.pool.submit(self.condor.drain, d.worker_id, d.condor_name)) for d in plan.drains]
        results = []
        for d, fut in futures:
            try:
                fut.result()
                results.append(outcomes.DrainResult(d.worker_id, d.cloud))
            except (CondorError, OSError) as err:
                results.append(outcomes.DrainResult(d.worker_id, d.cloud, str(err)))
        return results

    def send_away(self, plan: Plan) -> None:
        """Let the jobs the plan sends to other pools flock (set their FlockTo)."""
        for f in plan.flock_outs:
            try:
                n = self.condor.send_away(f.group_key, f.count, f.flock_to)
            except (CondorError, OSError) as err:
                self._warn_once(f"flock:{f.group_key}", f"cannot send jobs to {', '.join(f.pools)}: {err}")
                continue
            if n:
                log.info("sent %d job(s) away: %s", n, f.reason)
                self.store.event("federation", f"sent {n} job(s) away by flocking: {f.reason}")

    def remove(self, orders: list[Terminate]) -> list[outcomes.RemovalResult]:
        jobs = []
        for t in orders:
            driver = self.drivers.get(t.cloud)
            if driver is None:
                log.warning("worker %s: cloud %s is no longer configured; cannot remove it", t.worker_id, t.cloud)
                continue
            jobs.append((t, self.pool.submit(self._remove, driver, t)))
        results = []
        for t, fut in jobs:
            try:
                results.append(fut.result())
            except Exception as err:
                results.append(outcomes.RemovalResult(t, error=str(err)))
        return results

    def _remove(self, driver: Driver, t: Terminate) -> outcomes.RemovalResult:
        """Runs in a pool thread: no store access here (SQLite connections are per thread)."""
        driver.terminate(t.worker_id, t.resource_id)
        running, requeued, cleanup_error = 0, 0, ""
        if t.withdraw:
            try:
                self.condor.invalidate(t.worker_id)
                running, requeued = self.condor.requeue(t.worker_id)
            except CondorError as err:
                cleanup_error = str(err)
        self.condor.drop_worker_key(t.worker_id)
        return outcomes.RemovalResult(t, requeued, running, cleanup_error=cleanup_error)

    def requeue(self, stranded: list[StrandedJobs]) -> list[outcomes.RequeueResult]:
        futures = [(s, self.pool.submit(self.condor.requeue, s.worker_id, s.since)) for s in stranded]
        results = []
        for s, fut in futures:
            try:
                running, requeued = fut.result()
                results.append(outcomes.RequeueResult(s, running, requeued))
            except (CondorError, OSError) as err:
                results.append(outcomes.RequeueResult(s, error=str(err)))
        return results

    def launch(self, rows: list[tuple[str, Launch]]) -> list[outcomes.LaunchResult]:
        lock = threading.Lock()
        stops = outcomes.BatchStops(self.cfg.shaped_clouds)

        def start(wid: str, launch: Launch) -> outcomes.LaunchResult:
            result = functools.partial(outcomes.LaunchResult, wid, launch.cloud, launch.reason, shape=launch.shape)
            with lock:
                skip = stops.skip(launch.cloud, launch.shape)
            if skip:
                return result(blame=outcomes.Blame.SKIPPED, error=skip)
            try:
                spec = self.worker_spec(wid, launch.cloud, launch.shape, launch.image, launch.max_price)
            except Exception as err:
                r = result(blame=outcomes.Blame.APPLIANCE, error=str(err))
            else:
                try:
                    return result(resource_id=self.drivers[launch.cloud].launch(spec))
                except CloudError as err:
                    r = result(blame=outcomes.Blame.CLOUD, error=str(err), kind=str(err.kind),
                               retry_after=err.retry_after)
                except Exception as err:
                    r = result(blame=outcomes.Blame.CRASH, error=repr(err))
            self.condor.drop_worker_key(wid)
            with lock:
                stops.failed(r)
            return r

        futures = [self.pool.submit(start, wid, launch) for wid, launch in rows]
        return [f.result() for f in futures]

    def worker_spec(self, wid: str, cloud: str, shape: str = "", image: str = "",
                    max_price: float | None = None) -> WorkerSpec:
        """The worker's own token and key: the appliance's part of a launch; its size and
        image are those the plan chose (recorded with its row, so the scheduler counts on them)."""
        config = self.cfg.cloud(cloud)
        return WorkerSpec(worker_id=wid, cloud=config, pool=self.cfg.pool.name,
                          condor_host=self.condor_host(self.drivers[cloud]),
                          token=self.condor.mint_worker_token(wid), key=self.condor.new_worker_key(wid),
                          noclaim_shutdown=noclaim_shutdown(config, self.cfg.scheduler.idle_timeout),
                          shape=config.shape_of(shape), image=image if image in config.images else "",
                          max_price=max_price)

    def condor_host(self, driver: Driver) -> str:
        host = self.cfg.pool.condor_host
        return driver.condor_host() if host == "auto" else host

    def _new_id(self, cloud: str) -> str:
        while True:
            wid = f"{cloud}-{secrets.token_hex(3)}"
            if self.store.worker(wid) is None:
                return wid

    # ------------------------------------------------------------ stop
    def shutdown(self) -> None:
        """Execute the shutdown plan. Removals run in parallel: `docker stop` gives
        the whole appliance 10 s by default, and one after the other would not fit."""
        now = self.clock()
        types = {name: self.cloud_config(name).type for name in self.drivers}
        steps = outcomes.shutdown_plan(self.store.workers(), types, self.cfg.scheduler.on_shutdown)
        futures = {id(s): self.pool.submit(self.drivers[s.worker.cloud].terminate, s.worker.id, s.worker.resource_id)
                   for s in steps if s.remove}
        stranded = dict(self.stranded)
        for s in steps:
            error = ""
            if s.remove:
                try:
                    futures[id(s)].result(timeout=15)
                    self.condor.drop_worker_key(s.worker.id)
                except Exception as err:
                    error = str(err) or type(err).__name__
            record, note = outcomes.judge_shutdown(s, error)
            if record is not None:
                self.store.transition(record.worker_id, record.to, record.reason, now)
            self.note([note], now)
            left = outcomes.stranded_at_shutdown(s, now, error)
            if left is not None:
                stranded[left.worker_id] = left
        # while the schedd still runs (supervisord stops it after us) its jobs go back
        # to the queue now; whatever is left is retried after the restart
        results = self.requeue([stranded[wid] for wid in stranded if wid not in self.stranded])
        self.note(outcomes.judge_requeues(stranded, results, [], now)[1], now)
        save_stranded(self.store, stranded)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for d in self.drivers.values():
            d.close()
        log.info("scheduler stopped")


def sightings(workers: list[Worker], slots: Mapping[str, SlotSummary] | None,
              seen_at: Mapping[str, float]) -> tuple[list[Worker], dict[str, float]]:
    """The live workers' rows as the cycle must judge them, and the last_seen times to write.

    A worker's row records when it was first seen under its name (named), not every
    sighting: writing every idle worker's row every cycle made the store's work per cycle
    grow with the pool (bench/workers.py: 10,000 UPDATEs a cycle at 10,000 workers).
    The daemon keeps the time it last saw each worker (seen_at); one missing from the
    collector gets that time as its last_seen, here for this cycle's judgement (lost_timeout
    counts from it) and in its row, written once, for a restarted daemon."""
    out, write = [], {}
    for w in workers:
        t = seen_at.get(w.id, 0.0)
        if t > w.last_seen and (slots is None or w.id not in slots):
            w = replace(w, last_seen=t)
            write[w.id] = t
        out.append(w)
    return out, write


def named(seen: Mapping[str, str], workers: list[Worker]) -> dict[str, str]:
    """Of the workers seen this cycle, those whose row must say so: seen for the first time,
    or under another name than their row's."""
    rows = {w.id: w for w in workers}
    return {wid: name for wid, name in seen.items()
            if wid in rows and (rows[wid].condor_name != name or not rows[wid].last_seen)}


def noclaim_shutdown(cloud: CloudConfig, idle_timeout: float) -> int:
    """Seconds a worker's startd waits unclaimed before it shuts down by itself, a backstop
    should the appliance be gone: idle_timeout and 15 minutes more, or a day for a cloud that
    keeps warm headroom (its kept workers wait unclaimed for as long as they are kept)."""
    backstop = int(idle_timeout + 900)
    if cloud.min_idle or any(s.min_idle for s in cloud.shapes):
        return max(backstop, HEADROOM_NOCLAIM_SHUTDOWN)
    return backstop


def write_runtime_status(beat: dict) -> None:
    try:
        os.makedirs(os.path.dirname(RUNTIME_STATUS), mode=0o755, exist_ok=True)
        with open(RUNTIME_STATUS + ".tmp", "w") as f:
            json.dump(beat, f)
        os.chmod(RUNTIME_STATUS + ".tmp", 0o644)     # the web app (user appliance) reads it
        os.replace(RUNTIME_STATUS + ".tmp", RUNTIME_STATUS)
    except OSError as err:
        log.warning("cannot record the failure in %s either: %s", RUNTIME_STATUS, err)


def clear_runtime_status() -> None:
    try:
        os.unlink(RUNTIME_STATUS)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.warning("cannot remove %s: %s", RUNTIME_STATUS, err)


def load_stranded(store: Store) -> dict[str, StrandedJobs]:
    rows, _ = store.get("stranded_jobs", [])
    return {r["worker_id"]: StrandedJobs(r["worker_id"], r["cloud"], r["since"], r.get("quiet_since"))
            for r in rows or []}


def save_stranded(store: Store, stranded: Mapping[str, StrandedJobs]) -> None:
    store.put("stranded_jobs", [asdict(s) for s in stranded.values()])


def pool_id() -> str:
    try:
        with open(POOL_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return "dev"


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")


def size_record(size: tuple) -> dict:
    """A shape's size as a driver tells it, (cpus, memory MiB, GPUs[, disk MB]), as the store keeps it."""
    record = {"cpus": size[0], "memory_mib": size[1], "gpus": size[2]}
    if len(size) > 3 and size[3]:
        record["disk_mb"] = size[3]
    return record


def main() -> int:
    setup_logging()
    stopping = threading.Event()

    reloading = threading.Event()

    def stop(signum, frame):
        log.info("signal %d: stopping after this cycle", signum)
        stopping.set()

    def hup(signum, frame):
        # `supervisorctl signal HUP scheduler`: reread appliance.yaml at the next cycle.
        # Installed first: SIGHUP's default action would end the process.
        log.info("signal %d: reloading the configuration", signum)
        reloading.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)

    store = wait_for_usable_store(stopping)
    if store is None:
        return 0
    previous = reload.active_record(store)      # what ran before this start, if anything
    cfg = wait_for_valid_config(store, stopping)
    if cfg is None:
        return 0
    drivers = {c.name: make_driver(c, cfg.pool.name, pool_id()) for c in cfg.clouds}
    retiring = retiring_after_restart(store, previous, cfg)
    for name, c in list(retiring.items()):
        try:
            drivers[name] = make_driver(c, cfg.pool.name, pool_id())
        except Exception as err:     # its workers are left as before reload existed: lost, then removed
            log.warning("cloud %s (removed): cannot set up its driver to drain its workers: %s", name, err)
            del retiring[name]
    daemon = Daemon(cfg, store, Condor(cfg.pool.name), drivers, retiring=retiring)
    daemon.stopping = stopping
    daemon.reload_signal = reloading
    reloading.clear()           # the file was just read
    daemon.run()
    return 0


def retiring_after_restart(store: Store, previous: dict | None, cfg: Config) -> dict[str, CloudConfig]:
    """Clouds the file no longer has whose workers still run (removed by a reload, or from the file
    while the appliance was down): as with a reload, they are drained, not killed, through the
    driver the previous configuration made. Without a readable record they are left as before."""
    if previous is None:
        return {}
    try:
        old = reload.loads_recorded(previous)
    except ConfigError:
        return {}
    gone = [c.name for c in old.clouds if c.name not in cfg.cloud_names]
    drains = reload.drains_for(gone, store.workers())
    gone = [n for n in gone if drains.live[n]]
    for name in gone:
        store.request_kill(drains.requested[name], False, actor=f"the scheduler (cloud {name} removed)")
        log.info("%s", reload.removed_note(name, drains.live[name]))
        store.event("config", reload.removed_note(name, drains.live[name]), cloud=name)
    return {name: old.cloud(name) for name in gone}


def wait_for_usable_store(stopping: threading.Event, path: str | None = None,
                          every: float = STORE_POLL) -> Store | None:
    """Open the state database; one that is newer than this release, damaged or not
    ours is refused untouched (StoreError says what to do), logged once, and tried
    again every few seconds: exiting made supervisord retry and repeat the message."""
    shown = None
    while True:
        try:
            return Store(path)
        except StoreError as err:
            if str(err) != shown:
                shown = str(err)
                log.error("the scheduler does not start until the state database is usable "
                          "(tried again every %.0f s): %s", every, err)
            if stopping.wait(every):
                return None


def wait_for_valid_config(store: Store, stopping: threading.Event, path: str | None = None,
                          every: float = CONFIG_POLL) -> Config | None:
    """Load the configuration; while it is invalid, say so once (log, store: /healthz
    and the page show it) and read the file again every few seconds until it is fixed.
    Exiting instead made supervisord restart the scheduler in a loop, repeating the error."""
    shown = None
    checks = 0
    while True:
        try:
            cfg, text = reload.load_file(path)
        except ConfigError as err:
            if str(err) != shown:
                shown = str(err)
                log.error("configuration error, no workers are managed until the file is fixed "
                          "(it is read again every %.0f s): %s", every, err)
                store.put("config_error", shown)
            checks += 1      # like the heartbeat's cycle counter: shows the wait is alive
            store.put("config_checks", checks)
            if stopping.wait(every):
                return None
            continue
        if shown is not None:
            log.info("configuration fixed: %s", cfg.source)
        store.put("config_error", None)
        # the active configuration: what the CLIs and the page read (appliance/reload.py)
        reload.record_active(store, cfg, text)
        return cfg


if __name__ == "__main__":
    sys.exit(main())

