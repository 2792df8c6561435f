"""Placement with shapes, table-driven: (job groups, workers, clouds with shapes) -> which shapes are launched.

decide() is pure: each cloud lists its shapes (name, size, optional price), and for each
group of idle jobs the scheduler launches the cheapest shapes that hold it (without
prices, the smallest that fits), clouds in priority order, within the limits.
"""
from __future__ import annotations

import dataclasses

import classad
import pytest

from appliance.budget import HOUR, Caps, Spending
from appliance.config import CloudConfig, SchedulerConfig
from appliance.lifecycle import State
from appliance.model import CloudHealth, ShapeHealth, SlotSummary
from appliance.scheduler import CloudView, decide
from appliance.shapes import Shape

from .test_scheduler import NOW, SETTINGS, group, moved, observe, slot, worker


def shape(name, cpus, memory=None, price=None, disk=4096, gpus=0, attributes=None):
    return Shape(name, cpus, memory if memory is not None else 1024 * cpus, disk, gpus,
                 attributes=attributes or {}, price=price)


SMALL, MEDIUM, BIG = shape("small", 1), shape("medium", 2), shape("big", 4)
UNPRICED = (BIG, SMALL, MEDIUM)                 # listed out of order on purpose: the order given is no preference
CHEAP_BIG = (shape("small", 1, price=0.01), shape("big", 4, price=0.03))     # big is cheaper per job, when full
DEAR_BIG = (shape("small", 1, price=0.01), shape("big", 4, price=0.05))


def cloud(name="docker", shapes=UNPRICED, max_workers=10, priority=0, enabled=True, backoff_until=0.0, type_="docker",
          no_capacity=(), expired=()):
    """no_capacity: shapes backing off after a capacity error; expired: shapes whose backoff has passed."""
    cfg = CloudConfig(name=name, type=type_, priority=priority, max_workers=max_workers, shapes=tuple(shapes))
    shape_health = {s: ShapeHealth(name, s, NOW + 40, 1, "capacity: InsufficientInstanceCapacity") for s in no_capacity}
    shape_health |= {s: ShapeHealth(name, s, NOW - 1, 2, "capacity: InsufficientInstanceCapacity") for s in expired}
    return CloudView(cfg, CloudHealth(name, enabled, max_workers, backoff_until=backoff_until,
                                      last_error="boom" if backoff_until else ""), shape_health)


def launched(plan):
    """{(cloud, shape): workers} of the plan's launches."""
    out: dict[tuple[str, str], int] = {}
    for launch in plan.launches:
        out[(launch.cloud, launch.shape)] = out.get((launch.cloud, launch.shape), 0) + 1
    return out


def statuses(plan):
    return [g.status for g in plan.groups]


ON_BIG = 'TARGET.WorkerShape == "big"'

