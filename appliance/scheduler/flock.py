"""Phase 7, federation: local jobs this appliance will not run are sent to other pools
(federation.flock_to), and each allowed remote schedd is reported.

Sending away: a local group that no enabled cloud can run (none could, or only
disabled ones), or whose jobs wait only
at max_workers, gets a FlockOut: the act step sets those jobs' FlockTo, and the
schedd (FLOCK_BY_DEFAULT false) flocks them, and only them. From the next cycle
their group names the pools it was sent to; place() launches nothing for it and
reports it as "sent away" (it may still run on a worker here that has room).
Jobs of remote schedds are never sent on: they are not ours.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..model import Observation
from .draft import Draft
from .place import Placement
from .plan import FlockOut, ScheddReport


def flock_to_value(flock_to: Sequence) -> str:
    """A sent-away job's FlockTo: the pools as FLOCK_TO names them, after "default".

    HTCondor 23.9's schedd counts a job whose FlockTo names a FLOCK_TO pool as idle for
    that pool only when "default" is in the list too (with FLOCK_BY_DEFAULT false it
    subtracts the pool it has just added); the pool's own name is what lets the job be
    negotiated there. So both are needed: the pools see the jobs, and only these jobs."""
    return ", ".join(["default", *(t.collector for t in flock_to)])


def send_away(d: Draft, placement: Placement, flock_to: Sequence) -> None:
    if not flock_to or not placement.overflow:
        return
    value = flock_to_value(flock_to)
    pools = tuple(t.name for t in flock_to)
    for i, report in enumerate(d.plan.groups):
        overflow = placement.overflow.get(report.key)
        if overflow is None or report.schedd:
            continue
        count, why = overflow
        d.plan.flock_outs.append(FlockOut(report.key, count, value, pools, f"{why}: {count} job(s) to "
                                                                          f"{', '.join(pools)}"))
        d.plan.groups[i] = replace(report, status="sending away",
                                   reason=f"{why}; sending {count} job(s) to {', '.join(pools)} by flocking")


def report_schedds(d: Draft, obs: Observation) -> None:
    counted: dict[str, int] = {}
    for g in obs.groups:
        if g.schedd:
            counted[g.schedd] = counted.get(g.schedd, 0) + g.count
    for s in obs.schedds:
        d.plan.schedds.append(ScheddReport(s.name, str(s.state), s.detail, s.offered, counted.get(s.name, 0),
                                           s.users))
