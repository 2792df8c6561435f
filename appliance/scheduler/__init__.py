"""Pure decisions: (observation, workers, clouds, settings) -> Plan. No I/O.

One cycle decides in named phases, each a module of this package:
1. reconcile   what the collector and the clouds say moves each worker through
               its lifecycle; judge_health turns those moves into each cloud's
               health (a join heals it, a failure before joining backs it off);
2. place       each group of idle jobs goes first on capacity that exists or is
               booting, and only the rest asks for new workers: the cheapest
               shapes that fit it (without prices, the smallest), cloud by
               cloud in priority order, within the limits and the budgets;
   headroom    each cloud keeps its min_idle idle workers ready (and each shape
               its own), launching replacements for those that took work;
3. scale_down  idle workers with nothing to run are drained and unneeded
               starting workers cancelled (not those kept as headroom), and a
               cloud over max_workers shrinks in the order its scale-in policy gives;
4. orphans     cloud resources with our labels and no live worker are removed;
5. drains      this cycle's drains plus failed ones whose retry is due;
6. requeues    jobs left "running" on workers the appliance removed go back
               in the queue;
7. flock       local jobs no enabled cloud can run, or that wait at max_workers,
               are sent to the pools of federation.flock_to; each allowed remote
               schedd (whose jobs place() counted like local ones) is reported.

The daemon executes the Plan (act) and writes what happened (record); what a
result means for the next cycle is decided in appliance/outcomes.py, also pure.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from ..budget import Caps, Spending
from ..config import SchedulerConfig
from ..matching import template_ad
from ..model import Observation, Worker
from .draft import Draft
from .drains import plan_drains
from .flock import report_schedds, send_away
from .headroom import keep_headroom
from .orphans import find_orphans
from .place import Capacity, Placement, describe, launch_block, place
from .plan import (
    CloudView,
    Drain,
    FlockOut,
    GroupReport,
    Launch,
    Plan,
    RedrainEntry,
    ScheddReport,
    StrandedJobs,
    Terminate,
    Transition,
    group_row,
)
from .reconcile import REQUESTED_GRACE, judge_health, reconcile
from .requeues import REQUEUE_PATIENCE, plan_requeues
from .scale_down import ScaleInPolicy, newest_starting_then_longest_idle, scale_down

__all__ = ["Capacity", "CloudView", "Drain", "Draft", "FlockOut", "GroupReport", "Launch", "Placement", "Plan",
           "ScheddReport", "group_row",
           "REQUESTED_GRACE", "REQUEUE_PATIENCE", "RedrainEntry", "StrandedJobs", "ScaleInPolicy", "Terminate", "Transition", "decide",
           "describe", "launch_block", "newest_starting_then_longest_idle"]


def decide(obs: Observation, workers: Sequence[Worker], clouds: Sequence[CloudView],
           settings: SchedulerConfig, kills: Mapping[str, bool] | None = None,
           templates: Mapping[tuple[str, str], object] | None = None,
           redrain: Mapping[str, RedrainEntry] | None = None,
           stranded: Mapping[str, StrandedJobs] | None = None,
           scale_in: ScaleInPolicy = newest_starting_then_longest_idle,
           flock_to: Sequence = (), budget: Caps = Caps(), spending: Sequence[Spending] = ()) -> Plan:
    """templates: the template ad of each (cloud, shape) (matching.template_ads), made here
    for those not given; flock_to: the federation.flock_to pools (config.FlockTarget) the
    schedd flocks to; budget: the global caps (each cloud's own are in its config);
    spending: what the workers of the last 24 hours cost (budget.spending_of)."""
    templates = dict(templates or {})
    for c in clouds:
        for shape in c.config.shapes:
            if (c.name, shape.name) not in templates:
                templates[(c.name, shape.name)] = template_ad(c.config, shape=shape)

    d = Draft.start(obs.now, workers)
    reconcile(d, obs, settings, kills or {})
    health = judge_health(d, {c.name: c.health for c in clouds}, settings)
    # a cloud whose workers just failed is backing off from now: its demand goes elsewhere
    clouds = [replace(c, health=health[c.name]) for c in clouds]
    placement = place(d, obs, clouds, settings, templates, flock_to, budget, spending)
    keep_headroom(d, obs, clouds, placement, settings, budget, spending)
    scale_down(d, obs, clouds, placement, settings, scale_in)
    find_orphans(d, obs)
    plan_drains(d, redrain or {})
    plan_requeues(d, obs, stranded or {})
    send_away(d, placement, flock_to)
    report_schedds(d, obs)
    return d.plan