PLACE = [
    # (name, groups, clouds, settings, expected launches {(cloud, shape): n}, expected statuses)
    ("without prices: a 1-cpu job gets the smallest shape", [group(1)], [cloud()], SETTINGS,
     {("docker", "small"): 1}, ["launching"]),
    ("without prices: a 4-cpu job gets the 4-cpu shape", [group(1, cpus=4)], [cloud()], SETTINGS,
     {("docker", "big"): 1}, ["launching"]),
    ("without prices: a 2-cpu job gets the smallest shape it fits", [group(1, cpus=2)], [cloud()], SETTINGS,
     {("docker", "medium"): 1}, ["launching"]),
    ("without prices: four 1-cpu jobs get four small workers, not one big", [group(4)], [cloud()], SETTINGS,
     {("docker", "small"): 4}, ["launching"]),
    ("memory decides too: 1 cpu and 1500 MB needs the 2-cpu shape's memory", [group(1, memory=1500)], [cloud()],
     SETTINGS, {("docker", "medium"): 1}, ["launching"]),
    ("mixed groups pick their own shapes", [group(1, key="one"), group(1, cpus=4, key="four")], [cloud()], SETTINGS,
     {("docker", "small"): 1, ("docker", "big"): 1}, ["launching", "launching"]),
    ("mixed groups: a later group fills the room left in a worker launched for an earlier one",
     [group(1, cpus=2, key="two"), group(1, key="one")], [cloud(shapes=(BIG,))], SETTINGS,
     {("docker", "big"): 1}, ["launching", "served"]),
    ("with prices: four 1-cpu jobs on one big worker when it is cheaper per job", [group(4)],
     [cloud(shapes=CHEAP_BIG)], SETTINGS, {("docker", "big"): 1}, ["launching"]),
    ("with prices: packing pays only for full workers: 5 jobs on one big and one small", [group(5)],
     [cloud(shapes=CHEAP_BIG)], SETTINGS, {("docker", "big"): 1, ("docker", "small"): 1}, ["launching"]),
    ("with prices: small workers when the big one costs more per job", [group(4)], [cloud(shapes=DEAR_BIG)],
     SETTINGS, {("docker", "small"): 4}, ["launching"]),
    ("a tie in cost goes to the smaller shape (four small = one big)", [group(4)],
     [cloud(shapes=(shape("big", 4, price=0.04), shape("small", 1, price=0.01)))], SETTINGS,
     {("docker", "small"): 4}, ["launching"]),
    ("a tie in shape and price on clouds of equal priority: by name, as clouds are ordered", [group(2)],
     [cloud("b", shapes=(SMALL,)), cloud("a", shapes=(SMALL,))], SETTINGS, {("a", "small"): 2}, ["launching"]),
    ("clouds of equal priority compete on price", [group(1)],
     [cloud("a", shapes=(shape("small", 1, price=0.02),)), cloud("b", shapes=(shape("small", 1, price=0.01),))],
     SETTINGS, {("b", "small"): 1}, ["launching"]),
    ("without prices, clouds of equal priority: the smallest shape that fits, whichever cloud has it", [group(1)],
     [cloud("a", shapes=(BIG,)), cloud("b", shapes=(SMALL,))], SETTINGS, {("b", "small"): 1}, ["launching"]),
    ("priority beats price: the cheaper cloud of lower priority takes only the overflow", [group(3)],
     [cloud("a", shapes=(shape("small", 1, price=0.02),), max_workers=2),
      cloud("b", shapes=(shape("small", 1, price=0.01),), priority=1)], SETTINGS,
     {("a", "small"): 2, ("b", "small"): 1}, ["launching"]),
    ("a cloud's max_workers counts all its shapes: the packed shape first, then the next cloud", [group(9)],
     [cloud("a", shapes=CHEAP_BIG, max_workers=1), cloud("b", shapes=(SMALL,), priority=1)], SETTINGS,
     {("a", "big"): 1, ("b", "small"): 5}, ["launching"]),
    ("the global max_workers stops every cloud", [group(5)],
     [cloud("a", shapes=(SMALL,)), cloud("b", shapes=(SMALL,), priority=1)], SchedulerConfig(max_workers=3),
     {("a", "small"): 3}, ["waiting"]),
    ("max_booting limits the shapes launched at once", [group(2, cpus=4)], [cloud()], SchedulerConfig(max_booting=1),
     {("docker", "big"): 1}, ["waiting"]),
    ("mixed groups share the limits, the largest request first", [group(2, key="a"), group(2, cpus=4, key="b")],
     [cloud(max_workers=3)], SETTINGS, {("docker", "small"): 1, ("docker", "big"): 2}, ["waiting", "launching"]),
    ("a disabled cloud's shapes are skipped", [group(1, cpus=4)],
     [cloud("a", enabled=False), cloud("b", shapes=(BIG,), priority=1)], SETTINGS, {("b", "big"): 1}, ["launching"]),
    ("a cloud backing off: its shapes wait, the next cloud launches", [group(1)],
     [cloud("a", backoff_until=NOW + 30), cloud("b", shapes=(BIG,), priority=1)], SETTINGS,
     {("b", "big"): 1}, ["launching"]),
    ("capacity fallback: the cheapest shape backing off, the next cheapest takes its demand", [group(4)],
     [cloud(shapes=CHEAP_BIG, no_capacity=("big",))], SETTINGS, {("docker", "small"): 4}, ["launching"]),
    ("capacity fallback: without prices, the next larger shape that fits", [group(1)],
     [cloud(no_capacity=("small",))], SETTINGS, {("docker", "medium"): 1}, ["launching"]),
    ("capacity fallback: every fitting shape backing off, the next cloud", [group(1, cpus=4)],
     [cloud("a", no_capacity=("big",)), cloud("b", shapes=(BIG,), priority=1)], SETTINGS,
     {("b", "big"): 1}, ["launching"]),
    ("capacity fallback: nowhere else to go, the group waits", [group(1, cpus=4)],
     [cloud(no_capacity=("big",))], SETTINGS, {}, ["waiting"]),
    ("capacity fallback: a backoff that has passed, the shape is tried again", [group(4)],
     [cloud(shapes=CHEAP_BIG, expired=("big",))], SETTINGS, {("docker", "big"): 1}, ["launching"]),
    ("Requirements on WorkerShape pick that shape, even when a smaller one fits", [group(1, requirements=ON_BIG)],
     [cloud()], SETTINGS, {("docker", "big"): 1}, ["launching"]),
    ("Requirements on a shape's attribute pick that shape", [group(1, requirements="TARGET.HasSSD =?= true")],
     [cloud(shapes=(SMALL, shape("ssd", 2, attributes={"HasSSD": True})))], SETTINGS,
     {("docker", "ssd"): 1}, ["launching"]),
    ("a job bigger than every shape is unschedulable and launches nothing", [group(1, cpus=8)], [cloud()], SETTINGS,
     {}, ["unschedulable"]),
    ("Requirements no shape matches are unschedulable", [group(1, requirements='TARGET.WorkerShape == "huge"')],
     [cloud()], SETTINGS, {}, ["unschedulable"]),
]


