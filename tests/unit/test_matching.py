"""Template ads, one per (cloud, shape), and the verdicts matched against them: ClassAds, no I/O."""
from __future__ import annotations

import classad
import pytest

from appliance.config import CloudConfig, WorkerSize, loads
from appliance.matching import (
    can_run,
    conjuncts,
    failing_clauses,
    per_worker,
    shape_verdicts,
    template_ad,
    template_ads,
    why_not,
)
from appliance.shapes import Shape

from .test_scheduler import group

SMALL = Shape("small", 1, 1024, 4096)
GPU = Shape("gpu", 4, 16384, 20480, gpus=1, attributes={"HasSSD": True}, price=1.0)
CLOUD = CloudConfig("docker", "docker", shapes=(SMALL, GPU))


def test_one_template_per_cloud_and_shape_advertising_its_size_and_name():
    cfg = loads("clouds: [{name: local, type: local}, {name: docker, type: docker, shapes: "
                "[{name: small, cpus: 1}, {name: big, cpus: 4, memory: 8192, disk: 100}]}]")
    ads = template_ads(cfg.clouds, "mypool")
    assert list(ads) == [("local", "default"), ("docker", "small"), ("docker", "big")]
    big = ads[("docker", "big")]
    assert (big["WorkerShape"], big["CloudName"], big["CloudType"]) == ("big", "docker", "docker")
    assert (big["Cpus"], big["TotalCpus"], big["Memory"], big["TotalMemory"], big["Disk"]) == (4, 4, 8192, 8192,
                                                                                             100 * 1024)
    assert big["UidDomain"] == "mypool" and big["SlotType"] == "Partitionable"
    assert ads[("local", "default")]["WorkerShape"] == "default"
    assert "GPUs" not in big      # a shape without GPUs advertises none, as its worker will


def test_a_shapes_template_has_its_gpus_and_its_own_attributes():
    ad = template_ad(CLOUD, shape=GPU)
    assert (ad["GPUs"], ad["TotalGPUs"], ad["HasSSD"]) == (1, 1, True)
    small = template_ad(CLOUD, shape=SMALL)
    assert "HasSSD" not in small and "GPUs" not in small
    # without a shape: the cloud's first, the one shape of a cloud with one worker size
    assert template_ad(CLOUD)["WorkerShape"] == "small"
    lone = CloudConfig("local", "local", worker=WorkerSize(cpus=2, attributes={"Site": "lab"}))
    assert (template_ad(lone)["WorkerShape"], template_ad(lone)["Cpus"], template_ad(lone)["Site"]) == (
        "default", 2, "lab")


def test_a_job_asking_a_gpu_matches_only_the_gpu_shape():
    g = group(1)
    g.ad["RequestGPUs"] = 1
    g.ad["Requirements"] = classad.ExprTree("TARGET.GPUs >= RequestGPUs && TARGET.Cpus >= RequestCpus")
    verdicts = shape_verdicts(g, CLOUD, template_ads([CLOUD]))
    assert (verdicts["small"].ok, verdicts["gpu"].ok) == (False, True)
    assert can_run(g, CLOUD, template_ads([CLOUD])).ok


VERDICTS = [
    # (name, group, cloud verdict ok, reason)
    ("one shape fits", group(1, cpus=2), True, ""),
    ("too big for every shape: the reason names each shape",
     group(1, cpus=8), False, "asks for 8 cpus, 128 MB, 1 MB disk; its shapes have: small 1 cpus, 1024 MB, 4096 MB "
                              "disk; gpu 4 cpus, 16384 MB, 20480 MB disk, 1 gpus"),
    ("Requirements match no shape", group(1, requirements='TARGET.WorkerShape == "huge"'), False,
     'Requirements: `TARGET.WorkerShape == "huge"` fails on every shape that fits (small has WorkerShape = '
     '"small"; gpu has WorkerShape = "gpu")'),
    ("+TargetClouds names another cloud", group(1, target="aws"), False, "+TargetClouds is aws"),
]


