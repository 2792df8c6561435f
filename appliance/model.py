"""Plain data passed between observe, decide, act and record.

Nothing here does I/O; these are the nouns the scheduler reasons about.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

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


@dataclass(frozen=True)
class Resource:
    """What a cloud says exists for a worker (a process, container, service, instance)."""
    worker_id: str
    resource_id: str
    alive: bool = True     # False: exists but exited/stopped, needs only cleanup
    detail: str = ""
    gone: bool = False     # only a record is left (a terminated instance): nothing to clean up


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
