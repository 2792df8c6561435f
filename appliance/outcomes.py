"""What the results of acting mean. Pure functions, like the scheduler's.

The daemon's act step executes a Plan and reports plain results (a launch
returned this resource id or raised that error; a drain was sent or not; a
removal requeued N jobs). These functions turn results into what to record:
worker transitions, cloud health, the retry schedule of failed drains, and
the one-line notes operators read in the log and the events. The shutdown
policy lives here too.
"""
from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from . import backoff, budget
from .lifecycle import State
from .model import CloudHealth, ShapeHealth, Worker
from .scheduler.drains import after_drain
from .scheduler.plan import RedrainEntry, StrandedJobs, Terminate
from .scheduler.requeues import REQUEUE_SETTLE

INFO, WARNING, ERROR = logging.INFO, logging.WARNING, logging.ERROR


class Blame(str, Enum):
    """Whose failure a launch was: it decides whether the cloud backs off."""
    CLOUD = "cloud"          # the cloud refused or failed (CloudError): back the cloud off
    CRASH = "crash"          # the driver raised something unexpected: a bug; back off too
    APPLIANCE = "appliance"  # preparing the worker failed (token, key): the cloud is not at fault
    SKIPPED = "skipped"      # not attempted: an earlier launch in this batch failed


@dataclass(frozen=True)
class LaunchResult:
    worker_id: str
    cloud: str
    reason: str                      # why it was launched
    resource_id: str = ""
    blame: Blame | None = None       # None: launched
    error: str = ""
    kind: str = ""                   # the cloud's error kind (CloudError.kind)
    retry_after: float | None = None
    shape: str = ""                  # the shape launched


@dataclass(frozen=True)
class DrainResult:
    worker_id: str
    cloud: str
    error: str = ""                  # empty: sent


@dataclass(frozen=True)
class RequeueResult:
    stranded: StrandedJobs
    running: int = 0                 # jobs still running on the removed worker when asked
    requeued: int = 0                # of those, shadows ended now (the jobs go back to idle)
    error: str = ""


@dataclass(frozen=True)
class RemovalResult:
    order: Terminate
    requeued: int = 0
    running: int = 0                 # jobs found running on it
    error: str = ""                  # the cloud could not remove it: retried as an orphan
    cleanup_error: str = ""          # withdrawing its ads or requeueing failed


@dataclass(frozen=True)
class Note:
    """One line for operators: logged, and kept as an event when `kind` is set."""
    level: int
    text: str
    kind: str = ""                   # event kind (worker, cloud, scheduler); empty: log only
    event_text: str = ""             # the event's wording when it differs from the log line
    worker_id: str | None = None
    cloud: str | None = None


@dataclass(frozen=True)
class Record:
    """A worker transition to write: (worker, new state, reason[, resource id])."""
    worker_id: str
    to: State
    reason: str
    resource_id: str | None = None
    quiet: bool = False      # a note of its own says it better in the log


@dataclass
class Followup:
    records: list[Record] = field(default_factory=list)
    health: dict[str, CloudHealth] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    # every shape backing off after the launches (None: unchanged)
    shape_health: dict[tuple[str, str], ShapeHealth] | None = None


# ------------------------------------------------------------------ health

BREAKER_OPEN = "breaker open after "     # the start of the reason of a cloud's event when its breaker opens


def health_notes(old: CloudHealth, new: CloudHealth, now: float) -> list[Note]:
    if new.breaker_open and not old.breaker_open:
        msg = f"{BREAKER_OPEN}{new.failures} quick failures: no launches until re-enabled ({new.last_error})"
        return [Note(ERROR, f"cloud {new.name}: {msg}", "cloud", msg, cloud=new.name)]
    if new.backoff_until > old.backoff_until:
        msg = f"backing off {new.backoff_until - now:.0f}s: {new.last_error}"
        return [Note(WARNING, f"cloud {new.name}: {msg}", "cloud", msg, cloud=new.name)]
    return []


# ------------------------------------------------------------------ demand

# the start of the reason of a "demand" event, for each kind of news about the demand
UNSCHEDULABLE = "unschedulable: "
BUDGET_REACHED = "budget: "


