"""Phase 2b, warm headroom: each cloud keeps its `min_idle` idle workers ready (and each
shape its own), so the next job starts on a worker that is already there.

Runs after place(): a worker that placement gave jobs to this cycle is taking work, so
it no longer counts, and a replacement is launched in the same cycle. What counts as
ready: an idle worker of the cloud's default image with no job placed on it, or one
still starting for nobody (the replacement on its way). Shape quotas are met first,
each with its own shape; the cloud's own min_idle counts every ready worker (those kept
for shapes too) and launches its cheapest shape (without prices, the smallest).

Kept workers are never drained by idle_timeout, nor cancelled while starting
(scale_down reads Placement.kept). Nothing is kept by a disabled cloud, nor outside
its min_idle_window. Launches respect everything demand's do: a cloud that may not
launch (backing off, breaker open) launches none, and per-cloud and global
max_workers, max_booting, shapes backing off and the budgets bound them; a lowered
max_workers still drains kept workers (scale_down's enforce_max_workers). Each cloud
with headroom reports one line per cycle in Plan.headroom (the daemon logs it when it
changes); each launch carries its reason ("headroom: min_idle 1, 0 idle").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from .. import lifecycle
from ..budget import Caps, Spending
from ..config import SchedulerConfig
from ..headroom import Wanted, wanted
from ..lifecycle import State
from ..model import Observation, Worker
from ..shapes import Shape
from .draft import Draft
from .place import Placement, budget_check, launch_block
from .plan import CloudView, Launch


def keep_headroom(d: Draft, obs: Observation, clouds: Sequence[CloudView], placement: Placement,
                  settings: SchedulerConfig, budget: Caps = Caps(), spending: Sequence[Spending] = ()) -> None:
    views = {c.name: c for c in clouds}
    limits = _Limits.now(d, views, settings, budget, spending)
    for view in sorted(clouds, key=lambda c: (c.config.priority, c.name)):
        want = wanted(view.config, view.health.enabled, d.now)
        if want.configured:
            _keep_cloud(d, obs, view, want, placement, limits)


def _keep_cloud(d: Draft, obs: Observation, view: CloudView, want: Wanted, placement: Placement,
                limits: _Limits) -> None:
    if want.off:
        d.plan.headroom[view.name] = f"headroom: min_idle {_quota(want)}; none kept: {want.off}"
        return
    ready = _ready(d, obs, view, placement)
    block = _block(view, d.now)
    if not obs.schedd_ok or obs.slots is None:
        # who took work is not known: launch nothing on a guess (what is kept stays kept)
        block = "the schedd or the collector is not answering"
    backing_off = view.shapes_backing_off(d.now)
    kept: list[Worker] = []
    launched: dict[str, int] = {}
    waits: list[str] = []

    def launch(shape: Shape, n: int, why: str) -> None:
        for _ in range(n):
            stop = block or limits.refuse(view, shape)
            if stop:
                if stop not in waits:
                    waits.append(stop)
                return
            limits.take(view, shape)
            d.plan.launches.append(Launch(view.name, why, shape.name, view.config.default_image))
            launched[shape.name] = launched.get(shape.name, 0) + 1

    for name, n in want.shapes:
        mine = [w for w in ready if _shape(w, view) == name and w not in kept][:n]
        kept += mine
        missing = n - len(mine)
        if missing > 0:
            shape = view.config.shape(name)
            if name in backing_off:
                waits.append(f"{name}: backing off after: {backing_off[name].last_error}")
            elif shape is not None:
                launch(shape, missing, f"headroom: {name} min_idle {n}, {_counts(mine, d)}")
    have = len(kept) + sum(launched.values())
    if want.cloud > have:
        others = [w for w in ready if w not in kept][:want.cloud - have]
        kept += others
        have += len(others)
        missing = want.cloud - have
        shape = _cheapest(view, backing_off)
        if missing > 0 and shape is None:
            waits.append("every shape is backing off")
        elif missing > 0:
            launch(shape, missing, f"headroom: min_idle {want.cloud}, {_counts(kept, d)}"
                   + (f", {sum(launched.values())} launching" if launched else ""))
    report = _report(want, kept, launched, waits, d)
    for w in kept:
        placement.kept[w.id] = report
    d.plan.headroom[view.name] = report


def _block(view: CloudView, now: float) -> str | None:
    """Why the cloud may launch no headroom now, in words that stay the same from one cycle to
    the next (the line is logged when it changes): launch_block without the seconds left."""
    why = launch_block(view, now)
    if why and why.startswith("backing off for"):
        return f"backing off after: {view.health.last_error}"
    return why


def _ready(d: Draft, obs: Observation, view: CloudView, placement: Placement) -> list[Worker]:
    """The cloud's workers that are ready for new jobs and have none: idle ones first
    (the most recently busy first, so the longest idle are drained first), then those
    starting (the oldest first)."""
    default = view.config.default_image
    out = []
    for w in d.live:
        st = d.state[w.id]
        if w.cloud != view.name or placement.assigned.get(w.id) or (w.image or default) != default:
            continue
        if st is State.IDLE:
            slot = obs.slots.get(w.id) if obs.slots is not None else None
            if slot is None or not slot.notice:
                out.append(w)
        elif st in lifecycle.STARTING:
            out.append(w)
    idle = sorted((w for w in out if d.state[w.id] is State.IDLE), key=lambda w: -d.since[w.id])
    starting = sorted((w for w in out if d.state[w.id] in lifecycle.STARTING), key=lambda w: w.created_at)
    return idle + starting


def _shape(w: Worker, view: CloudView) -> str:
    return view.config.shape_of(w.shape).name


def _cheapest(view: CloudView, backing_off: Mapping[str, object]) -> Shape | None:
    """The shape the cloud's own min_idle launches: the cheapest, then the smallest, then the first."""
    shapes = [(i, s) for i, s in enumerate(view.config.shapes) if s.name not in backing_off]
    if not shapes:
        return None
    return min(shapes, key=lambda p: (p[1].price or 0.0, p[1].size, p[0]))[1]


