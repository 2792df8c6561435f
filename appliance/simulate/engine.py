"""The simulation: the daemon's cycle (appliance/daemon.py) on a simulated clock,
with simulated clouds (clouds.py) and a simulated HTCondor (below).

Each scheduler cycle does what Daemon.cycle does, in the same order and with
the same pure code: build an Observation (idle jobs grouped by request, as the
schedd's group-by query returns them; one SlotSummary per joined worker, as the
collector; each cloud's listing), call scheduler.decide(), record the plan
(mark seen, transitions, health, a row per launch), act (drains, removals,
requeues, launches on the simulated clouds) and judge the results with
appliance/outcomes.py. Whatever decide() and outcomes.py learn (capacity
fallback, budgets, spot handling) the simulator therefore does too.

The simulated HTCondor: a worker of shape S is one partitionable slot with S's
cpus, memory, disk and GPUs. Whenever room frees or jobs arrive, idle jobs are
matched oldest first, each group of equal requests in turn, to joined workers
that are not draining, best fit first (fewest free cpus, then least free
memory: HTCondor's default NEGOTIATOR_PRE_JOB_RANK), memory and disk rounded up
as a dynamic slot is carved. A drained worker exits when its last job ends.

Time jumps from one event to the next (a submit, a worker joining, a job ending,
an interruption, a drained worker exiting) and to the cycles the daemon would
run: on its grid (every `interval`, every 0.25 s while a worker starts) at the
first tick after something changed or a timer of decide() expires (idle_timeout,
boot_timeout, lost_timeout, a cloud's backoff, a drain retry). A cycle in which
nothing changed and no timer expired decides nothing new, so it is skipped.
"""
from __future__ import annotations

import functools
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

from .. import lifecycle, outcomes
from ..budget import Spending, spent
from ..clouds.base import CloudError, ErrorKind
from ..config import Config
from ..daemon import BOOT_POLL
from ..lifecycle import State
from ..matching import template_ads
from ..model import CloudHealth, JobGroup, Observation, Resource, ResourceState, SlotSummary, Worker
from ..scheduler import CloudView, Launch, Plan, decide
from ..shapes import Shape, rounded_disk, rounded_memory
from .clouds import SimOptions
from .workload import Job

EPOCH = 1_700_000_000.0     # the simulated clock starts here (decide() reasons in epoch seconds)
TINY = 1e-6
PENDING, IDLE, RUNNING, DONE = 0, 1, 2, 3