def demand_notes(before: Sequence[Mapping], after: Sequence[Mapping]) -> list[Note]:
    """What newly went wrong with the demand between two cycles' group rows (the store's
    'demand'): a group of jobs that became unschedulable, a budget cap that began to stop
    launches. Once when it begins, not every cycle it lasts: these events are what a
    notification is sent for (appliance/notify.py)."""
    notes = []
    was = {g.get("key") for g in before if g.get("status") == "unschedulable"}
    for g in after:
        if g.get("status") == "unschedulable" and g.get("key") not in was:
            msg = f"{UNSCHEDULABLE}{g.get('count', 0)} idle job(s): {g.get('reason', '')}"
            notes.append(Note(WARNING, msg, "demand", msg))
    reached = budget.reached_caps(before)
    for (cloud, cap), why in budget.reached_caps(after).items():
        if (cloud, cap) not in reached:
            waiting = sum(g.get("count", 0) for g in after
                          if g.get("status") == "waiting" and why.split(" (")[0] in (g.get("reason") or ""))
            msg = f"{why}: {waiting} idle job(s) wait"      # why: 'budget: [CLOUD ]CAP N reached (...)'
            notes.append(Note(WARNING, msg, "demand", msg, cloud=cloud or None))
    return notes


# ------------------------------------------------------------------ launches

def judge_launches(results: Sequence[LaunchResult], health: Mapping[str, CloudHealth], now: float,
                   backoff_base: float, shape_health: Mapping[tuple[str, str], ShapeHealth] | None = None,
                   shaped: Collection[str] = ()) -> Followup:
    """shaped: the clouds with several shapes, where a capacity error backs off the shape
    (its demand goes to the next cheapest shape) instead of the whole cloud."""
    out = Followup()
    current = dict(health)
    shapes = dict(shape_health or {})
    for r in results:
        if r.blame is None:
            if shapes.pop((r.cloud, r.shape), None) is not None:
                out.notes.append(Note(INFO, f"cloud {r.cloud}: shape {r.shape} launches again", "cloud",
                                      f"shape {r.shape} launches again", cloud=r.cloud))
            out.records.append(Record(r.worker_id, State.BOOTING, f"launched ({r.resource_id})", r.resource_id,
                                      quiet=True))
            out.notes.append(Note(INFO, f"worker {r.worker_id} ({r.cloud}): requested -> booting: {r.reason}; "
                                        f"launched {r.resource_id}"))
        elif r.blame is Blame.SKIPPED:
            out.records.append(Record(r.worker_id, State.RETIRED, f"not launched: {r.error}"))
        elif r.blame is Blame.APPLIANCE:
            # our own failure: the cloud is healthy and must not back off for it
            out.records.append(Record(r.worker_id, State.FAILED, f"not launched: the appliance failed: {r.error}",
                                      quiet=True))
            out.notes.append(Note(ERROR, f"worker {r.worker_id} ({r.cloud}): not launched: the appliance could not "
                                         f"prepare it: {r.error}", "scheduler",
                                  f"could not prepare a worker (its token or key): {r.error}",
                                  r.worker_id, r.cloud))
        else:
            kind = r.kind if r.blame is Blame.CLOUD and r.kind else "other"
            out.records.append(Record(r.worker_id, State.FAILED, f"launch failed: {r.error}", quiet=True))
            if r.blame is Blame.CRASH:
                out.notes.append(Note(ERROR, f"worker {r.worker_id} ({r.cloud}): launch crashed: {r.error}"))
            out.notes.append(Note(WARNING, f"worker {r.worker_id} ({r.cloud}): requested -> failed: "
                                           f"launch failed ({kind}): {r.error}"))
            h = current.get(r.cloud)
            if shape_backs_off(r, shaped):
                key = (r.cloud, r.shape)
                sh = shapes[key] = backoff.after_launch_error(shapes.get(key) or ShapeHealth(r.cloud, r.shape),
                                                              kind, r.error, now, r.retry_after, backoff_base)
                msg = (f"shape {r.shape} backing off {sh.backoff_until - now:.0f}s after a capacity error; "
                       f"its demand goes to the next cheapest shape")
                out.notes.append(Note(WARNING, f"cloud {r.cloud}: {msg}", "cloud", msg, cloud=r.cloud))
            elif h is not None:
                current[r.cloud] = backoff.after_launch_error(h, kind, r.error, now, r.retry_after, backoff_base)
                out.notes.append(Note(WARNING, f"cloud {r.cloud}: backing off "
                                               f"{current[r.cloud].backoff_until - now:.0f}s after {kind} error"))
    out.health = {name: h for name, h in current.items() if h != health[name]}
    if shapes != dict(shape_health or {}):
        out.shape_health = shapes
    return out


