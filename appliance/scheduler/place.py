"""Phase 2, place demand: each group of idle jobs is first placed on capacity
that exists or is already booting (so nothing is launched twice for the same
jobs), and only the rest asks for new workers. Which workers is decided by
appliance.shapes.cheapest_fit: the shapes that serve the group at the least
cost (without prices, the smallest shape that fits), cloud by cloud in
priority order (clouds of equal priority compete on price), within per-cloud
and global max_workers and max_booting, and within the budgets (a priced
launch that would go over a cap is not made; its demand waits and says so). A group's Requirements are matched
against each shape's own template ad.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .. import asks, lifecycle
from ..budget import Caps, Spending, spend_at, within
from ..config import CloudConfig, SchedulerConfig
from ..lifecycle import State
from ..matching import TemplateKey, Verdict, cloud_verdict, fits, rounded_disk, rounded_memory, shape_verdicts
from ..model import JobGroup, Observation
from ..shapes import Afford, Candidate, Demand, GroupFit, Pick, Request, cheapest_fit
from .draft import Draft
from .plan import CloudView, GroupReport, Launch


@dataclass
class Capacity:
    """Free room on one worker (existing, booting or planned this cycle)."""
    worker_id: str | None
    cloud: str
    cpus: int
    memory: int
    disk: int
    joined: bool
    created_at: float
    assigned: int = 0
    shape: str = ""          # the worker's shape: a group's Requirements may accept some shapes only
    gpus: int = 0
    image: str = ""          # the name of the worker's image: a group asking for another may not use it

    def take(self, group: JobGroup, n: int) -> None:
        self.cpus -= n * group.cpus
        self.memory -= n * rounded_memory(group.memory)
        self.disk -= n * rounded_disk(group.disk)
        self.gpus -= n * group.gpus
        self.assigned += n


@dataclass
class Placement:
    """What placing the demand found out, for scale-down and sending away."""
    assigned: dict[str, int] = field(default_factory=dict)          # worker id -> jobs placed on it
    # group key -> the (cloud, shape) pairs whose workers could run it
    runnable_on: dict[str, set[TemplateKey]] = field(default_factory=dict)
    # local group key -> (jobs, why) that this appliance will not run: no cloud can run them,
    # only disabled ones could, or they wait only at max_workers (per cloud or global);
    # flocking may take them
    overflow: dict[str, tuple[int, str]] = field(default_factory=dict)
    # worker id -> why it is kept as warm headroom (scheduler/headroom.py): never drained by
    # idle_timeout, nor cancelled while starting
    kept: dict[str, str] = field(default_factory=dict)


def launch_block(view: CloudView, now: float) -> str | None:
    """Why this cloud may not launch now, or None if it may."""
    h = view.health
    if not h.enabled:
        return "disabled"
    unsized = [s.name for s in view.config.shapes if not s.sized]
    if unsized:
        return f"the sizes of {', '.join(unsized)} are not known yet: the cloud is asked each cycle (see the log)"
    if h.breaker_open:
        return f"stopped after {h.failures} quick failures in a row ({h.last_error}); re-enable it to retry"
    if h.backoff_until > now:
        return f"backing off for {h.backoff_until - now:.0f}s after: {h.last_error}"
    return None


def describe(group: JobGroup) -> str:
    return f"{group.cpus} cpu, {group.memory} MB, {group.disk // 1024} MB disk" + (
        f", {group.gpus} gpu" if group.gpus else "")


def whose(group: JobGroup) -> str:
    """' of schedd X' for a remote schedd's jobs, for launch reasons."""
    return f" of schedd {group.schedd}" if group.schedd else ""


def sent_away(group: JobGroup, flock_to: Sequence) -> tuple[str, ...]:
    """The federation.flock_to pools a local group's jobs were sent to (their FlockTo names them)."""
    if group.schedd or not group.flock_to:
        return ()
    asked = {p.lower() for p in group.flock_to}
    return tuple(t.name for t in flock_to if t.collector.lower() in asked)


