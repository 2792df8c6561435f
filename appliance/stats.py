"""Boot and job statistics per cloud, for operators (cloud_status -b, -z, -g).

Pure functions over plain records: the store gives each recent launch and how
its start ended (store.boots), the schedd's history each job that completed on
one of our workers (condor.completed_jobs). Nothing here does I/O.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .model import SPOT_INTERRUPTION

# a start ended one of these ways (or has not ended yet: STARTING)
JOINED, FAILED, INTERRUPTED, CANCELLED, STARTING = "joined", "failed", "interrupted", "cancelled", "starting"


@dataclass(frozen=True)
class Boot:
    """One launch: when it was asked for, and how its start ended (None: not yet)."""
    worker_id: str
    cloud: str
    launched_at: float
    ended_at: float | None = None      # when it joined, failed or was cancelled
    to_state: str | None = None        # what it became then: idle/busy/draining, failed or retired
    reason: str = ""                   # why (the transition's reason)

    @property
    def outcome(self) -> str:
        if self.to_state is None:
            return STARTING
        if self.to_state == "failed":
            # the cloud took it back before it joined: not a boot failure (as /metrics counts them)
            return INTERRUPTED if self.reason.startswith(SPOT_INTERRUPTION) else FAILED
        if self.to_state == "retired":
            return CANCELLED
        return JOINED

    @property
    def boot_seconds(self) -> float | None:
        """From the launch request to the worker in the collector, for one that joined."""
        if self.outcome != JOINED or self.ended_at is None:
            return None
        return max(self.ended_at - self.launched_at, 0.0)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile (p from 0 to 100) of values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p90 and max of durations in seconds, rounded to 0.1 s (all None for none)."""
    if not values:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    return {"mean": round(sum(values) / len(values), 1), "p50": round(percentile(values, 50), 1),
            "p90": round(percentile(values, 90), 1), "max": round(max(values), 1)}


def boot_stats(boots: Iterable[Boot], clouds: Sequence[str]) -> list[dict[str, Any]]:
    """Per cloud (the configured ones in order, then any other that launched): its launches,
    how their starts ended, the share of the finished starts that joined, how long joining
    took, and its commonest boot failure reasons.

    success is joined / (joined + failed): cancels (demand gone, an operator) and spot
    interruptions say nothing about whether the cloud boots workers, and starts still under
    way have not ended; None when no start ended either way."""
    by_cloud: dict[str, list[Boot]] = {c: [] for c in clouds}
    for b in boots:
        by_cloud.setdefault(b.cloud, []).append(b)
    out = []
    for cloud, rows in by_cloud.items():
        n = Counter(b.outcome for b in rows)
        ended = n[JOINED] + n[FAILED]
        times = [b.boot_seconds for b in rows if b.boot_seconds is not None]
        reasons = Counter(b.reason for b in rows if b.outcome == FAILED)
        out.append({
            "cloud": cloud, "launched": len(rows), JOINED: n[JOINED], FAILED: n[FAILED],
            INTERRUPTED: n[INTERRUPTED], CANCELLED: n[CANCELLED], STARTING: n[STARTING],
            "success": round(n[JOINED] / ended, 3) if ended else None,
            "boot_seconds": summary(times),
            "failure_reasons": [{"reason": r, "count": k} for r, k in
                                sorted(reasons.items(), key=lambda rk: (-rk[1], rk[0]))],
        })
    return out


def boot_failures(boots: Iterable[Boot]) -> list[dict[str, Any]]:
    """The starts that failed, oldest first: when, which worker of which cloud, after how
    long, and why."""
    return [{"time": b.ended_at, "worker_id": b.worker_id, "cloud": b.cloud, "launched_at": b.launched_at,
             "after_seconds": round(b.ended_at - b.launched_at, 1) if b.ended_at is not None else None,
             "reason": b.reason}
            for b in sorted(boots, key=lambda b: (b.ended_at or 0.0, b.worker_id)) if b.outcome == FAILED]


@dataclass(frozen=True)
class JobRun:
    """A job that completed on one of our workers: where, and how long its last run took."""
    cloud: str
    worker_id: str
    seconds: float


def job_times(runs: Iterable[JobRun], clouds: Sequence[str]) -> list[dict[str, Any]]:
    """Per cloud (the configured ones in order, then any other jobs ran on): how many jobs
    completed there, their run time (mean, p50, p90, max) and the hours they ran in all."""
    by_cloud: dict[str, list[float]] = {c: [] for c in clouds}
    workers: dict[str, set[str]] = {c: set() for c in clouds}
    for r in runs:
        by_cloud.setdefault(r.cloud, []).append(max(r.seconds, 0.0))
        workers.setdefault(r.cloud, set()).add(r.worker_id)
    return [{"cloud": c, "jobs": len(times), "workers": len(workers[c]), "job_seconds": summary(times),
             "hours": round(sum(times) / 3600, 2)} for c, times in by_cloud.items()]