class BatchStops:
    """Which launches of one cycle's batch an earlier failure stops (stops_batch): by the
    whole batch, a cloud, or one shape of a cloud. The daemon and the simulator share it."""

    def __init__(self, shaped: Collection[str]):
        self.shaped = shaped                      # clouds with several shapes
        self.why: dict[str, str] = {}             # "*", a cloud or "cloud/shape" -> why the rest is skipped

    def skip(self, cloud: str, shape: str) -> str | None:
        """Why this launch is not attempted, or None."""
        return self.why.get("*") or self.why.get(cloud) or self.why.get(f"{cloud}/{shape}")

    def failed(self, r: LaunchResult) -> None:
        scope = stops_batch(r, self.shaped)
        if scope:
            key = {"all": "*", "shape": f"{r.cloud}/{r.shape}"}.get(scope, r.cloud)
            self.why.setdefault(key, skip_reason(r.blame, scope))


def shape_backs_off(r: LaunchResult, shaped: Collection[str]) -> bool:
    """A capacity error on a cloud with several shapes is about that shape only."""
    return r.blame is Blame.CLOUD and r.kind == "capacity" and r.cloud in shaped and bool(r.shape)


def skip_reason(blame: Blame, scope: str = "cloud") -> str:
    """Why the rest of a batch is not attempted after a failure of this kind."""
    if blame is Blame.APPLIANCE:
        return "an earlier launch failed: the appliance could not prepare a worker"
    if scope == "shape":
        return "an earlier launch of this shape found no capacity"
    return "an earlier launch on this cloud failed"


def stops_batch(r: LaunchResult, shaped: Collection[str] = ()) -> str:
    """Which launches still queued in this cycle a failure stops: 'shape' (the
    rest of that shape: the cloud has no capacity for it), 'cloud' (the rest on
    the same cloud: it would refuse them too), 'all' (our own failure would
    fail every launch), or '' (none)."""
    blame = r.blame
    if shape_backs_off(r, shaped):
        return "shape"
    if blame is Blame.CLOUD:
        return "cloud"
    if blame is Blame.APPLIANCE:
        return "all"
    return ""


# ------------------------------------------------------------------ drains

def judge_drains(schedule: Mapping[str, RedrainEntry], results: Iterable[DrainResult],
                 now: float) -> tuple[dict[str, RedrainEntry], list[Note]]:
    """The drain retry schedule after sending: sent drains are done, failed ones wait longer."""
    schedule = dict(schedule)
    notes = []
    for r in results:
        if r.worker_id not in schedule:
            continue
        if not r.error:
            del schedule[r.worker_id]
            notes.append(Note(INFO, f"worker {r.worker_id}: drain sent (condor_off -peaceful)"))
            continue
        schedule[r.worker_id] = entry = after_drain(schedule[r.worker_id], now)
        notes.append(Note(WARNING, f"worker {r.worker_id}: drain failed (attempt {entry.failures}), "
                                   f"will retry: {r.error}",
                          "worker" if entry.failures == 1 else "",
                          f"drain failed, will retry: {r.error}", r.worker_id, r.cloud))
    return schedule, notes


# ------------------------------------------------------------------ removals

def judge_removals(results: Iterable[RemovalResult]) -> list[Note]:
    notes = []
    for r in results:
        t = r.order
        if r.error:   # retried: an ended worker's leftover is an orphan next cycle
            notes.append(Note(WARNING, f"worker {t.worker_id}: removal from {t.cloud} failed, will retry: {r.error}",
                              "cloud", f"removal of {t.worker_id} failed, will retry: {r.error}",
                              t.worker_id, t.cloud))
            continue
        if r.cleanup_error:
            notes.append(Note(WARNING, f"worker {t.worker_id}: cleanup in the pool failed: {r.cleanup_error}"))
        if r.requeued:
            msg = f"{r.requeued} job(s) it was running put back in the queue"
            notes.append(Note(INFO, f"worker {t.worker_id}: {msg}", "worker", msg, t.worker_id, t.cloud))
        if t.orphan:
            notes.append(Note(INFO, f"cloud {t.cloud}: removed orphan {t.worker_id} ({t.resource_id})", "cloud",
                              f"removed orphan {t.worker_id}: {t.reason}", t.worker_id, t.cloud))
        else:
            notes.append(Note(INFO, f"worker {t.worker_id}: removed from {t.cloud}"))
    return notes


