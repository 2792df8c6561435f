"""The nouns of one decision: what the scheduler looked at and what it wants done.

decide() returns a Plan; the daemon's act step executes it without deciding
anything further, and its record step writes what happened.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ..config import CloudConfig
from ..lifecycle import State
from ..model import CloudHealth, ShapeHealth


@dataclass(frozen=True)
class CloudView:
    """One configured cloud with its runtime settings and health."""
    config: CloudConfig
    health: CloudHealth
    # its shapes backing off after a capacity error, by shape name (none: all may launch)
    shapes: Mapping[str, ShapeHealth] = field(default_factory=dict)

    def shapes_backing_off(self, now: float) -> dict[str, ShapeHealth]:
        return {name: h for name, h in self.shapes.items() if h.backoff_until > now}

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
    shape: str = ""           # the name of one of the cloud's shapes: the size of the worker
    image: str = ""           # the name of one of the cloud's images ("": its default)
    max_price: float | None = None      # the jobs' +VMMaximumPrice: the most the worker may cost per hour


@dataclass(frozen=True)
class Drain:
    """Send `condor_off -peaceful` to a worker (new, or a retry of a failed one)."""
    worker_id: str
    reason: str
    condor_name: str = ""     # the startd to address; filled in by plan_drains
    cloud: str = ""           # for its events; filled in by plan_drains


@dataclass(frozen=True)
class Terminate:
    worker_id: str
    cloud: str
    resource_id: str
    reason: str
    # the worker may have ads in the collector and jobs in the queue (it joined,
    # or it is an orphan we know nothing of): withdraw them and requeue its jobs
    withdraw: bool = True
    orphan: bool = False


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
    status: str                  # served | launching | waiting | unschedulable | sending away | sent away
    reason: str
    schedd: str = ""             # "" for our own schedd, else the remote schedd the jobs flock from
    owner: str = ""              # a remote schedd's submitter (user@domain); "" for our own


def group_row(g: GroupReport) -> dict:
    """A group as the store keeps it (cloud_status -q --json, /api/queue): `schedd` and
    `owner` only for the jobs of a remote schedd, so a local group reads as it always did."""
    row = asdict(g)
    if not g.schedd:
        del row["schedd"], row["owner"]
    return row


@dataclass(frozen=True)
class FlockOut:
    """Let `count` idle jobs of a local group flock to other pools: set their FlockTo."""
    group_key: str
    count: int
    flock_to: str                # the value of FlockTo: the pools as FLOCK_TO names them
    pools: tuple[str, ...]       # their names in federation.flock_to, for the log
    reason: str


@dataclass(frozen=True)
class ScheddReport:
    """One allowed remote schedd, as this cycle saw it."""
    name: str
    state: str                   # flocking | quiet | absent | unreadable
    detail: str
    offered: int                 # idle jobs it offers this pool (its submitter ads)
    idle_jobs: int               # of those, counted as demand (read from its queue)
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class RedrainEntry:
    """A drain that failed to send: when to try again, and how often it failed."""
    not_before: float
    failures: int = 0


@dataclass(frozen=True)
class StrandedJobs:
    """A worker the appliance removed while jobs ran on it: those jobs stay
    "running" in the schedd (its shadows wait the whole job lease for a worker
    that cannot come back) until they are put back in the queue."""
    worker_id: str
    cloud: str
    since: float
    quiet_since: float | None = None     # since when no job has shown "running" on it (None: one did)


@dataclass
class Plan:
    transitions: list[Transition] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    # every drain to send this cycle: new ones and retries that are due
    drains: list[Drain] = field(default_factory=list)
    terminations: list[Terminate] = field(default_factory=list)
    orphans: list[Terminate] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)     # worker id -> condor name, seen now
    groups: list[GroupReport] = field(default_factory=list)
    # cloud health changed by what this cycle saw (joins, quick failures)
    health: dict[str, CloudHealth] = field(default_factory=dict)
    # drains still to (re)send after this cycle's, by worker id
    redrain: dict[str, RedrainEntry] = field(default_factory=dict)
    requests_done: list[str] = field(default_factory=list)   # operator requests consumed
    requeues: list[StrandedJobs] = field(default_factory=list)      # put their jobs back in the queue now
    requeues_abandoned: list[StrandedJobs] = field(default_factory=list)  # tried long enough: give up
    reschedule: bool = False    # a worker joined: ask the negotiator to match now
    flock_outs: list[FlockOut] = field(default_factory=list)        # jobs to send to other pools
    schedds: list[ScheddReport] = field(default_factory=list)       # allowed remote schedds
    # cloud -> its warm headroom this cycle, one line ("headroom: min_idle 1, 1 idle")
    headroom: dict[str, str] = field(default_factory=dict)
    # idle workers past idle_timeout (or starting for no job) kept as headroom: id -> why
    kept: dict[str, str] = field(default_factory=dict)
