"""Demand from cluster ads plus the procs that differ from them (condor.demand), checked
against the per-job truth: grouping every idle job on its own, as the schedd's group-by did.

A small stand-in for the schedd evaluates the real deviation constraint with the same
ClassAd library, on proc ads that hold their cluster's attributes plus their own."""
from __future__ import annotations

import dataclasses

import classad
import pytest

from appliance import condor
from appliance.condor import (
    CLUSTER_PROJECTION,
    DEMAND_PROJECTION,
    QueueLog,
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


@pytest.fixture
def daemon_view(tmp_path, monkeypatch):
    """A Condor on the stand-in schedd, following a job queue log in tmp_path."""
    def make(*clusters):
        s = Schedd(*clusters)
        monkeypatch.setattr(condor, "htcondor", FakeHTCondor(s))
        log = tmp_path / "job_queue.log"
        log.write_text("107 1 CreationTimestamp 1796000000\n")
        c = condor.Condor("pool")
        c._log = QueueLog(str(log))
        return c, s, log
    return make


def append(log, *records):
    with log.open("a") as f:
        f.write("".join(r + "\n" for r in records))


def deviation_queries(s):
    return [q for q in s.queries if q == condor.htcondor.QueryOpts.GroupBy]


def test_clusters_found_alike_are_not_looked_at_again_until_the_log_shows_a_request_written(daemon_view):
    c, s, log = daemon_view(cluster(1, [{}] * 3), cluster(2, [{}, {}]))
    first = c.demand()
    assert by_key(first) == by_key(truth(s)) and len(deviation_queries(s)) == 1     # new to us: all looked at
    append(log, "105", "103 1.0 JobStatus 2", "103 1.0 EnteredCurrentStatus 1796000100", "106")
    s.jobs[0]["JobStatus"] = 2
    s.clusters[0]["JobsIdle"] = 2
    second = c.demand()
    assert len(deviation_queries(s)) == 1                      # no request written: no proc looked at
    assert by_key(second) == by_key(truth(s))
    # a job edited alone (condor_qedit): only its cluster is looked at, and it is a group of its own
    append(log, "105", "103 2.1 RequestMemory 4096", "106")
    s.jobs[4]["RequestMemory"] = 4096
    third = c.demand()
    assert len(deviation_queries(s)) == 2
    assert by_key(third) == by_key(truth(s)) and sorted(g.count for g in third) == [1, 3]
    # ... and while that job waits, its cluster is looked at every time
    append(log, "103 1.1 JobStatus 2")
    s.jobs[1]["JobStatus"] = 2
    s.clusters[0]["JobsIdle"] = 1
    assert by_key(c.demand()) == by_key(truth(s)) and len(deviation_queries(s)) == 3


def test_a_new_cluster_is_looked_at_once(daemon_view):
    other = REQ + ' && (TARGET.Machine == "node1")'
    c, s, log = daemon_view(cluster(1, [{}] * 2))
    c.demand()
    new, jobs = cluster(2, [{}, {"Requirements": other}])
    s.clusters.append(new)
    s.jobs += jobs
    append(log, "101 02.-1 Job Machine", "103 2.-1 RequestMemory 128", "101 2.0 Job Machine", "101 2.1 Job Machine",
           f"103 2.1 Requirements {other}")
    assert by_key(c.demand()) == by_key(truth(s))
    assert len(deviation_queries(s)) == 2


def test_a_new_or_unreadable_log_means_every_cluster_is_looked_at(daemon_view, tmp_path):
    c, s, log = daemon_view(cluster(1, [{}] * 2))
    c.demand()
    c.demand(reuse=False)
    assert len(deviation_queries(s)) == 1
    log.unlink()
    log.write_text("107 2 CreationTimestamp 1796000500\n")     # the schedd rewrote its log: a new file
    c.demand()
    assert len(deviation_queries(s)) == 2
    c._log = QueueLog(str(tmp_path / "absent"))
    c.demand()
    c.demand()
    assert len(deviation_queries(s)) == 4


def test_demand_is_read_again_only_when_the_queue_log_changed(daemon_view, monkeypatch):
    c, s, log = daemon_view(cluster(1, [{}] * 3), cluster(2, [{}, {"RequestMemory": 4096}]))
    first = c.demand()
    assert by_key(first) == by_key(truth(s)) and len(s.queries) == 2     # cluster ads, then the procs that differ
    assert c.demand() == first and len(s.queries) == 2                     # nothing changed: not asked
    append(log, "103 1.0 LastJobStatus 1")
    c.demand()
    assert len(s.queries) == 4           # cluster 2 still has a proc that differs: looked at again
    c.demand(reuse=False)
    assert len(s.queries) == 6
    monkeypatch.setattr(condor.time, "monotonic", lambda: 10 ** 9)        # long unchanged: read all the same
    c.demand()
    assert len(s.queries) == 8


def test_records_that_touch_a_request_name_their_cluster():
    watch = condor.watched_attributes([cluster(1, [{}], RequestMemory=classad.ExprTree(
        "ifThenElse(MemoryUsage =!= undefined, MemoryUsage, (ImageSize + 1023) / 1024)"),
        MemoryUsage=classad.ExprTree("((ResidentSetSize + 1023) / 1024)"))[0]])
    assert {"requirements", "requestmemory", "requestdisk", "diskusage", "memoryusage", "imagesize",
            "residentsetsize", "flockto", "workerimage"} <= watch
    assert "jobstatus" not in watch and "target.memory" not in watch
    lines = ["105", "101 7.0 Job Machine", "103 7.0 JobStatus 1", "103 8.3 ResidentSetSize 51200",
             "103 9.-1 Requirements true", "104 10.2 FlockTo", "103 0.0 NextClusterNum 12", "103 11.0 requestmemory 1",
             "103 12.x RequestMemory 1", "103 13", "106", "107 3 CreationTimestamp 1"]
    assert condor.written_clusters(lines, watch) == {8, 9, 10, 11}


def test_a_record_being_written_is_read_whole_next_time(tmp_path):
    log = tmp_path / "job_queue.log"
    log.write_text("105\n")
    q = QueueLog(str(log))
    assert q.written({"requestmemory"}) is None            # new: followed from its end
    with log.open("a") as f:
        f.write("103 4.0 RequestMemory 10\n103 5.0 RequestMem")
    assert q.written({"requestmemory"}) == {4}
    with log.open("a") as f:
        f.write("ory 10\n")
    assert q.written({"requestmemory"}) == {5}
    assert q.written({"requestmemory"}) == set()


def test_too_much_written_since_is_not_read(tmp_path, monkeypatch):
    log = tmp_path / "job_queue.log"
    log.write_text("105\n")
    q = QueueLog(str(log))
    q.written(set())
    monkeypatch.setattr(condor, "MAX_LOG_READ", 30)
    with log.open("a") as f:
        f.write("103 4.0 RequestMemory 10\n" * 2)
    assert q.written({"requestmemory"}) is None            # look at every cluster instead
    with log.open("a") as f:
        f.write("103 5.0 RequestMemory 10\n")
    assert q.written({"requestmemory"}) == {5}


def test_groups_of_clusters_are_those_of_their_rows_and_kept_for_clusters_found_alike():
    other = REQ + " && false"
    s = Schedd(cluster(1, [{}] * 3), cluster(2, [{}, {"Requirements": other}], RequestMemory=4096),
               cluster(3, [{}] * 2, universe=7), cluster(4, [{"JobStatus": 2}]), cluster(5, [{}] * 2))
    clusters = s.cluster_ads(list(CLUSTER_PROJECTION))
    deviants = s.group_by(deviation_constraint(clusters), [a for a in CLUSTER_PROJECTION if a != "JobsIdle"])
    groups, keep = condor.groups_of_clusters(clusters, deviants, {}, clean={1, 3, 5})
    assert groups == groups_from_ads(rows_from_clusters(clusters, deviants))
    assert set(keep) == {1, 3, 5} and keep[3] is None and keep[1].key == keep[5].key
    # the next time, a cluster kept is not worked out again: only its idle count is new
    clusters[0]["JobsIdle"] = 1
    kept = {**keep, 5: dataclasses.replace(keep[5], key="sentinel")}
    again, _ = condor.groups_of_clusters(clusters, deviants, kept, clean={1, 3, 5})
    assert sorted((g.key == "sentinel", g.count) for g in again) == [(False, 1), (False, 1), (False, 1), (True, 2)]


def test_thousands_of_clusters_are_compared_in_batches(daemon_view, monkeypatch):
    monkeypatch.setattr(condor, "COMPARE_BATCH", 40)
    c, s, log = daemon_view(*[cluster(i, [{}, {"RequestMemory": 64}] if i == 77 else [{}]) for i in range(1, 101)])
    first = c.demand()
    assert len(deviation_queries(s)) == 3 and by_key(first) == by_key(truth(s))
    c.demand(reuse=False)
    assert len(deviation_queries(s)) == 4          # only cluster 77, which has a proc that differs