@pytest.mark.parametrize("name,groups,clouds,settings,expected,expected_statuses", PLACE, ids=[c[0] for c in PLACE])
def test_place_with_shapes(name, groups, clouds, settings, expected, expected_statuses):
    plan = decide(observe(groups, clouds=tuple(c.name for c in clouds)), [], clouds, settings)
    assert launched(plan) == expected, [g.reason for g in plan.groups]
    assert statuses(plan) == expected_statuses, [g.reason for g in plan.groups]
    # deterministic: the same question, the same answer
    again = decide(observe(groups, clouds=tuple(c.name for c in clouds)), [], clouds, settings)
    assert again.launches == plan.launches


EXISTING = [
    # (name, groups, workers and their slots, expected launches, expected statuses)
    ("a booting big worker holds four 1-cpu jobs: nothing more is launched", [group(4)],
     [(worker("w", "docker", State.BOOTING, shape="big"), None)], {}, ["served"]),
    ("a booting small worker holds one: three more small ones", [group(4)],
     [(worker("w", "docker", State.BOOTING, shape="small"), None)], {("docker", "small"): 3}, ["launching"]),
    ("a worker recorded before shapes counts as the smallest shape", [group(2)],
     [(worker("w", "docker", State.BOOTING, shape=""), None)], {("docker", "small"): 1}, ["launching"]),
    ("a worker of a shape no longer configured counts as the smallest shape", [group(2)],
     [(worker("w", "docker", State.BOOTING, shape="gone"), None)], {("docker", "small"): 1}, ["launching"]),
    ("an idle small worker does not serve jobs that ask for the big shape", [group(1, requirements=ON_BIG)],
     [(worker("w", "docker", shape="small"), slot("w", cpus=1))], {("docker", "big"): 1}, ["launching"]),
    ("an idle big worker serves them", [group(1, requirements=ON_BIG)],
     [(worker("w", "docker", shape="big"), slot("w", cpus=4, memory=4096))], {}, ["served"]),
    ("a joined worker is sized by its collector ad, not its shape", [group(3)],
     [(worker("w", "docker", State.BUSY, shape="big"), slot("w", claimed=1, cpus=3, memory=3072))], {}, ["served"]),
]


@pytest.mark.parametrize("name,groups,workers,expected,expected_statuses", EXISTING, ids=[c[0] for c in EXISTING])
def test_existing_and_starting_workers_are_sized_by_their_shape(name, groups, workers, expected, expected_statuses):
    ws = [w for w, _ in workers]
    slots = [s for _, s in workers if s is not None]
    plan = decide(observe(groups, slots, [(w.cloud, w.id) for w in ws], ("docker",)), ws, [cloud()], SETTINGS)
    assert launched(plan) == expected, [g.reason for g in plan.groups]
    assert statuses(plan) == expected_statuses
    assert not plan.terminations and not plan.drains


