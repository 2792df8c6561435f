"""Phase 4, orphans: cloud resources with our labels but no live worker row
(left by a crash, a lost database, or a removal that failed) are removed."""
from __future__ import annotations

from ..model import Observation
from .draft import Draft
from .plan import Terminate


def find_orphans(d: Draft, obs: Observation) -> None:
    live_ids = {w.id for w in d.live}
    ended_now = {t.worker_id for t in d.plan.terminations}
    for cloud, listing in obs.resources.items():
        if listing is None:
            continue     # the listing failed: absence proves nothing
        for worker_id, res in listing.items():
            if worker_id not in live_ids and worker_id not in ended_now and not res.gone:
                # we know nothing of it: it may have joined, so withdraw its ads too
                d.plan.orphans.append(Terminate(worker_id, cloud, res.resource_id,
                                                "orphan: carries our labels but no live worker row",
                                                withdraw=True, orphan=True))
