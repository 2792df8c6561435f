"""Phase 6, stranded jobs: jobs still "running" on workers the appliance
removed are put back in the queue, retried every cycle until none is left
(after a restart the schedd may not have started their shadows yet), whatever
the order in which the appliance and HTCondor stopped and started."""
from __future__ import annotations

from collections.abc import Mapping

from ..model import Observation
from .draft import Draft
from .plan import StrandedJobs

# retry this long, then give up with an event: the job lease (40 min) ends the
# wait by itself in the end, and an operator can condor_vacate_job meanwhile
REQUEUE_PATIENCE = 1800.0
# and forget a worker once none of its jobs has shown "running" for this long, not at the
# first answer without one: right after a restart the schedd lists such a job idle, and its
# reconnect shadow makes it "running" again a few seconds later (seen in CI: the job then
# waited out the whole 40-minute lease on a worker that was gone)
REQUEUE_SETTLE = 60.0


def plan_requeues(d: Draft, obs: Observation, stranded: Mapping[str, StrandedJobs]) -> None:
    if not obs.schedd_ok:
        return       # nothing can be asked of the queue now; keep them for later
    for s in stranded.values():
        if d.now - s.since > REQUEUE_PATIENCE:
            d.plan.requeues_abandoned.append(s)
        else:
            d.plan.requeues.append(s)