def test_launches_carry_the_shape_and_say_why():
    plan = decide(observe([group(5)], clouds=("docker",)), [], [cloud(shapes=CHEAP_BIG)], SETTINGS)
    assert [(launch.shape, launch.reason) for launch in plan.launches] == [
        ("big", "5 idle job(s) asking 1 cpu, 128 MB, 1 MB disk: cheapest fit: 1 x big at 0.03/h for 4 jobs of "
                "1 cpu/128 MB"),
        ("small", "5 idle job(s) asking 1 cpu, 128 MB, 1 MB disk: cheapest fit: 1 x small at 0.01/h for 1 job of "
                  "1 cpu/128 MB")]
    assert plan.groups[0].reason == "2 new worker(s) (1 x big on docker, 1 x small on docker)"
    # without prices: the smallest fit
    plan = decide(observe([group(2, cpus=2)], clouds=("docker",)), [], [cloud()], SETTINGS)
    assert [launch.reason.split(": ", 1)[1] for launch in plan.launches] == [
        "smallest fit: 2 x medium (no price) for 2 jobs of 2 cpu/128 MB"] * 2


def test_a_cloud_with_one_worker_size_launches_its_one_shape_as_before():
    lone = CloudView(CloudConfig("local", "local", max_workers=5), CloudHealth("local", True, 5))
    plan = decide(observe([group(3)]), [], [lone], SETTINGS)
    assert [(launch.cloud, launch.shape, launch.reason) for launch in plan.launches] == [
        ("local", "default", "3 idle job(s) asking 1 cpu, 128 MB, 1 MB disk")] * 3
    assert plan.groups[0].reason == "3 new worker(s)"


def test_waiting_reasons_name_the_limits():
    clouds = [cloud("a", shapes=(SMALL,), max_workers=1), cloud("b", shapes=(SMALL,), priority=1,
                                                                  backoff_until=NOW + 30)]
    plan = decide(observe([group(3)], clouds=("a", "b")), [], clouds, SETTINGS)
    assert launched(plan) == {("a", "small"): 1}
    g = plan.groups[0]
    assert g.status == "waiting" and g.reason.startswith("2 job(s) without a worker: a: at max_workers (1); "
                                                         "b: backing off for 30s after: boom")


def test_unschedulable_reason_names_every_shape():
    plan = decide(observe([group(1, cpus=8)], clouds=("docker",)), [], [cloud()], SETTINGS)
    g = plan.groups[0]
    assert g.status == "unschedulable" and g.clouds == ()
    assert g.reason == ("no configured cloud can run it (docker: asks for 8 cpus, 128 MB, 1 MB disk; its shapes have: "
                        "big 4 cpus, 4096 MB, 4096 MB disk; small 1 cpus, 1024 MB, 4096 MB disk; "
                        "medium 2 cpus, 2048 MB, 4096 MB disk)")
    plan = decide(observe([group(1, requirements='TARGET.WorkerShape == "huge"')], clouds=("docker",)), [],
                  [cloud()], SETTINGS)
    assert ('docker: Requirements: `TARGET.WorkerShape == "huge"` fails on every shape that fits (big has '
            'WorkerShape = "big"; small has WorkerShape = "small"; medium has WorkerShape = "medium")'
            ) in plan.groups[0].reason


GPU = shape("gpu", 4, 16384, gpus=1)


def gpu_group(count, gpus=1, key=None):
    """Jobs with request_gpus: HTCondor adds the GPUs clause to their Requirements."""
    g = group(count, key=key or f"gpu{count}-{gpus}")
    g.ad["RequestGPUs"] = gpus
    g.ad["Requirements"] = classad.ExprTree("TARGET.GPUs >= RequestGPUs && TARGET.Cpus >= RequestCpus")
    return dataclasses.replace(g, gpus=gpus)


GPUS = [
    # (name, groups, workers and slots, expected launches, expected statuses)
    ("a job asking a GPU gets the GPU shape", [gpu_group(1)], [], {("docker", "gpu"): 1}, ["launching"]),
    ("one job per GPU: two GPU jobs need two 1-GPU workers, whatever their cpus", [gpu_group(2)], [],
     {("docker", "gpu"): 2}, ["launching"]),
    ("a job asking more GPUs than any shape has is unschedulable", [gpu_group(1, gpus=2)], [], {},
     ["unschedulable"]),
    ("jobs asking no GPU do not take the GPU shape", [group(2)], [], {("docker", "small"): 2}, ["launching"]),
    ("a starting GPU worker holds one GPU job", [gpu_group(2)],
     [(worker("w", "docker", State.BOOTING, shape="gpu"), None)], {("docker", "gpu"): 1}, ["launching"]),
    ("a joined GPU worker whose GPU is taken holds no more GPU jobs", [gpu_group(1)],
     [(worker("w", "docker", State.BUSY, shape="gpu"),
       SlotSummary("w", "w@host", 1, 3, 8192, 4 * 1024 * 1024, 4, free_gpus=0))], {("docker", "gpu"): 1},
     ["launching"]),
]


