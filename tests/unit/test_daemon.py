"""The whole daemon loop in milliseconds: observe -> decide -> act -> record.

A fake Condor and fake drivers stand where HTCondor and the clouds run in the
integration tests; the store is a real SQLite file in a temporary directory and
the clock is injected, so each scenario runs whole cycles without waiting.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading

import pytest

from appliance import backoff
from appliance.clouds.base import CloudError, Driver
from appliance.condor import CondorError
from appliance.config import CloudConfig, Config, PoolConfig, RetentionConfig, SchedulerConfig, WorkerSize
from appliance.daemon import Daemon
from appliance.lifecycle import State
from appliance.model import JobGroup, Resource, SlotSummary
from appliance.scheduler.requeues import REQUEUE_SETTLE
from appliance.store import Store

T0 = 1_000_000.0


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeCondor:
    """What the daemon asks of HTCondor, answered from plain fields."""

    def __init__(self):
        self.groups: tuple[JobGroup, ...] = ()
        self.slots: dict[str, SlotSummary] = {}
        self.schedd_down = False
        self.collector_down = False
        self.token_error: str | None = None
        self.drain_failures = 0          # the next N drains fail
        self.drained: list[str] = []
        self.invalidated: list[str] = []
        self.running: dict[str, int] = {}   # worker id -> jobs the schedd shows running on it
        self.shadows_missing = False         # after a schedd restart, before its reconnect shadows exist
        self.requeued = 0
        self.keys: set[str] = set()
        self.reschedules = 0
        self.tokens_minted = 0

    def demand(self):
        if self.schedd_down:
            raise CondorError("schedd unreachable")
        return self.groups

    def supply(self):
        if self.collector_down:
            raise CondorError("collector unreachable")
        return dict(self.slots)

    def reschedule(self):
        self.reschedules += 1

    def mint_worker_token(self, worker_id):
        self.tokens_minted += 1
        if self.token_error:
            raise CondorError(self.token_error)
        return "secret-token"

    def new_worker_key(self, worker_id):
        self.keys.add(worker_id)
        return b"secret-key"

    def drop_worker_key(self, worker_id):
        self.keys.discard(worker_id)

    def drain(self, worker_id, condor_name):
        if self.drain_failures:
            self.drain_failures -= 1
            raise CondorError("condor_off: connection refused")
        self.drained.append(worker_id)

    def invalidate(self, worker_id):
        self.invalidated.append(worker_id)

    def requeue(self, worker_id, started_before=None):
        if self.schedd_down:
            raise CondorError("schedd unreachable")
        running = self.running.get(worker_id, 0)
        if self.shadows_missing:
            return running, 0
        self.running[worker_id] = 0
        self.requeued += running
        return running, running

    # the test's view of a worker joining the pool
    def join(self, worker_id, claimed=0, cpus=1):
        self.slots[worker_id] = SlotSummary(worker_id, f"{worker_id}@host", claimed, cpus - claimed, 1024,
                                            4 * 1024 * 1024, cpus)


class FakeDriver(Driver):
    """A cloud that keeps its resources in a dict."""

    def __init__(self, cloud: CloudConfig):
        super().__init__(cloud, "appliance", "test-pool")
        self.resources: dict[str, Resource] = {}
        self.fail_with: CloudError | None = None
        self.no_capacity_for: set[str] = set()     # shapes the cloud refuses capacity for
        self.sizes: dict[str, tuple[int, int, int]] = {}   # what shape_sizes() answers
        self.sizes_error: CloudError | None = None
        self.crash_with: Exception | None = None
        self.list_error: CloudError | None = None
        self.launched: list[str] = []
        self.specs: dict[str, object] = {}     # worker id -> the WorkerSpec it was launched with
        self.terminated: list[str] = []
        self.terminate_error: Exception | None = None
        self.lock = threading.Lock()

    def condor_host(self):
        return "appliance"

    def launch(self, spec):
        if self.crash_with:
            raise self.crash_with
        if self.fail_with:
            raise self.fail_with
        if spec.size.name in self.no_capacity_for:
            raise CloudError("capacity", f"InsufficientInstanceCapacity: no {spec.size.name} available")
        with self.lock:
            self.launched.append(spec.worker_id)
            self.specs[spec.worker_id] = spec
            self.resources[spec.worker_id] = Resource(spec.worker_id, f"res-{spec.worker_id}")
        return f"res-{spec.worker_id}"

    def shape_sizes(self, names):
        if self.sizes_error:
            raise self.sizes_error
        return {n: self.sizes[n] for n in names}

    def list(self):
        if self.list_error:
            raise self.list_error
        return dict(self.resources)

    def terminate(self, worker_id, resource_id):
        if self.terminate_error:
            raise self.terminate_error
        with self.lock:
            self.terminated.append(worker_id)
            self.resources.pop(worker_id, None)


def group(count=1, cpus=1, key="g"):
    return JobGroup(key, count, cpus, 128, 1024, "true")


class Rig:
    """A daemon on fakes, with the helpers the scenarios need."""

    def __init__(self, tmp_path, clouds=None, **sched):
        clouds = clouds or [CloudConfig("local", "local", max_workers=3, worker=WorkerSize())]
        settings = {"interval": 1, "idle_timeout": 60, "boot_timeout": 120, "lost_timeout": 60,
                    "backoff_base": 10, **sched}
        self.cfg = Config(PoolConfig(), SchedulerConfig(**settings), tuple(clouds))
        self.clock = Clock()
        self.store = Store(str(tmp_path / "state.db"))
        self.condor = FakeCondor()
        self.drivers = {c.name: FakeDriver(c) for c in clouds}
        self.daemon = Daemon(self.cfg, self.store, self.condor, self.drivers, clock=self.clock)

    def busy_worker(self) -> str:
        """One job, one worker launched for it, joined and running it."""
        self.condor.groups = (group(1),)
        self.cycle()
        (wid,) = self.live(State.BOOTING)
        self.condor.join(wid, claimed=1)
        self.cycle()
        return wid

    def idle_worker(self) -> str:
        """One worker launched for a job that then went away: joined, idle, nothing to run."""
        self.condor.groups = (group(1),)
        self.cycle()
        (wid,) = self.live(State.BOOTING)
        self.condor.join(wid)
        self.condor.groups = ()
        self.cycle()
        return wid

    def restart(self) -> Daemon:
        self.daemon.pool.shutdown(wait=True)
        self.daemon = Daemon(self.cfg, self.store, self.condor, self.drivers, clock=self.clock)
        return self.daemon

    def cycle(self, advance: float = 1.0):
        self.clock.advance(advance)
        return self.daemon.cycle()

    def states(self) -> dict[str, State]:
        return {w.id: w.state for w in self.store.workers(live_only=False)}

    def live(self, state: State | None = None) -> list[str]:
        return [w.id for w in self.store.workers() if state is None or w.state is state]

    def health(self, name="local"):
        return {h.name: h for h in self.store.cloud_health(self.cfg)}[name]

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.store.events(limit=1000)]

    def close(self) -> None:
        self.daemon.pool.shutdown(wait=True)
        self.store.close()


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def two_clouds(tmp_path, **sched):
    return Rig(tmp_path, [CloudConfig("first", "docker", priority=0, max_workers=2),
                          CloudConfig("second", "local", priority=1, max_workers=2)], **sched)


# ------------------------------------------------------------------ the happy path

def test_demand_launches_joins_and_drains_when_idle(rig):
    rig.condor.groups = (group(2),)
    rig.cycle()
    booting = rig.live(State.BOOTING)
    assert len(booting) == 2 and sorted(rig.drivers["local"].launched) == sorted(booting)
    assert rig.condor.keys == set(booting)          # each worker got its own key
    for wid in booting:
        rig.condor.join(wid, claimed=1)
    rig.cycle()
    assert rig.live(State.BUSY) == booting and rig.condor.reschedules == 1
    rig.condor.groups = ()
    for wid in booting:
        rig.condor.join(wid, claimed=0)
    rig.cycle()
    assert sorted(rig.live(State.IDLE)) == sorted(booting)
    rig.cycle(advance=61)
    assert sorted(rig.live(State.DRAINING)) == sorted(booting)
    assert sorted(rig.condor.drained) == sorted(booting)
    for wid in booting:                               # they finish and exit
        rig.drivers["local"].resources.pop(wid)
        rig.condor.slots.pop(wid)
    rig.cycle()
    assert rig.live() == [] and set(rig.states().values()) == {State.RETIRED}
    heartbeat, _ = rig.store.get("heartbeat")
    assert heartbeat["cycle"] == rig.daemon.cycles == 5


# ------------------------------------------------------------------ launch failures, backoff, breaker

LAUNCH_ERRORS = [
    # (error kind, retry_after, expected first backoff)
    ("capacity", None, 10.0),
    ("throttle", 45.0, 45.0),
    ("auth", None, 120.0),
    ("image", None, 60.0),
]


@pytest.mark.parametrize("kind, retry_after, delay", LAUNCH_ERRORS)
def test_launch_error_backs_the_cloud_off_and_skips_the_rest_of_the_batch(rig, kind, retry_after, delay):
    rig.drivers["local"].fail_with = CloudError(kind, f"no {kind}", retry_after=retry_after)
    rig.condor.groups = (group(3),)
    rig.cycle()
    states = sorted(rig.states().values())
    assert states.count(State.FAILED) >= 1 and set(states) <= {State.FAILED, State.RETIRED}
    h = rig.health()
    assert h.failures == 1 and h.backoff_until == pytest.approx(rig.clock.now + delay)
    assert h.last_error.startswith(f"{kind}: no {kind}")
    assert rig.condor.keys == set()                   # failed launches keep no key
    assert any(r.startswith(f"backing off {delay:.0f}s") for r in rig.reasons())
    # while backing off, nothing is launched
    before = len(rig.states())
    rig.cycle()
    assert len(rig.states()) == before
    assert "backing off" in rig.store.get("demand")[0][0]["reason"]


def test_launch_failure_falls_through_to_the_next_cloud(tmp_path):
    rig = two_clouds(tmp_path)
    rig.drivers["first"].fail_with = CloudError("capacity", "InsufficientInstanceCapacity")
    rig.condor.groups = (group(1),)
    rig.cycle()
    assert rig.health("first").failures == 1
    rig.cycle()
    assert rig.drivers["second"].launched and not rig.drivers["first"].launched


def test_breaker_opens_after_quick_failures_and_reenable_resets_it(rig):
    rig.condor.groups = (group(1),)
    for _i in range(backoff.BREAKER_AFTER):
        rig.cycle(advance=10_000)                     # past any backoff
        (wid,) = rig.live(State.BOOTING)
        rig.drivers["local"].resources.pop(wid)      # dies before joining
        rig.cycle()
        assert rig.states()[wid] is State.FAILED
    h = rig.health()
    assert h.breaker_open and h.failures == backoff.BREAKER_AFTER
    assert any(r.startswith("breaker open after 5 quick failures") for r in rig.reasons())
    rig.cycle(advance=100_000)
    assert rig.live() == []                          # the breaker holds past any backoff
    rig.store.set_cloud("local", enabled=True)
    rig.cycle()
    assert len(rig.live(State.BOOTING)) == 1


def test_a_join_heals_the_cloud(rig):
    rig.store.save_health(backoff.after_quick_failure(rig.health(), "died", T0 - 1000, 10))
    rig.busy_worker()
    assert rig.health().failures == 0 and rig.health().backoff_until == 0


def test_a_token_failure_is_the_appliances_own_and_backs_no_cloud_off(rig):
    rig.condor.token_error = "condor_token_create: cannot read the signing key"
    rig.condor.groups = (group(3),)
    rig.cycle()
    h = rig.health()
    assert h.failures == 0 and h.backoff_until == 0 and h.last_error == ""
    assert rig.condor.tokens_minted == 1             # the rest of the batch is not retried
    failed = [w for w in rig.store.workers(live_only=False) if w.state is State.FAILED]
    assert len(failed) == 1 and "the appliance failed" in failed[0].reason
    assert any("could not prepare a worker" in r for r in rig.reasons())
    assert rig.drivers["local"].launched == []
    rig.condor.token_error = None                    # fixed: the next cycle launches at once
    rig.cycle()
    assert len(rig.live(State.BOOTING)) == 3


def test_a_driver_crash_is_logged_and_backs_off(rig, caplog):
    rig.drivers["local"].crash_with = RuntimeError("bug in the driver")
    rig.condor.groups = (group(1),)
    with caplog.at_level(logging.ERROR, logger="appliance"):
        rig.cycle()
    assert "launch crashed" in caplog.text
    assert rig.health().failures == 1 and rig.health().last_error.startswith("other:")


# ------------------------------------------------------------------ drains

def test_a_failed_drain_is_retried_later_with_growing_delays(rig):
    wid = rig.idle_worker()
    rig.condor.drain_failures = 2
    rig.cycle(advance=61)
    assert rig.states()[wid] is State.DRAINING and rig.condor.drained == []
    assert rig.daemon.redrain[wid].failures == 1
    rig.cycle(advance=1)                               # not due yet (10 s)
    assert rig.daemon.redrain[wid].failures == 1
    rig.cycle(advance=10)                              # due: fails again, waits 20 s
    assert rig.daemon.redrain[wid].failures == 2
    rig.cycle(advance=21)
    assert rig.condor.drained == [wid] and wid not in rig.daemon.redrain
    assert sum("drain failed, will retry" in r for r in rig.reasons()) == 1   # one event, not one per try


def test_after_a_restart_every_draining_worker_is_drained_again(rig):
    wid = rig.idle_worker()
    rig.cycle(advance=61)
    assert rig.condor.drained == [wid]
    rig.restart()
    rig.cycle()
    assert rig.condor.drained == [wid, wid]


def test_operator_drain_and_remove_now(rig):
    rig.condor.groups = (group(2),)
    rig.cycle()
    a, b = rig.live(State.BOOTING)
    rig.condor.join(a, claimed=1)
    rig.condor.join(b, claimed=1)
    rig.cycle()
    rig.store.request_kill([a], now_flag=False)
    rig.store.request_kill([b, "no-such-worker"], now_flag=True)
    rig.cycle()
    assert rig.states()[a] is State.DRAINING and rig.condor.drained == [a]
    assert rig.states()[b] is State.RETIRED and b in rig.drivers["local"].terminated
    assert rig.store.pending_kills() == {}


# ------------------------------------------------------------------ vanished, lost, orphans, adoption

def test_a_vanished_busy_worker_is_failed_and_its_jobs_requeued(rig):
    wid = rig.busy_worker()
    rig.condor.running[wid] = 1
    rig.drivers["local"].resources.pop(wid)           # killed under us
    rig.condor.slots.pop(wid)
    rig.cycle()
    assert rig.states()[wid] is State.FAILED
    assert rig.condor.invalidated == [wid]
    assert "1 job(s) it was running put back in the queue" in rig.reasons()


def test_jobs_stranded_by_a_restart_are_requeued_whatever_stopped_first(tmp_path):
    # compose's on_shutdown: remove takes a busy worker down with the appliance;
    # here the schedd is already gone when the scheduler stops
    rig = Rig(tmp_path, [CloudConfig("c", "docker", max_workers=2)], on_shutdown="remove")
    wid = rig.busy_worker()
    rig.condor.running[wid] = 1
    rig.condor.schedd_down = True
    rig.daemon.shutdown()
    assert rig.states()[wid] is State.FAILED and rig.condor.running[wid] == 1
    # the appliance starts again: the schedd is back, but its reconnect shadow is not there yet
    rig.condor.schedd_down = False
    rig.condor.shadows_missing = True
    rig.condor.slots.clear()
    rig.condor.groups = ()
    rig.restart()
    rig.cycle()
    assert rig.condor.running[wid] == 1 and wid in rig.daemon.stranded
    rig.condor.shadows_missing = False           # the shadow exists now: ended, the job is idle again
    rig.cycle()
    assert rig.condor.running[wid] == 0 and rig.condor.requeued == 1
    assert "1 job(s) it was running put back in the queue" in rig.reasons()
    rig.cycle()                                  # none running now: watched a while longer
    assert wid in rig.daemon.stranded
    rig.cycle(advance=REQUEUE_SETTLE)            # none running all that while: forgotten
    assert rig.daemon.stranded == {} and rig.store.get("stranded_jobs")[0] == []


def test_a_stranded_job_listed_idle_after_a_restart_is_caught_when_it_shows_running_again(tmp_path):
    # seen in CI: the shadow ended at shutdown, the schedd reused its claim on the removed worker
    # (running again), stopped; after the restart it listed the job idle, then its reconnect made it
    # "running" on the worker that was gone, for the whole job lease
    rig = Rig(tmp_path, [CloudConfig("c", "docker", max_workers=2)], on_shutdown="remove")
    wid = rig.busy_worker()
    rig.condor.running[wid] = 1
    rig.daemon.shutdown()
    assert rig.condor.running[wid] == 0 and wid in [r["worker_id"] for r in rig.store.get("stranded_jobs")[0]]
    rig.condor.slots.clear()
    rig.condor.groups = ()
    rig.restart()
    rig.cycle()                                  # listed idle: nothing to do yet
    assert wid in rig.daemon.stranded and rig.condor.requeued == 1
    rig.condor.running[wid] = 1                  # the reconnect shadow: "running" on the gone worker
    rig.cycle(advance=REQUEUE_SETTLE / 2)
    assert rig.condor.running[wid] == 0 and rig.condor.requeued == 2
    rig.cycle(advance=REQUEUE_SETTLE / 2)        # the quiet time starts again from here
    assert wid in rig.daemon.stranded
    rig.cycle(advance=REQUEUE_SETTLE)
    assert rig.daemon.stranded == {}


def test_jobs_stranded_are_requeued_at_shutdown_when_the_schedd_still_runs(tmp_path):
    rig = Rig(tmp_path, [CloudConfig("c", "docker", max_workers=2)], on_shutdown="remove")
    wid = rig.busy_worker()
    rig.condor.running[wid] = 1
    rig.daemon.shutdown()
    assert rig.condor.running[wid] == 0 and rig.condor.requeued == 1


def test_requeueing_waits_for_the_schedd_and_gives_up_after_its_patience(rig):
    from appliance.scheduler import REQUEUE_PATIENCE, StrandedJobs
    rig.daemon.stranded = {"local-gone00": StrandedJobs("local-gone00", "local", T0)}
    rig.condor.running["local-gone00"] = 2
    rig.condor.schedd_down = True
    rig.cycle()
    assert "local-gone00" in rig.daemon.stranded and rig.condor.running["local-gone00"] == 2
    rig.condor.schedd_down = False
    rig.condor.shadows_missing = True
    rig.cycle(advance=REQUEUE_PATIENCE)
    assert rig.daemon.stranded == {}
    assert any("given up" in r for r in rig.reasons())


def test_a_worker_that_never_joined_leaves_no_ads_to_withdraw(rig):
    rig.condor.groups = (group(1),)
    rig.cycle()
    (wid,) = rig.live(State.BOOTING)
    rig.drivers["local"].resources.pop(wid)
    rig.cycle()
    assert rig.states()[wid] is State.FAILED and rig.condor.invalidated == []


def test_an_orphan_is_removed_and_a_failed_removal_retried(rig):
    rig.drivers["local"].resources["local-0rphan"] = Resource("local-0rphan", "res-orphan")
    rig.drivers["local"].terminate_error = OSError("engine busy")
    rig.cycle()
    assert any("removal of local-0rphan failed, will retry" in r for r in rig.reasons())
    rig.drivers["local"].terminate_error = None
    rig.cycle()
    assert rig.drivers["local"].terminated == ["local-0rphan"]
    assert any(r.startswith("removed orphan local-0rphan") for r in rig.reasons())


def test_an_interrupted_launch_is_adopted_or_failed(rig):
    # the scheduler died during the cloud call: one launch reached the cloud, one did not
    rig.store.add_worker("local-aaaaaa", "local", "launch: test", T0 - 5)
    rig.store.add_worker("local-bbbbbb", "local", "launch: test", T0 - 5)
    rig.drivers["local"].resources["local-aaaaaa"] = Resource("local-aaaaaa", "res-a")
    rig.condor.groups = (group(2),)                  # the jobs they were for still wait
    rig.restart()
    rig.cycle()
    assert rig.states()["local-aaaaaa"] is State.BOOTING
    assert rig.states()["local-bbbbbb"] is State.REQUESTED      # given its grace
    rig.cycle(advance=61)
    assert rig.states()["local-bbbbbb"] is State.FAILED


def test_boot_timeout_fails_the_worker_and_the_demand_moves_on(tmp_path):
    rig = two_clouds(tmp_path)
    rig.condor.groups = (group(1),)
    rig.cycle()
    (wid,) = rig.live(State.BOOTING)
    assert wid.startswith("first-")
    rig.cycle(advance=121)
    assert rig.states()[wid] is State.FAILED and rig.health("first").failures == 1
    (replacement,) = rig.live(State.BOOTING)
    assert replacement.startswith("second-")
    # counted as a boot failure of its cloud (the alert "workers failing to boot" reads it)
    from appliance.web.metrics import render
    text = render(rig.store, rig.cfg).decode()
    assert 'appliance_worker_boot_failures_total{cloud="first"} 1.0' in text, text
    assert 'appliance_worker_boot_failures_total{cloud="second"} 0.0' in text, text


def test_unreachable_collector_schedd_and_cloud_judge_nothing(rig):
    wid = rig.idle_worker()
    rig.condor.collector_down = rig.condor.schedd_down = True
    rig.drivers["local"].list_error = CloudError("unavailable", "engine down")
    rig.cycle(advance=1000)
    assert rig.states()[wid] is State.IDLE
    assert any("cannot list workers" in r for r in rig.reasons())
    assert sum("schedd unreachable" in r for r in rig.reasons()) == 1
    rig.cycle()
    assert sum("schedd unreachable" in r for r in rig.reasons()) == 1   # warned once, not every cycle


def test_a_failing_cycle_is_recorded_in_the_heartbeat(rig):
    rig.daemon.cycle_failed(RuntimeError("disk full"))
    heartbeat, _ = rig.store.get("heartbeat")
    assert heartbeat["error"] == "RuntimeError: disk full"


# ------------------------------------------------------------------ pacing, housekeeping

def test_the_loop_polls_fast_only_while_a_worker_starts(rig):
    assert rig.daemon.next_wait() == 1
    rig.condor.groups = (group(1),)
    rig.cycle()
    assert rig.daemon.next_wait() == 0.25


def test_a_change_to_the_job_queue_starts_the_next_cycle_early_but_not_at_once(rig, tmp_path):
    import os
    import time as real_time
    log = tmp_path / "job_queue.log"
    log.write_text("a")
    from appliance.condor import QueueLog
    from appliance.daemon import QUEUE_GAP
    rig.daemon.queue_log = QueueLog(str(log))
    rig.daemon.next_wait = lambda: 30.0
    started = real_time.monotonic()
    stamp = rig.daemon.queue_log.mark()
    log.write_text("a submit")                  # changed while the cycle ran
    rig.daemon.wait_next(started, stamp)
    took = real_time.monotonic() - started
    assert QUEUE_GAP <= took < 5, took          # not the interval's 30 s, not sooner than the gap
    started = real_time.monotonic()             # no change, no queue log at all: the interval
    rig.daemon.next_wait = lambda: 0.3
    os.unlink(log)
    rig.daemon.wait_next(started, rig.daemon.queue_log.mark())
    assert 0.3 <= real_time.monotonic() - started < 5


def test_run_cycles_until_stopped_then_shuts_down(rig):
    rig.condor.groups = (group(1),)
    calls = []

    def cycle():
        calls.append(1)
        if len(calls) == 3:
            rig.daemon.stopping.set()
        if len(calls) == 2:
            raise RuntimeError("one bad cycle")
    rig.daemon.cycle = cycle
    rig.daemon.next_wait = lambda: 0.0
    rig.daemon.run()
    assert len(calls) == 3


def test_retention_prunes_old_events_and_ended_workers(tmp_path):
    rig = Rig(tmp_path)
    rig.cfg = Config(rig.cfg.pool, rig.cfg.scheduler, rig.cfg.clouds,
                     retention=RetentionConfig(event_days=1, max_events=100_000, worker_days=1, prune_every=600))
    rig.daemon.cfg = rig.cfg
    rig.store.add_worker("local-old000", "local", "launch: long ago", T0 - 3 * 86400)
    rig.store.transition("local-old000", State.FAILED, "long ago", T0 - 3 * 86400)
    rig.cycle()
    assert "local-old000" not in rig.states()
    rig.store.add_worker("local-old001", "local", "launch: long ago", T0 - 3 * 86400)
    rig.store.transition("local-old001", State.FAILED, "long ago", T0 - 3 * 86400)
    rig.cycle(advance=599)                            # pruned every prune_every, not every cycle
    assert "local-old001" in rig.states()
    rig.cycle(advance=1)
    assert "local-old001" not in rig.states()
    rig.daemon.pool.shutdown(wait=True)


# ------------------------------------------------------------------ shutdown

SHUTDOWN = [
    # (on_shutdown, cloud type, worker state, removed?, final state)
    ("keep", "docker", State.BUSY, False, State.BUSY),
    ("keep", "local", State.BUSY, True, State.FAILED),
    ("keep", "local", State.IDLE, True, State.RETIRED),
    ("remove", "docker", State.BUSY, True, State.FAILED),
    ("remove", "docker", State.IDLE, True, State.RETIRED),
]


@pytest.mark.parametrize("on_shutdown, ctype, state, removed, final", SHUTDOWN)
def test_shutdown_keeps_or_removes_workers(tmp_path, on_shutdown, ctype, state, removed, final):
    rig = Rig(tmp_path, [CloudConfig("c", ctype, max_workers=2)], on_shutdown=on_shutdown)
    rig.condor.groups = (group(1),)
    rig.cycle()
    (wid,) = rig.live(State.BOOTING)
    rig.condor.join(wid, claimed=1 if state is State.BUSY else 0)
    if state is State.IDLE:
        rig.condor.groups = ()
    rig.cycle()
    assert rig.states()[wid] is state
    rig.daemon.shutdown()
    assert (wid in rig.drivers["c"].terminated) == removed
    assert rig.states()[wid] is final
    assert (wid in rig.condor.keys) != removed


def test_shutdown_survives_a_failing_removal(tmp_path):
    rig = Rig(tmp_path, [CloudConfig("c", "docker", max_workers=2)], on_shutdown="remove")
    rig.condor.groups = (group(1),)
    rig.cycle()
    (wid,) = rig.live(State.BOOTING)
    rig.drivers["c"].terminate_error = OSError("engine gone")
    rig.daemon.shutdown()
    assert rig.states()[wid] is State.BOOTING


# ------------------------------------------------------------------ a broken configuration

def test_a_broken_configuration_is_shown_and_waited_out_not_a_restart_loop(tmp_path, caplog):
    from appliance.daemon import wait_for_valid_config
    path = tmp_path / "appliance.yaml"
    path.write_text("scheduler: {interval: fast}\n")
    db = str(tmp_path / "state.db")
    seen = {}

    def operator():      # reads what /healthz would show, then fixes the file (its own connection)
        watcher = Store(db)
        for _ in range(500):
            if watcher.get("config_error")[0]:
                break
            threading.Event().wait(0.01)
        seen["error"] = watcher.get("config_error")[0]
        watcher.close()
        path.write_text("scheduler: {interval: 2}\n")

    store = Store(db)
    fixer = threading.Thread(target=operator)
    fixer.start()
    with caplog.at_level(logging.ERROR, logger="appliance"):
        cfg = wait_for_valid_config(store, threading.Event(), str(path), every=0.01)
    fixer.join(5)
    assert "scheduler.interval: expected a number" in seen["error"] and str(path) in seen["error"]
    assert cfg.scheduler.interval == 2 and store.get("config_error")[0] is None
    assert caplog.text.count("configuration error") == 1          # said once, not once a try
    store.close()


def test_stopping_while_waiting_for_a_fixed_configuration(tmp_path):
    from appliance.daemon import wait_for_valid_config
    path = tmp_path / "appliance.yaml"
    path.write_text("clouds: 7\n")
    store = Store(str(tmp_path / "state.db"))
    stopping = threading.Event()
    stopping.set()
    assert wait_for_valid_config(store, stopping, str(path), every=0.01) is None
    store.close()


def test_a_state_database_from_a_newer_release_is_refused_and_waited_out(tmp_path, caplog):
    import sqlite3

    from appliance.daemon import wait_for_usable_store
    db = tmp_path / "state.db"
    Store(str(db)).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 999")
    before = db.read_bytes()
    stopping = threading.Event()
    threading.Timer(0.3, stopping.set).start()
    with caplog.at_level(logging.ERROR, logger="appliance"):
        assert wait_for_usable_store(stopping, str(db), every=0.01) is None
    assert caplog.text.count("the scheduler does not start") == 1 and "newer than this release" in caplog.text
    assert db.read_bytes() == before


def test_a_usable_state_database_opens_at_once(tmp_path):
    from appliance.daemon import wait_for_usable_store
    store = wait_for_usable_store(threading.Event(), str(tmp_path / "state.db"))
    assert store is not None
    store.close()


def test_a_store_that_cannot_be_written_is_reported_outside_it_and_recovers(rig, tmp_path, monkeypatch):
    import sqlite3

    from appliance import daemon as daemon_module
    from appliance import ops
    status_file = str(tmp_path / "run" / "scheduler.json")
    monkeypatch.setattr(daemon_module, "RUNTIME_STATUS", status_file)
    monkeypatch.setattr(ops, "RUNTIME_STATUS", status_file)
    rig.condor.groups = (group(1),)
    real_tx = rig.store.tx

    def full_disk():
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(rig.store, "tx", full_disk)
    try:
        rig.cycle()
    except sqlite3.OperationalError as err:
        rig.daemon.cycle_failed(err)
    assert rig.drivers["local"].launched == []                  # nothing launched that was not recorded
    status = ops.scheduler_status(rig.store, now=rig.clock.now)
    assert status["running"] and "database or disk is full" in status["message"], status
    monkeypatch.setattr(rig.store, "tx", real_tx)               # space is back
    rig.cycle()
    rig.daemon.cycle_succeeded()
    assert len(rig.live(State.BOOTING)) == 1
    assert not (tmp_path / "run" / "scheduler.json").exists()
    assert "database or disk is full" not in ops.scheduler_status(rig.store, now=rig.clock.now)["message"]


def test_each_worker_is_launched_recorded_and_counted_as_the_shape_chosen_for_it(tmp_path):
    from appliance.shapes import Shape
    small, big = Shape("small", 1, 1024, 4096), Shape("big", 4, 4096, 4096)
    rig = Rig(tmp_path, [CloudConfig("docker", "docker", max_workers=5, shapes=(big, small))])
    rig.condor.groups = (group(1, key="one"), group(1, cpus=4, key="four"))
    rig.cycle()
    workers = {w.shape: w for w in rig.store.workers()}
    assert set(workers) == {"small", "big"} and all(w.state is State.BOOTING for w in workers.values())
    specs = rig.drivers["docker"].specs
    assert {wid: (s.size.name, s.size.cpus) for wid, s in specs.items()} == {
        workers["small"].id: ("small", 1), workers["big"].id: ("big", 4)}
    assert "shape='big'" in repr(specs[workers["big"].id]) and "secret" not in repr(specs[workers["big"].id])
    requested = [e["reason"] for e in rig.store.events(worker_id=workers["big"].id) if e["to_state"] == "requested"]
    assert requested == ["launch: 1 idle job(s) asking 4 cpu, 128 MB, 1 MB disk: smallest fit: 1 x big (no price) "
                         "for 1 job of 4 cpu/128 MB"]
    # the next cycles (and a restarted scheduler) count each starting worker as its shape, from
    # its row: five 1-cpu jobs fit on the two (1 + 4 cpus), so nothing more is launched for them
    rig.restart()
    rig.condor.groups = (group(5, key="five"),)
    plan = rig.cycle()
    assert not plan.launches and sorted(w.shape for w in rig.store.workers()) == ["big", "small"]
    assert [g.status for g in plan.groups] == ["served"]


def test_no_capacity_for_one_shape_backs_off_that_shape_and_its_demand_takes_the_next_cheapest(tmp_path):
    from appliance.shapes import Shape
    small, big = Shape("small", 1, 1024, 4096, price=0.01), Shape("big", 4, 4096, 4096, price=0.03)
    rig = Rig(tmp_path, [CloudConfig("aws", "docker", max_workers=8, shapes=(small, big))])
    driver = rig.drivers["aws"]
    driver.no_capacity_for = {"big"}
    rig.condor.groups = (group(4),)
    rig.cycle()                                   # one big holds four jobs for less: refused
    assert not driver.launched
    assert rig.health("aws").failures == 0 and rig.health("aws").backoff_until == 0   # the cloud is fine
    (big_health,) = rig.store.shape_health().values()
    assert (big_health.shape, big_health.failures) == ("big", 1)
    assert big_health.backoff_until == pytest.approx(rig.clock.now + 10)
    assert any(r.startswith("shape big backing off 10s after a capacity error") for r in rig.reasons())
    rig.cycle()                                   # the same demand on the next cheapest shape
    assert sorted(s.size.name for s in driver.specs.values()) == ["small"] * 4
    # a restarted scheduler keeps the shape's backoff; once it has passed and the cloud has
    # capacity again, the shape launches and its record is cleared
    rig.restart()
    driver.no_capacity_for = set()
    assert rig.store.shape_health()[("aws", "big")].backoff_until > rig.clock.now
    rig.condor.groups = (group(4), group(4, key="more"))
    rig.cycle(advance=10)
    assert [s.size.name for s in driver.specs.values()].count("big") == 1
    assert rig.store.shape_health() == {}
    assert "shape big launches again" in rig.reasons()


def test_no_capacity_on_a_cloud_with_one_shape_backs_off_the_cloud(tmp_path):
    rig = Rig(tmp_path, [CloudConfig("aws", "docker", max_workers=8)])
    rig.drivers["aws"].fail_with = CloudError("capacity", "InsufficientInstanceCapacity")
    rig.condor.groups = (group(2),)
    rig.cycle()
    assert rig.health("aws").failures == 1 and rig.store.shape_health() == {}


def test_a_budget_stops_launches_says_why_and_the_spend_is_counted_per_second(tmp_path):
    from appliance.budget import Caps
    from appliance.shapes import Shape
    from appliance.web.metrics import render
    small = Shape("small", 1, 1024, 4096, price=0.36)
    rig = Rig(tmp_path, [CloudConfig("aws", "docker", max_workers=8, shapes=(small,))])
    rig.cfg = dataclasses.replace(rig.cfg, budget=Caps(max_per_hour=0.5))
    rig.daemon.cfg = rig.cfg
    rig.condor.groups = (group(3),)
    rig.cycle()
    assert len(rig.drivers["aws"].launched) == 1             # a second would cost 0.72/h
    (row,), _ = rig.store.get("demand")
    assert row["status"] == "waiting"
    assert "budget: max_per_hour 0.50 reached (0.00/h now, +0.72/h)" in row["reason"], row["reason"]
    for _ in range(10):
        rig.cycle(advance=10)
    assert len(rig.drivers["aws"].launched) == 1             # still, cycle after cycle
    (row,), _ = rig.store.get("demand")
    assert "budget: max_per_hour 0.50 reached (0.36/h now, +0.36/h)" in row["reason"], row["reason"]
    totals, _ = rig.store.get("spend_total")
    assert totals["aws/small"] == pytest.approx(0.36 * 100 / 3600, rel=0.05)
    text = render(rig.store, rig.cfg).decode()
    assert 'appliance_cost_per_hour{cloud="aws",shape="small"} 0.36' in text
    spend = re.search(r'appliance_spend_total\{cloud="aws",shape="small"\} ([0-9.e-]+)', text)
    assert spend and float(spend.group(1)) == pytest.approx(totals["aws/small"]), text
    # the global cap stops the launches the jobs wait for: reached (the daily cap is not set)
    assert 'appliance_budget_reached{cap="max_per_hour",cloud=""} 1.0' in text, text
    assert 'cap="max_per_day"' not in text
    # the demand gone, no cap stops anything: 0, still exported (the alert sees it resolve)
    rig.condor.groups = ()
    rig.cycle(advance=10)
    assert 'appliance_budget_reached{cap="max_per_hour",cloud=""} 0.0' in render(rig.store, rig.cfg).decode()


def test_a_clouds_own_budget_reached_is_named_by_its_cloud_in_metrics(tmp_path):
    from appliance.budget import Caps
    from appliance.shapes import Shape
    from appliance.web.metrics import render
    small = Shape("small", 1, 1024, 4096, price=0.36)
    rig = Rig(tmp_path, [CloudConfig("aws", "docker", max_workers=8, shapes=(small,),
                                     budget=Caps(max_per_hour=0.5, max_per_day=100.0))])
    rig.condor.groups = (group(3),)
    rig.cycle()
    assert len(rig.drivers["aws"].launched) == 1
    (row,), _ = rig.store.get("demand")
    assert "budget: aws max_per_hour 0.50 reached" in row["reason"], row["reason"]
    text = render(rig.store, rig.cfg).decode()
    assert 'appliance_budget_reached{cap="max_per_hour",cloud="aws"} 1.0' in text, text
    assert 'appliance_budget_reached{cap="max_per_day",cloud="aws"} 0.0' in text, text
    assert 'appliance_budget_reached{cap="max_per_hour",cloud=""}' not in text     # no global cap set


def test_shapes_left_unsized_are_read_from_the_cloud_once_and_nothing_launches_before(tmp_path):
    from appliance.shapes import Shape
    unsized = Shape("m5.large", 0, 0, 4096, to_read=("cpus", "memory", "gpus"), price=0.096)
    rig = Rig(tmp_path, [CloudConfig("aws", "docker", max_workers=4, shapes=(unsized,))])
    driver = rig.drivers["aws"]
    driver.sizes_error = CloudError("unavailable", "DescribeInstanceTypes: the endpoint is down")
    rig.condor.groups = (group(2),)
    rig.cycle()
    rig.cycle()
    assert not driver.launched
    (row,), _ = rig.store.get("demand")
    assert row["status"] == "waiting" and "the sizes of m5.large are not known yet" in row["reason"], row
    assert rig.reasons().count("cloud aws: cannot read its shapes' sizes, launching nothing until it can: "
                               "DescribeInstanceTypes: the endpoint is down") == 1      # said once
    driver.sizes_error = None
    driver.sizes = {"m5.large": (2, 8192, 0)}
    rig.cycle()
    (spec,) = driver.specs.values()                    # one 2-cpu worker holds both jobs
    assert (spec.size.cpus, spec.size.memory) == (2, 7168)
    assert rig.store.get("shape_sizes")[0] == {"aws": {"m5.large": {"cpus": 2, "memory_mib": 8192, "gpus": 0}}}
    # a restarted scheduler takes the sizes from the store, without asking again
    driver.sizes_error = CloudError("unavailable", "not asked")
    daemon = rig.restart()
    assert daemon.cfg.cloud("aws").shapes[0].sized and daemon.cfg.cloud("aws").shapes[0].cpus == 2


# ------------------------------------------------------------------ the cycle's own time

# ------------------------------------------------------------------ the store's work per cycle

def joined_workers(rig: Rig, n: int) -> list[str]:
    """n workers recorded as launched (as the daemon records them), listed by the cloud and in the collector."""
    ids = [f"local-{i:06x}" for i in range(n)]
    with rig.store.tx():
        for wid in ids:
            rig.store.add_worker(wid, "local", "launch: test", rig.clock())
            rig.store.transition(wid, State.BOOTING, "launched", rig.clock(), resource_id=f"res-{wid}")
            rig.drivers["local"].resources[wid] = Resource(wid, f"res-{wid}")
            rig.condor.join(wid)
    return ids


def statements_per_cycle(rig: Rig) -> list[str]:
    statements = []
    rig.store.db.set_trace_callback(statements.append)
    try:
        rig.cycle()
    finally:
        rig.store.db.set_trace_callback(None)
    return statements


def steady_cycle(tmp_path, n: int) -> list[str]:
    """The statements of a cycle over n idle workers that were seen before."""
    rig = Rig(tmp_path, [CloudConfig("local", "local", max_workers=100)], idle_timeout=3600)
    try:
        ids = joined_workers(rig, n)
        rig.cycle()
        assert set(rig.live(State.IDLE)) == set(ids)
        rig.cycle()
        statements = statements_per_cycle(rig)
        assert set(rig.live(State.IDLE)) == set(ids)
        return statements
    finally:
        rig.daemon.pool.shutdown(wait=True)
        rig.store.close()


def test_the_store_work_of_a_cycle_does_not_grow_with_idle_workers(tmp_path):
    """Idle workers seen cycle after cycle cost the store nothing each (bench/workers.py): a
    steady cycle runs the same statements for 1 and for 40 of them, in two transactions."""
    one, forty = steady_cycle(tmp_path / "1", 1), steady_cycle(tmp_path / "40", 40)
    assert not [q for q in forty if "UPDATE workers" in q]
    assert sum(q.startswith("BEGIN") for q in forty) == 2
    assert len(forty) == len(one)


def test_a_worker_missing_from_the_collector_is_lost_lost_timeout_after_it_was_last_seen(tmp_path):
    """The row keeps when the worker joined; the daemon remembers each later sighting, and a worker
    that goes missing gets the last one in its row, which lost_timeout counts from."""
    rig = Rig(tmp_path, idle_timeout=3600)      # lost_timeout 60
    wid = rig.idle_worker()
    joined = rig.store.worker(wid).last_seen
    for _ in range(10):                          # seen for 100 s, its row not written
        rig.cycle(10)
    assert rig.store.worker(wid).last_seen == joined
    last = rig.clock()
    rig.condor.slots.pop(wid)
    rig.cycle(1)
    assert rig.store.worker(wid).last_seen == last       # written once it is missing
    rig.cycle(58)
    assert rig.states()[wid] is State.IDLE               # 59 s since last seen
    rig.cycle(2)
    assert rig.states()[wid] is State.FAILED
    assert any("lost: not in the collector for 60s" in r for r in rig.reasons())


def test_a_worker_back_in_the_collector_is_not_written_again_unless_renamed(tmp_path):
    rig = Rig(tmp_path, idle_timeout=3600)
    wid = rig.idle_worker()
    slot = rig.condor.slots.pop(wid)
    rig.cycle(5)
    missing_since = rig.store.worker(wid).last_seen
    rig.condor.slots[wid] = slot
    rig.cycle(5)
    assert rig.store.worker(wid).last_seen == missing_since
    rig.condor.slots[wid] = dataclasses.replace(slot, name=f"{wid}@elsewhere")
    rig.cycle(5)
    row = rig.store.worker(wid)
    assert (row.condor_name, row.last_seen) == (f"{wid}@elsewhere", rig.clock())


def test_the_heartbeat_keeps_the_last_cycles_duration_and_phases(rig):
    rig.condor.groups = (group(1),)
    rig.cycle()
    beat, _ = rig.store.get("heartbeat")
    assert set(beat["phases"]) == {"observe_demand", "observe_supply", "decide", "act", "record"}
    assert all(v >= 0 for v in beat["phases"].values())
    assert sum(beat["phases"].values()) <= beat["duration"] + 1e-3


def test_the_jobs_running_on_each_worker_are_recorded_for_the_page(rig):
    from appliance import ops
    rig.condor.groups = (group(3),)
    rig.cycle()
    a, b, c = rig.live(State.BOOTING)
    rig.condor.join(a, claimed=2, cpus=2)
    rig.condor.join(b, claimed=1)
    rig.condor.join(c)
    rig.cycle()
    assert rig.store.get("running")[0] == {a: 2, b: 1}
    written = rig.store.get("running")[1]
    rig.cycle()
    assert rig.store.get("running")[1] == written             # unchanged: not written again
    rig.condor.collector_down = True
    rig.cycle()
    assert rig.store.get("running")[0] == {a: 2, b: 1}      # no answer: nothing judged on absence
    rig.condor.collector_down = False
    rig.condor.join(a)
    rig.cycle()
    assert rig.store.get("running")[0] == {b: 1}
    status = ops.running_status(rig.store)
    assert (status["running_jobs"], status["workers"]) == (1, {b: 1})
    assert status["clouds"] == [{"cloud": "local", "workers": 1, "jobs": 1}]


def test_a_slow_cycle_is_logged_once_with_its_phases(rig, caplog):
    rig.daemon.slow_cycle = 0.0           # every cycle is "slow"
    with caplog.at_level(logging.WARNING, logger="appliance"):
        for _ in range(3):
            rig.cycle()
    lines = [r.getMessage() for r in caplog.records if "slow scheduler cycle" in r.getMessage()]
    assert len(lines) == 1
    assert re.search(r"observe demand \d+ ms, observe supply \d+ ms, decide \d+ ms, act \d+ ms, record \d+ ms",
                     lines[0]), lines[0]

# ------------------------------------------------------------------ warm headroom

def test_headroom_is_kept_past_idle_timeout_replaced_when_taken_and_each_decision_logged(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="appliance")
    rig = Rig(tmp_path, [CloudConfig("local", "local", max_workers=3, worker=WorkerSize(), min_idle=1)])
    try:
        rig.cycle()
        (first,) = rig.live(State.BOOTING)
        assert f"worker {first} (local): launching: headroom: min_idle 1, 0 idle" in caplog.text
        # a day unclaimed before its startd gives up by itself, not idle_timeout + 15 min
        assert rig.drivers["local"].specs[first].noclaim_shutdown == 86400
        rig.cycle()                            # still starting: kept, nothing launched twice
        assert rig.live() == [first]
        rig.condor.join(first)
        rig.cycle()
        rig.cycle(advance=61)                  # past idle_timeout: kept, said once
        rig.cycle(advance=61)
        assert rig.live(State.IDLE) == [first] and not rig.condor.drained
        kept = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"worker {first}: idle for")]
        assert len(kept) == 1 and "kept: headroom: min_idle 1, 1 idle" in kept[0]
        assert rig.store.get("headroom")[0] == {"local": "headroom: min_idle 1, 1 idle"}
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cloud local: headroom")]
        assert lines == ["cloud local: headroom: min_idle 1, 0 idle, launching 1",
                         "cloud local: headroom: min_idle 1, 0 idle, 1 starting",
                         "cloud local: headroom: min_idle 1, 1 idle"]
        rig.condor.groups = (group(1),)        # a job: it takes the kept worker, a replacement starts
        rig.cycle()
        replacement = [w for w in rig.live(State.BOOTING)]
        assert len(replacement) == 1 and replacement[0] != first
    finally:
        rig.daemon.pool.shutdown(wait=True)
        rig.store.close()


def test_workers_of_a_cloud_without_headroom_keep_the_short_noclaim_backstop(rig):
    wid = rig.busy_worker()
    assert rig.drivers["local"].specs[wid].noclaim_shutdown == 60 + 900


def test_each_cycle_adds_to_the_pools_history_and_old_buckets_go(rig):
    from appliance import history
    rig.condor.groups = (group(2),)
    rig.cycle()
    a, b = rig.live(State.BOOTING)
    rig.condor.join(a, claimed=1)
    rig.condor.groups = (group(1),)
    rig.cycle()
    data = history.series(rig.store.history())
    assert len(data["times"]) == 1                       # both cycles in one minute: one bucket
    # each series at its largest in the minute: 2 idle jobs at first, 1 running later
    assert (data["idle_jobs"], data["running_jobs"]) == ([2], [1])
    assert data["workers_by_state"]["booting"] == [2] and data["workers_by_state"]["busy"] == [1]
    assert data["workers_by_cloud"] == {"local": [2]} and data["spend_per_hour"] is None
    rig.cycle(advance=history.WINDOW)                    # six hours on: the old bucket is gone
    assert len(history.series(rig.store.history())["times"]) == 1
