"""The scheduler daemon: observe -> decide -> act -> record, every interval.

    python3 -m appliance.daemon

Observing reads HTCondor and each cloud; deciding is scheduler.decide (pure);
acting calls the cloud drivers and condor_off; recording writes the store.
Logs are one line per decision, with its reason, and never a secret.
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Callable, Mapping

from . import backoff, lifecycle
from .clouds.base import CloudError, Driver, make_driver
from .condor import Condor, CondorError
from .config import Config, ConfigError, load
from .lifecycle import State
from .matching import template_ad
from .model import CloudHealth, Observation
from .scheduler import CloudView, Launch, Plan, decide, launch_block
from .store import Store
from .workerconf import WorkerSpec

log = logging.getLogger("appliance")

POOL_ID_FILE = os.environ.get("APPLIANCE_POOL_ID_FILE", "/var/lib/appliance/pool-id")
# While a worker is starting, cycle this often (seconds) instead of every
# interval: the cycle that sees it join asks for a negotiation at once, so each
# part of a second saved here is saved on every cold submit-to-running
# (bench/latency.py). It only reads the collector, the queue and the clouds.
BOOT_POLL = 0.25
EX_CONFIG = 78   # sysexits: configuration error; supervisord does not restart on it


class Daemon:
    def __init__(self, cfg: Config, store: Store, condor: Condor, drivers: Mapping[str, Driver],
                 clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.store = store
        self.condor = condor
        self.drivers = dict(drivers)
        self.clock = clock
        self.templates = {c.name: template_ad(c, cfg.pool.name) for c in cfg.clouds}
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="act")
        self.stopping = threading.Event()
        self.cycles = 0
        self.started = clock()     # workers get their full boot/lost grace from here
        self._warned: dict[str, str] = {}
        self._failing: str | None = None
        # drains to (re)send: worker id -> (not before, failures so far). After a
        # restart every draining worker gets its drain again: it is idempotent.
        self._redrain: dict[str, tuple[float, int]] = {
            w.id: (0.0, 0) for w in store.workers() if w.state is State.DRAINING}

    # ------------------------------------------------------------ the loop
    def run(self) -> None:
        log.info("scheduler started: %d clouds (%s), interval %.1fs", len(self.cfg.clouds),
                 ", ".join(f"{c.name}/{c.type}" for c in self.cfg.clouds), self.cfg.scheduler.interval)
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.cycle()
                self._failing = None
            except Exception as err:   # one bad cycle must not end the daemon; the next one retries
                self.cycle_failed(err)
            elapsed = time.monotonic() - started
            self.stopping.wait(max(self.next_wait() - elapsed, 0.05))
        self.shutdown()

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
        try:
            self.store.put("heartbeat", {"time": self.clock(), "pid": os.getpid(), "cycle": self.cycles,
                                         "interval": self.cfg.scheduler.interval, "error": text})
        except Exception:
            pass

    def cycle(self) -> Plan:
        now = self.clock()
        t0 = time.monotonic()
        obs = self.observe(now)
        workers = self.store.workers()
        views = self.views()
        live_ids = {w.id for w in workers}
        kills = self.store.pending_kills()
        unknown = [k for k in kills if k not in live_ids]
        if unknown:
            self.store.clear_kills(unknown)
        kills = {k: v for k, v in kills.items() if k in live_ids}
        plan = decide(obs, workers, views, self.cfg.scheduler, kills, self.templates)
        self.act(plan, obs, now)
        self.store.clear_kills(kills)
        self.cycles += 1
        duration = time.monotonic() - t0
        self.store.put("heartbeat", {"time": now, "pid": os.getpid(), "cycle": self.cycles,
                                     "duration": round(duration, 4), "interval": self.cfg.scheduler.interval,
                                     "schedd_ok": obs.schedd_ok, "collector_ok": obs.slots is not None})
        self.store.observe_cycle(duration, now)     # for /metrics' cycle duration histogram
        self.store.put("demand", [asdict(g) for g in plan.groups])
        return plan

    def views(self) -> list[CloudView]:
        return [CloudView(self.cfg.cloud(h.name), h) for h in self.store.cloud_health(self.cfg)]

    # ------------------------------------------------------------ observe
    def observe(self, now: float) -> Observation:
        try:
            groups, schedd_ok = self.condor.demand(), True
            self._recovered("schedd")
        except CondorError as err:
            groups, schedd_ok = (), False
            self._warn_once("schedd", str(err))
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
        return Observation(now, groups, slots, resources, schedd_ok, watching_since=self.started)

    def _warn_once(self, key: str, message: str) -> None:
        if self._warned.get(key) != message:
            self._warned[key] = message
            log.warning("%s", message)
            self.store.event("scheduler", message)

    def _recovered(self, key: str) -> None:
        if self._warned.pop(key, None) is not None:
            log.info("%s: reachable again", key)

    # ------------------------------------------------------------ act + record
    def act(self, plan: Plan, obs: Observation, now: float) -> None:
        self.store.mark_seen(plan.seen, now)
        workers = {w.id: w for w in self.store.workers()}
        health = {h.name: h for h in self.store.cloud_health(self.cfg)}
        joined = False

        for t in plan.transitions:
            w = workers.get(t.worker_id)
            if w is None:
                continue
            workers[w.id] = self.store.transition(t.worker_id, t.to, t.reason, now)
            log.info("worker %s (%s): %s -> %s: %s", w.id, w.cloud, w.state, t.to, t.reason)
            h = health.get(w.cloud)
            if h is None:
                continue
            if w.state in lifecycle.STARTING and t.to in (State.IDLE, State.BUSY):
                joined = True
                health[w.cloud] = self._save(h, backoff.after_join(h))
            elif w.state in lifecycle.STARTING and t.to is State.FAILED:
                health[w.cloud] = self._save(h, backoff.after_quick_failure(
                    h, t.reason, now, self.cfg.scheduler.backoff_base))

        self._drain(plan, workers, now)

        self._terminate(plan.terminations + plan.orphans)
        # a cloud whose workers just failed is backing off from now: no replacements this cycle
        launches = [l for l in plan.launches
                    if launch_block(CloudView(self.cfg.cloud(l.cloud), health[l.cloud]), now) is None]
        if launches:
            self._launch(launches, health, now)
        if joined:
            self.condor.reschedule()

    def _drain(self, plan: Plan, workers: dict, now: float) -> None:
        for d in plan.drains:
            self._redrain.setdefault(d.worker_id, (0.0, 0))
        due = [workers[wid] for wid, (when, _) in self._redrain.items()
               if wid in workers and when <= now and (wid in plan.seen or workers[wid].condor_name)]
        for wid in [w for w in self._redrain if w not in workers]:
            del self._redrain[wid]      # ended meanwhile
        futures = [(w, self.pool.submit(self.condor.drain, w.id, plan.seen.get(w.id) or w.condor_name))
                   for w in due]
        for w, fut in futures:
            try:
                fut.result()
                del self._redrain[w.id]
                log.info("worker %s: drain sent (condor_off -peaceful)", w.id)
            except (CondorError, OSError) as err:
                failures = self._redrain[w.id][1] + 1
                self._redrain[w.id] = (now + min(5 * 2 ** failures, 300), failures)
                log.warning("worker %s: drain failed (attempt %d), will retry: %s", w.id, failures, err)
                if failures == 1:
                    self.store.event("worker", f"drain failed, will retry: {err}", w.id, w.cloud)

    def _terminate(self, items) -> None:
        jobs = []
        for t in items:
            driver = self.drivers.get(t.cloud)
            if driver is None:
                log.warning("worker %s: cloud %s is no longer configured; cannot remove it", t.worker_id, t.cloud)
                continue
            row = self.store.worker(t.worker_id)
            # a worker that joined (or an unknown orphan) may have left ads behind
            withdraw = row is None or row.last_seen > 0
            jobs.append((t, self.pool.submit(self._remove, driver, t, withdraw)))
        for t, fut in jobs:
            try:
                requeued = fut.result()
                if requeued:
                    log.info("worker %s: %d job(s) it was running put back in the queue", t.worker_id, requeued)
                    self.store.event("worker", f"{requeued} job(s) it was running put back in the queue",
                                     t.worker_id, t.cloud)
                if t.reason.startswith("orphan"):
                    log.info("cloud %s: removed orphan %s (%s)", t.cloud, t.worker_id, t.resource_id)
                    self.store.event("cloud", f"removed orphan {t.worker_id}: {t.reason}", t.worker_id, t.cloud)
                else:
                    log.info("worker %s: removed from %s", t.worker_id, t.cloud)
            except Exception as err:   # retried: an ended worker's leftover is an orphan next cycle
                log.warning("worker %s: removal from %s failed, will retry: %s", t.worker_id, t.cloud, err)
                self.store.event("cloud", f"removal of {t.worker_id} failed, will retry: {err}", t.worker_id, t.cloud)

    def _remove(self, driver: Driver, t, withdraw: bool) -> int:
        """Runs in a pool thread: no store access here (SQLite connections are per thread)."""
        driver.terminate(t.worker_id, t.resource_id)
        requeued = 0
        if withdraw:
            # a worker that died without withdrawing its ads must not keep attracting
            # matches, and jobs it was running must not wait for it to come back
            try:
                self.condor.invalidate(t.worker_id)
                requeued = self.condor.requeue(t.worker_id)
            except CondorError as err:
                log.warning("worker %s: cleanup in the pool failed: %s", t.worker_id, err)
        self.condor.drop_worker_key(t.worker_id)
        return requeued

    def _launch(self, launches: list[Launch], health: dict[str, CloudHealth], now: float) -> None:
        failed_clouds: set[str] = set()
        lock = threading.Lock()
        rows = []
        for launch in launches:
            wid = self._new_id(launch.cloud)
            self.store.add_worker(wid, launch.cloud, f"launch: {launch.reason}", now)
            rows.append((wid, launch))

        def start(wid: str, cloud: str) -> str:
            with lock:
                if cloud in failed_clouds:
                    raise _Skipped()
            driver = self.drivers[cloud]
            cfg = self.cfg.cloud(cloud)
            spec = WorkerSpec(worker_id=wid, cloud=cfg, pool=self.cfg.pool.name,
                              condor_host=self.condor_host(driver),
                              token=self.condor.mint_worker_token(wid), key=self.condor.new_worker_key(wid),
                              noclaim_shutdown=int(self.cfg.scheduler.idle_timeout + 900))
            try:
                return driver.launch(spec)
            except CloudError:
                with lock:
                    failed_clouds.add(cloud)
                raise

        futures = [(wid, launch, self.pool.submit(start, wid, launch.cloud)) for wid, launch in rows]
        for wid, launch, fut in futures:
            try:
                resource_id = fut.result()
            except _Skipped:
                self.store.transition(wid, State.RETIRED, "not launched: an earlier launch on this cloud failed", now)
                continue
            except Exception as err:
                self._launch_failed(wid, launch.cloud, err, health, now)
                continue
            self.store.transition(wid, State.BOOTING, f"launched ({resource_id})", now, resource_id=resource_id)
            log.info("worker %s (%s): requested -> booting: %s; launched %s",
                     wid, launch.cloud, launch.reason, resource_id)

    def _launch_failed(self, wid: str, cloud: str, err: Exception, health: dict[str, CloudHealth],
                       now: float) -> None:
        self.store.transition(wid, State.FAILED, f"launch failed: {err}", now)
        self.condor.drop_worker_key(wid)
        if not isinstance(err, (CloudError, CondorError)):
            log.error("worker %s (%s): launch crashed: %r", wid, cloud, err)
        kind = err.kind if isinstance(err, CloudError) else "other"
        log.warning("worker %s (%s): requested -> failed: launch failed (%s): %s", wid, cloud, kind, err)
        h = health[cloud]
        retry = err.retry_after if isinstance(err, CloudError) else None
        health[cloud] = self._save(h, backoff.after_launch_error(
            h, kind, str(err), now, retry, self.cfg.scheduler.backoff_base))
        log.warning("cloud %s: backing off %.0fs after %s error", cloud, health[cloud].backoff_until - now, kind)

    def _save(self, old: CloudHealth, new: CloudHealth) -> CloudHealth:
        if new != old:
            self.store.save_health(new)
            if new.breaker_open and not old.breaker_open:
                msg = f"breaker open after {new.failures} quick failures: no launches until re-enabled ({new.last_error})"
                log.error("cloud %s: %s", new.name, msg)
                self.store.event("cloud", msg, cloud=new.name)
            elif new.backoff_until > old.backoff_until:
                self.store.event("cloud", f"backing off {new.backoff_until - self.clock():.0f}s: {new.last_error}",
                                 cloud=new.name)
        return new

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
        """Local workers live inside the appliance and stop with it; the others
        are kept (and re-adopted on restart) or removed, per on_shutdown.

        Removals run in parallel: `docker stop` gives the whole appliance 10 s
        by default, and removing workers one after the other would not fit."""
        now = self.clock()
        doomed = []
        for w in self.store.workers():
            driver = self.drivers.get(w.cloud)
            if driver is None:
                continue
            local = self.cfg.cloud(w.cloud).type == "local"
            if not local and self.cfg.scheduler.on_shutdown == "keep":
                log.info("worker %s (%s): kept while the appliance is stopped (on_shutdown: keep)", w.id, w.cloud)
                continue
            doomed.append((w, self.pool.submit(driver.terminate, w.id, w.resource_id)))
        for w, fut in doomed:
            try:
                fut.result(timeout=15)
                self.condor.drop_worker_key(w.id)
                to = State.FAILED if w.state is State.BUSY else State.RETIRED
                self.store.transition(w.id, to, "the appliance is stopping", now)
                log.info("worker %s (%s): removed: the appliance is stopping", w.id, w.cloud)
            except Exception as err:
                log.warning("worker %s: could not remove at shutdown: %s", w.id, err)
        self.pool.shutdown(wait=False, cancel_futures=True)
        for d in self.drivers.values():
            d.close()
        log.info("scheduler stopped")


class _Skipped(Exception):
    """A launch not attempted because an earlier one on the same cloud failed."""


def pool_id() -> str:
    try:
        with open(POOL_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return "dev"


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stdout, level=os.environ.get("APPLIANCE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S")


def main() -> int:
    setup_logging()
    store = Store()
    try:
        cfg = load()
    except ConfigError as err:
        log.error("configuration error, the scheduler does not start: %s", err)
        store.put("config_error", str(err))
        return EX_CONFIG
    store.put("config_error", None)
    store.put("config", {"source": cfg.source, "clouds": list(cfg.cloud_names)})
    drivers = {c.name: make_driver(c, cfg.pool.name, pool_id()) for c in cfg.clouds}
    daemon = Daemon(cfg, store, Condor(cfg.pool.name), drivers)

    def stop(signum, frame):
        log.info("signal %d: stopping after this cycle", signum)
        daemon.stopping.set()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
