"""Phase 5, drains to send: this cycle's new drains plus earlier ones whose
sending failed and whose retry is due. A drain is idempotent, so after a
restart every draining worker is simply drained again."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ..lifecycle import State
from .draft import Draft
from .plan import Drain, RedrainEntry

RETRY_FIRST = 5.0      # seconds before the first retry of a failed drain; doubles per failure
RETRY_MAX = 300.0


def plan_drains(d: Draft, pending: Mapping[str, RedrainEntry]) -> None:
    by_id = {w.id: w for w in d.live}
    # a worker that ended (or was never ours) needs no drain
    schedule = {wid: e for wid, e in pending.items() if d.state.get(wid) is State.DRAINING}
    reasons = {dr.worker_id: dr.reason for dr in d.plan.drains}
    for wid in reasons:
        schedule.setdefault(wid, RedrainEntry(0.0, 0))
    due = []
    for wid, entry in schedule.items():
        name = d.plan.seen.get(wid) or by_id[wid].condor_name
        if entry.not_before <= d.now and name:     # without a name there is nobody to address yet
            due.append(Drain(wid, reasons.get(wid, f"retry {entry.failures} of a failed drain"), name,
                             by_id[wid].cloud))
    d.plan.drains = due
    d.plan.redrain = schedule


def after_drain(entry: RedrainEntry, now: float) -> RedrainEntry:
    """A drain failed to send: retry later, each time waiting longer."""
    failures = entry.failures + 1
    return replace(entry, not_before=now + min(RETRY_FIRST * 2 ** failures, RETRY_MAX), failures=failures)