@pytest.mark.parametrize("name,groups,workers,expected,expected_statuses", GPUS, ids=[c[0] for c in GPUS])
def test_gpus(name, groups, workers, expected, expected_statuses):
    ws = [w for w, _ in workers]
    slots = [s for _, s in workers if s is not None]
    clouds = [cloud(shapes=(SMALL, GPU))]
    plan = decide(observe(groups, slots, [(w.cloud, w.id) for w in ws], ("docker",)), ws, clouds, SETTINGS)
    assert launched(plan) == expected, [g.reason for g in plan.groups]
    assert statuses(plan) == expected_statuses, [g.reason for g in plan.groups]


def test_a_gpu_request_is_named_in_reasons():
    plan = decide(observe([gpu_group(1, gpus=2)], clouds=("docker",)), [], [cloud(shapes=(SMALL, GPU))], SETTINGS)
    assert "asks for 1 cpus, 128 MB, 1 MB disk, 2 gpus; its shapes have: small 1 cpus, 1024 MB, 4096 MB disk; " \
           "gpu 4 cpus, 16384 MB, 4096 MB disk, 1 gpus" in plan.groups[0].reason
    plan = decide(observe([gpu_group(1)], clouds=("docker",)), [], [cloud(shapes=(SMALL, GPU))], SETTINGS)
    assert plan.launches[0].reason.startswith("1 idle job(s) asking 1 cpu, 128 MB, 1 MB disk, 1 gpu: smallest fit: "
                                              "1 x gpu (no price)")


SCALE_DOWN = [
    # (name, groups, the idle worker's shape, its free cpus, drained?)
    ("an idle worker with no job is drained", [], "small", 1, True),
    ("an idle worker that could run a waiting job is kept", [group(1)], "small", 1, False),
    ("an idle small worker is drained when the waiting jobs ask for the big shape", [group(1, requirements=ON_BIG)],
     "small", 1, True),
    ("an idle big worker is kept for them", [group(1, requirements=ON_BIG)], "big", 4, False),
    ("a worker recorded before shapes is judged as the smallest shape", [group(1, requirements=ON_BIG)], "", 4, True),
    ("an idle worker without GPUs is drained when only GPU jobs wait", [gpu_group(1)], "big", 4, True),
]


@pytest.mark.parametrize("name,groups,shape_name,free,drained", SCALE_DOWN, ids=[c[0] for c in SCALE_DOWN])
def test_scale_down_knows_each_workers_shape(name, groups, shape_name, free, drained):
    w = worker("w", "docker", since=NOW - 61, shape=shape_name)
    # the group is placed on a worker launched this cycle (max_workers leaves room), so only
    # whether w could run it decides
    plan = decide(observe(groups, [slot("w", cpus=free, memory=1024 * free)], [("docker", "w")], ("docker",)), [w],
                  [cloud(max_workers=10)], SETTINGS)
    assert (moved(plan) == {"w": State.DRAINING}) is drained, plan.groups


def test_a_group_waiting_on_a_shape_without_capacity_says_which_and_why():
    plan = decide(observe([group(1, cpus=4)]), [], [cloud(no_capacity=("big",))], SETTINGS)
    (g,) = plan.groups
    assert g.status == "waiting"
    assert "docker/big: backing off for 40s after: capacity: InsufficientInstanceCapacity" in g.reason, g.reason


def budget_cloud(name="aws", max_workers=10, priority=0, caps=None):
    view = cloud(name, shapes=(shape("small", 1, price=0.10), shape("big", 4, price=0.30)), max_workers=max_workers,
                 priority=priority)
    return dataclasses.replace(view, config=dataclasses.replace(view.config, budget=caps or Caps()))


RUNNING = [Spending(0.30, NOW - HOUR, cloud="aws", shape="big")]    # one big worker up for an hour

