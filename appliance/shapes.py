"""Cheapest fit: which worker shape, on which cloud, serves a group of idle jobs
at the least cost. Pure: data in, decisions out, no I/O.

A cloud may offer several shapes (sizes of worker, each with an optional price
per hour) instead of one `worker:`. For each group of idle jobs the choice is:

- clouds are tried in priority order; clouds of equal priority compete on price;
- within that tier, the workers launched are the cheapest set that holds the
  group's jobs: a bigger shape carries several jobs on its partitionable slot
  when that costs less per job, a small one takes what is left over;
- without prices every shape costs the same (nothing), so the smallest shape
  that fits wins, as cloudscheduler v2 chooses a flavor;
- ties go to the smaller shape (a half-used big worker cannot retire until its
  last job ends; small ones retire one by one), then to the order given;
- a cloud's headroom (max_workers minus live), the global headroom, shapes
  backing off after a capacity error, and an optional budget hook limit what
  is launched; the demand then goes to the next-cheapest shape, then the next
  cloud, and what is left waits with the reasons.

Limits never change which shape is cheapest, only how many are launched: a
cloud at max_workers does not make the scheduler buy bigger, dearer workers.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from types import MappingProxyType
from typing import Any

# HTCondor rounds requests up before carving a dynamic slot
# (MODIFY_REQUEST_EXPR_REQUESTMEMORY / _REQUESTDISK defaults): mirror it so a
# worker we plan for really holds the jobs we count on it. Here, not in
# matching.py, so that the configuration (which holds Shapes) loads without HTCondor.
MEMORY_QUANTUM_MB = 128
DISK_QUANTUM_KB = 1024


def rounded_memory(mb: int) -> int:
    return -(-mb // MEMORY_QUANTUM_MB) * MEMORY_QUANTUM_MB if mb > 0 else 0


def rounded_disk(kb: int) -> int:
    return -(-kb // DISK_QUANTUM_KB) * DISK_QUANTUM_KB if kb > 0 else 0


# a worker's disk (MB) when neither the configuration nor the cloud says it
DEFAULT_DISK_MB = 4096

# prices are compared in millionths per hour, as integers, so that equal costs
# compare equal (0.01 * 4 == 0.04) and ties are decided by rule, not by rounding
MICRO = 1_000_000


@dataclass(frozen=True)
class Shape:
    """One size of worker a cloud can launch (an instance type, a flavor)."""
    name: str
    cpus: int
    memory: int                      # MB
    disk: int                        # MB, as in the configuration
    gpus: int = 0
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    price: float | None = None       # per hour; None: unknown (costs nothing as far as we know)
    # what the configuration left for the cloud to say ("cpus", "memory", "gpus"): an ec2
    # shape named by its instance type only; filled in by sized() before it is launched
    to_read: tuple[str, ...] = ()
    # idle workers of this shape kept ready (config: shapes[].min_idle; appliance/headroom.py)
    min_idle: int = 0

    @property
    def sized(self) -> bool:
        return not self.to_read

    def read(self, cpus: int, memory_mib: int, gpus: int, disk_mb: int | None = None) -> Shape:
        """This shape with what the cloud said it has filled in: memory less
        os_reserve_mb() for the system and HTCondor's daemons, what the worker advertises;
        the disk when the cloud tells it (an OpenStack flavor's root disk), else the default."""
        known = {"cpus": cpus, "memory": memory_mib - os_reserve_mb(memory_mib), "gpus": gpus,
                 "disk": disk_mb or DEFAULT_DISK_MB}
        return replace(self, **{k: known[k] for k in self.to_read}, to_read=())

    @property
    def size(self) -> tuple[int, int, int, int]:
        """Orders shapes small to large: GPUs first, the scarcest resource."""
        return (self.gpus, self.cpus, self.memory, self.disk)


@dataclass(frozen=True)
class Request:
    """What one job asks for, in HTCondor's units."""
    cpus: int = 1
    memory: int = 128                # MB (RequestMemory)
    disk: int = 0                    # KiB (RequestDisk)
    gpus: int = 0

    def __str__(self) -> str:
        return f"{self.cpus} cpu/{self.memory} MB" + (f"/{self.gpus} gpu" if self.gpus else "")


@dataclass(frozen=True)
class Demand:
    """A group of idle jobs that ask for the same thing."""
    key: str
    count: int
    request: Request


@dataclass(frozen=True)
class Candidate:
    """A shape a cloud offers. `priority` is the cloud's (lower is tried first). A worker
    launched for a group also runs the image it asked for, within its price cap: groups
    share a new worker's room only when they ask for the same (`allowed` says so)."""
    cloud: str
    shape: Shape
    priority: int = 0
    image: str = ""
    max_price: float | None = None


@dataclass(frozen=True)
class Pick:
    """Launch `workers` workers of `shape` on `cloud`; they take `jobs` of the group."""
    cloud: str
    shape: Shape
    workers: int
    jobs: int
    reason: str
    image: str = ""
    max_price: float | None = None


@dataclass(frozen=True)
class GroupFit:
    """What cheapest_fit decided for one group."""
    key: str
    picks: tuple[Pick, ...]
    shared: int = 0                  # jobs put on room left in workers picked for earlier groups
    waiting: int = 0                 # jobs left without a worker
    reason: str = ""                 # why they wait, or why nothing can ever run them
    unschedulable: bool = False      # no shape fits (or matches) a job of the group


def os_reserve_mb(memory_mib: int) -> int:
    """The memory an instance keeps for its OS and HTCondor's daemons, when its size is read
    from the cloud: an eighth, at least 512 MB, rounded up to 128 MB (a 4 GiB t3.medium
    offers 3584 MB to jobs, a 16 GiB c5.2xlarge 14336 MB)."""
    reserve = max(512, memory_mib // 8)
    return -(-reserve // MEMORY_QUANTUM_MB) * MEMORY_QUANTUM_MB


# `shapes: auto` keeps this much of the host's memory for the appliance itself (MB)
HOST_RESERVE_MB = 1024


def host_shapes(cpus: int, memory: int, disk: int = 4096) -> tuple[Shape, ...]:
    """The shapes of `shapes: auto`: 1, 2, 4, ... cpus up to the host's cpus (the host's count
    itself last when it is not a power of two), each with its share of the host's memory less
    HOST_RESERVE_MB, so that a job asking for more than one worker's default just runs, up to
    what the host has. Unpriced: the smallest that fits wins."""
    cpus = max(cpus, 1)
    usable = max(memory - HOST_RESERVE_MB, MEMORY_QUANTUM_MB * cpus)
    per_cpu = max(usable // cpus // MEMORY_QUANTUM_MB * MEMORY_QUANTUM_MB, MEMORY_QUANTUM_MB)
    counts = [n for n in (2 ** i for i in range(11)) if n < cpus] + [cpus]
    return tuple(Shape(f"{n}cpu", n, n * per_cpu, disk) for n in counts)


def fits(shape: Shape, request: Request) -> int:
    """How many such jobs one fresh worker of this shape holds (0: not even one)."""
    return _holds(shape.cpus, shape.memory, shape.disk * 1024, shape.gpus, request)


def _holds(cpus: int, memory: int, disk_kb: int, gpus: int, request: Request) -> int:
    # memory and disk are rounded up as HTCondor does when it carves a dynamic
    # slot, so the count is what the partitionable slot will really take
    counts = [cpus // max(request.cpus, 1)]
    if request.memory > 0:
        counts.append(memory // rounded_memory(request.memory))
    if request.disk > 0:
        counts.append(disk_kb // rounded_disk(request.disk))
    if request.gpus > 0:
        counts.append(gpus // request.gpus)
    return max(min(counts), 0)


# (cloud, shape name) of shapes backing off after a capacity error
BackedOff = Collection[tuple[str, str]]
# the group's Requirements accept this cloud's shape (ClassAd matching, done by the caller)
Allowed = Callable[[Demand, Candidate], bool]
# None if one more worker may be launched, else why not ('budget: ...'); called with
# the cloud and the cost per hour added this cycle on that cloud and in all, this worker included
Afford = Callable[[str, float, float], str | None]


def cheapest_fit(demands: Sequence[Demand], candidates: Sequence[Candidate], headroom: Mapping[str, int],
                 global_headroom: int | None = None, backed_off: BackedOff = (),
                 allowed: Allowed | None = None, afford: Afford | None = None) -> tuple[GroupFit, ...]:
    """Decide the workers to launch for each group, in the order of `demands`.

    `candidates` lists each cloud's shapes with the cloud's priority; lower
    priorities are tried first, and within a priority the order given breaks
    the last ties (list clouds as place() orders them). `headroom` is how many more workers each cloud may
    have (a cloud not named may launch none); `global_headroom` the same for
    all clouds together (None: no global limit). Room left in a worker picked
    for one group serves the groups after it, when their Requirements allow.
    """
    cycle = _Cycle(candidates, headroom, global_headroom, set(backed_off), allowed, afford)
    return tuple(cycle.fit(d) for d in demands)


@dataclass(frozen=True)
class _Option:
    """One candidate as seen by one group."""
    index: int                       # its place in `candidates`: identifies it
    candidate: Candidate
    per_worker: int                  # jobs of the group one worker holds
    micro: int                       # price per hour in millionths; 0 if unknown
    rank: int                        # preference when costs tie: smaller shape, then order given


@dataclass
class _Room:
    """Free room on a worker picked this cycle."""
    index: int
    cpus: int
    memory: int
    disk: int                        # KiB
    gpus: int

    def take(self, request: Request, wanted: int) -> int:
        n = min(wanted, _holds(self.cpus, self.memory, self.disk, self.gpus, request))
        self.cpus -= n * request.cpus
        self.memory -= n * rounded_memory(request.memory)
        self.disk -= n * rounded_disk(request.disk)
        self.gpus -= n * request.gpus
        return n


class _Cycle:
    """The limits, spend and room shared by all groups of one decision."""

    def __init__(self, candidates: Sequence[Candidate], headroom: Mapping[str, int], global_headroom: int | None,
                 backed_off: BackedOff, allowed: Allowed | None, afford: Afford | None):
        self.candidates = list(candidates)
        by_size = sorted(range(len(candidates)), key=lambda i: (candidates[i].shape.size, i))
        self.rank = {i: r for r, i in enumerate(by_size)}
        self.left = {c.cloud: headroom.get(c.cloud, 0) for c in candidates}
        self.global_left = global_headroom
        self.backed_off = backed_off
        self.allowed = allowed or (lambda demand, candidate: True)
        self.afford = afford
        self.added: dict[str, float] = {}            # cost per hour launched this cycle, per cloud
        self.refused: dict[int, str] = {}            # candidate index -> why the budget refused it
        self.rooms: list[_Room] = []

    def fit(self, demand: Demand) -> GroupFit:
        req = demand.request
        options = [_Option(i, c, fits(c.shape, req), round((c.shape.price or 0) * MICRO), self.rank[i])
                   for i, c in enumerate(self.candidates)]
        options = [o for o in options if o.per_worker > 0]
        if not options:
            return GroupFit(demand.key, (), waiting=demand.count, unschedulable=True,
                            reason=nothing_fits(req, self.candidates))
        options = [o for o in options if self.allowed(demand, o.candidate)]
        if not options:
            return GroupFit(demand.key, (), waiting=demand.count, unschedulable=True,
                            reason="its Requirements match none of the shapes that fit it")

        remaining = demand.count
        for room in self.rooms:
            if remaining > 0 and self.allowed(demand, self.candidates[room.index]):
                remaining -= room.take(req, remaining)
        shared = demand.count - remaining

        launched: dict[int, list] = {}               # candidate index -> [option, workers, jobs]
        plan: list[_Option] = []                     # the rest of the cheapest cover, next worker first
        while remaining > 0:
            usable = [o for o in options if self._may_launch(o)]
            if not usable:
                break
            if not plan or plan[0] not in usable:    # a limit or the budget changed the options
                plan = cheapest_workers(remaining, usable)
            o = plan.pop(0)
            c = o.candidate
            price = c.shape.price or 0.0
            if price > 0 and self.afford is not None:    # a worker without a price adds no spend
                why = self.afford(c.cloud, self.added.get(c.cloud, 0.0) + price, sum(self.added.values()) + price)
                if why:
                    self.refused[o.index] = why
                    plan = []
                    continue
            self._launch(c)
            n = min(o.per_worker, remaining)
            remaining -= n
            entry = launched.setdefault(o.index, [o, 0, 0])
            entry[1] += 1
            entry[2] += n
            room = _Room(o.index, c.shape.cpus, c.shape.memory, c.shape.disk * 1024, c.shape.gpus)
            room.take(req, n)
            self.rooms.append(room)

        picks = tuple(Pick(o.candidate.cloud, o.candidate.shape, workers, jobs, _pick_reason(o, workers, jobs, req),
                           o.candidate.image, o.candidate.max_price)
                      for o, workers, jobs in launched.values())
        reason = "; ".join(self._waits(options)) if remaining else ""
        return GroupFit(demand.key, picks, shared, remaining, reason)

    def _may_launch(self, o: _Option) -> bool:
        c = o.candidate
        return ((c.cloud, c.shape.name) not in self.backed_off and o.index not in self.refused
                and self.left[c.cloud] > 0 and (self.global_left is None or self.global_left > 0))

    def _launch(self, c: Candidate) -> None:
        self.left[c.cloud] -= 1
        if self.global_left is not None:
            self.global_left -= 1
        self.added[c.cloud] = self.added.get(c.cloud, 0.0) + (c.shape.price or 0.0)

    def _waits(self, options: Sequence[_Option]) -> list[str]:
        """Why each shape that could run the group launched no (more) workers."""
        out: list[str] = []
        for o in options:
            c = o.candidate
            if (c.cloud, c.shape.name) in self.backed_off:
                why = f"{c.cloud}/{c.shape.name}: backing off"
            elif o.index in self.refused:
                why = self.refused[o.index]
            elif self.left[c.cloud] <= 0:
                why = f"{c.cloud}: no room under its max_workers"
            else:
                why = "no room under the global limits"
            if why not in out:
                out.append(why)
        return out


def cheapest_workers(jobs: int, options: Sequence[_Option]) -> list[_Option]:
    """The cheapest workers that together hold `jobs` jobs, from the options of
    the first priority tier that has any; those that take most jobs first, so
    that a limit reached half way leaves the fewest jobs waiting.

    The exact answer comes from a small dynamic programme over the job count
    (cheapest_cover), run only for the tail. With k_best the jobs per worker of
    the shape cheapest per job and k_max the most any shape holds, some cheapest
    set has fewer than k_best workers of other shapes (any k_best of them
    include a subset holding a multiple of k_best jobs, which best-shape
    workers hold for no more), so every job past k_best * k_max goes to full
    best-shape workers without computing anything.
    """
    tier = min(o.candidate.priority for o in options)
    options = sorted((o for o in options if o.candidate.priority == tier), key=lambda o: o.rank)
    best = min(options, key=lambda o: (Fraction(o.micro, o.per_worker), o.rank))
    bulk = max(0, -(-(jobs - best.per_worker * max(o.per_worker for o in options)) // best.per_worker))
    tail = cheapest_cover(max(jobs - bulk * best.per_worker, 0), options)
    return sorted([best] * bulk + tail, key=lambda o: (-o.per_worker, o.rank))


def cheapest_cover(jobs: int, options: Sequence[_Option]) -> list[_Option]:
    """The cheapest workers that together hold `jobs` jobs. Options come in
    preference order and replace the best so far only when strictly cheaper,
    so among equal costs the preferred (smaller) shape is chosen."""
    cost = [0] + [-1] * jobs
    last: list[_Option] = [options[0]] * (jobs + 1)
    for n in range(1, jobs + 1):
        for o in options:
            c = cost[max(n - o.per_worker, 0)] + o.micro
            if cost[n] < 0 or c < cost[n]:
                cost[n], last[n] = c, o
    out = []
    while jobs > 0:
        out.append(last[jobs])
        jobs = max(jobs - last[jobs].per_worker, 0)
    return out


def _pick_reason(o: _Option, workers: int, jobs: int, request: Request) -> str:
    shape = o.candidate.shape
    cost = f"at {shape.price:g}/h" if shape.price else "(no price)"
    kind = "cheapest fit" if shape.price else "smallest fit"
    return f"{kind}: {workers} x {shape.name} {cost} for {jobs} job{'s' if jobs != 1 else ''} of {request}"


def nothing_fits(request: Request, candidates: Sequence[Candidate]) -> str:
    """Why no shape holds even one job, naming what the largest shape offers."""
    asks = (f"asks for {request.cpus} cpu, {request.memory} MB, {request.disk // 1024} MB disk"
            + (f", {request.gpus} gpu" if request.gpus else ""))
    if not candidates:
        return f"no shapes to launch; it {asks}"
    largest = max(candidates, key=lambda c: c.shape.size)
    s = largest.shape
    return (f"no shape fits: it {asks}; the largest, {s.name} on {largest.cloud}, has "
            f"{s.cpus} cpu, {s.memory} MB, {s.disk} MB disk" + (f", {s.gpus} gpu" if s.gpus else ""))
