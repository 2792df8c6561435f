"""Cheapest fit, table-driven: (job groups, shapes per cloud, limits) -> workers to launch.

Pure functions: no HTCondor, no cloud. Each row names the case; the expected
picks are (cloud, shape, workers, jobs) per group, plus the jobs left waiting.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.budget import Caps, Spending, budget_allows
from appliance.shapes import Candidate, Demand, Request, Shape, cheapest_fit, fits


def shape(name, cpus, memory=None, price=None, gpus=0, disk=20480):
    return Shape(name, cpus, memory if memory is not None else 2048 * cpus, disk, gpus, price=price)


def on(cloud, *shapes, priority=0):
    return [Candidate(cloud, s, priority) for s in shapes]


def demand(count, cpus=1, memory=2048, disk=0, gpus=0, key="g"):
    return Demand(key, count, Request(cpus, memory, disk, gpus))


T1 = shape("t1", 1, price=0.01)
T2 = shape("t2", 2, price=0.02)
T3 = shape("t3", 3, price=0.0305)
T4 = shape("t4", 4, price=0.03)            # cheaper per job than t1 when full
T4X = shape("t4x", 4, price=0.05)          # dearer per job than t1
T4E = shape("t4e", 4, price=0.04)          # exactly four t1s
C1 = shape("c1", 1, price=0.015)
M1 = shape("m1", 1, memory=8192, price=0.02)
G1 = shape("g1", 4, price=1.0, gpus=1)
U1 = shape("u1", 1)                        # no price
U4 = shape("u4", 4)
UG = shape("ug", 4, gpus=1)
U8 = shape("u8", 8)

ROOM = {"aws": 100, "gcp": 100}

CASES = [
    # (name, demands, candidates, headroom, kwargs, expected {key: ([(cloud, shape, workers, jobs)], waiting)})
    ("one job: the cheapest shape that fits", [demand(1)], on("aws", T2, T1), ROOM, {},
     {"g": ([("aws", "t1", 1, 1)], 0)}),
    ("a cheaper shape too small for the job is skipped", [demand(1, memory=4096)], on("aws", T1, M1), ROOM, {},
     {"g": ([("aws", "m1", 1, 1)], 0)}),
    ("packing: 4 one-cpu jobs on one 4-cpu shape, cheaper than four 1-cpu shapes", [demand(4)],
     on("aws", T1, T4), ROOM, {}, {"g": ([("aws", "t4", 1, 4)], 0)}),
    ("the opposite: four 1-cpu shapes when the 4-cpu one costs more per job", [demand(4)],
     on("aws", T1, T4X), ROOM, {}, {"g": ([("aws", "t1", 4, 4)], 0)}),
    ("packing pays only for full workers: 5 jobs on one 4-cpu plus one 1-cpu", [demand(5)],
     on("aws", T1, T4), ROOM, {}, {"g": ([("aws", "t4", 1, 4), ("aws", "t1", 1, 1)], 0)}),
    ("2 jobs: two 1-cpu shapes (0.02/h) beat one half-empty 4-cpu (0.03/h)", [demand(2)],
     on("aws", T1, T4), ROOM, {}, {"g": ([("aws", "t1", 2, 2)], 0)}),
    ("the cheapest set, not the cheapest per job: one 3-cpu (0.0305) over 2-cpu + 1-cpu (0.035)", [demand(3)],
     on("aws", C1, T2, T3), ROOM, {}, {"g": ([("aws", "t3", 1, 3)], 0)}),
    ("many jobs: full workers of the shape cheapest per job", [demand(400)],
     on("aws", T1, T4), ROOM, {}, {"g": ([("aws", "t4", 100, 400)], 0)}),
    ("memory limits packing (2100 MB rounds up to 2176: 3 per 8 GB worker)", [demand(6, memory=2100)],
     on("aws", shape("m4", 4, 8192, 0.03), shape("m1", 1, 4096, 0.011)), ROOM, {},
     {"g": ([("aws", "m4", 2, 6)], 0)}),
    ("a job asking a GPU gets a GPU shape", [demand(1, gpus=1)], on("aws", T1, G1), ROOM, {},
     {"g": ([("aws", "g1", 1, 1)], 0)}),
    ("without prices: the smallest shape that fits, filled", [demand(4)], on("aws", U4, U1), ROOM, {},
     {"g": ([("aws", "u1", 4, 4)], 0)}),
    ("without prices: a 2-cpu job gets the smallest shape it fits", [demand(3, cpus=2)], on("aws", U8, U1, U4),
     ROOM, {}, {"g": ([("aws", "u4", 2, 3)], 0)}),
    ("without prices: a job asking no GPU does not take the GPU shape", [demand(1)], on("aws", UG, U8), ROOM, {},
     {"g": ([("aws", "u8", 1, 1)], 0)}),
    ("tie in cost: the smaller shape (four t1 = one t4e)", [demand(4)], on("aws", T4E, T1), ROOM, {},
     {"g": ([("aws", "t1", 4, 4)], 0)}),
    ("tie in shape and price on clouds of equal priority: the first listed", [demand(2)],
     on("gcp", T1) + on("aws", T1), ROOM, {}, {"g": ([("gcp", "t1", 2, 2)], 0)}),
    ("clouds of equal priority compete on price", [demand(1)],
     on("aws", shape("t1", 1, price=0.02)) + on("gcp", T1), ROOM, {}, {"g": ([("gcp", "t1", 1, 1)], 0)}),
    ("priority beats price: a cheaper cloud of lower priority takes only the overflow", [demand(3)],
     on("aws", shape("t1", 1, price=0.02)) + on("gcp", T1, priority=1), {"aws": 2, "gcp": 9}, {},
     {"g": ([("aws", "t1", 2, 2), ("gcp", "t1", 1, 1)], 0)}),
    ("a cloud's headroom, then the next cloud", [demand(5)], on("aws", T1) + on("gcp", T1, priority=1),
     {"aws": 2, "gcp": 10}, {}, {"g": ([("aws", "t1", 2, 2), ("gcp", "t1", 3, 3)], 0)}),
    ("headroom is per cloud, over all its shapes: the packed shape first, then the next cloud", [demand(9)],
     on("aws", T1, T4) + on("gcp", T1, priority=1), {"aws": 1, "gcp": 10}, {},
     {"g": ([("aws", "t4", 1, 4), ("gcp", "t1", 5, 5)], 0)}),
    ("the global headroom stops every cloud", [demand(5)], on("aws", T1) + on("gcp", T1, priority=1), ROOM,
     {"global_headroom": 3}, {"g": ([("aws", "t1", 3, 3)], 2)}),
    ("a cloud missing from headroom launches nothing", [demand(2)], on("aws", T1), {}, {}, {"g": ([], 2)}),
    ("a backed-off shape is skipped: the next-cheapest shape of the same cloud", [demand(4)],
     on("aws", T1, T4) + on("gcp", T4, priority=1), ROOM, {"backed_off": {("aws", "t4")}},
     {"g": ([("aws", "t1", 4, 4)], 0)}),
    ("only that shape backs off: the same shape on another cloud still launches", [demand(4)],
     on("aws", T4) + on("gcp", T4, priority=1), ROOM, {"backed_off": {("aws", "t4")}},
     {"g": ([("gcp", "t4", 1, 4)], 0)}),
    ("every shape backing off: the jobs wait", [demand(2)], on("aws", T1, T4), ROOM,
     {"backed_off": {("aws", "t4"), ("aws", "t1")}}, {"g": ([], 2)}),
    ("mixed groups pick their own shapes", [demand(1, key="small"), demand(1, cpus=4, key="big")],
     on("aws", T1, T4), ROOM, {}, {"small": ([("aws", "t1", 1, 1)], 0), "big": ([("aws", "t4", 1, 1)], 0)}),
    ("a later group fills the room left in a worker picked for an earlier one",
     [demand(1, cpus=2, key="a"), demand(2, key="b")], on("aws", T4X), ROOM, {},
     {"a": ([("aws", "t4x", 1, 1)], 0), "b": ([], 0)}),
    ("mixed groups share the limits", [demand(2, key="a"), demand(2, key="b")], on("aws", T1),
     {"aws": 3}, {}, {"a": ([("aws", "t1", 2, 2)], 0), "b": ([("aws", "t1", 1, 1)], 1)}),
    ("nothing fits: unschedulable, nothing launched", [demand(1, cpus=64)], on("aws", T1, T4), ROOM, {},
     {"g": ([], 1)}),
    ("no shapes at all", [demand(1)], [], ROOM, {}, {"g": ([], 1)}),
]


def outcome(results):
    return {r.key: ([(p.cloud, p.shape.name, p.workers, p.jobs) for p in r.picks], r.waiting) for r in results}


@pytest.mark.parametrize("name,demands,candidates,headroom,kwargs,expected", CASES, ids=[c[0] for c in CASES])
def test_cheapest_fit(name, demands, candidates, headroom, kwargs, expected):
    results = cheapest_fit(demands, candidates, headroom, **kwargs)
    assert outcome(results) == expected
    # deterministic: the same question gets the same answer
    assert cheapest_fit(demands, candidates, headroom, **kwargs) == results


FITS = [
    # (name, shape, request, jobs per worker)
    ("cpus limit", shape("s", 4, 65536), Request(1, 128), 4),
    ("memory limits, rounded up to 128 MB", shape("s", 8, 4096), Request(1, 1000), 4),
    ("disk limits, KiB against MB, rounded up to 1 MiB", shape("s", 8, 65536, disk=10), Request(1, 128, 3000), 3),
    ("GPUs limit", shape("s", 8, 65536, gpus=2), Request(1, 128, 0, 1), 2),
    ("a job asking no GPU ignores them", shape("s", 2, 65536, gpus=0), Request(1, 128), 2),
    ("too big: none", shape("s", 2, 4096), Request(4, 128), 0),
    ("asks a GPU, shape has none", shape("s", 8, 4096), Request(1, 128, 0, 1), 0),
]


@pytest.mark.parametrize("name,s,request_,expected", FITS, ids=[c[0] for c in FITS])
def test_fits(name, s, request_, expected):
    assert fits(s, request_) == expected


def test_reasons_name_shape_price_jobs_and_request():
    t3m = shape("t3.medium", 2, 4096, 0.0416)
    [r] = cheapest_fit([demand(3, cpus=2)], on("aws", t3m), ROOM)
    assert [p.reason for p in r.picks] == ["cheapest fit: 3 x t3.medium at 0.0416/h for 3 jobs of 2 cpu/2048 MB"]
    [r] = cheapest_fit([demand(1, gpus=1)], on("lab", UG), ROOM | {"lab": 1})
    assert r.picks[0].reason == "smallest fit: 1 x ug (no price) for 1 job of 1 cpu/2048 MB/1 gpu"


def test_nothing_fits_names_what_the_largest_shape_offers():
    [r] = cheapest_fit([demand(2, cpus=64, memory=4096, disk=2048)], on("aws", T1, G1, T4), ROOM)
    assert r.unschedulable and r.waiting == 2 and not r.picks
    assert r.reason == ("no shape fits: it asks for 64 cpu, 4096 MB, 2 MB disk; "
                        "the largest, g1 on aws, has 4 cpu, 8192 MB, 20480 MB disk, 1 gpu")
    [r] = cheapest_fit([demand(1)], [], ROOM)
    assert r.unschedulable and r.reason.startswith("no shapes to launch")


def test_requirements_choose_among_shapes_and_rooms():
    # group b may run only on gpu shapes (its Requirements); it does not share a's t4
    gpu_only = {"b"}

    def allowed(d, c):
        return c.shape.gpus > 0 or d.key not in gpu_only

    results = cheapest_fit([demand(1, key="a"), demand(1, key="b"), demand(1, key="c")],
                           on("aws", T4, G1), ROOM, allowed=allowed)
    assert outcome(results) == {"a": ([("aws", "t4", 1, 1)], 0), "b": ([("aws", "g1", 1, 1)], 0),
                                "c": ([], 0)}
    assert [r.shared for r in results] == [0, 0, 1]
    [r] = cheapest_fit([demand(1, key="b")], on("aws", T4), ROOM, allowed=allowed)
    assert r.unschedulable and "Requirements match none" in r.reason


WAITS = [
    # (name, candidates, headroom, kwargs, reason of the waiting jobs)
    ("at a cloud's max_workers", on("aws", T1), {"aws": 1}, {}, "aws: no room under its max_workers"),
    ("at the global limits", on("aws", T1), ROOM, {"global_headroom": 1}, "no room under the global limits"),
    ("backing off, then full", on("aws", T4, T1), {"aws": 1}, {"backed_off": {("aws", "t4")}},
     "aws/t4: backing off; aws: no room under its max_workers"),
]


@pytest.mark.parametrize("name,candidates,headroom,kwargs,reason", WAITS, ids=[c[0] for c in WAITS])
def test_waiting_reasons(name, candidates, headroom, kwargs, reason):
    [r] = cheapest_fit([demand(3)], candidates, headroom, **kwargs)
    assert r.waiting == 2 and not r.unschedulable and r.reason == reason


def test_budget_refusal_tries_the_cheaper_shape_then_waits_with_its_reason():
    calls = []

    def afford(cloud, on_cloud, total):
        calls.append((cloud, round(on_cloud, 4), round(total, 4)))
        return None if total <= 0.035 else "budget: max_per_hour 0.035 reached"

    # 5 jobs want t4 + t1: the t4 fits the budget, the t1 on top does not, nor does a second t4
    [r] = cheapest_fit([demand(5)], on("aws", T1, T4) + on("lab", U1, priority=1), {"aws": 9}, afford=afford)
    assert outcome([r]) == {"g": ([("aws", "t4", 1, 4)], 1)}
    assert r.reason == "budget: max_per_hour 0.035 reached; lab: no room under its max_workers"
    assert calls == [("aws", 0.03, 0.03), ("aws", 0.04, 0.04), ("aws", 0.06, 0.06)]


def test_a_worker_without_a_price_never_asks_the_budget():
    def afford(cloud, on_cloud, total):
        return "budget: always"

    [r] = cheapest_fit([demand(2)], on("aws", T1) + on("lab", U1, priority=1), ROOM | {"lab": 5}, afford=afford)
    assert outcome([r]) == {"g": ([("lab", "u1", 2, 2)], 0)}


def test_budget_allows_as_the_budget_hook():
    now = 100_000.0
    running = [Spending(0.45, now - 600, cloud="aws")]
    caps = Caps(max_per_hour=0.5)

    def afford(cloud, on_cloud, total):
        return budget_allows(total, running, caps, now)

    [r] = cheapest_fit([demand(8)], on("aws", T1, T4), ROOM, afford=afford)
    # 0.45/h running: one t4 (+0.03) fits under 0.50, a second (+0.06) does not; then t1s up to +0.05
    assert outcome([r]) == {"g": ([("aws", "t4", 1, 4), ("aws", "t1", 2, 2)], 2)}
    assert r.reason == "budget: max_per_hour 0.50 reached (0.45/h now, +0.06/h)"


# ------------------------------------------------------------------ cheapest, checked against brute force

def brute_force(jobs, shapes):
    """The least total price of workers holding `jobs` jobs, by trying every count of every shape."""
    best = None

    def walk(i, left, cost):
        nonlocal best
        if left <= 0:
            best = cost if best is None else min(best, cost)
            return
        if i == len(shapes):
            return
        k, price = shapes[i]
        for n in range(-(-left // k) + 1):
            walk(i + 1, left - n * k, cost + n * price)

    walk(0, jobs, 0)
    return best


@settings(max_examples=200, deadline=None)
@given(jobs=st.integers(1, 40),
       offers=st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 6, 8]), st.integers(1, 400)), min_size=1, max_size=4,
                       unique_by=lambda t: t[0]))
def test_the_workers_picked_cost_the_least(jobs, offers):
    shapes = [shape(f"s{k}", k, price=micro / 10_000) for k, micro in offers]
    [r] = cheapest_fit([demand(jobs)], on("aws", *shapes), {"aws": 1000})
    assert r.waiting == 0
    paid = sum(p.workers * round(p.shape.price * 10_000) for p in r.picks)
    assert paid == brute_force(jobs, [(k, micro) for k, micro in offers])
