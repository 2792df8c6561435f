"""Federation in the scheduler's decisions, table-driven: no Docker, no HTCondor daemons.

- jobs of allowed remote schedds (flocked here) are demand like local jobs: grouped,
  matched, placed on existing capacity first, launched for within the same limits,
  and reported by schedd and owner;
- local jobs that no enabled cloud can run, or that wait at max_workers, are sent to
  the pools of federation.flock_to (a FlockOut), and nothing is launched for jobs
  already sent away;
- each allowed remote schedd is reported with what the observe step found.
"""
from __future__ import annotations

from dataclasses import replace

import classad
import pytest

from appliance.config import FlockTarget
from appliance.lifecycle import State
from appliance.model import JobGroup, Observation, RemoteSchedd, Resource, ScheddState
from appliance.scheduler import decide
from appliance.scheduler.flock import flock_to_value

from .test_scheduler import NOW, SETTINGS, cloud, group, launches, slot, worker

POOL_B = FlockTarget("b", "b.example.org:9618", "/etc/appliance/b.token")
POOL_C = FlockTarget("c", "c.example.org", "/etc/appliance/c.token")


def remote(count=1, schedd="lab", owner="alice@lab", requirements="true", **kw):
    g = group(count, requirements=requirements, key=f"{schedd}-{owner}-{count}-{requirements}", **kw)
    return replace(g, schedd=schedd, owner_hint=owner)


def sent(count=1, to=("b.example.org:9618",), requirements="true"):
    g = group(count, requirements=requirements, key=f"sent-{count}-{requirements}")
    return replace(g, flock_to=("default", *to))


def obs(groups=(), slots=(), schedds=(), clouds=("local",)):
    """Each slot's worker is also in its cloud's listing (alive)."""
    listing = {c: {} for c in clouds}
    for s in slots:
        listing["local"][s.worker_id] = Resource(s.worker_id, f"id-{s.worker_id}")
    return Observation(NOW, tuple(groups), {s.worker_id: s for s in slots}, listing, True, schedds=tuple(schedds))


ONLY_ELSEWHERE = 'TARGET.Site =?= "b"'

CASES = [
    # (name, groups, workers+slots, clouds, flock_to, launches, {group key prefix: status}, flock outs (count, ...))
    ("a remote schedd's jobs start workers, like local ones",
     [remote(2)], [], [cloud(max_workers=5)], (), {"local": 2}, {"lab": "launching"}, []),
    ("a remote schedd's jobs are placed on idle workers first",
     [remote(1)], [(worker("a"), slot("a"))], [cloud()], (), {}, {"lab": "served"}, []),
    ("remote and local jobs share max_workers",
     [group(1, key="local-1"), remote(3)], [], [cloud(max_workers=2)], (), {"local": 2},
     {"local": "launching", "lab": "waiting"}, []),
    ("a remote schedd's jobs no cloud can run are unschedulable, never sent on",
     [remote(2, requirements=ONLY_ELSEWHERE)], [], [cloud()], (POOL_B,), {}, {"lab": "unschedulable"}, []),
    ("no flock_to: unschedulable local jobs stay unschedulable",
     [group(2, requirements=ONLY_ELSEWHERE, key="only-b")], [], [cloud()], (), {}, {"only-b": "unschedulable"}, []),
    ("local jobs no enabled cloud can run are sent away, all of them",
     [group(2, requirements=ONLY_ELSEWHERE, key="only-b")], [], [cloud()], (POOL_B,), {},
     {"only-b": "sending away"}, [2]),
    ("a disabled cloud: its jobs are sent away too",
     [group(1, key="g")], [], [cloud(enabled=False)], (POOL_B,), {}, {"g": "sending away"}, [1]),
    ("jobs waiting at max_workers: only those without a worker are sent away",
     [group(5, key="g")], [], [cloud(max_workers=2)], (POOL_B, POOL_C), {"local": 2}, {"g": "sending away"}, [3]),
    ("jobs waiting at the global max_workers are sent away",
     [group(3, key="g")], [], [cloud(max_workers=9)], (POOL_B,), {"local": 2}, {"g": "sending away"}, [1]),
    ("jobs waiting for a cloud's backoff are not sent away (it comes back soon)",
     [group(2, key="g")], [], [cloud(backoff_until=NOW + 60)], (POOL_B,), {}, {"g": "waiting"}, []),
    ("jobs waiting at max_booting are not sent away (workers are on their way)",
     [group(12, key="g")], [], [cloud(max_workers=50)], (POOL_B,), {"local": 10}, {"g": "waiting"}, []),
    ("nothing is launched for jobs already sent away",
     [sent(3)], [], [cloud(max_workers=5)], (POOL_B,), {}, {"sent": "sent away"}, []),
    ("jobs sent away still use a worker here that has room",
     [sent(1)], [(worker("a"), slot("a"))], [cloud()], (POOL_B,), {}, {"sent": "sent away"}, []),
    ("FlockTo naming a pool we do not flock to: ordinary local demand",
     [sent(1, to=("elsewhere:9618",))], [], [cloud()], (POOL_B,), {"local": 1}, {"sent": "launching"}, []),
]


@pytest.mark.parametrize("name,groups,fleet,clouds,flock_to,want_launches,want_status,want_out", CASES,
                         ids=[c[0] for c in CASES])
