"""The scheduler's decisions, table-driven: (observation, workers, clouds) -> plan.

No Docker, no HTCondor daemons: decide() is a pure function. Job groups carry
real ClassAds, so Requirements are matched exactly as the negotiator would.
"""
from __future__ import annotations

from dataclasses import replace

import classad
import pytest

from appliance.config import CloudConfig, SchedulerConfig, WorkerSize
from appliance.lifecycle import State
from appliance.model import STALE_CLAIM, CloudHealth, JobGroup, Observation, Resource, SlotSummary, Worker
from appliance.scheduler import CloudView, decide

NOW = 10_000.0
SETTINGS = SchedulerConfig(interval=2, idle_timeout=60, boot_timeout=300, lost_timeout=120,
                           max_booting=10, max_workers=100)


def cloud(name="local", type_="local", max_workers=2, priority=0, cpus=1, memory=1024, disk=4096,
          enabled=True, backoff_until=0.0, breaker=False, attributes=None):
    cfg = CloudConfig(name=name, type=type_, priority=priority, max_workers=max_workers,
                      worker=WorkerSize(cpus=cpus, memory=memory, disk=disk, attributes=attributes or {}))
    return CloudView(cfg, CloudHealth(name, enabled, max_workers, backoff_until=backoff_until,
                                      failures=5 if breaker else 0, last_error="boom" if backoff_until or breaker else "",
                                      breaker_open=breaker))


def group(count=1, cpus=1, memory=128, disk=1024, requirements="true", target=None, key=None):
    ad = classad.ClassAd()
    ad["RequestCpus"] = cpus
    ad["RequestMemory"] = memory
    ad["RequestDisk"] = disk
    ad["Requirements"] = classad.ExprTree(
        f"({requirements}) && TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory && TARGET.HasFileTransfer")
    if target:
        ad["TargetClouds"] = target
    ad["MyType"] = "Job"
    tc = tuple(target.split(",")) if target else None
    return JobGroup(key or f"g{count}-{cpus}-{memory}-{requirements}-{target}", count, cpus, memory, disk,
                    requirements, tc, ad=ad)


def worker(wid, cloud_name="local", state=State.IDLE, created=NOW - 100, since=NOW - 10, seen=NOW, resource="r",
           shape=""):
    return Worker(wid, cloud_name, state, created, since, resource_id=resource, condor_name=f"{wid}@host",
                  last_seen=seen, shape=shape)


def slot(wid, claimed=0, cpus=1, memory=1024, disk=4 * 1024 * 1024):
    return SlotSummary(wid, f"{wid}@host", claimed, cpus, memory, disk, cpus)


def observe(groups=(), slots=(), resources=None, clouds=("local",), schedd_ok=True, collector=True):
    res = {c: {} for c in clouds}
    for cname, wid in (resources or []):
        res.setdefault(cname, {})[wid] = Resource(wid, f"id-{wid}")
    return Observation(NOW, tuple(groups), {s.worker_id: s for s in slots} if collector else None, res, schedd_ok)


def launches(plan):
    out = {}
    for l in plan.launches:
        out[l.cloud] = out.get(l.cloud, 0) + 1
    return out


def moved(plan):
    return {t.worker_id: t.to for t in plan.transitions}


# ------------------------------------------------------------------ scale up

