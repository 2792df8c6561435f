"""Demand from cluster ads plus the procs that differ from them (condor.demand), checked
against the per-job truth: grouping every idle job on its own, as the schedd's group-by did.

A small stand-in for the schedd evaluates the real deviation constraint with the same
ClassAd library, on proc ads that hold their cluster's attributes plus their own."""
from __future__ import annotations

import classad
import pytest

from appliance import condor
from appliance.condor import (
    CLUSTER_PROJECTION,
    DEMAND_PROJECTION,
    deviation_constraint,
    groups_from_ads,
    missing_references,
    rows_from_clusters,
)

REQ = ('(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.Disk >= RequestDisk) && '
       '(TARGET.Memory >= RequestMemory) && (TARGET.HasFileTransfer)')


def cluster(cid, procs, universe=5, **attrs):
    """A cluster ad and its procs: `procs` is a list of dicts, each a proc's own attributes
    (JobStatus defaults to idle)."""
    base = {"ClusterId": cid, "JobUniverse": universe, "RequestCpus": 1, "RequestMemory": 128,
            "RequestDisk": classad.ExprTree("DiskUsage"), "DiskUsage": 45, "ImageSize": 10,
            "Requirements": classad.ExprTree(REQ), **attrs}
    ad = classad.ClassAd()
    for k, v in base.items():
        ad[k] = classad.ExprTree(v) if isinstance(v, str) and k in ("Requirements",) else v
    jobs = []
    for i, own in enumerate(procs):
        job = classad.ClassAd()
        job.update(ad)
        job["ProcId"], job["JobStatus"] = i, 1
        for k, v in own.items():
            job[k] = classad.ExprTree(v) if k == "Requirements" else v
        jobs.append(job)
    ad["JobsIdle"] = sum(1 for j in jobs if j["JobStatus"] == 1)
    return ad, jobs


class Schedd:
    """What demand() asks of the schedd, answered from ClassAds in memory."""

    def __init__(self, *clusters):
        self.clusters = [c for c, _ in clusters]
        self.jobs = [j for _, js in clusters for j in js]
        self.queries = []

    def cluster_ads(self, projection):
        return [_project(c, projection + ["JobsIdle"]) for c in self.clusters]

    def group_by(self, constraint, projection):
        expr = classad.ExprTree(constraint)
        rows: dict[tuple, classad.ClassAd] = {}
        for job in self.jobs:
            if expr.eval(job) is not True:
                continue
            key = tuple(str(job.lookup(a)) if a in job else "" for a in projection)
            row = rows.get(key)
            if row is None:
                row = rows[key] = _project(job, projection)
                row["JobCount"] = 0
            row["JobCount"] += 1
        return list(rows.values())

    def query(self, constraint="true", projection=(), opts=None):
        self.queries.append(opts)
        if opts == condor.htcondor.QueryOpts.ClusterAds:
            return self.cluster_ads(list(projection))
        assert opts == condor.htcondor.QueryOpts.GroupBy
        return self.group_by(constraint, list(projection))


def _project(ad, projection):
    out = classad.ClassAd()
    for a in projection:
        if a in ad:
            out[a] = ad.lookup(a)
    return out


def ours(schedd: Schedd):
    clusters = schedd.cluster_ads(list(CLUSTER_PROJECTION))
    constraint = deviation_constraint(clusters)
    deviants = schedd.group_by(constraint, [a for a in CLUSTER_PROJECTION if a != "JobsIdle"]) if constraint else []
    return groups_from_ads(rows_from_clusters(clusters, deviants)), deviants


def truth(schedd: Schedd):
    """Every job on its own, as a group-by row of one: what the schedd's group-by grouped."""
    rows = []
    for job in schedd.jobs:
        row = _project(job, [*DEMAND_PROJECTION, "DiskUsage", "ImageSize", "MemoryUsage"])
        row["JobCount"] = 1
        rows.append(row)
    return groups_from_ads(rows)


def by_key(groups):
    return {g.key: (g.count, g.cpus, g.memory, g.disk, g.requirements, g.target_clouds, g.flock_to, g.asks)
            for g in groups}


def test_clusters_without_differing_procs_need_no_proc_at_all():
    s = Schedd(cluster(1, [{}] * 5), cluster(2, [{}] * 3, RequestMemory=2048), cluster(3, [{}] * 2, RequestCpus=4))
    groups, deviants = ours(s)
    assert deviants == []
    assert by_key(groups) == by_key(truth(s))
    assert sorted(g.count for g in groups) == [2, 3, 5]


def test_a_proc_with_its_own_requirements_is_a_group_of_its_own():
    other = REQ + ' && (TARGET.Machine == "node3")'
    s = Schedd(cluster(1, [{}, {}, {}, {"Requirements": other}, {}]))
    groups, deviants = ours(s)
    assert [int(d["JobCount"]) for d in deviants] == [1]
    assert by_key(groups) == by_key(truth(s))
    assert sorted((g.count, g.requirements == other) for g in groups) == [(1, True), (4, False)]


def test_requirements_varied_per_proc_make_one_group_per_proc():
    s = Schedd(cluster(7, [{"Requirements": REQ + f' && (TARGET.Machine == "node{i}")'} for i in range(4)]))
    groups, _ = ours(s)
    assert by_key(groups) == by_key(truth(s)) and sorted(g.count for g in groups) == [1, 1, 1, 1]


