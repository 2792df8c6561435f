"""Turning schedd group-by ads and collector slot ads into demand and supply."""
import classad
import pytest

from appliance.condor import groups_from_ads, summarize_slots
from appliance.model import STALE_CLAIM


def group_ad(status=1, universe=5, count=3, cpus=1, memory=128, disk="DiskUsage", req="TARGET.Memory >= RequestMemory", target=None):
    a = classad.ClassAd()
    a["JobStatus"], a["JobUniverse"], a["JobCount"] = status, universe, count
    a["RequestCpus"], a["RequestMemory"] = cpus, memory
    a["DiskUsage"] = 45
    a["RequestDisk"] = classad.ExprTree(disk)
    a["Requirements"] = classad.ExprTree(req)
    if target:
        a["TargetClouds"] = target
    return a


def test_only_idle_jobs_that_need_a_worker_count():
    groups = groups_from_ads([
        group_ad(count=3), group_ad(status=2, count=5), group_ad(status=5, count=7),
        group_ad(universe=7, count=1), group_ad(universe=12, count=1), group_ad(count=2, memory=2048),
    ])
    assert sorted((g.count, g.memory) for g in groups) == [(2, 2048), (3, 128)]


def test_expressions_are_evaluated_and_identical_requests_merged():
    groups = groups_from_ads([group_ad(count=3, universe=5), group_ad(count=4, universe=13)])
    assert len(groups) == 1
    g = groups[0]
    assert (g.count, g.cpus, g.memory, g.disk) == (7, 1, 128, 45)
    assert g.requirements == "TARGET.Memory >= RequestMemory" and g.target_clouds is None
    assert g.ad["MyType"] == "Job"


def test_target_clouds_is_split():
    (g,) = groups_from_ads([group_ad(target="docker, aws")])
    assert g.target_clouds == ("docker", "aws")


def test_slots_are_summarized_per_worker():
    def slot(name, wid, state, stype, cpus, mem):
        a = classad.ClassAd()
        a.update({"Name": name, "WorkerId": wid, "State": state, "SlotType": stype, "Cpus": cpus, "Memory": mem,
                  "Disk": 1000, "TotalSlotCpus": 4})
        return a
    s = summarize_slots([
        slot("slot1@w1@host", "w1", "Unclaimed", "Partitionable", 2, 1024),
        slot("slot1_1@w1@host", "w1", "Claimed", "Dynamic", 1, 128),
        slot("slot1_2@w1@host", "w1", "Claimed", "Dynamic", 1, 128),
        slot("slot1@w2@host", "w2", "Unclaimed", "Partitionable", 4, 2048),
    ])
    assert (s["w1"].name, s["w1"].claimed, s["w1"].free_cpus, s["w1"].free_memory) == ("w1@host", 2, 2, 1024)
    assert (s["w2"].claimed, s["w2"].free_cpus, s["w2"].total_cpus) == (0, 4, 4)


STALE = [
    # (activity, seconds in it, counted as claimed): only a claim idle STALE_CLAIM seconds is stale
    ("Busy", 3600, True),              # a long job
    ("Idle", 5, True),                 # between two jobs on a reused claim
    ("Idle", STALE_CLAIM - 1, True),
    ("Idle", STALE_CLAIM, False),      # its release was lost: not busy any more
    ("Retiring", 3600, True),          # draining, its job still running
    (None, 3600, True),                # an older worker without Activity in its ad
]


@pytest.mark.parametrize("activity,age,counted", STALE)
def test_a_claim_idle_for_long_is_stale_not_claimed(activity, age, counted):
    now = 1_000_000.0
    ad = classad.ClassAd({"Name": "slot1_1@w@h", "WorkerId": "w", "State": "Claimed", "SlotType": "Dynamic",
                          "Cpus": 1, "Memory": 128, "EnteredCurrentActivity": int(now - age)})
    if activity is not None:
        ad["Activity"] = activity
    s = summarize_slots([ad], now)["w"]
    assert (s.claimed, s.stale_claims) == ((1, 0) if counted else (0, 1))
    assert summarize_slots([ad])["w"].claimed == 1       # no clock given: nothing is judged stale


def test_gpus_asked_are_part_of_the_request_and_of_the_key():
    from appliance.condor import job_group_key
    plain, one, two = group_ad(), group_ad(), group_ad()
    one["RequestGPUs"], two["RequestGPUs"] = 1, 2
    groups = groups_from_ads([plain, one, two])
    assert sorted(g.gpus for g in groups) == [0, 1, 2] and len({g.key for g in groups}) == 3
    # a job asking no GPU keeps the key it had before GPUs were counted
    zero = group_ad()
    zero["RequestGPUs"] = 0
    assert job_group_key(zero) == job_group_key(plain)