SCALE_UP = [
    # (name, groups, workers+slots, clouds, expected launches per cloud, expected group status)
    ("no demand, nothing to do", [], [], [cloud()], {}, None),
    ("3 one-cpu jobs, max 2 one-cpu workers", [group(3)], [], [cloud(max_workers=2)], {"local": 2}, "waiting"),
    ("2 jobs fill one 2-cpu worker", [group(2)], [], [cloud(cpus=2, max_workers=5)], {"local": 1}, "launching"),
    ("memory, not cpus, limits packing (128 MB rounds up)", [group(4, memory=300)], [], [cloud(cpus=8, memory=1024, max_workers=5)],
     {"local": 2}, "launching"),
    ("booting workers already cover the demand: launch nothing twice", [group(2)],
     [(worker("a", state=State.BOOTING), None), (worker("b", state=State.BOOTING), None)], [cloud()], {}, "served"),
    ("an idle worker takes one job, the other job needs a launch", [group(2)],
     [(worker("a"), slot("a"))], [cloud()], {"local": 1}, "launching"),
    ("a busy worker's free cpus take new jobs (partitionable slot)", [group(2)],
     [(worker("a", state=State.BUSY), slot("a", claimed=1, cpus=2, memory=2048))], [cloud(cpus=4)], {}, "served"),
    ("requirements that match no cloud start nothing", [group(3, requirements='TARGET.CloudName == "nope"')],
     [], [cloud()], {}, "unschedulable"),
    ("request_memory larger than any worker is unschedulable", [group(1, memory=999999)], [], [cloud()], {}, "unschedulable"),
    ("request_cpus larger than any worker is unschedulable", [group(1, cpus=64)], [], [cloud(cpus=4)], {}, "unschedulable"),
    ("requirements on a cloud attribute pick that cloud", [group(2, requirements='TARGET.CloudName == "aws"')],
     [], [cloud(), cloud("aws", "ec2", priority=5)], {"aws": 2}, "launching"),
    ("requirements on a custom attribute", [group(1, requirements="TARGET.HasGPU =?= true")],
     [], [cloud(), cloud("gpu", "ec2", priority=9, attributes={"HasGPU": True})], {"gpu": 1}, "launching"),
    ("+TargetClouds restricts the clouds", [group(2, target="docker")],
     [], [cloud(), cloud("docker", "docker", priority=5)], {"docker": 2}, "launching"),
    ("+TargetClouds naming no configured cloud is unschedulable", [group(1, target="aws")], [], [cloud()], {}, "unschedulable"),
    ("priority: lower number first", [group(1)], [], [cloud("b", "docker", priority=1), cloud("a", priority=0)], {"a": 1}, "launching"),
    ("priority fall-through when the first cloud is at max", [group(4)], [],
     [cloud("local", max_workers=1), cloud("docker", "docker", priority=1, max_workers=10)],
     {"local": 1, "docker": 3}, "launching"),
    ("fall-through past a disabled cloud", [group(1)], [], [cloud(enabled=False), cloud("docker", "docker", priority=1)],
     {"docker": 1}, "launching"),
    ("only a disabled cloud could run it: waiting, not unschedulable", [group(1)], [], [cloud(enabled=False)], {},
     "waiting"),
    ("a disabled cloud that could not run it either: unschedulable", [group(1, memory=5000)], [],
     [cloud(enabled=False)], {}, "unschedulable"),
    ("fall-through past a cloud in backoff", [group(1)], [],
     [cloud(backoff_until=NOW + 30), cloud("docker", "docker", priority=1)], {"docker": 1}, "launching"),
    ("a cloud in backoff alone: waiting, not unschedulable", [group(1)], [], [cloud(backoff_until=NOW + 30)], {}, "waiting"),
    ("an open breaker launches nothing", [group(1)], [], [cloud(breaker=True)], {}, "waiting"),
    ("a full cloud counts its draining workers", [group(1)],
     [(worker("a", state=State.DRAINING), slot("a")), (worker("b", state=State.DRAINING), slot("b"))],
     [cloud(max_workers=2)], {}, "waiting"),
]


@pytest.mark.parametrize("name,groups,workers,clouds,expected,status", SCALE_UP, ids=[c[0] for c in SCALE_UP])
def test_scale_up(name, groups, workers, clouds, expected, status):
    ws = [w for w, _ in workers]
    slots = [s for _, s in workers if s is not None]
    names = tuple(c.name for c in clouds)
    res = [(w.cloud, w.id) for w in ws]
    plan = decide(observe(groups, slots, res, names), ws, clouds, SETTINGS)
    assert launches(plan) == expected
    if status:
        assert [g.status for g in plan.groups] == [status]
    assert not plan.terminations and not plan.drains


def test_global_max_workers_and_max_booting():
    clouds = [cloud(max_workers=50)]
    plan = decide(observe([group(40)]), [], clouds, SchedulerConfig(max_workers=5, max_booting=10))
    assert launches(plan) == {"local": 5}
    assert "global max_workers (5)" in plan.groups[0].reason
    plan = decide(observe([group(40)]), [], clouds, SchedulerConfig(max_workers=100, max_booting=3))
    assert launches(plan) == {"local": 3}
    assert "max_booting (3" in plan.groups[0].reason
    booting = [worker(f"b{i}", state=State.BOOTING) for i in range(3)]
    plan = decide(observe([group(40)], resources=[("local", w.id) for w in booting]), booting, clouds,
                  SchedulerConfig(max_workers=100, max_booting=3))
    assert launches(plan) == {}


