"""Phase 3, scale down: idle workers past idle_timeout with nothing to run are
drained (never killed: a drain lets running jobs finish), starting workers
nobody needs any more are cancelled (but not those kept as warm headroom), and
workers over a lowered max_workers are removed in the order a scale-in policy gives.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .. import lifecycle
from ..config import SchedulerConfig
from ..lifecycle import State
from ..matching import fits
from ..model import JobGroup, Observation, SlotSummary, Worker
from .draft import Draft
from .place import Placement
from .plan import CloudView

# Orders the workers that may go when a cloud is over its max_workers, first to
# go first. Busy and draining workers are never offered: a running job is never cut short.
ScaleInPolicy = Callable[[Sequence[Worker], Draft], list[Worker]]


def newest_starting_then_longest_idle(candidates: Sequence[Worker], d: Draft) -> list[Worker]:
    """A worker still starting has cost least and delivered nothing: cancel the
    newest of those first; then drain the workers idle the longest."""
    starting = sorted((w for w in candidates if d.state[w.id] in lifecycle.STARTING), key=lambda w: -w.created_at)
    idle = sorted((w for w in candidates if d.state[w.id] is State.IDLE), key=lambda w: d.since[w.id])
    return starting + idle


def scale_down(d: Draft, obs: Observation, clouds: Sequence[CloudView], placement: Placement,
               settings: SchedulerConfig, policy: ScaleInPolicy = newest_starting_then_longest_idle) -> None:
    drain_or_cancel_unneeded(d, obs, placement, settings, {c.name: c for c in clouds})
    for view in clouds:
        enforce_max_workers(d, view, policy)


def drain_or_cancel_unneeded(d: Draft, obs: Observation, placement: Placement, settings: SchedulerConfig,
                             views: Mapping[str, CloudView] | None = None) -> None:
    for w in d.live:
        st = d.state[w.id]
        # with the queue unreadable nothing is known to be unneeded: drain and cancel nothing
        if not obs.schedd_ok or placement.assigned.get(w.id):
            continue
        kept = placement.kept.get(w.id)
        if st is State.IDLE and w.id in d.plan.seen \
                and not could_run_any(obs.slots[w.id], (w.cloud, shape_name(w, views)), obs.groups,
                                      placement.runnable_on):
            idle_for = d.now - d.since[w.id]
            if idle_for >= settings.idle_timeout:
                if kept:
                    d.plan.kept[w.id] = f"idle for {idle_for:.0f}s, kept: {kept}"
                else:
                    d.drain(w, f"idle for {idle_for:.0f}s with no job it could run", f"idle for {idle_for:.0f}s")
        elif st in lifecycle.STARTING:
            if kept:
                d.plan.kept[w.id] = f"starting, kept: {kept}"
            else:
                d.end(w, State.RETIRED, "cancelled: no idle job needs it any more")


def enforce_max_workers(d: Draft, view: CloudView, policy: ScaleInPolicy) -> None:
    mine = [w for w in d.in_state(*lifecycle.LIVE) if w.cloud == view.name]
    excess = len(mine) - view.health.max_workers
    if excess <= 0:
        return
    removable = [w for w in mine if d.state[w.id] in lifecycle.STARTING or d.state[w.id] is State.IDLE]
    reason = f"over max_workers ({view.health.max_workers}) for {view.name}"
    for w in policy(removable, d)[:excess]:
        if d.state[w.id] is State.IDLE:
            d.drain(w, reason)
        else:
            d.end(w, State.RETIRED, reason)


def shape_name(w: Worker, views: Mapping[str, CloudView] | None) -> str:
    """The worker's shape as its cloud's configuration knows it (a worker recorded before
    shapes, or of a shape since removed from the file, is sized as CloudConfig.shape_of says)."""
    view = (views or {}).get(w.cloud)
    return view.config.shape_of(w.shape).name if view is not None else w.shape


def could_run_any(slot: SlotSummary, worker: tuple[str, str], groups: Iterable[JobGroup],
                  runnable_on: Mapping[str, set[tuple[str, str]]]) -> bool:
    """Some idle job could start on this worker, (cloud, shape), now. Placement may have
    given the jobs to other workers whose collector ads are a few seconds stale; the
    negotiator, not our plan, decides where they run, so such a worker stays."""
    return any(worker in runnable_on.get(g.key, ())
               and fits(slot.free_cpus, slot.free_memory, slot.free_disk, g, slot.free_gpus) > 0 for g in groups)