def existing_capacity(d: Draft, obs: Observation, views: Mapping[str, CloudView]) -> list[Capacity]:
    """Room on workers that exist or are starting, joined ones first, oldest first.
    A worker not yet in the collector is counted as an empty worker of its shape."""
    capacity = []
    for w in d.live:
        st = d.state[w.id]
        if st not in (State.REQUESTED, State.BOOTING, State.IDLE, State.BUSY) or w.cloud not in views:
            continue
        config = views[w.cloud].config
        size = config.shape_of(w.shape)
        image = w.image or config.default_image
        slot = obs.slots.get(w.id) if obs.slots is not None else None
        if slot is not None:
            capacity.append(Capacity(w.id, w.cloud, slot.free_cpus, slot.free_memory, slot.free_disk,
                                     True, w.created_at, shape=size.name, gpus=slot.free_gpus, image=image))
        elif st is State.BUSY:
            continue    # busy, and its room unknown until it advertises again: count on none
        else:
            capacity.append(Capacity(w.id, w.cloud, size.cpus, size.memory, size.disk * 1024,
                                     st not in lifecycle.STARTING, w.created_at, shape=size.name, gpus=size.gpus,
                                     image=image))
    capacity.sort(key=lambda c: (not c.joined, c.created_at))
    return capacity


@dataclass
class _Row:
    """One group on its way through place()."""
    group: JobGroup
    verdicts: dict[str, Verdict]         # per cloud
    runnable: list[CloudView]            # clouds with a shape that could run it, in priority order
    shapes: set[TemplateKey]             # (cloud, shape) pairs that could run it
    remaining: int                       # jobs without room after existing and starting workers
    away: tuple[str, ...]                # the pools its jobs were sent to (nothing launched for them)
    # per cloud that could run it: the image its new workers run and their price cap
    variants: dict[str, tuple[str, float | None]] = field(default_factory=dict)


def variant(group: JobGroup, cloud: CloudConfig) -> tuple[str, float | None]:
    """The image a new worker of this cloud runs for the group, and the price cap its jobs set."""
    image, _ = asks.image_for(group.asks, cloud.name, cloud.images)
    return image or cloud.default_image, group.asks.max_price


def may_use(group: JobGroup, cloud: CloudConfig, image: str) -> bool:
    """May the group's jobs run on an existing worker of this image? As the worker's START says."""
    return asks.accepts_image(group.asks, cloud.name, image, cloud.image_ref(image))


def budget_check(views: Mapping[str, CloudView], spending: Sequence[Spending], caps: Caps,
                 now: float) -> Afford | None:
    """cheapest_fit's hook: may a worker adding this cost per hour be launched, under its
    cloud's budget and the global one? None when no budget is set anywhere."""
    if not caps.any and not any(v.config.budget.any for v in views.values()):
        return None
    total = spend_at(spending, now)
    per_cloud = {name: spend_at([s for s in spending if s.cloud == name], now)
                 for name, v in views.items() if v.config.budget.any}

    def afford(cloud: str, cloud_added: float, total_added: float) -> str | None:
        if cloud in per_cloud:
            why = within(cloud_added, per_cloud[cloud], views[cloud].config.budget, cloud)
            if why:
                return why
        return within(total_added, total, caps)
    return afford