def test_capacity_planned_for_one_group_serves_the_next():
    # one 4-cpu worker is launched for 1 big-memory job and still has room for 3 small ones
    plan = decide(observe([group(1, memory=512, key="big"), group(3, key="small")]), [],
                  [cloud(cpus=4, memory=4096, max_workers=5)], SETTINGS)
    assert launches(plan) == {"local": 1}
    assert [g.status for g in plan.groups] == ["launching", "served"]


def test_unschedulable_reason_names_each_cloud():
    plan = decide(observe([group(1, memory=5000)], clouds=("local", "docker")), [],
                  [cloud(), cloud("docker", "docker", enabled=False, memory=2048)], SETTINGS)
    g = plan.groups[0]
    assert g.status == "unschedulable" and g.clouds == ()
    assert g.reason.startswith("no configured cloud can run it (docker: asks for 1 cpus, 5000 MB")
    assert "local: asks for 1 cpus, 5000 MB" in g.reason


# A group that some configured cloud could run waits while every such cloud is disabled
# (cloud_admin -d, or enabled: false): enabling one runs it. Only a group no configured
# cloud could run at all is unschedulable.
DISABLED = [
    # (name, group, clouds, status, reason)
    ("the one cloud that could run it is disabled", group(1), [cloud("docker", "docker", enabled=False)],
     "waiting", "only docker could run it, and it is disabled"),
    ("the enabled cloud is too small, the one that fits is disabled", group(1, memory=5000),
     [cloud(), cloud("docker", "docker", enabled=False, memory=8192)],
     "waiting", "only docker could run it, and it is disabled"),
    ("two disabled clouds could", group(1), [cloud("docker", "docker", enabled=False),
                                             cloud("aws", "ec2", enabled=False, priority=1)],
     "waiting", "only docker and aws could run it, and they are disabled"),
    ("three, in priority order", group(1), [cloud("c", enabled=False, priority=2), cloud("a", enabled=False),
                                            cloud("b", enabled=False, priority=1)],
     "waiting", "only a, b and c could run it, and they are disabled"),
    ("+TargetClouds names the disabled one", group(1, target="docker"),
     [cloud(), cloud("docker", "docker", enabled=False)],
     "waiting", "only docker could run it, and it is disabled"),
    ("the disabled cloud cannot run it either", group(1, memory=5000),
     [cloud(), cloud("docker", "docker", enabled=False)], "unschedulable", "no configured cloud can run it ("),
    ("+TargetClouds names no configured cloud, one is disabled", group(1, target="aws"),
     [cloud(enabled=False)], "unschedulable", "no configured cloud can run it (local: +TargetClouds"),
    ("one enabled cloud could run it: waiting for it, not for the disabled one", group(3),
     [cloud(max_workers=2), cloud("docker", "docker", enabled=False, priority=1)],
     "waiting", "1 job(s) without a worker: local: at max_workers (2); docker: disabled"),
]


@pytest.mark.parametrize("name,grp,clouds,status,reason", DISABLED, ids=[c[0] for c in DISABLED])
def test_a_group_only_disabled_clouds_could_run_waits_naming_them(name, grp, clouds, status, reason):
    plan = decide(observe([grp], clouds=tuple(c.name for c in clouds)), [], clouds, SETTINGS)
    (g,) = plan.groups
    assert (g.status, g.reason[:len(reason)]) == (status, reason), g.reason
    if reason.startswith(("only", "no configured")):
        assert not plan.launches


def test_schedd_down_launches_and_cancels_nothing():
    w = worker("a", state=State.BOOTING, created=NOW - 5, since=NOW - 5)
    plan = decide(observe(resources=[("local", "a")], schedd_ok=False), [w], [cloud()], SETTINGS)
    assert not plan.launches and not plan.transitions and not plan.terminations


# ------------------------------------------------------------------ lifecycle from observations