@pytest.mark.parametrize("own", [{"RequestMemory": 4096}, {"RequestCpus": 2}, {"RequestDisk": 10 ** 7},
                                 {"RequestGPUs": 1}, {"TargetClouds": "aws"}, {"FlockTo": "other-pool"},
                                 {"WorkerImage": "bio"}, {"VMType": "gpu"}])
def test_a_proc_that_asks_for_something_else_is_counted_apart(own):
    s = Schedd(cluster(1, [{}, own, {}, own]), cluster(2, [{}] * 2, RequestMemory=4096))
    groups, deviants = ours(s)
    assert sum(int(d["JobCount"]) for d in deviants) == 2
    assert by_key(groups) == by_key(truth(s))


def test_a_proc_whose_default_request_memory_evaluates_otherwise_is_counted_apart():
    default = classad.ExprTree("ifThenElse(MemoryUsage =!= undefined, MemoryUsage, (ImageSize + 1023) / 1024)")
    s = Schedd(cluster(1, [{}, {"MemoryUsage": 9000}, {}], RequestMemory=default))   # proc 1 ran once, used 9 GB
    groups, deviants = ours(s)
    assert [int(d["JobCount"]) for d in deviants] == [1]
    assert by_key(groups) == by_key(truth(s))
    assert sorted((g.memory, g.count) for g in groups) == [(1, 2), (9000, 1)]


def test_a_proc_flagged_that_asks_the_same_after_all_merges_back_into_its_cluster():
    s = Schedd(cluster(1, [{}, {"RequestMemory": 128.0}, {}]))     # 128.0 =!= 128, yet the same request
    groups, deviants = ours(s)
    assert len(deviants) == 1
    assert by_key(groups) == by_key(truth(s)) and [g.count for g in groups] == [3]


def test_only_idle_procs_count_and_their_cluster_loses_only_those():
    other = REQ + " && false"
    s = Schedd(cluster(1, [{}, {"JobStatus": 2}, {"JobStatus": 2, "Requirements": other}, {"Requirements": other},
                           {"JobStatus": 5}]))
    groups, deviants = ours(s)
    assert by_key(groups) == by_key(truth(s))        # the truth's rows of running and held jobs do not count
    assert sorted(g.count for g in groups) == [1, 1]


def test_no_idle_job_means_no_proc_query_and_universes_without_workers_are_left_out():
    assert deviation_constraint([cluster(1, [{"JobStatus": 2}])[0]]) is None
    s = Schedd(cluster(1, [{}] * 3, universe=7), cluster(2, [{}] * 2))
    groups, _ = ours(s)
    assert [g.count for g in groups] == [2]


def test_many_clusters_are_found_by_a_binary_search_on_their_id():
    s = Schedd(*[cluster(c, [{}, {"RequestMemory": 64}] if c % 7 == 0 else [{}], RequestMemory=100 + c)
                 for c in range(1, 120)])
    constraint = deviation_constraint(s.cluster_ads(list(CLUSTER_PROJECTION)))
    assert constraint.count("ifThenElse") == 118
    groups, deviants = ours(s)
    assert sum(int(d["JobCount"]) for d in deviants) == 17
    assert by_key(groups) == by_key(truth(s))


def test_text_values_are_compared_as_text():
    s = Schedd(cluster(1, [{}, {}, {"WorkerImage": classad.ExprTree("{1, 2}")}], WorkerImage=classad.ExprTree("1/0")))
    groups, deviants = ours(s)
    assert [int(d["JobCount"]) for d in deviants] == [1]
    assert sorted(g.count for g in groups) == [1, 2]


def test_attributes_a_request_refers_to_are_asked_for():
    ad, _ = cluster(1, [{}], Requirements=classad.ExprTree(REQ + " && MY.Project =!= undefined && Site == \"x\""))
    assert missing_references([ad], CLUSTER_PROJECTION) == ["Project", "Site"]
    assert missing_references([ad], [*CLUSTER_PROJECTION, "project", "site"]) == []


class FakeHTCondor:
    def __init__(self, schedd):
        self.schedd = schedd
        self.QueryOpts = condor.htcondor.QueryOpts

    def Schedd(self):
        return self.schedd


def test_demand_is_read_again_only_when_the_queue_log_changed(tmp_path, monkeypatch):
    s = Schedd(cluster(1, [{}] * 3), cluster(2, [{}, {"RequestMemory": 4096}]))
    monkeypatch.setattr(condor, "htcondor", FakeHTCondor(s))
    log = tmp_path / "job_queue.log"
    log.write_text("105\n")
    c = condor.Condor("pool")
    c._queue_log = str(log)
    first = c.demand()
    assert by_key(first) == by_key(truth(s)) and len(s.queries) == 2     # cluster ads, then the procs that differ
    assert c.demand() == first and len(s.queries) == 2                     # nothing changed: not asked
    with log.open("a") as f:
        f.write("103 1.0 RequestMemory 64\n")
    c.demand()
    assert len(s.queries) == 4
    c.demand(reuse=False)
    assert len(s.queries) == 6
    monkeypatch.setattr(condor.time, "monotonic", lambda: 10 ** 9)        # long unchanged: read all the same
    c.demand()
    assert len(s.queries) == 8


def test_without_its_log_the_queue_is_read_every_time(tmp_path, monkeypatch):
    s = Schedd(cluster(1, [{}]))
    monkeypatch.setattr(condor, "htcondor", FakeHTCondor(s))
    c = condor.Condor("pool")
    c._queue_log = str(tmp_path / "absent")
    c.demand()
    c.demand()
    assert len(s.queries) == 4