def test_federation_decisions(name, groups, fleet, clouds, flock_to, want_launches, want_status, want_out):
    settings = replace(SETTINGS, max_workers=2) if "global max_workers" in name else SETTINGS
    plan = decide(obs(groups, [s for _, s in fleet if s]), [w for w, _ in fleet], clouds, settings,
                  flock_to=flock_to)
    assert launches(plan) == want_launches
    for prefix, status in want_status.items():
        report = next(g for g in plan.groups if g.key.startswith(prefix))
        assert report.status == status, (report.status, report.reason)
    assert [f.count for f in plan.flock_outs] == want_out
    for f in plan.flock_outs:
        assert f.flock_to == flock_to_value(flock_to)
        assert f.pools == tuple(t.name for t in flock_to)


def test_remote_demand_is_reported_by_schedd_and_owner_and_launch_says_whose():
    plan = decide(obs([remote(2, owner="bob@lab")]), [], [cloud(max_workers=5)], SETTINGS)
    (report,) = plan.groups
    assert (report.schedd, report.owner, report.count) == ("lab", "bob@lab", 2)
    assert all("of schedd lab" in launch.reason for launch in plan.launches)


def test_local_demand_reports_no_schedd():
    plan = decide(obs([group(1)]), [], [cloud()], SETTINGS)
    assert (plan.groups[0].schedd, plan.groups[0].owner) == ("", "")


def test_sending_away_says_why_and_where():
    plan = decide(obs([group(5, key="g")]), [], [cloud(max_workers=2)], SETTINGS, flock_to=(POOL_B,))
    (report,) = plan.groups
    assert "waiting at max_workers" in report.reason and "sending 3 job(s) to b" in report.reason
    (out,) = plan.flock_outs
    assert out.group_key == "g" and "3 job(s) to b" in out.reason


def test_sent_away_report_names_the_pool():
    plan = decide(obs([sent(2)]), [], [cloud()], SETTINGS, flock_to=(POOL_B,))
    assert plan.groups[0].status == "sent away" and "offered to b" in plan.groups[0].reason


def test_flock_to_value_puts_default_first_then_every_pool():
    # HTCondor 23.9 counts a FlockTo pool's idle jobs only with "default" in the list too
    assert flock_to_value((POOL_B, POOL_C)) == "default, b.example.org:9618, c.example.org"


def test_an_idle_worker_stays_while_a_remote_schedd_still_has_jobs_for_it():
    idle_long = worker("a", since=NOW - 600)
    plan = decide(obs([remote(1)], [slot("a")]), [idle_long], [cloud()], SETTINGS)
    assert plan.drains == []


def test_a_worker_idle_past_idle_timeout_is_drained_once_remote_demand_is_gone():
    idle_long = worker("a", since=NOW - 600)
    plan = decide(obs([], [slot("a")]), [idle_long], [cloud()], SETTINGS)
    assert [d.worker_id for d in plan.drains] == ["a"]


SCHEDDS = [
    ("flocking, with its jobs counted",
     RemoteSchedd("lab", ScheddState.FLOCKING, "lab.example.org: flocking here", 3, ("alice@lab",)),
     [remote(2), remote(1, owner="bob@lab")], ("flocking", 3, 3)),
    ("unreadable: offered but not counted",
     RemoteSchedd("lab", ScheddState.UNREADABLE, "cannot read the queue", 4, ("alice@lab",)), [], ("unreadable", 4, 0)),
    ("absent", RemoteSchedd("lab", ScheddState.ABSENT, "has not advertised itself"), [], ("absent", 0, 0)),
]


@pytest.mark.parametrize("name,seen,groups,want", SCHEDDS, ids=[s[0] for s in SCHEDDS])
def test_each_allowed_schedd_is_reported(name, seen, groups, want):
    plan = decide(obs(groups, schedds=[seen]), [], [cloud(max_workers=10)], SETTINGS)
    (report,) = plan.schedds
    assert (report.state, report.offered, report.idle_jobs) == want
    assert report.name == "lab" and report.detail == seen.detail


def test_an_unreadable_schedd_does_not_stop_the_cycle_for_others():
    plan = decide(obs([group(1, key="mine"), remote(1, schedd="ok")],
                      schedds=[RemoteSchedd("ok", ScheddState.FLOCKING, "", 1),
                               RemoteSchedd("down", ScheddState.UNREADABLE, "no answer within 5s", 2)]),
                  [], [cloud(max_workers=5)], SETTINGS)
    assert launches(plan) == {"local": 2}
    assert {s.name: s.state for s in plan.schedds} == {"ok": "flocking", "down": "unreadable"}


def test_a_remote_group_is_not_merged_with_an_identical_local_one():
    # the same request from two schedds stays two groups (the key includes the schedd)
    from appliance.condor import groups_from_ads
    ad = classad.ClassAd({"JobStatus": 1, "JobUniverse": 5, "RequestCpus": 1, "RequestMemory": 128,
                          "RequestDisk": 1024, "JobCount": 2, "User": "alice@lab"})
    (local,), (far,) = groups_from_ads([ad]), groups_from_ads([ad], schedd="lab")
    assert local.key != far.key and (far.schedd, far.owner_hint) == ("lab", "alice@lab")
    assert (local.schedd, local.owner_hint) == ("", "")
    assert isinstance(local, JobGroup) and State.IDLE     # (imports used)


def test_stored_rows_name_the_schedd_only_for_remote_groups():
    from appliance.scheduler import group_row
    plan = decide(obs([group(1, key="mine"), remote(1)]), [], [cloud(max_workers=5)], SETTINGS)
    rows = {r["key"]: r for r in map(group_row, plan.groups)}
    assert "schedd" not in rows["mine"] and "owner" not in rows["mine"]     # a local group reads as before
    far = next(r for k, r in rows.items() if k != "mine")
    assert (far["schedd"], far["owner"]) == ("lab", "alice@lab")