def test_booting_worker_joins_idle_then_busy_then_idle():
    w = worker("a", state=State.BOOTING)
    plan = decide(observe(slots=[slot("a")], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.IDLE} and plan.seen == {"a": "a@host"}
    assert "joined the pool as a@host" in plan.transitions[0].reason
    plan = decide(observe(slots=[slot("a", claimed=1)], resources=[("local", "a")]), [worker("a")], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.BUSY}
    plan = decide(observe(slots=[slot("a")], resources=[("local", "a")]), [worker("a", state=State.BUSY)], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.IDLE}


def test_a_busy_worker_whose_only_claim_went_stale_is_idle_and_then_drained():
    """A lost claim release (condor.summarize_slots counts it stale, not claimed) ends its busy
    state with the reason; idle_timeout then drains it as any idle worker."""
    stale = replace(slot("a", cpus=0), stale_claims=1)
    plan = decide(observe(slots=[stale], resources=[("local", "a")]), [worker("a", state=State.BUSY)], [cloud()],
                  SETTINGS)
    assert moved(plan) == {"a": State.IDLE}
    assert plan.transitions[0].reason.startswith(f"its claim has run no job for {STALE_CLAIM}s")
    plan = decide(observe(slots=[stale], resources=[("local", "a")]), [worker("a", since=NOW - 61)], [cloud()],
                  SETTINGS)
    assert moved(plan) == {"a": State.DRAINING} and [d.worker_id for d in plan.drains] == ["a"]


def test_booting_worker_that_joins_already_claimed_goes_straight_to_busy():
    plan = decide(observe(slots=[slot("a", claimed=1)], resources=[("local", "a")]),
                  [worker("a", state=State.BOOTING)], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.BUSY}


def test_idle_past_timeout_without_demand_is_drained_never_terminated():
    w = worker("a", since=NOW - 61)
    plan = decide(observe(slots=[slot("a")], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.DRAINING}
    assert [d.worker_id for d in plan.drains] == ["a"] and not plan.terminations


def test_idle_past_timeout_with_matching_demand_is_kept():
    w = worker("a", since=NOW - 61)
    plan = decide(observe([group(1)], slots=[slot("a")], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert not plan.transitions and not plan.drains and not plan.launches


def test_idle_past_timeout_is_kept_while_the_queue_cannot_be_read():
    # the schedd did not answer: its idle jobs may well need this worker
    w = worker("a", since=NOW - 61)
    plan = decide(observe(slots=[slot("a")], resources=[("local", "a")], schedd_ok=False), [w], [cloud()], SETTINGS)
    assert not plan.transitions and not plan.drains


def test_busy_worker_missing_from_the_collector_is_counted_as_full():
    # after a collector restart a busy worker's room is unknown until it advertises: new demand launches
    w = worker("a", state=State.BUSY)
    plan = decide(observe([group(1)], slots=[], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert len(plan.launches) == 1 and not plan.transitions


def test_idle_worker_that_could_run_a_waiting_job_is_kept_even_if_the_plan_gave_it_elsewhere():
    # b's ad is stale (it was just claimed): the plan places the one idle job there, but a could run it too
    a, b = worker("a", since=NOW - 61), worker("b", since=NOW - 61)
    plan = decide(observe([group(1)], slots=[slot("b"), slot("a")], resources=[("local", "a"), ("local", "b")]),
                  [b, a], [cloud()], SETTINGS)
    assert not plan.drains and not plan.transitions


def test_idle_worker_too_small_for_the_waiting_jobs_is_drained():
    w = worker("a", since=NOW - 61)
    plan = decide(observe([group(1, memory=2048)], slots=[slot("a", memory=1024)], resources=[("local", "a")]),
                  [w], [cloud(memory=4096)], SETTINGS)
    assert [d.worker_id for d in plan.drains] == ["a"]


def test_idle_within_timeout_is_kept():
    plan = decide(observe(slots=[slot("a")], resources=[("local", "a")]), [worker("a", since=NOW - 59)], [cloud()], SETTINGS)
    assert not plan.transitions


def test_busy_worker_is_never_drained_or_removed_by_scale_down():
    w = worker("a", state=State.BUSY, since=NOW - 10_000)
    plan = decide(observe(slots=[slot("a", claimed=1)], resources=[("local", "a")]), [w],
                  [cloud(max_workers=0)], SETTINGS)
    assert not plan.transitions and not plan.drains and not plan.terminations


def test_booting_worker_without_demand_is_cancelled():
    w = worker("a", state=State.BOOTING, created=NOW - 5, since=NOW - 5)
    plan = decide(observe(resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.RETIRED}
    assert [t.worker_id for t in plan.terminations] == ["a"]
    assert "no idle job needs it" in plan.transitions[0].reason


def test_only_the_surplus_booting_workers_are_cancelled_newest_first():
    old = worker("old", state=State.BOOTING, created=NOW - 20)
    new = worker("new", state=State.BOOTING, created=NOW - 2)
    plan = decide(observe([group(1)], resources=[("local", "old"), ("local", "new")]), [old, new], [cloud()], SETTINGS)
    assert moved(plan) == {"new": State.RETIRED}


def test_boot_timeout_fails_and_terminates():
    w = worker("a", state=State.BOOTING, created=NOW - 301, since=NOW - 301)
    plan = decide(observe([group(1)], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert moved(plan)["a"] is State.FAILED
    assert "boot_timeout (300s)" in plan.transitions[0].reason
    assert "a" in [t.worker_id for t in plan.terminations]
    # a failure before joining backs the cloud off from now: no replacement on it this cycle
    assert plan.health["local"].failures == 1 and plan.health["local"].backoff_until > NOW
    assert launches(plan) == {}
    assert plan.groups[0].status == "waiting" and "local: backing off" in plan.groups[0].reason


def test_boot_timeout_on_one_cloud_sends_the_demand_to_the_next_at_once():
    w = worker("a", state=State.BOOTING, created=NOW - 301, since=NOW - 301)
    plan = decide(observe([group(1)], resources=[("local", "a")], clouds=("local", "docker")), [w],
                  [cloud(), cloud("docker", "docker", priority=1)], SETTINGS)
    assert moved(plan)["a"] is State.FAILED
    assert launches(plan) == {"docker": 1}


def test_vanished_resource_fails_the_worker():
    plan = decide(observe(slots=[slot("a")]), [worker("a", state=State.BUSY)], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.FAILED} and "vanished" in plan.transitions[0].reason


def test_draining_worker_whose_resource_exited_is_retired():
    plan = decide(observe(), [worker("a", state=State.DRAINING)], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.RETIRED} and "drained and exited" in plan.transitions[0].reason


def test_listing_failure_judges_nothing():
    obs = Observation(NOW, (), {}, {"local": None}, True)
    plan = decide(obs, [worker("a", state=State.BUSY, seen=NOW - 1000)], [cloud()], SETTINGS)
    assert not plan.transitions


def test_lost_worker_after_lost_timeout_only():
    res = [("local", "a")]
    plan = decide(observe(resources=res), [worker("a", seen=NOW - 119)], [cloud()], SETTINGS)
    assert not plan.transitions     # e.g. the collector restarted: grace period
    plan = decide(observe(resources=res), [worker("a", seen=NOW - 121, since=NOW - 500)], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.FAILED} and "lost" in plan.transitions[0].reason


def test_a_restarted_scheduler_gives_every_worker_its_full_grace_again():
    """The appliance was stopped for an hour: workers kept outside it were not
    seen all that time, through no fault of theirs. They get lost_timeout (and
    boot_timeout) from the scheduler's start, not from before the stop."""
    import dataclasses
    res = [("local", "a"), ("local", "b")]
    stale_joined = worker("a", state=State.BUSY, seen=NOW - 3600, since=NOW - 3700)
    stale_booting = worker("b", state=State.BOOTING, created=NOW - 3600, since=NOW - 3600)
    just_started = dataclasses.replace(observe([group(2)], resources=res), watching_since=NOW - 5)
    plan = decide(just_started, [stale_joined, stale_booting], [cloud()], SETTINGS)
    assert not plan.transitions and not plan.terminations
    # past the grace, measured from the start, they are judged as usual
    later = dataclasses.replace(observe([group(2)], resources=res), watching_since=NOW - 301)
    plan = decide(later, [stale_joined, stale_booting], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.FAILED, "b": State.FAILED}


def test_collector_down_judges_nothing_on_absence():
    plan = decide(observe(resources=[("local", "a")], collector=False),
                  [worker("a", seen=NOW - 10_000, since=NOW - 10_000)], [cloud()], SETTINGS)
    assert not plan.transitions and not plan.drains


def test_stale_requested_row_fails_after_grace():
    fresh = worker("a", state=State.REQUESTED, created=NOW - 10)
    stale = worker("b", state=State.REQUESTED, created=NOW - 100)
    plan = decide(observe([group(2)]), [fresh, stale], [cloud()], SETTINGS)
    assert moved(plan) == {"b": State.FAILED}


def test_requested_row_found_in_the_listing_is_adopted():
    w = worker("a", state=State.REQUESTED, created=NOW - 100)
    plan = decide(observe([group(1)], slots=[slot("a")], resources=[("local", "a")]), [w], [cloud()], SETTINGS)
    assert moved(plan) == {"a": State.IDLE}


# ------------------------------------------------------------------ orphans, operators, max lowered

def test_orphan_resource_is_removed():
    plan = decide(observe(resources=[("local", "ghost")]), [], [cloud()], SETTINGS)
    assert [(o.worker_id, o.resource_id) for o in plan.orphans] == [("ghost", "id-ghost")]


def test_a_gone_resource_is_never_an_orphan_but_fails_its_worker():
    """A terminated EC2 instance stays listed for a while: nothing to clean up, but its worker has ended."""
    obs = observe()
    obs.resources["local"]["ghost"] = Resource("ghost", "i-1", alive=False, detail="its instance i-1 is terminated", gone=True)
    obs.resources["local"]["a"] = Resource("a", "i-2", alive=False, detail="its instance i-2 is terminated", gone=True)
    plan = decide(obs, [worker("a", state=State.BUSY)], [cloud()], SETTINGS)
    assert plan.orphans == []
    assert moved(plan) == {"a": State.FAILED}
    assert plan.transitions[0].reason == "vanished: its instance i-2 is terminated"


def test_resource_of_an_ended_worker_is_an_orphan():
    ended = worker("a", state=State.RETIRED)
    plan = decide(observe(resources=[("local", "a")]), [ended], [cloud()], SETTINGS)
    assert [o.worker_id for o in plan.orphans] == ["a"]


def test_operator_kill_drains_or_removes_now():
    ws = [worker("a"), worker("b", state=State.BUSY), worker("c", state=State.BOOTING)]
    res = [("local", w.id) for w in ws]
    slots = [slot("a"), slot("b", claimed=1)]
    plan = decide(observe(slots=slots, resources=res), ws, [cloud(max_workers=5)], SETTINGS,
                  kills={"a": False, "b": True, "c": False})
    assert moved(plan) == {"a": State.DRAINING, "b": State.RETIRED, "c": State.RETIRED}
    assert [d.worker_id for d in plan.drains] == ["a"]
    assert sorted(t.worker_id for t in plan.terminations) == ["b", "c"]


def test_lowered_max_drains_idle_and_cancels_booting_but_spares_busy():
    ws = [worker("busy", state=State.BUSY), worker("idle1", since=NOW - 5), worker("idle2", since=NOW - 30),
          worker("boot", state=State.BOOTING)]
    slots = [slot("busy", claimed=1), slot("idle1"), slot("idle2")]
    plan = decide(observe([group(1)], slots=slots, resources=[("local", w.id) for w in ws]), ws,
                  [cloud(max_workers=2)], SETTINGS)
    m = moved(plan)
    assert "busy" not in m
    assert len([w for w, s in m.items() if s in (State.DRAINING, State.RETIRED)]) == 2


def test_every_plan_transition_is_legal():
    """decide() checks each move with the lifecycle; a mixed scene must not raise."""
    ws = [worker("a", state=s) for s in []] + [
        worker("b", state=State.BOOTING, created=NOW - 999), worker("c", state=State.DRAINING),
        worker("d", state=State.IDLE, since=NOW - 999), worker("e", state=State.BUSY, seen=NOW - 999, since=NOW - 999),
        worker("f", state=State.REQUESTED, created=NOW - 999)]
    plan = decide(observe([group(5)], resources=[("local", "d"), ("local", "e")], slots=[slot("d")]), ws,
                  [cloud(max_workers=3)], SETTINGS)
    assert moved(plan)["b"] is State.FAILED and moved(plan)["c"] is State.RETIRED