def stranded_by_removals(results: Iterable[RemovalResult], now: float) -> dict[str, StrandedJobs]:
    """Removed workers that still had jobs running: check again next cycle until
    those jobs are back in the queue (a shadow can outlive one kill, or not exist yet)."""
    return {r.order.worker_id: StrandedJobs(r.order.worker_id, r.order.cloud, now)
            for r in results if not r.error and (r.running or r.cleanup_error) and r.order.withdraw}


# ------------------------------------------------------------------ stranded jobs

def judge_requeues(stranded: Mapping[str, StrandedJobs], results: Iterable[RequeueResult],
                   abandoned: Iterable[StrandedJobs], now: float) -> tuple[dict[str, StrandedJobs], list[Note]]:
    stranded = dict(stranded)
    notes = []
    for r in results:
        s = r.stranded
        if r.error:
            notes.append(Note(WARNING, f"worker {s.worker_id}: cannot put its jobs back in the queue yet: {r.error}"))
            continue
        if r.requeued:
            msg = f"{r.requeued} job(s) it was running put back in the queue"
            notes.append(Note(INFO, f"worker {s.worker_id}: {msg}", "worker", msg, s.worker_id, s.cloud))
        if r.running:
            if s.quiet_since is not None:
                stranded[s.worker_id] = replace(s, quiet_since=None)
        elif s.quiet_since is None:
            stranded[s.worker_id] = replace(s, quiet_since=now)
        elif now - s.quiet_since >= REQUEUE_SETTLE:
            stranded.pop(s.worker_id, None)      # nothing of it running for a while: done
    for s in abandoned:
        stranded.pop(s.worker_id, None)
        msg = ("jobs still shown running on it after 30 min of retries; given up: the job lease ends them, "
               "or condor_vacate_job them")
        notes.append(Note(WARNING, f"worker {s.worker_id}: {msg}", "worker", msg, s.worker_id, s.cloud))
    return stranded, notes


# ------------------------------------------------------------------ shutdown

STOPPING = "the appliance is stopping"


@dataclass(frozen=True)
class ShutdownStep:
    worker: Worker
    remove: bool
    reason: str


def shutdown_plan(workers: Iterable[Worker], cloud_types: Mapping[str, str], on_shutdown: str) -> list[ShutdownStep]:
    """Local workers live inside the appliance and stop with it; the others are
    kept (and re-adopted on restart) or removed, per on_shutdown. Workers of a
    cloud no longer configured cannot be reached and are left alone."""
    steps = []
    for w in workers:
        ctype = cloud_types.get(w.cloud)
        if ctype is None:
            continue
        if ctype != "local" and on_shutdown == "keep":
            steps.append(ShutdownStep(w, False, "kept while the appliance is stopped (on_shutdown: keep)"))
        else:
            steps.append(ShutdownStep(w, True, STOPPING))
    return steps


def stranded_at_shutdown(step: ShutdownStep, now: float, error: str = "") -> StrandedJobs | None:
    """A removed worker may leave jobs "running" in the queue: they are put back after the
    restart, whatever stopped first. Any removed worker, not only those seen to join: one
    can join and start a job between the scheduler's last look and the stop (seen in CI);
    for a worker with no job the retry finds none and ends at once."""
    w = step.worker
    if step.remove and not error:
        return StrandedJobs(w.id, w.cloud, now)
    return None


def judge_shutdown(step: ShutdownStep, error: str = "") -> tuple[Record | None, Note]:
    w = step.worker
    if not step.remove:
        return None, Note(INFO, f"worker {w.id} ({w.cloud}): {step.reason}")
    if error:
        return None, Note(WARNING, f"worker {w.id}: could not remove at shutdown: {error}")
    # a busy worker's jobs were cut short: that is a failure, not a retirement
    to = State.FAILED if w.state is State.BUSY else State.RETIRED
    return Record(w.id, to, STOPPING, quiet=True), Note(INFO, f"worker {w.id} ({w.cloud}): removed: {STOPPING}")
