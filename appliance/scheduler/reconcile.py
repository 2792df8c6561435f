"""Phase 1, reconcile: what the collector and the clouds say moves each worker
through its lifecycle (operator requests, joined, busy, idle, vanished, boot
timeout, lost); and what those moves mean for each cloud's health.
"""
from __future__ import annotations

from collections.abc import Mapping

from .. import backoff, lifecycle
from ..config import SchedulerConfig
from ..lifecycle import State
from ..model import SPOT_INTERRUPTION, STALE_CLAIM, CloudHealth, Observation
from .draft import Draft

# A worker row left in `requested` (the daemon died during the cloud call) is
# given this long to show up in the cloud's listing before it is failed.
REQUESTED_GRACE = 60.0


def reconcile(d: Draft, obs: Observation, settings: SchedulerConfig, kills: Mapping[str, bool]) -> None:
    now = d.now
    for w in d.live:
        listing = obs.resources.get(w.cloud)
        res = listing.get(w.id) if listing is not None else None
        slot = obs.slots.get(w.id) if obs.slots is not None else None
        if slot is not None:
            d.plan.seen[w.id] = slot.name

        if w.id in kills:
            if kills[w.id]:
                d.end(w, State.RETIRED, "removed by operator without draining")
            elif w.state in lifecycle.STARTING:
                d.end(w, State.RETIRED, "cancelled by operator before it joined")
            elif w.state in (State.IDLE, State.BUSY):
                d.drain(w, "drain requested by operator")
            continue

        if listing is not None and (res is None or not res.alive):
            gone = res.detail if res is not None and res.detail else "its resource is gone"
            if w.state is State.REQUESTED:
                if now - w.created_at > REQUESTED_GRACE:
                    d.end(w, State.FAILED, "launch never completed (the scheduler stopped during it?)")
            elif res is not None and res.interruption:
                # the cloud took it back: failed whatever it was doing; its jobs are requeued with its removal
                d.end(w, State.FAILED, f"{SPOT_INTERRUPTION}: {gone}")
            elif w.state is State.DRAINING:
                d.end(w, State.RETIRED, f"drained and exited ({gone})")
            else:
                d.end(w, State.FAILED, f"vanished: {gone}")
            continue

        if w.state is State.REQUESTED and res is not None:
            # the daemon stopped during this launch, but the cloud has it: adopt it
            d.move(w, State.BOOTING, f"adopted: found in the cloud as {res.resource_id}")

        if obs.slots is None:
            continue   # collector unreachable: judge nothing on its absence

        if slot is not None and slot.notice == "spot":
            # its own report of the 2-minute notice: it has vacated its jobs; end it now (the
            # removal requeues whatever still shows running) so the demand is placed this cycle
            d.end(w, State.FAILED, f"{SPOT_INTERRUPTION}: the worker reported its interruption notice")
            continue

        if slot is not None:
            if d.state[w.id] in lifecycle.STARTING:
                d.move(w, State.BUSY if slot.claimed else State.IDLE, f"joined the pool as {slot.name}")
            elif w.state is State.IDLE and slot.claimed:
                d.move(w, State.BUSY, f"running jobs in {slot.claimed} slot(s)")
            elif w.state is State.BUSY and not slot.claimed:
                d.move(w, State.IDLE, f"its claim has run no job for {STALE_CLAIM}s (its release was most likely "
                                      f"lost): idle" if slot.stale_claims else "its jobs finished")
            continue

        # live resource, absent from the collector
        if d.state[w.id] in lifecycle.STARTING:
            if now - max(w.created_at, obs.watching_since) > settings.boot_timeout:
                d.end(w, State.FAILED, f"did not join the pool within boot_timeout ({settings.boot_timeout:.0f}s)")
        elif now - max(w.last_seen, w.state_since, obs.watching_since) > settings.lost_timeout:
            if w.state is State.DRAINING:
                d.end(w, State.RETIRED, "drained; removing what was left of it")
            else:
                d.end(w, State.FAILED, f"lost: not in the collector for {settings.lost_timeout:.0f}s")
    d.plan.requests_done = list(kills)    # unknown or ended workers' requests are done too


def judge_health(d: Draft, health: Mapping[str, CloudHealth], settings: SchedulerConfig) -> dict[str, CloudHealth]:
    """Each cloud's health after this cycle's moves: a worker that joined shows
    the cloud works; one that failed before joining is a quick failure (backoff,
    and the breaker after several in a row)."""
    current = dict(health)
    for (w, frm), t in zip(d.moved_from, d.plan.transitions, strict=True):
        if frm not in lifecycle.STARTING:
            continue
        joined = t.to in (State.IDLE, State.BUSY)
        d.plan.reschedule |= joined       # match its jobs now, not at the next negotiation cycle
        h = current.get(w.cloud)
        if h is None:
            continue
        if joined:
            current[w.cloud] = backoff.after_join(h)
        elif t.to is State.FAILED and not t.reason.startswith(SPOT_INTERRUPTION):
            # (a spot interruption is the market's doing, not a broken cloud: no backoff)
            current[w.cloud] = backoff.after_quick_failure(h, t.reason, d.now, settings.backoff_base)
    changed = {name: h for name, h in current.items() if h != health[name]}
    d.plan.health.update(changed)
    return current