def _quota(want: Wanted) -> str:
    shaped = ", ".join(f"{name} {n}" for name, n in want.shapes)
    return f"{want.cloud}" + (f" ({shaped})" if shaped else "")


def _counts(ws: Sequence[Worker], d: Draft) -> str:
    """'1 idle', '0 idle, 1 starting'."""
    idle = sum(1 for w in ws if d.state[w.id] is State.IDLE)
    return f"{idle} idle" + (f", {len(ws) - idle} starting" if len(ws) > idle else "")


def _report(want: Wanted, kept: Sequence[Worker], launched: Mapping[str, int], waits: Sequence[str], d: Draft) -> str:
    text = f"headroom: min_idle {_quota(want)}, {_counts(kept, d)}"
    if launched:
        text += f", launching {sum(launched.values())}"
    if waits:
        text += f"; short of it: {'; '.join(waits)}"
    return text


class _Limits:
    """What this cycle may still launch: per-cloud and global max_workers, max_booting and
    the budgets, after the launches placement made for demand."""

    def __init__(self, live: dict[str, int], total: int, booting: int, settings: SchedulerConfig,
                 added: dict[str, float], afford: Callable | None):
        self.live, self.total, self.booting, self.settings = live, total, booting, settings
        self.added, self.afford = added, afford

    @classmethod
    def now(cls, d: Draft, views: Mapping[str, CloudView], settings: SchedulerConfig, budget: Caps,
            spending: Sequence[Spending]) -> _Limits:
        live = {name: 0 for name in views}
        for w in d.in_state(*lifecycle.LIVE):
            if w.cloud in live:
                live[w.cloud] += 1
        added: dict[str, float] = {}
        for launch in d.plan.launches:
            live[launch.cloud] = live.get(launch.cloud, 0) + 1
            shape = views[launch.cloud].config.shape(launch.shape) if launch.cloud in views else None
            if shape is not None and shape.price:
                added[launch.cloud] = added.get(launch.cloud, 0.0) + shape.price
        total = len(d.in_state(*lifecycle.LIVE)) + len(d.plan.launches)
        booting = len(d.in_state(*lifecycle.STARTING)) + len(d.plan.launches)
        return cls(live, total, booting, settings, added, budget_check(views, spending, budget, d.now))

    def refuse(self, view: CloudView, shape: Shape) -> str | None:
        if self.live[view.name] >= view.health.max_workers:
            return f"at max_workers ({view.health.max_workers})"
        if self.total >= self.settings.max_workers:
            return f"at the global max_workers ({self.settings.max_workers})"
        if self.booting >= self.settings.max_booting:
            return f"at max_booting ({self.settings.max_booting} workers already starting)"
        if shape.price and self.afford is not None:
            cloud = self.added.get(view.name, 0.0) + shape.price
            return self.afford(view.name, cloud, sum(self.added.values()) + shape.price)
        return None

    def take(self, view: CloudView, shape: Shape) -> None:
        self.live[view.name] += 1
        self.total += 1
        self.booting += 1
        if shape.price:
            self.added[view.name] = self.added.get(view.name, 0.0) + shape.price
