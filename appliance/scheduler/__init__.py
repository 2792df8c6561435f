"""Pure decisions: (observation, workers, clouds, settings) -> Plan. No I/O.

One cycle decides, in this order:
1. reconcile: what the collector and the clouds say moves each worker through
   its lifecycle (joined, busy, idle, vanished, boot timeout, lost);
2. place demand: each group of idle jobs is first placed on capacity that
   exists or is already booting (so nothing is launched twice for the same
   jobs), and only the rest asks for new workers, cloud by cloud in priority
   order, within per-cloud and global max_workers and max_booting;
3. scale down: idle workers past idle_timeout with nothing to run are drained
   (never killed: a drain lets running jobs finish), booting workers nobody
   needs any more are cancelled, and workers over a lowered max are removed;
4. orphans: cloud resources with our labels but no live worker are removed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from . import lifecycle
from .config import CloudConfig, SchedulerConfig
from .lifecycle import State
from .matching import Verdict, can_run, fits, per_worker, rounded_disk, rounded_memory, template_ad
from .model import CloudHealth, JobGroup, Observation, Worker

# A worker row left in `requested` (the daemon died during the cloud call) is
# given this long to show up in the cloud's listing before it is failed.
REQUESTED_GRACE = 60.0


@dataclass(frozen=True)
class CloudView:
    config: CloudConfig
    health: CloudHealth

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class Transition:
    worker_id: str
    to: State
    reason: str


@dataclass(frozen=True)
class Launch:
    cloud: str
    reason: str


@dataclass(frozen=True)
class Drain:
    worker_id: str
    reason: str


@dataclass(frozen=True)
class Terminate:
    worker_id: str
    cloud: str
    resource_id: str
    reason: str


@dataclass(frozen=True)
class GroupReport:
    key: str
    count: int
    cpus: int
    memory: int
    disk: int
    requirements: str
    target_clouds: tuple[str, ...] | None
    clouds: tuple[str, ...]      # enabled clouds whose workers could run these jobs
    status: str                  # served | launching | waiting | unschedulable
    reason: str


@dataclass
class Plan:
    transitions: list[Transition] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    terminations: list[Terminate] = field(default_factory=list)
    orphans: list[Terminate] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)     # worker id -> condor name, seen now
    groups: list[GroupReport] = field(default_factory=list)


@dataclass
class _Capacity:
    """Free room on one worker (existing, booting or planned this cycle)."""
    worker_id: str | None
    cloud: str
    cpus: int
    memory: int
    disk: int
    joined: bool
    created_at: float
    assigned: int = 0


def launch_block(view: CloudView, now: float) -> str | None:
    """Why this cloud may not launch now, or None if it may."""
    h = view.health
    if not h.enabled:
        return "disabled"
    if h.breaker_open:
        return f"stopped after {h.failures} quick failures in a row ({h.last_error}); re-enable it to retry"
    if h.backoff_until > now:
        return f"backing off for {h.backoff_until - now:.0f}s after: {h.last_error}"
    return None


def describe(group: JobGroup) -> str:
    return f"{group.cpus} cpu, {group.memory} MB, {group.disk // 1024} MB disk"


def decide(obs: Observation, workers: Sequence[Worker], clouds: Sequence[CloudView],
           settings: SchedulerConfig, kills: Mapping[str, bool] | None = None,
           templates: Mapping[str, object] | None = None) -> Plan:
    plan = Plan()
    now = obs.now
    kills = kills or {}
    views = {c.name: c for c in clouds}
    templates = dict(templates or {})
    for c in clouds:
        if c.name not in templates:
            templates[c.name] = template_ad(c.config)

    live = [w for w in workers if w.state in lifecycle.LIVE]
    state = {w.id: w.state for w in live}
    since = {w.id: w.state_since for w in live}

    def move(w: Worker, to: State, reason: str) -> None:
        lifecycle.check(state[w.id], to)
        state[w.id] = to
        since[w.id] = now
        plan.transitions.append(Transition(w.id, to, reason))

    def end(w: Worker, to: State, reason: str) -> None:
        move(w, to, reason)
        plan.terminations.append(Terminate(w.id, w.cloud, w.resource_id, reason))

    # ---- 1. reconcile -----------------------------------------------------
    for w in live:
        listing = obs.resources.get(w.cloud)
        res = listing.get(w.id) if listing is not None else None
        slot = obs.slots.get(w.id) if obs.slots is not None else None
        if slot is not None:
            plan.seen[w.id] = slot.name

        if w.id in kills:
            if kills[w.id]:
                end(w, State.RETIRED, "removed by operator without draining")
            elif w.state in lifecycle.STARTING:
                end(w, State.RETIRED, "cancelled by operator before it joined")
            elif w.state in (State.IDLE, State.BUSY):
                move(w, State.DRAINING, "drain requested by operator")
                plan.drains.append(Drain(w.id, "drain requested by operator"))
            continue

        if listing is not None and (res is None or not res.alive):
            gone = res.detail if res is not None and res.detail else "its resource is gone"
            if w.state is State.REQUESTED:
                if now - w.created_at > REQUESTED_GRACE:
                    end(w, State.FAILED, "launch never completed (the scheduler stopped during it?)")
            elif w.state is State.DRAINING:
                end(w, State.RETIRED, f"drained and exited ({gone})")
            else:
                end(w, State.FAILED, f"vanished: {gone}")
            continue

        if w.state is State.REQUESTED and res is not None:
            # the daemon stopped during this launch, but the cloud has it: adopt it
            move(w, State.BOOTING, f"adopted: found in the cloud as {res.resource_id}")

        if obs.slots is None:
            continue   # collector unreachable: judge nothing on its absence

        if slot is not None:
            if state[w.id] in lifecycle.STARTING:
                move(w, State.BUSY if slot.claimed else State.IDLE, f"joined the pool as {slot.name}")
            elif w.state is State.IDLE and slot.claimed:
                move(w, State.BUSY, f"running jobs in {slot.claimed} slot(s)")
            elif w.state is State.BUSY and not slot.claimed:
                move(w, State.IDLE, "its jobs finished")
            continue

        # live resource, absent from the collector
        if state[w.id] in lifecycle.STARTING:
            if now - max(w.created_at, obs.watching_since) > settings.boot_timeout:
                end(w, State.FAILED, f"did not join the pool within boot_timeout ({settings.boot_timeout:.0f}s)")
        elif now - max(w.last_seen, w.state_since, obs.watching_since) > settings.lost_timeout:
            if w.state is State.DRAINING:
                end(w, State.RETIRED, "drained; removing what was left of it")
            else:
                end(w, State.FAILED, f"lost: not in the collector for {settings.lost_timeout:.0f}s")

    # ---- 2. place demand --------------------------------------------------
    capacity: list[_Capacity] = []
    for w in live:
        st = state[w.id]
        if st not in (State.REQUESTED, State.BOOTING, State.IDLE, State.BUSY) or w.cloud not in views:
            continue
        slot = obs.slots.get(w.id) if obs.slots is not None else None
        if slot is not None:
            capacity.append(_Capacity(w.id, w.cloud, slot.free_cpus, slot.free_memory, slot.free_disk,
                                      True, w.created_at))
        elif st is State.BUSY:
            continue    # busy, and its room unknown until it advertises again: count on none
        else:
            size = views[w.cloud].config.worker
            capacity.append(_Capacity(w.id, w.cloud, size.cpus, size.memory, size.disk * 1024,
                                      st not in lifecycle.STARTING, w.created_at))
    capacity.sort(key=lambda c: (not c.joined, c.created_at))

    live_count = {name: 0 for name in views}
    for w in live:
        if state[w.id] in lifecycle.LIVE and w.cloud in live_count:
            live_count[w.cloud] += 1
    total_live = sum(1 for w in live if state[w.id] in lifecycle.LIVE)
    booting = sum(1 for w in live if state[w.id] in lifecycle.STARTING)

    ordered = sorted(clouds, key=lambda c: (c.config.priority, c.name))
    blocked = {c.name: launch_block(c, now) for c in clouds}

    runnable_on: dict[str, set[str]] = {}     # group key -> clouds whose workers could run it
    for group in obs.groups:
        verdicts: dict[str, Verdict] = {c.name: can_run(group, c.config, templates[c.name]) for c in ordered}
        runnable = [c for c in ordered if verdicts[c.name].ok]
        usable = {c.name for c in runnable}
        runnable_on[group.key] = usable
        remaining = group.count
        for cap in capacity:
            if remaining <= 0:
                break
            if cap.cloud not in usable:
                continue
            n = min(remaining, fits(cap.cpus, cap.memory, cap.disk, group))
            if n > 0:
                _take(cap, group, n)
                remaining -= n

        launched = 0
        waits: list[str] = []
        for c in runnable:
            if remaining <= 0:
                break
            if blocked[c.name]:
                waits.append(f"{c.name}: {blocked[c.name]}")
                continue
            pw = per_worker(c.config, group)
            while remaining > 0:
                limit = _headroom(c, live_count, total_live, booting, settings)
                if limit:
                    waits.append(f"{c.name}: {limit}")
                    break
                size = c.config.worker
                cap = _Capacity(None, c.name, size.cpus, size.memory, size.disk * 1024, False, now)
                n = min(remaining, pw)
                _take(cap, group, n)
                capacity.append(cap)
                remaining -= n
                live_count[c.name] += 1
                total_live += 1
                booting += 1
                launched += 1
                plan.launches.append(Launch(c.name, f"{group.count} idle job(s) asking {describe(group)}"))

        enabled_runnable = tuple(c.name for c in runnable if c.health.enabled)
        if not enabled_runnable:
            why = "; ".join(f"{c.name}: {verdicts[c.name].reason or 'disabled'}" for c in ordered) or "no clouds configured"
            status, reason = "unschedulable", f"no enabled cloud can run it ({why})"
        elif remaining > 0:
            status, reason = "waiting", f"{remaining} job(s) without a worker: " + "; ".join(waits)
        elif launched:
            status, reason = "launching", f"{launched} new worker(s)"
        else:
            status, reason = "served", "existing or booting workers have room"
        plan.groups.append(GroupReport(group.key, group.count, group.cpus, group.memory, group.disk,
                                       group.requirements, group.target_clouds, enabled_runnable,
                                       status, reason))

    # ---- 3. scale down ----------------------------------------------------
    assigned = {c.worker_id: c.assigned for c in capacity if c.worker_id}
    by_id = {w.id: w for w in live}
    for w in live:
        st = state[w.id]
        # with the queue unreadable nothing is known to be unneeded: drain and cancel nothing
        if st is State.IDLE and w.id in plan.seen and obs.schedd_ok and not assigned.get(w.id) \
                and not _could_run_any(obs.slots[w.id], w.cloud, obs.groups, runnable_on):
            idle_for = now - since[w.id]
            if idle_for >= settings.idle_timeout:
                move(w, State.DRAINING, f"idle for {idle_for:.0f}s with no job it could run")
                plan.drains.append(Drain(w.id, f"idle for {idle_for:.0f}s"))
        elif st in lifecycle.STARTING and obs.schedd_ok and not assigned.get(w.id):
            end(w, State.RETIRED, "cancelled: no idle job needs it any more")

    for view in clouds:
        mine = [by_id[i] for i, st in state.items()
                if by_id[i].cloud == view.name and st in lifecycle.LIVE]
        excess = len(mine) - view.health.max_workers
        if excess <= 0:
            continue
        # newest booting first, then the longest idle; busy workers are never cut short
        starting = sorted((w for w in mine if state[w.id] in lifecycle.STARTING), key=lambda w: -w.created_at)
        idle = sorted((w for w in mine if state[w.id] is State.IDLE), key=lambda w: since[w.id])
        for w in (starting + idle)[:excess]:
            reason = f"over max_workers ({view.health.max_workers}) for {view.name}"
            if state[w.id] is State.IDLE:
                move(w, State.DRAINING, reason)
                plan.drains.append(Drain(w.id, reason))
            else:
                end(w, State.RETIRED, reason)

    # ---- 4. orphans -------------------------------------------------------
    live_ids = {w.id for w in live}
    ended_now = {t.worker_id for t in plan.terminations}
    for cloud, listing in obs.resources.items():
        if listing is None:
            continue
        for worker_id, res in listing.items():
            if worker_id not in live_ids and worker_id not in ended_now and not res.gone:
                plan.orphans.append(Terminate(worker_id, cloud, res.resource_id,
                                              "orphan: carries our labels but no live worker row"))
    return plan


def _could_run_any(slot, cloud: str, groups, runnable_on: Mapping[str, set[str]]) -> bool:
    """Some idle job could start on this worker now. Placement may have given the
    jobs to other workers whose collector ads are a few seconds stale; the
    negotiator, not our plan, decides where they run, so such a worker stays."""
    return any(cloud in runnable_on.get(g.key, ()) and fits(slot.free_cpus, slot.free_memory, slot.free_disk, g) > 0
               for g in groups)


def _take(cap: _Capacity, group: JobGroup, n: int) -> None:
    cap.cpus -= n * group.cpus
    cap.memory -= n * rounded_memory(group.memory)
    cap.disk -= n * rounded_disk(group.disk)
    cap.assigned += n


def _headroom(c: CloudView, live_count: Mapping[str, int], total_live: int, booting: int,
              settings: SchedulerConfig) -> str | None:
    """Why no further worker may be launched on c in this cycle, or None."""
    if live_count[c.name] >= c.health.max_workers:
        return f"at max_workers ({c.health.max_workers})"
    if total_live >= settings.max_workers:
        return f"at the global max_workers ({settings.max_workers})"
    if booting >= settings.max_booting:
        return f"at max_booting ({settings.max_booting} workers already starting)"
    return None