@pytest.mark.parametrize("name,g,ok,reason", VERDICTS, ids=[c[0] for c in VERDICTS])
def test_a_cloud_can_run_a_group_when_one_of_its_shapes_can(name, g, ok, reason):
    v = can_run(g, CLOUD, template_ads([CLOUD]))
    assert (v.ok, v.reason) == (ok, reason)


def test_a_cloud_with_one_shape_says_what_its_workers_have():
    lone = CloudConfig("local", "local", worker=WorkerSize(cpus=2))
    v = can_run(group(1, cpus=4), lone, template_ads([lone]))
    assert v.reason == "asks for 4 cpus, 128 MB, 1 MB disk; its workers have 2 cpus, 1024 MB, 4096 MB disk"


def test_jobs_per_worker_of_a_shape():
    assert per_worker(GPU, group(1, memory=1000)) == 4           # cpus limit
    assert per_worker(GPU, group(1, cpus=1, memory=8000)) == 2   # memory limits (8064 MB each, rounded up)
    assert per_worker(SMALL, group(1, cpus=2)) == 0


CONJUNCTS = [
    ("HTCondor's own requirements, with the user's clause",
     '(TARGET.Arch == "X86_64") && (TARGET.OpSys == "LINUX") && (TARGET.GPUs >= RequestGPUs)',
     ['TARGET.Arch == "X86_64"', 'TARGET.OpSys == "LINUX"', "TARGET.GPUs >= RequestGPUs"]),
    ("an || inside parentheses is one clause", "(a || b) && c", ["a || b", "c"]),
    ("a top-level || keeps it whole: no clause must hold alone", "(a) && (b) || c", ["(a) && (b) || c"]),
    ("&& inside a string does not split", 'MY.x == "a&&b" && c', ['MY.x == "a&&b"', "c"]),
    ("a clause of && in parentheses stays one clause", "((c) && (d)) && e", ["(c) && (d)", "e"]),
    ("one clause, unwrapped", "((a))", ["a"]),
    ("(a) || (b): the outer pair does not enclose it all", "(a) || (b)", ["(a) || (b)"]),
]


@pytest.mark.parametrize("name,expr,expected", CONJUNCTS, ids=[c[0] for c in CONJUNCTS])
def test_requirements_are_split_into_their_top_level_clauses(name, expr, expected):
    assert conjuncts(expr) == expected


def job_ad(requirements: str, **attrs) -> classad.ClassAd:
    ad = classad.ClassAd({"RequestCpus": 1, "RequestMemory": 128, "RequestGPUs": 1, **attrs})
    ad["Requirements"] = classad.ExprTree(requirements)
    return ad


def test_the_failing_clauses_are_named_with_what_the_workers_have():
    machine = template_ad(CLOUD, shape=CLOUD.shapes[0])      # small: no GPU, no VMType
    job = job_ad('(TARGET.Cpus >= RequestCpus) && (TARGET.GPUs >= RequestGPUs) && (TARGET.VMType =?= "cs")')
    assert failing_clauses(job, machine) == [("TARGET.GPUs >= RequestGPUs", "no GPUs"),
                                             ('TARGET.VMType is "cs"', "no VMType")]
    assert why_not(job, machine).reason == ('Requirements: `TARGET.GPUs >= RequestGPUs` fails (its workers have '
                                            'no GPUs); `TARGET.VMType is "cs"` fails (its workers have no VMType)')


def test_a_worker_whose_start_refuses_the_job_is_named_as_such():
    machine = template_ad(CLOUD, shape=CLOUD.shapes[0])
    machine["Requirements"] = classad.ExprTree('TARGET.WorkerImage =?= "lab-tools"')
    assert why_not(job_ad("TARGET.Cpus >= RequestCpus"), machine).reason == "its workers' START refuses it"