@dataclass
class Machine:
    """A simulated worker: its resource in the cloud and its partitionable slot."""
    id: str
    cloud: str
    shape: Shape
    launched: float
    free_cpus: int
    free_memory: int
    free_disk: int               # KiB
    free_gpus: int
    jobs: set[int] = field(default_factory=set)
    joined: bool = False         # in the collector
    joined_at: float = 0.0
    draining: bool = False       # condor_off -peaceful received
    stopped: float | None = None     # the resource stopped (exited, terminated, interrupted): billing ends
    detail: str = ""             # why it stopped, as the cloud's listing says
    gone: bool = False           # terminated (ec2) rather than exited (containers)
    removed: bool = False        # the appliance removed it: no longer listed
    busy_since: float | None = None
    busy: float = 0.0            # seconds with at least one job
    ad: SlotSummary | None = None    # its collector ad as last built; None: changed since
    resource: Resource | None = None     # the cloud's listing of it while it runs

    def fits(self, cpus: int, memory: int, disk: int, gpus: int) -> int:
        counts = [self.free_cpus // max(cpus, 1)]
        if memory:
            counts.append(self.free_memory // memory)
        if disk:
            counts.append(self.free_disk // disk)
        if gpus:
            counts.append(self.free_gpus // gpus)
        return max(min(counts), 0)


@dataclass(frozen=True)
class Sample:
    """The pool at one moment, for the plot."""
    t: float                     # seconds since the first submit
    idle: int
    running: int
    workers: int                 # resources alive (billed)
    spend: float


@dataclass
class Result:
    jobs: int
    completed: int
    requeued: int                # job runs cut short (interruption, removal) and run again
    makespan: float              # first submit to last completion, seconds
    end: float                   # first submit to the last worker gone
    cost: float
    worker_hours: float
    idle_fraction: float         # worker time (launch to end) with no job running
    cpu_utilisation: float       # job cpu-seconds / worker cpu-seconds
    workers: int                 # launched
    launch_failures: int
    interruptions: int
    peak_workers: int
    wait_mean: float             # submit to (last) start, seconds
    wait_p95: float
    cycles: int
    by_shape: dict[str, dict] = field(default_factory=dict)
    never_ran: dict[str, str] = field(default_factory=dict)   # request -> why, for jobs that never completed
    samples: list[Sample] = field(default_factory=list, repr=False)
    note: str = ""

    def as_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}
        for k in ("makespan", "end", "worker_hours", "wait_mean", "wait_p95"):
            out[k] = round(out[k], 3)
        out["cost"] = round(self.cost, 4)
        out["idle_fraction"] = round(self.idle_fraction, 4)
        out["cpu_utilisation"] = round(self.cpu_utilisation, 4)
        return out


def _request_key(j: Job) -> tuple[int, int, int, int]:
    return (j.cpus, j.memory, j.disk, j.gpus)


def _group_key(req: tuple[int, int, int, int]) -> str:
    cpus, memory, disk, gpus = req
    return f"{cpus}cpu-{memory}MB-{disk}KiB" + (f"-{gpus}gpu" if gpus else "")


class Simulation:
    def __init__(self, cfg: Config, jobs: Sequence[Job], options: SimOptions = SimOptions()):
        self.cfg = cfg
        self.settings = cfg.scheduler
        self.options = options
        self.jobs = list(jobs)
        self.templates = template_ads(cfg.clouds, cfg.pool.name)
        self.models = {c.name: options.model(c.name, c.type) for c in cfg.clouds}
        self.ctype = {c.name: c.type for c in cfg.clouds}
        self.health = {c.name: CloudHealth(c.name, c.enabled, c.max_workers) for c in cfg.clouds}
        self.shape_health: dict = {}                 # shapes backing off after a capacity error
        # separate streams, so that (say) a capacity error does not change every later boot delay
        self.rng_boot = random.Random(f"{options.seed}/boot")
        self.rng_capacity = random.Random(f"{options.seed}/capacity")
        self.rng_spot = random.Random(f"{options.seed}/spot")

        n = len(self.jobs)
        self.status = [PENDING] * n
        self.attempt = [0] * n
        self.started = [0.0] * n
        self.where = [""] * n
        self.req = [_request_key(j) for j in self.jobs]
        self.idle: dict[tuple, list[int]] = {}        # request -> heap of job indices (oldest first)
        self.idle_count = 0
        self.running = 0
        self.completed = 0
        self.requeued = 0
        self.last_done = 0.0
        self.job_cpu_seconds = 0.0

        self.records: dict[str, Worker] = {}        # the store's live worker rows, in creation order
        # when each was last seen in the collector: written into its row (last_seen) only when
        # it matters, once it is missing from the collector (copying rows every cycle is slow)
        self.seen_at: dict[str, float] = {}
        self.machines: dict[str, Machine] = {}      # every worker ever launched
        self.listed: dict[str, Machine] = {}        # ... of those, the ones the clouds still list
        self.redrain: dict = {}
        self.stranded: dict = {}
        self.next_id = 0
        self.launch_failures = 0
        self.interruptions = 0
        self.cycles = 0
        self.last_groups: dict[str, tuple[str, str]] = {}

        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.new_jobs = False
        self.roomy: set[str] = set()                 # workers whose room grew since the last negotiation
        self.emptied: set[str] = set()               # workers whose last job ended at this moment
        self.open: set[str] = set()                  # joined workers with a free cpu (a superset)
        self.starting = 0                            # worker rows requested or booting
        self.last_cycle = -math.inf
        self.refused = False                         # a launch of the last cycle failed
        self.changed = False                         # something decide() looks at changed
        self.rate = 0.0                              # cost per hour of the resources alive
        self.spend = 0.0
        self.alive = 0
        self.peak = 0
        self.clock = EPOCH
        self.samples: list[Sample] = []
        self.trace: list[tuple] | None = None      # every transition, when asked for (tests, --trace)

    # ------------------------------------------------------------ events
    def push(self, t: float, kind: str, what: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, what))

    def advance(self, t: float) -> None:
        """Move the clock, accruing what the live resources cost meanwhile."""
        if t > self.clock:
            self.spend += self.rate * (t - self.clock) / 3600.0
            self.clock = t

    def handle(self, kind: str, what) -> None:
        now = self.clock
        if kind == "submit":
            i = what
            self.status[i] = IDLE
            heapq.heappush(self.idle.setdefault(self.req[i], []), i)
            self.idle_count += 1
            self.new_jobs = self.changed = True
        elif kind == "end":
            i, attempt = what
            if self.attempt[i] != attempt or self.status[i] != RUNNING:
                return                                  # that run was cut short
            m = self.machines[self.where[i]]
            self._release(m, i, now)
            self.status[i] = DONE
            self.completed += 1
            self.last_done = now
            self.job_cpu_seconds += self.jobs[i].cpus * (now - self.started[i])
            if m.draining:
                if not m.jobs:
                    self.push(now + self.options.drain_exit, "exit", m.id)
            else:
                self.roomy.add(m.id)
                self.emptied.add(m.id)     # busy -> idle, unless the negotiator fills it again at once
        elif kind == "join":
            m = self.machines[what]
            if m.stopped is None and not m.removed and not m.draining:    # (draining: interrupted while booting)
                m.joined, m.joined_at = True, now
                self.roomy.add(m.id)
                self.open.add(m.id)
                self.changed = True
        elif kind == "exit":
            m = self.machines[what]
            if m.stopped is None and not m.jobs:
                ec2 = self.ctype[m.cloud] == "ec2"
                self._stop(m, now, "the instance powered off" if ec2 else "its container exited", gone=ec2)
        elif kind == "notice":
            m = self.machines[what]
            if m.stopped is None and not m.removed:
                # the worker vacates its jobs at once and leaves the pool; the instance ends after the notice
                self.interruptions += 1
                self._vacate(m, now)
                self._left(m, now)
                m.draining = True
                self.push(now + self.options.notice, "gone", m.id)
                self.changed = True
        elif kind == "gone":
            m = self.machines[what]
            if m.stopped is None:
                self._stop(m, now, "Server.SpotInstanceTermination: spot interruption", gone=True)

    def _release(self, m: Machine, i: int, now: float) -> None:
        cpus, memory, disk, gpus = self.req[i]
        m.free_cpus += cpus
        m.free_memory += rounded_memory(memory)
        m.free_disk += rounded_disk(disk)
        m.free_gpus += gpus
        m.jobs.discard(i)
        m.ad = None
        self.open.add(m.id)
        self.running -= 1
        if not m.jobs and m.busy_since is not None:
            m.busy += now - m.busy_since
            m.busy_since = None

    def _vacate(self, m: Machine, now: float) -> int:
        """Its running jobs go back to idle (and will run again from the start)."""
        n = 0
        for i in sorted(m.jobs):
            self.job_cpu_seconds += self.jobs[i].cpus * (now - self.started[i])
            self._release(m, i, now)
            self.status[i] = IDLE
            self.attempt[i] += 1
            heapq.heappush(self.idle.setdefault(self.req[i], []), i)
            self.idle_count += 1
            n += 1
        self.requeued += n
        if n:
            self.new_jobs = self.changed = True
        return n

    def _left(self, m: Machine, now: float) -> None:
        """It leaves the collector. The daemon, cycling on its grid, last saw it at the last
        tick before now (if it had joined by then): that is its last_seen."""
        if m.joined and self.last_cycle > -math.inf and m.id in self.records:
            step = self.step()
            tick = self.last_cycle + step * math.floor((now - self.last_cycle) / step + TINY)
            if tick >= m.joined_at and tick >= self.seen_at.get(m.id, 0.0):
                self.seen_at[m.id] = tick
        m.joined, m.ad = False, None
        self.open.discard(m.id)

    def _stop(self, m: Machine, now: float, detail: str, gone: bool) -> None:
        self._vacate(m, now)
        self._left(m, now)
        m.stopped, m.detail, m.gone = now, detail, gone
        self.rate -= m.shape.price or 0.0
        self.alive -= 1
        self.changed = True

    # ------------------------------------------------------------ the simulated negotiator
    def negotiate(self) -> None:
        if not self.idle_count or not (self.new_jobs or self.roomy):
            self.new_jobs = False
            self.roomy.clear()
            return
        # after a full negotiation no idle job fits a worker whose room did not grow since
        pool = [self.machines[w] for w in (self.open if self.new_jobs else self.roomy)]
        pool = [m for m in pool if m.joined and not m.draining and m.stopped is None and m.free_cpus > 0]
        self.new_jobs = False
        self.roomy.clear()
        if not pool:
            return
        now = self.clock
        for req in sorted((r for r, q in self.idle.items() if q), key=lambda r: self.idle[r][0]):
            queue = self.idle[req]
            cpus, memory, disk, gpus = req
            mem, dsk = rounded_memory(memory), rounded_disk(disk)
            for m in sorted(pool, key=lambda m: (m.free_cpus, m.free_memory, m.id)):
                if not queue:
                    break
                n = min(m.fits(cpus, mem, dsk, gpus), len(queue))
                for _ in range(n):
                    i = heapq.heappop(queue)
                    self._start(m, i, now, cpus, mem, dsk, gpus)

    def _start(self, m: Machine, i: int, now: float, cpus: int, mem: int, dsk: int, gpus: int) -> None:
        m.free_cpus -= cpus
        m.free_memory -= mem
        m.free_disk -= dsk
        m.free_gpus -= gpus
        m.ad = None
        if m.free_cpus <= 0:
            self.open.discard(m.id)
        if not m.jobs:
            m.busy_since = now
        m.jobs.add(i)
        self.changed = True            # fewer idle jobs: a starting worker may no longer be needed
        self.status[i] = RUNNING
        self.started[i] = now
        self.where[i] = m.id
        self.idle_count -= 1
        self.running += 1
        self.push(now + self.jobs[i].duration, "end", (i, self.attempt[i]))

    # ------------------------------------------------------------ observe
    def observe(self) -> Observation:
        groups = []
        for req, queue in self.idle.items():
            if queue:
                cpus, memory, disk, gpus = req
                groups.append(JobGroup(_group_key(req), len(queue), cpus, memory, disk, "true", gpus=gpus))
        slots = {}
        resources: dict[str, dict[str, Resource]] = {name: {} for name in self.health}
        for m in self.listed.values():
            if m.joined and m.stopped is None:
                if m.ad is None:
                    m.ad = SlotSummary(m.id, f"{m.id}@sim", len(m.jobs), m.free_cpus, m.free_memory,
                                       m.free_disk, m.shape.cpus, m.free_gpus)
                slots[m.id] = m.ad
            if m.stopped is None:
                resources[m.cloud][m.id] = m.resource
            else:
                state = ResourceState.GONE if m.gone else ResourceState.EXITED
                resources[m.cloud][m.id] = Resource(m.id, m.resource.resource_id, state, m.detail)
        return Observation(self.clock, tuple(groups), slots, resources, True, watching_since=EPOCH)

    # ------------------------------------------------------------ one scheduler cycle, as Daemon.cycle
    def cycle(self) -> Plan:
        now = self.clock
        self.cycles += 1
        obs = self.observe()
        for wid, w in self.records.items():
            if wid not in obs.slots and self.seen_at.get(wid, 0.0) != w.last_seen and wid in self.seen_at:
                self.records[wid] = replace(w, last_seen=self.seen_at[wid])
        views = [CloudView(self.cfg.cloud(name), h,
                           {shape: sh for (cloud, shape), sh in self.shape_health.items() if cloud == name})
                 for name, h in self.health.items()]
        plan = decide(obs, list(self.records.values()), views, self.settings, {}, self.templates,
                      self.redrain, self.stranded, budget=self.cfg.budget,
                      spending=self.spending() if self.cfg.budgets else ())
        self.last_groups = {g.key: (g.status, g.reason) for g in plan.groups}
        health = {v.name: v.health for v in views}
        launches = self.record_plan(plan, now)
        health.update(plan.health)

        drained = self.send_drains(plan)
        removed = self.remove(plan.terminations + plan.orphans)
        requeued = [outcomes.RequeueResult(s) for s in plan.requeues]   # removals requeued their jobs at once
        launched = self.launch(launches) if launches else []

        followup = outcomes.judge_launches(launched, health, now, self.settings.backoff_base,
                                           self.shape_health, self.cfg.shaped_clouds)
        if followup.shape_health is not None:
            self.shape_health = followup.shape_health
        self.redrain, _ = outcomes.judge_drains(plan.redrain, drained, now)
        stranded, _ = outcomes.judge_requeues(self.stranded, requeued, plan.requeues_abandoned, now)
        stranded.update(outcomes.stranded_by_removals(removed, now))
        self.stranded = stranded
        self.write(followup.records, now)
        # a launch that failed changed what the next cycle sees (the cloud backs off, its row
        # failed): the daemon's next tick places that demand elsewhere
        self.refused = any(r.blame is not None for r in launched)
        health.update(followup.health)
        self.health = health
        self.starting = sum(1 for w in self.records.values() if w.state in lifecycle.STARTING)
        return plan

    def record_plan(self, plan: Plan, now: float) -> list[tuple[str, Launch]]:
        for wid, name in plan.seen.items():
            w = self.records.get(wid)
            self.seen_at[wid] = now
            if w is not None and (w.condor_name != name or not w.last_seen):
                self.records[wid] = replace(w, condor_name=name, last_seen=now)
        self.write([outcomes.Record(t.worker_id, t.to, t.reason) for t in plan.transitions], now)
        rows = []
        for launch in plan.launches:
            self.next_id += 1
            wid = f"{launch.cloud}-{self.next_id:05d}"
            self.records[wid] = Worker(wid, launch.cloud, State.REQUESTED, now, now,
                                       reason=f"launch: {launch.reason}", shape=launch.shape)
            rows.append((wid, launch))
        return rows

    def write(self, records: Sequence[outcomes.Record], now: float) -> None:
        for r in records:
            w = self.records.get(r.worker_id)
            if w is None:
                continue
            lifecycle.check(w.state, r.to)
            if self.trace is not None:
                self.trace.append((round(now - EPOCH, 3), r.worker_id, str(w.state), str(r.to), r.reason))
            w = replace(w, state=r.to, state_since=now, reason=r.reason,
                        resource_id=r.resource_id if r.resource_id is not None else w.resource_id)
            if r.to in lifecycle.ENDED:
                del self.records[r.worker_id]
                self.seen_at.pop(r.worker_id, None)
            else:
                self.records[r.worker_id] = w

    # ------------------------------------------------------------ act
    def send_drains(self, plan: Plan) -> list[outcomes.DrainResult]:
        results = []
        for d in plan.drains:
            m = self.machines.get(d.worker_id)
            if m is None or m.stopped is not None or not m.joined:
                results.append(outcomes.DrainResult(d.worker_id, d.cloud, f"cannot reach {d.condor_name}"))
                continue
            m.draining = True
            if not m.jobs:
                self.push(self.clock + self.options.drain_exit, "exit", m.id)
            results.append(outcomes.DrainResult(d.worker_id, d.cloud))
        return results

    def remove(self, orders) -> list[outcomes.RemovalResult]:
        results = []
        for t in orders:
            m = self.machines.get(t.worker_id)
            if m is None or m.removed:
                results.append(outcomes.RemovalResult(t))
                continue
            running = len(m.jobs)
            if m.stopped is None:
                self._stop(m, self.clock, "removed", gone=True)      # its jobs go back to idle now
            m.removed = True
            self.listed.pop(m.id, None)
            results.append(outcomes.RemovalResult(t, requeued=running, running=running))
        return results

    def launch(self, rows: list[tuple[str, Launch]]) -> list[outcomes.LaunchResult]:
        stops = outcomes.BatchStops(self.cfg.shaped_clouds)
        results = []
        for wid, launch in rows:
            # the daemon's LaunchResult and batch rules (Daemon.launch)
            result = functools.partial(outcomes.LaunchResult, wid, launch.cloud, launch.reason, shape=launch.shape)
            skip = stops.skip(launch.cloud, launch.shape)
            if skip:
                results.append(result(blame=outcomes.Blame.SKIPPED, error=skip))
                continue
            try:
                rid = self.start_machine(wid, launch)
                results.append(result(resource_id=rid))
                continue
            except CloudError as err:
                r = result(blame=outcomes.Blame.CLOUD, error=str(err), kind=str(err.kind),
                           retry_after=err.retry_after)
            self.launch_failures += 1
            stops.failed(r)
            results.append(r)
        return results

    def start_machine(self, wid: str, launch: Launch) -> str:
        cfg = self.cfg.cloud(launch.cloud)
        shape = cfg.shape_of(launch.shape)
        model = self.models[launch.cloud]
        rate = model.capacity_error_rate(shape.name)
        if rate > 0 and self.rng_capacity.random() < rate:
            raise CloudError(ErrorKind.CAPACITY, f"InsufficientInstanceCapacity: no {shape.name} capacity "
                                                 f"(simulated)")
        now = self.clock
        m = Machine(wid, launch.cloud, shape, now, shape.cpus, shape.memory, shape.disk * 1024, shape.gpus,
                    resource=Resource(wid, f"sim-{wid}"))
        self.machines[wid] = self.listed[wid] = m
        self.rate += shape.price or 0.0
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        self.push(now + model.boot.draw(self.rng_boot), "join", wid)
        if model.interruptions > 0:
            self.push(now + self.rng_spot.expovariate(model.interruptions / 3600.0), "notice", wid)
        self.changed = True
        return f"sim-{wid}"

    # ------------------------------------------------------------ when to cycle
    def step(self) -> float:
        return min(self.settings.interval, BOOT_POLL) if self.starting else self.settings.interval

    def timers(self, plan: Plan) -> float:
        """The earliest time at which a cycle would decide something new without any event."""
        s = self.settings
        now = self.clock
        wake = now if self.refused else math.inf
        for w in self.records.values():
            if w.state is State.IDLE:
                wake = min(wake, w.state_since + s.idle_timeout)
            if w.state in lifecycle.STARTING:
                wake = min(wake, w.created_at + s.boot_timeout)
            elif w.id not in plan.seen:       # joined, and gone from the collector: lost after lost_timeout
                wake = min(wake, max(self.seen_at.get(w.id, w.last_seen), w.state_since) + s.lost_timeout)
        for h in [*self.health.values(), *self.shape_health.values()]:
            if h.backoff_until > now:
                wake = min(wake, h.backoff_until)
        for e in self.redrain.values():
            wake = min(wake, max(e.not_before, now))
        return wake

    # ------------------------------------------------------------ the run
    def run(self) -> Result:
        jobs = self.jobs
        for i, j in enumerate(jobs):
            self.push(EPOCH + j.submit, "submit", i)
        horizon = EPOCH + (jobs[-1].submit if jobs else 0.0) + self.options.horizon
        next_cycle = EPOCH
        note = ""
        while True:
            t_event = self.events[0][0] if self.events else math.inf
            t = min(t_event, next_cycle)
            if t == math.inf:
                break
            if t > horizon:
                note = f"stopped at the horizon, {self.options.horizon / 86400:g} simulated days after the last submit"
                break
            self.advance(t)
            while self.events and self.events[0][0] <= t:
                _, _, kind, what = heapq.heappop(self.events)
                self.handle(kind, what)
            self.negotiate()
            if any(not self.machines[w].jobs for w in self.emptied):
                self.changed = True
            self.emptied.clear()
            if self.changed:
                self.changed = False
                next_cycle = min(next_cycle, self.grid(self.last_cycle, t))
            if t >= next_cycle:
                try:
                    plan = self.cycle()
                except Exception as err:     # the daemon logs it and fails the same way every cycle
                    note = (f"the scheduler's cycle failed at {t - EPOCH:.0f} s: {type(err).__name__}: {err} "
                            f"(the daemon would retry every cycle)")
                    break
                self.last_cycle = t
                self.negotiate()
                self.changed = False
                wake = self.timers(plan)
                if self.options.every_tick and (self.records or self.idle_count):
                    wake = t
                next_cycle = self.grid(self.last_cycle, wake) if wake < math.inf else math.inf
            self.samples.append(Sample(t - EPOCH, self.idle_count, self.running, self.alive, self.spend))
            if self.completed == len(jobs) and not self.records and self.alive == 0:
                break
        return self.result(note)

    def grid(self, last: float, t: float) -> float:
        """The daemon's first cycle at or after t (it cycles every step after its last cycle)."""
        step = self.step()
        if last == -math.inf or t <= last:
            return max(t, last + step) if last != -math.inf else t
        return last + step * max(math.ceil((t - last) / step - 1e-9), 1)

    # ------------------------------------------------------------ the numbers
    def spending(self) -> list[Spending]:
        """Every worker's share of the bill as appliance/budget.py counts it (price, launch,
        end or None while it runs): what decide() checks the budgets against."""
        return [Spending(m.shape.price, m.launched, m.stopped, m.cloud, m.shape.name) for m in self.machines.values()]

    def result(self, note: str = "") -> Result:
        end = self.clock
        lifetime, busy, cpu_seconds = 0.0, 0.0, 0.0
        by_shape: dict[str, dict] = {}
        for m in self.machines.values():
            stop = m.stopped if m.stopped is not None else end
            life = stop - m.launched
            b = m.busy + ((stop - m.busy_since) if m.busy_since is not None else 0.0)
            lifetime += life
            busy += b
            cpu_seconds += m.shape.cpus * life
            key = f"{m.cloud}/{m.shape.name}"
            row = by_shape.setdefault(key, {"price": m.shape.price, "workers": 0, "hours": 0.0, "cost": 0.0})
            row["workers"] += 1
            row["hours"] += life / 3600
            row["cost"] += (m.shape.price or 0.0) * life / 3600
        for row in by_shape.values():
            row["hours"], row["cost"] = round(row["hours"], 3), round(row["cost"], 4)
        for i in range(len(self.jobs)):       # runs still going at a horizon stop
            if self.status[i] == RUNNING:
                self.job_cpu_seconds += self.jobs[i].cpus * (end - self.started[i])
        never: dict[str, str] = {}
        for i, s in enumerate(self.status):
            if s != DONE:
                key = _group_key(self.req[i])
                if key not in never:
                    status, reason = self.last_groups.get(key, ("", "still running at the end"))
                    never[key] = f"{status}: {reason}" if status else reason
        # submit to the start of the run that completed
        waits = sorted(self.started[i] - EPOCH - j.submit for i, j in enumerate(self.jobs) if self.status[i] == DONE)
        return Result(
            jobs=len(self.jobs), completed=self.completed, requeued=self.requeued,
            makespan=self.last_done - EPOCH if self.completed else 0.0, end=end - EPOCH,
            cost=spent(self.spending(), EPOCH, end), worker_hours=lifetime / 3600,
            idle_fraction=(1 - busy / lifetime) if lifetime else 0.0,
            cpu_utilisation=(self.job_cpu_seconds / cpu_seconds) if cpu_seconds else 0.0,
            workers=len(self.machines), launch_failures=self.launch_failures, interruptions=self.interruptions,
            peak_workers=self.peak, wait_mean=sum(waits) / len(waits) if waits else 0.0,
            wait_p95=waits[min(int(0.95 * len(waits)), len(waits) - 1)] if waits else 0.0,
            cycles=self.cycles, by_shape=by_shape, never_ran=never, samples=self.samples, note=note)


def simulate(cfg: Config, jobs: Sequence[Job], options: SimOptions = SimOptions()) -> Result:
    """Replay `jobs` through the appliance configured by `cfg` on simulated clouds."""
    return Simulation(cfg, jobs, options).run()