def place(d: Draft, obs: Observation, clouds: Sequence[CloudView], settings: SchedulerConfig,
          templates: Mapping[TemplateKey, object], flock_to: Sequence = (),
          budget: Caps = Caps(), spending: Sequence[Spending] = ()) -> Placement:
    now = d.now
    views = {c.name: c for c in clouds}
    capacity = existing_capacity(d, obs, views)
    live_count = {name: 0 for name in views}
    for w in d.in_state(*lifecycle.LIVE):
        if w.cloud in live_count:
            live_count[w.cloud] += 1
    total_live = len(d.in_state(*lifecycle.LIVE))
    booting = len(d.in_state(*lifecycle.STARTING))

    ordered = sorted(clouds, key=lambda c: (c.config.priority, c.name))
    blocked = {c.name: launch_block(c, now) for c in clouds}
    placement = Placement()

    # 1. what each shape could run, and the room that exists or is starting. Groups take room
    # largest request first (first-fit decreasing): in the schedd's order, small jobs listed
    # first took the room of a big worker booting for a big job, and another big one was
    # bought for it (bench/cost.py measured up to 30% on a mixed workload)
    rows: list[_Row] = []
    for group in sorted(obs.groups, key=largest_first):
        verdicts, shapes = {}, set()
        for c in ordered:
            per_shape = shape_verdicts(group, c.config, templates)
            # a shape whose size the cloud has not told yet may fit: the group waits, not unschedulable
            per_shape.update({s.name: Verdict(True) for s in c.config.shapes if not s.sized})
            verdicts[c.name] = cloud_verdict(group, c.config, per_shape)
            shapes |= {(c.name, name) for name, v in per_shape.items() if v.ok}
        shapes = spare_gpus(group, shapes, views)
        placement.runnable_on[group.key] = shapes
        remaining = group.count
        for cap in capacity:
            if remaining <= 0:
                break
            if (cap.cloud, cap.shape) not in shapes or not may_use(group, views[cap.cloud].config, cap.image):
                continue
            n = min(remaining, fits(cap.cpus, cap.memory, cap.disk, group, cap.gpus))
            if n > 0:
                cap.take(group, n)
                remaining -= n
        runnable = [c for c in ordered if verdicts[c.name].ok]
        rows.append(_Row(group, verdicts, runnable, shapes, remaining, sent_away(group, flock_to),
                         {c.name: variant(group, c.config) for c in runnable}))

    # 2. the cheapest new workers for what is left, group by group, within the limits
    wanting = [r for r in rows if r.remaining > 0 and not r.away and r.runnable]
    # one candidate per shape and per image and price cap some group wants of that cloud
    wanted_variants = {c.name: sorted({r.variants[c.name] for r in wanting if c.name in r.variants},
                                      key=lambda v: (v[0], v[1] is not None, v[1] or 0.0)) for c in ordered}
    candidates = [Candidate(c.name, shape, c.config.priority, image, cap) for c in ordered if not blocked[c.name]
                  for shape in c.config.shapes for image, cap in wanted_variants[c.name]]
    headroom = {c.name: max(c.health.max_workers - live_count[c.name], 0) for c in ordered}
    global_headroom = max(min(settings.max_workers - total_live, settings.max_booting - booting), 0)

    # a shape the cloud refused capacity for backs off alone: its demand goes to the next
    # cheapest shape, then the next cloud
    backed_off = {(c.name, name) for c in ordered for name in c.shapes_backing_off(now)}

    def allowed(demand: Demand, candidate: Candidate) -> bool:
        row = wanting[int(demand.key)]
        return ((candidate.cloud, candidate.shape.name) in row.shapes
                and row.variants.get(candidate.cloud) == (candidate.image, candidate.max_price))

    demands = [Demand(str(i), r.remaining, Request(r.group.cpus, r.group.memory, r.group.disk, r.group.gpus))
               for i, r in enumerate(wanting)]
    fitted: dict[int, GroupFit] = {id(r): f for r, f in zip(wanting, cheapest_fit(
        demands, candidates, headroom, global_headroom, backed_off, allowed=allowed,
        afford=budget_check(views, spending, budget, now)), strict=True)}

    # 3. launches and each group's report, in the order cheapest_fit spent the limits
    # (largest first); the reports in the schedd's order
    order = {id(g): i for i, g in enumerate(obs.groups)}
    reports: list[tuple[int, GroupReport]] = []
    for row in rows:
        group = row.group
        fit = fitted.get(id(row))
        picks = fit.picks if fit is not None else ()
        remaining = fit.waiting if fit is not None else row.remaining
        launched = 0
        for pick in picks:
            reason = f"{group.count} idle job(s){whose(group)} asking {describe(group)}"
            if _shaped(views[pick.cloud]):
                reason += f": {pick.reason}"
            if pick.image != views[pick.cloud].config.default_image:
                reason += f" (image {pick.image})"
            d.plan.launches.extend(Launch(pick.cloud, reason, pick.shape.name, pick.image, pick.max_price)
                                   for _ in range(pick.workers))
            live_count[pick.cloud] += pick.workers
            total_live += pick.workers
            booting += pick.workers
            launched += pick.workers

        enabled_runnable = tuple(c.name for c in row.runnable if c.health.enabled)
        if row.away:
            status = "sent away"
            reason = (f"offered to {', '.join(row.away)} by flocking: no worker is launched here for it"
                      + (" (workers here have room for some)" if row.remaining < group.count else ""))
        elif not row.runnable:
            why = "; ".join(f"{c.name}: {row.verdicts[c.name].reason}" for c in ordered) or "no clouds configured"
            status, reason = "unschedulable", f"no configured cloud can run it ({why})"
            if not group.schedd:
                placement.overflow[group.key] = (group.count, "no cloud here can run it")
        elif not enabled_runnable:
            # clouds that could run it are there, but an operator disabled them (cloud_admin -d, or
            # enabled: false): it waits for one to be enabled, it is not impossible
            status, reason = "waiting", only_disabled(row.runnable)
            if not group.schedd:
                placement.overflow[group.key] = (group.count, "only disabled clouds here could run it")
        elif remaining > 0:
            waits, only_max_workers = _waits(row.runnable, blocked, live_count, total_live, booting, settings)
            shape_waits = _shape_waits(row, views, now) + _budget_waits(fit)
            waits += shape_waits
            only_max_workers = only_max_workers and not shape_waits
            status, reason = "waiting", f"{remaining} job(s) without a worker: " + "; ".join(waits)
            if not group.schedd and waits and only_max_workers:
                placement.overflow[group.key] = (remaining, "waiting at max_workers")
        elif launched:
            status, reason = "launching", f"{launched} new worker(s)" + _picked(picks, views)
        else:
            status, reason = "served", "existing or booting workers have room"
        reports.append((order[id(group)], GroupReport(group.key, group.count, group.cpus, group.memory, group.disk,
                                                      group.requirements, group.target_clouds, enabled_runnable,
                                                      status, reason, group.schedd, group.owner_hint)))
    d.plan.groups.extend(r for _, r in sorted(reports, key=lambda x: x[0]))

    placement.assigned = {c.worker_id: c.assigned for c in capacity if c.worker_id}
    return placement


