"""Plain data passed between observe, decide, act and record.

Nothing here does I/O; these are the nouns the scheduler reasons about.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .asks import WorkerAsks
from .lifecycle import State


@dataclass(frozen=True)
class JobGroup:
    """Idle jobs that ask for the same thing (one schedd group-by row)."""
    key: str
    count: int
    cpus: int
    memory: int            # MB, as the job asked
    disk: int              # KiB, as HTCondor counts RequestDisk
    requirements: str      # for display
    target_clouds: tuple[str, ...] | None = None
    owner_hint: str = ""
    ad: Any = field(default=None, compare=False, hash=False, repr=False)  # classad.ClassAd
    # where the jobs wait: "" for this appliance's own schedd, else the name an operator
    # gave a remote schedd with `cloud_admin --allow-schedd` (its jobs flock here)
    schedd: str = ""
    # the pools the jobs may flock to (their FlockTo), as the schedd names them; None: not set
    flock_to: tuple[str, ...] | None = None
    gpus: int = 0          # GPUs each job asks for (request_gpus)
    # what the jobs ask of their worker beyond its size: image, +VMType, ... (asks.py)
    asks: WorkerAsks = WorkerAsks()


# A slot Claimed/Idle this long (seconds) runs no job and will run none: the schedd reuses a
# claim for its next job at once or releases it. One that lost its release (sent while the
# collector and its CCB were down, say) the startd would keep for the job's lease, 40 minutes,
# with the worker counted busy; past this it counts as idle, and idle_timeout drains it.
STALE_CLAIM = 60


@dataclass(frozen=True)
class SlotSummary:
    """What the collector says about one of our workers (all its slots)."""
    worker_id: str
    name: str              # the startd's name, e.g. local-1a2b3c@appliance
    claimed: int           # claimed slots
    free_cpus: int
    free_memory: int       # MB
    free_disk: int         # KiB
    total_cpus: int = 0
    free_gpus: int = 0     # GPUs not yet given to a job (a worker without GPUs: 0)
    # the worker's own report of a notice from its cloud (its startd ad): "spot" (an
    # interruption: it vacated its jobs and is about to go), "rebalance" (it takes no
    # new jobs), or ""; a worker with a notice offers no free capacity
    notice: str = ""
    # claimed slots that have run no job for STALE_CLAIM seconds: not counted in
    # `claimed` (a lost release must not keep a worker busy for its claim's 40-minute lease)
    stale_claims: int = 0


# the reason a worker that its cloud took back (a spot interruption) fails with, first
# in its reason: the events and /metrics count failures that start with it
SPOT_INTERRUPTION = "spot interruption"


class ResourceState(StrEnum):
    """What a cloud says about a worker's resource. A StrEnum (a str Enum that
    prints as its value), so it compares with and formats as plain strings."""
    RUNNING = "running"    # starting or running: the worker may be alive
    EXITED = "exited"      # exists but exited/stopped: needs only cleanup
    GONE = "gone"          # only a record is left (a terminated instance): nothing to clean up


@dataclass(frozen=True, init=False)
class Resource:
    """What a cloud says exists for a worker (a process, container, service, instance)."""
    worker_id: str
    resource_id: str
    state: ResourceState = ResourceState.RUNNING
    detail: str = ""
    # why a resource that is no longer alive ended, when the cloud says it took it back:
    # "spot" (an EC2 spot interruption), else ""
    interruption: str = ""

    def __init__(self, worker_id: str, resource_id: str, state: ResourceState | str = ResourceState.RUNNING,
                 detail: str = "", *, alive: bool | None = None, gone: bool | None = None, interruption: str = ""):
        # alive=/gone= are the old booleans, still accepted so existing callers keep
        # working; they must agree with `state` if both are given
        if alive is not None or gone is not None:
            old = ResourceState.GONE if gone else ResourceState.EXITED if alive is False else ResourceState.RUNNING
            if (gone and alive) or (state != ResourceState.RUNNING and state != old):
                raise ValueError(f"contradictory resource state: state={state!r}, alive={alive!r}, gone={gone!r}")
            state = old
        object.__setattr__(self, "worker_id", worker_id)
        object.__setattr__(self, "resource_id", resource_id)
        object.__setattr__(self, "state", ResourceState(state))   # a misspelt state raises ValueError
        object.__setattr__(self, "detail", detail)
        object.__setattr__(self, "interruption", interruption)

    @property
    def alive(self) -> bool:
        return self.state is ResourceState.RUNNING

    @property
    def gone(self) -> bool:
        return self.state is ResourceState.GONE


@dataclass(frozen=True)
class Worker:
    """One row of the workers table."""
    id: str
    cloud: str
    state: State
    created_at: float
    state_since: float
    resource_id: str = ""
    condor_name: str = ""
    last_seen: float = 0.0
    reason: str = ""
    # the name of its shape (config: the cloud's shapes); "" for a worker recorded before shapes
    shape: str = ""
    # the name of its image (config: the cloud's images); "" for the cloud's default
    image: str = ""


@dataclass(frozen=True)
class CloudHealth:
    """Runtime state of one cloud, kept in the store."""
    name: str
    enabled: bool
    max_workers: int
    backoff_until: float = 0.0
    failures: int = 0            # consecutive failures (launch or boot)
    last_error: str = ""
    last_error_at: float = 0.0
    breaker_open: bool = False   # too many quick failures: no launches until re-enabled


@dataclass(frozen=True)
class ShapeHealth:
    """One shape of a cloud with several that the cloud refused capacity for (EC2's
    InsufficientInstanceCapacity): it backs off alone while the cloud's other shapes
    launch on. Kept in the store (kv 'shape_health'); a launch of the shape clears it."""
    cloud: str
    shape: str
    backoff_until: float = 0.0
    failures: int = 0            # capacity errors in a row: each doubles the delay
    last_error: str = ""
    last_error_at: float = 0.0


class ScheddState(StrEnum):
    """What the observe step found out about one allowed remote schedd."""
    FLOCKING = "flocking"        # its queue was read: its idle jobs offered here are demand
    QUIET = "quiet"              # advertised here, but offers no idle job now
    ABSENT = "absent"            # allowed, but it has not advertised itself here (yet)
    UNREADABLE = "unreadable"    # it flocks here, but its queue could not be read


@dataclass(frozen=True)
class RemoteSchedd:
    """One allowed remote schedd as this cycle saw it (its jobs are in Observation.groups)."""
    name: str                    # the name given to `cloud_admin --allow-schedd`
    state: ScheddState
    detail: str = ""             # the schedd's own name and address, or why it could not be read
    offered: int = 0             # idle jobs it offers this pool, from its submitter ads
    users: tuple[str, ...] = ()  # its submitters flocking here


@dataclass(frozen=True)
class Observation:
    now: float
    groups: tuple[JobGroup, ...]
    slots: Mapping[str, SlotSummary] | None            # None: collector unreachable
    resources: Mapping[str, Mapping[str, Resource] | None]  # per cloud; None: listing failed
    schedd_ok: bool = True
    # when this scheduler process began watching (its start). A worker cannot be
    # judged lost, or late to boot, on time that passed while nobody watched:
    # after a restart every worker gets its full grace again.
    watching_since: float = 0.0
    # the allowed remote schedds, each with what reading it found (see appliance/federation.py)
    schedds: tuple[RemoteSchedd, ...] = ()