BUDGETS = [
    # (name, groups, clouds, global caps, spending, expected launches, expected statuses, reason has)
    ("no budget: one big for four jobs", [group(4)], [budget_cloud()], Caps(), [], {("aws", "big"): 1},
     ["launching"], ""),
    ("max_per_hour leaves room for one small worker only", [group(4)], [budget_cloud()], Caps(max_per_hour=0.45),
     RUNNING, {("aws", "small"): 1}, ["waiting"], "budget: max_per_hour 0.45 reached (0.30/h now, +0.30/h)"),
    ("max_per_hour already reached: nothing, and the reason", [group(1)], [budget_cloud()], Caps(max_per_hour=0.30),
     RUNNING, {}, ["waiting"], "budget: max_per_hour 0.30 reached"),
    ("max_per_day counts the last 24 hours and the next hour at the new rate", [group(1)], [budget_cloud()],
     Caps(max_per_day=0.65), RUNNING, {}, ["waiting"], "budget: max_per_day 0.65 reached (0.30 in the last 24 h"),
    ("a cloud's own budget: its demand goes to the next cloud", [group(1)],
     [budget_cloud(caps=Caps(max_per_hour=0.30)), budget_cloud("gcp", priority=1)], Caps(), RUNNING,
     {("gcp", "small"): 1}, ["launching"], ""),
    ("a free cloud is never blocked by a budget", [group(2)],
     [budget_cloud(), cloud("local", shapes=(SMALL,), priority=1)], Caps(max_per_hour=0.30), RUNNING,
     {("local", "small"): 2}, ["launching"], ""),
    ("a budget too small for the big group's worker still launches the small group's", [group(1, key="a"),
     group(1, cpus=4, key="b")], [budget_cloud()], Caps(max_per_hour=0.15), [], {("aws", "small"): 1},
     ["launching", "waiting"], "budget: max_per_hour 0.15 reached (0.00/h now, +0.30/h)"),
    ("the budget spent on one group is gone for the next", [group(1, key="a"), group(1, key="b", memory=256)],
     [budget_cloud()], Caps(max_per_hour=0.15), [], {("aws", "small"): 1}, ["waiting", "launching"],
     "budget: max_per_hour 0.15 reached (0.00/h now, +0.20/h)"),
]


@pytest.mark.parametrize("name,groups,clouds,caps,spending,expected,expected_statuses,reason", BUDGETS,
                         ids=[c[0] for c in BUDGETS])
def test_budgets(name, groups, clouds, caps, spending, expected, expected_statuses, reason):
    plan = decide(observe(groups, clouds=tuple(c.name for c in clouds)), [], clouds, SETTINGS, budget=caps,
                  spending=spending)
    assert launched(plan) == expected
    assert statuses(plan) == expected_statuses
    if reason:
        assert any(reason in g.reason for g in plan.groups), [g.reason for g in plan.groups]


def test_a_budget_never_touches_running_workers():
    """Over the cap (a lowered cap, a price change): busy and idle workers stay, nothing drains
    for the budget; only launches stop."""
    busy = worker("aws-b", "aws", State.BUSY, shape="big")
    plan = decide(observe([group(1)], slots=[slot("aws-b", claimed=4, cpus=0)], resources=[("aws", "aws-b")],
                          clouds=("aws",)), [busy],
                  [budget_cloud()], SETTINGS, budget=Caps(max_per_hour=0.01), spending=RUNNING)
    assert not plan.launches and not plan.drains and not plan.terminations
    assert "budget: max_per_hour 0.01 reached" in plan.groups[0].reason


def test_room_booting_for_a_big_job_is_not_taken_by_small_jobs_listed_before_it():
    """A worker booting for a big-memory job: small jobs the schedd lists first must not be
    counted on its room (that bought a second big worker for the big job)."""
    shapes = (shape("small", 1, memory=2048, price=0.10), shape("big", 4, memory=32768, price=0.25))
    booting = worker("aws-big", "aws", State.BOOTING, shape="big")
    groups = [group(3, key="small", memory=2000), group(1, key="big", memory=30000)]
    plan = decide(observe(groups, resources=[("aws", "aws-big")], clouds=("aws",)), [booting],
                  [cloud("aws", shapes=shapes)], SETTINGS)
    assert launched(plan) == {("aws", "small"): 2}     # the big worker also holds one small job
    assert [g.key for g in plan.groups] == ["small", "big"]      # reported in the schedd's order
    assert statuses(plan) == ["launching", "served"]