def test_free_gpus_of_a_worker_are_summed_from_its_unclaimed_slots():
    def slot(name, state, stype, gpus):
        a = classad.ClassAd()
        a.update({"Name": name, "WorkerId": "w", "State": state, "SlotType": stype, "Cpus": 1, "Memory": 128,
                  "Disk": 1000, "GPUs": gpus})
        return a
    s = summarize_slots([slot("slot1@w@h", "Unclaimed", "Partitionable", 1),
                         slot("slot1_1@w@h", "Claimed", "Dynamic", 1)])
    assert s["w"].free_gpus == 1
    plain = classad.ClassAd()
    plain.update({"Name": "slot1@v@h", "WorkerId": "v", "State": "Unclaimed", "SlotType": "Partitionable", "Cpus": 2})
    assert summarize_slots([plain])["v"].free_gpus == 0


REQUEUE = [
    # (name, job attributes, caught)
    ("running on the dead worker since before its removal (a reconnect after a restart)",
     {"JobStatus": 2, "MachineAttrWorkerId0": "docker-aae138", "EnteredCurrentStatus": 100,
      "RemoteHost": "slot1_1@docker-aae138@docker-aae138"}, True),
    ("put back to idle, then running again on the dead worker's claim",
     {"JobStatus": 2, "MachineAttrWorkerId0": "docker-aae138", "EnteredCurrentStatus": 300,
      "RemoteHost": "slot1_1@docker-aae138@docker-aae138"}, True),
    ("started again elsewhere, its MachineAttrWorkerId0 not yet updated",
     {"JobStatus": 2, "MachineAttrWorkerId0": "docker-aae138", "EnteredCurrentStatus": 300,
      "RemoteHost": "slot1_1@docker-bbb111@docker-bbb111"}, False),
    ("running again since the removal, on a host the queue does not name",
     {"JobStatus": 2, "MachineAttrWorkerId0": "docker-aae138", "EnteredCurrentStatus": 300}, True),
    ("idle again", {"JobStatus": 1, "MachineAttrWorkerId0": "docker-aae138", "EnteredCurrentStatus": 300}, False),
    ("another worker's job", {"JobStatus": 2, "MachineAttrWorkerId0": "docker-bbb111", "EnteredCurrentStatus": 100,
                              "RemoteHost": "slot1_1@docker-bbb111@docker-bbb111"}, False),
]


@pytest.mark.parametrize("name,attrs,caught", REQUEUE, ids=[c[0] for c in REQUEUE])
def test_which_jobs_of_a_removed_worker_are_put_back(name, attrs, caught):
    from appliance.condor import requeue_constraint
    job = classad.ClassAd(attrs)
    assert (classad.ExprTree(requeue_constraint("docker-aae138", 200)).eval(job) is True) is caught


def test_the_removed_worker_constraint_has_no_backslash():
    """The 23.x schedd reads query constraints with old-ClassAd quoting: an escaped regexp
    such as "docker\\-aae138" never matched there, while this library's evaluation above
    said it did (the job then waited out its 40-minute lease in CI)."""
    from appliance.condor import requeue_constraint
    assert "\\" not in requeue_constraint("docker-aae138", 200)


# (name, EnteredCurrentStatus or None, ended): the worker was removed at 200, it is now 240
SHADOWS = [
    ("running since before the removal: a reconnect that would wait out the lease", 150, True),
    ("started on the dead worker's claim just now: its shadow fails by itself", 230, False),
    ("started on the dead worker's claim and still running after the grace", 205, True),
    ("no EnteredCurrentStatus: taken to be old", None, True),
]


@pytest.mark.parametrize("name,entered,ended", SHADOWS, ids=[c[0] for c in SHADOWS])
def test_which_shadows_of_a_removed_worker_are_ended(name, entered, ended):
    """Ending a fresh shadow on the removed worker's claim only made the schedd try the claim
    again: the job was put back every cycle for minutes, never reaching a new worker."""
    from appliance.condor import REUSED_CLAIM_GRACE, shadows_to_end
    assert 240 - 230 < REUSED_CLAIM_GRACE <= 240 - 205      # what the table assumes
    ad = {"ClusterId": 1, "ProcId": 0} | ({} if entered is None else {"EnteredCurrentStatus": entered})
    assert (shadows_to_end([ad], 200, 240) == [ad]) is ended


def test_at_the_removal_every_shadow_on_the_worker_is_ended():
    from appliance.condor import shadows_to_end
    ads = [{"EnteredCurrentStatus": 199}, {"EnteredCurrentStatus": 100}]
    assert shadows_to_end(ads, None, 200) == ads
