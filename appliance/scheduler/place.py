"""Phase 2, place demand: each group of idle jobs is first placed on capacity
that exists or is already booting (so nothing is launched twice for the same
jobs), and only the rest asks for new workers, cloud by cloud in priority
order, within per-cloud and global max_workers and max_booting.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import lifecycle
from ..config import SchedulerConfig
from ..lifecycle import State
from ..matching import Verdict, can_run, fits, per_worker, rounded_disk, rounded_memory
from ..model import JobGroup, Observation
from .draft import Draft
from .plan import CloudView, GroupReport, Launch


@dataclass
class Capacity:
    """Free room on one worker (existing, booting or planned this cycle)."""
    worker_id: str | None
    cloud: str
    cpus: int
    memory: int
    disk: int
    joined: bool
    created_at: float
    assigned: int = 0

    def take(self, group: JobGroup, n: int) -> None:
        self.cpus -= n * group.cpus
        self.memory -= n * rounded_memory(group.memory)
        self.disk -= n * rounded_disk(group.disk)
        self.assigned += n


@dataclass
class Placement:
    """What placing the demand found out, for scale-down and sending away."""
    assigned: dict[str, int] = field(default_factory=dict)          # worker id -> jobs placed on it
    runnable_on: dict[str, set[str]] = field(default_factory=dict)  # group key -> clouds that could run it
    # local group key -> (jobs, why) that this appliance will not run: no enabled cloud can
    # run them, or they wait only at max_workers (per cloud or global); flocking may take them
    overflow: dict[str, tuple[int, str]] = field(default_factory=dict)


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


def whose(group: JobGroup) -> str:
    """' of schedd X' for a remote schedd's jobs, for launch reasons."""
    return f" of schedd {group.schedd}" if group.schedd else ""


def sent_away(group: JobGroup, flock_to: Sequence) -> tuple[str, ...]:
    """The federation.flock_to pools a local group's jobs were sent to (their FlockTo names them)."""
    if group.schedd or not group.flock_to:
        return ()
    asked = {p.lower() for p in group.flock_to}
    return tuple(t.name for t in flock_to if t.collector.lower() in asked)


def existing_capacity(d: Draft, obs: Observation, views: Mapping[str, CloudView]) -> list[Capacity]:
    """Room on workers that exist or are starting, joined ones first, oldest first."""
    capacity = []
    for w in d.live:
        st = d.state[w.id]
        if st not in (State.REQUESTED, State.BOOTING, State.IDLE, State.BUSY) or w.cloud not in views:
            continue
        slot = obs.slots.get(w.id) if obs.slots is not None else None
        if slot is not None:
            capacity.append(Capacity(w.id, w.cloud, slot.free_cpus, slot.free_memory, slot.free_disk,
                                     True, w.created_at))
        elif st is State.BUSY:
            continue    # busy, and its room unknown until it advertises again: count on none
        else:
            size = views[w.cloud].config.worker
            capacity.append(Capacity(w.id, w.cloud, size.cpus, size.memory, size.disk * 1024,
                                     st not in lifecycle.STARTING, w.created_at))
    capacity.sort(key=lambda c: (not c.joined, c.created_at))
    return capacity


def place(d: Draft, obs: Observation, clouds: Sequence[CloudView], settings: SchedulerConfig,
          templates: Mapping[str, object], flock_to: Sequence = ()) -> Placement:
    now = d.now
    views = {c.name: c for c in clouds}
    capacity = existing_capacity(d, obs, views)
    live_count = {name: 0 for name in views}
    for w in d.in_state(*lifecycle.LIVE):
        if w.cloud in live_count:
            live_count[w.cloud] += 1
    total_live = len(d.in_state(*lifecycle.LIVE))
    booting = len(d.in_state(*lifecycle.STARTING))

    ordered = sorted(clouds, key=lambda c: (c.config.priority, c.name))
    blocked = {c.name: launch_block(c, now) for c in clouds}
    placement = Placement()

    for group in obs.groups:
        verdicts: dict[str, Verdict] = {c.name: can_run(group, c.config, templates[c.name]) for c in ordered}
        runnable = [c for c in ordered if verdicts[c.name].ok]
        usable = {c.name for c in runnable}
        placement.runnable_on[group.key] = usable
        remaining = group.count
        for cap in capacity:
            if remaining <= 0:
                break
            if cap.cloud not in usable:
                continue
            n = min(remaining, fits(cap.cpus, cap.memory, cap.disk, group))
            if n > 0:
                cap.take(group, n)
                remaining -= n

        launched = 0
        waits: list[str] = []
        only_max_workers = True         # every wait is a max_workers limit
        away = sent_away(group, flock_to)
        for c in (() if away else runnable):     # nothing is launched for jobs sent away
            if remaining <= 0:
                break
            if blocked[c.name]:
                waits.append(f"{c.name}: {blocked[c.name]}")
                only_max_workers = False
                continue
            pw = per_worker(c.config, group)
            while remaining > 0:
                limit = _headroom(c, live_count, total_live, booting, settings)
                if limit:
                    waits.append(f"{c.name}: {limit}")
                    only_max_workers = only_max_workers and "max_workers" in limit
                    break
                size = c.config.worker
                cap = Capacity(None, c.name, size.cpus, size.memory, size.disk * 1024, False, now)
                n = min(remaining, pw)
                cap.take(group, n)
                capacity.append(cap)
                remaining -= n
                live_count[c.name] += 1
                total_live += 1
                booting += 1
                launched += 1
                d.plan.launches.append(Launch(c.name, f"{group.count} idle job(s){whose(group)} asking "
                                                      f"{describe(group)}"))

        enabled_runnable = tuple(c.name for c in runnable if c.health.enabled)
        if away:
            status = "sent away"
            reason = (f"offered to {', '.join(away)} by flocking: no worker is launched here for it"
                      + (" (workers here have room for some)" if remaining < group.count else ""))
        elif not enabled_runnable:
            why = "; ".join(f"{c.name}: {verdicts[c.name].reason or 'disabled'}" for c in ordered) or "no clouds configured"
            status, reason = "unschedulable", f"no enabled cloud can run it ({why})"
            if not group.schedd:
                placement.overflow[group.key] = (group.count, "no enabled cloud here can run it")
        elif remaining > 0:
            status, reason = "waiting", f"{remaining} job(s) without a worker: " + "; ".join(waits)
            if not group.schedd and waits and only_max_workers:
                placement.overflow[group.key] = (remaining, "waiting at max_workers")
        elif launched:
            status, reason = "launching", f"{launched} new worker(s)"
        else:
            status, reason = "served", "existing or booting workers have room"
        d.plan.groups.append(GroupReport(group.key, group.count, group.cpus, group.memory, group.disk,
                                         group.requirements, group.target_clouds, enabled_runnable,
                                         status, reason, group.schedd, group.owner_hint))

    placement.assigned = {c.worker_id: c.assigned for c in capacity if c.worker_id}
    return placement


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