def only_disabled(clouds: Sequence[CloudView]) -> str:
    """The reason of a group only disabled clouds could run: 'only docker could run it, and it is disabled'."""
    names = [c.name for c in clouds]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    return f"only {listed} could run it, and {'it is' if len(names) == 1 else 'they are'} disabled"


def spare_gpus(group: JobGroup, shapes: set[TemplateKey], views: Mapping[str, CloudView]) -> set[TemplateKey]:
    """A job asking no GPU is placed on GPU shapes (new workers, or room on existing ones)
    only when no enabled cloud has a shape without GPUs that can run it: GPU workers are
    dear, and a CPU job on one keeps it from retiring and may take the cpus a GPU job needs.
    (A CPU shape that is only backing off or at max_workers still counts: its jobs wait.)"""
    if group.gpus:
        return shapes
    plain = {k for k in shapes if not views[k[0]].config.shape_of(k[1]).gpus}
    if not any(views[cloud].health.enabled for cloud, _ in plain):
        return shapes           # no enabled cloud has a CPU shape for it: a GPU one will do
    return plain


def largest_first(group: JobGroup) -> tuple:
    """GPUs, then memory, cpus and disk, largest first; ties keep the schedd's order (sorted is stable)."""
    return (-group.gpus, -rounded_memory(group.memory), -group.cpus, -rounded_disk(group.disk))


def _shaped(view: CloudView) -> bool:
    """The cloud has a choice of shapes, or prices: launch reasons then say which shape and why."""
    shapes = view.config.shapes
    return len(shapes) > 1 or any(s.price for s in shapes)


def _picked(picks: Sequence[Pick], views: Mapping[str, CloudView]) -> str:
    shown = [f"{p.workers} x {p.shape.name} on {p.cloud}" for p in picks if _shaped(views[p.cloud])]
    return f" ({', '.join(shown)})" if shown else ""


def _waits(runnable: Sequence[CloudView], blocked: Mapping[str, str | None], live_count: Mapping[str, int],
           total_live: int, booting: int, settings: SchedulerConfig) -> tuple[list[str], bool]:
    """Why each cloud that could run a group launched no (more) workers for it, and
    whether every such reason is a max_workers limit (per cloud or global)."""
    waits: list[str] = []
    only_max_workers = True
    for c in runnable:
        why = blocked[c.name]
        if why:
            waits.append(f"{c.name}: {why}")
            only_max_workers = False
            continue
        limit = _headroom(c, live_count, total_live, booting, settings)
        if limit:
            waits.append(f"{c.name}: {limit}")
            only_max_workers = only_max_workers and "max_workers" in limit
    return waits, only_max_workers


def _shape_waits(row: _Row, views: Mapping[str, CloudView], now: float) -> list[str]:
    """The shapes that could run the group and back off after a capacity error, with why."""
    out = []
    for c in row.runnable:
        for name, h in views[c.name].shapes_backing_off(now).items():
            if (c.name, name) in row.shapes:
                out.append(f"{c.name}/{name}: backing off for {h.backoff_until - now:.0f}s after: {h.last_error}")
    return out


def _budget_waits(fit: GroupFit | None) -> list[str]:
    """The budget caps that stopped launches for the group (cheapest_fit's reasons)."""
    if fit is None or not fit.reason:
        return []
    return [why for why in fit.reason.split("; ") if why.startswith("budget:")]


def _headroom(c: CloudView, live_count: Mapping[str, int], total_live: int, booting: int,
              settings: SchedulerConfig) -> str | None:
    """Why no further worker may be launched on c in this cycle, or None."""
    if live_count[c.name] >= c.health.max_workers:
        return f"at max_workers ({c.health.max_workers})"
    if total_live >= settings.max_workers:
        return f"at the global max_workers ({settings.max_workers})"
    if booting >= settings.max_booting:
        return f"at max_booting ({settings.max_booting} workers already starting)"
    return None
