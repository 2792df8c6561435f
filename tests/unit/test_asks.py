"""What jobs ask of their worker: GPUs, images, and cloudscheduler's +VM* attributes, table-driven.

Groups are made from job ads the way the schedd's demand query gives them (condor.groups_from_ads),
and every scheduler verdict is checked against the worker's own START on the same ads: the
negotiator must never put a job on a worker the scheduler would not have launched for it.
"""
from __future__ import annotations

import classad
import pytest

from appliance import asks, condor, matching
from appliance.config import loads
from appliance.lifecycle import State
from appliance.model import CloudHealth
from appliance.scheduler import CloudView, decide

from .test_scheduler import SETTINGS, observe, slot, worker

CONFIG = """
pool: {condor_host: "cm.example.org"}
clouds:
  - name: docker
    type: docker
    vm_type: csv2-worker
    images: {default: "appliance:latest", bio: "lab/bio:1.2"}
    shapes:
      - {name: small, cpus: 1, memory: 1024, disk: 4096}
      - {name: big, cpus: 4, memory: 8192, disk: 20480, price: 0.2}
      - {name: gpu, cpus: 4, memory: 8192, disk: 20480, gpus: 1, price: 1.0}
  - name: aws
    type: ec2
    region: us-east-1
    ami: ami-0123456789abcdef0
    images: {default: ami-0123456789abcdef0, lab-tools: ami-0456456456456456a}
    shapes:
      - {name: t3.medium, cpus: 2, memory: 3584, price: 0.0416}
    priority: 1
"""
CFG = loads(CONFIG)
DOCKER, AWS = CFG.cloud("docker"), CFG.cloud("aws")


def job(count=1, cpus=1, memory=128, disk=1024, gpus=0, **attrs):
    """One demand group of idle jobs, as the schedd's group-by query returns it."""
    ad = classad.ClassAd()
    ad.update({"JobStatus": 1, "JobUniverse": 5, "JobCount": count, "RequestCpus": cpus, "RequestMemory": memory,
               "RequestDisk": disk})
    if gpus:
        ad["RequestGPUs"] = gpus
    ad["Requirements"] = classad.ExprTree(
        "TARGET.Cpus >= RequestCpus && TARGET.Memory >= RequestMemory && TARGET.HasFileTransfer"
        + (" && TARGET.GPUs >= RequestGPUs" if gpus else ""))
    for k, v in attrs.items():
        ad[k] = classad.ExprTree(v) if k == "Requirements" else v
    (group,) = condor.groups_from_ads([ad])
    return group


def views(*clouds):
    return [CloudView(c, CloudHealth(c.name, True, c.max_workers)) for c in clouds]


def launched(plan):
    return sorted((x.cloud, x.shape, x.image, x.max_price) for x in plan.launches)


# ---------------------------------------------------------------- reading the asks

READ = [
    # (job attributes, the asks read)
    ({}, asks.WorkerAsks()),
    ({"WorkerImage": "bio"}, asks.WorkerAsks(image="bio")),
    ({"VMAMI": "docker:bio,aws:lab-tools"}, asks.WorkerAsks(vm_ami="docker:bio,aws:lab-tools")),
    # cloudscheduler's files often quote numbers
    ({"VMMem": "2048", "VMCPUCores": 2, "VMStorage": "10", "VMMaximumPrice": "0.05"},
     asks.WorkerAsks(min_memory=2048, min_cpus=2, min_disk_gb=10, max_price=0.05)),
    ({"VMType": "csv2-worker", "VMInstanceType": "aws:t3.medium"},
     asks.WorkerAsks(vm_type="csv2-worker", instance_type="aws:t3.medium")),
    ({"VMMem": "lots"}, asks.WorkerAsks(invalid="+VMMem is 'lots', not a number of at least 0")),
    ({"WorkerImage": 3}, asks.WorkerAsks(invalid="+WorkerImage is 3, not a name")),
]


@pytest.mark.parametrize("attrs,expected", READ)
def test_a_jobs_asks_are_read_from_its_ad(attrs, expected):
    assert job(**attrs).asks == expected


def test_jobs_asking_different_images_are_different_groups_and_plain_jobs_keep_their_key():
    plain, bio, default = job(), job(WorkerImage="bio"), job(WorkerImage="default")
    assert len({plain.key, bio.key, default.key}) == 3
    ad = classad.ClassAd({"RequestCpus": 1, "RequestMemory": 128, "RequestDisk": 1024})
    ad["Requirements"] = classad.ExprTree(str(plain.ad.lookup("Requirements")))
    assert condor.job_group_key(ad) == plain.key        # as before images existed


FOR_CLOUD = [
    ("ami-1", "aws", ["ami-1"]),
    ("aws:ami-1,docker:bio", "aws", ["ami-1"]),
    ("aws:ami-1,docker:bio", "docker", ["bio"]),
    ("aws:ami-1, other", "docker", ["aws:ami-1", "other"]),      # no entry of its own: every entry
    ("docker:lab/bio:1.2", "docker", ["lab/bio:1.2"]),            # a reference with a ':' of its own
]


@pytest.mark.parametrize("listing,cloud,expected", FOR_CLOUD)
def test_cloudscheduler_lists_per_cloud(listing, cloud, expected):
    assert asks.for_cloud(listing, cloud) == expected


# ---------------------------------------------------------------- each shape: the scheduler and START agree

VERDICTS = [
    # (job attributes, cloud, shape, image the worker runs, runs there?, reason contains)
    ({}, DOCKER, "small", "default", True, ""),
    ({}, DOCKER, "small", "bio", True, ""),                      # asking for none: any image will do
    ({"WorkerImage": "bio"}, DOCKER, "small", "bio", True, ""),
    ({"WorkerImage": "bio"}, DOCKER, "small", "default", False, ""),
    ({"WorkerImage": "lab/bio:1.2"}, DOCKER, "small", "bio", True, ""),   # the image itself
    ({"WorkerImage": "nope"}, DOCKER, "small", "default", False, "+WorkerImage 'nope' names none of its images "
                                                                 "(default, bio)"),
    ({"VMAMI": "docker:bio,aws:lab-tools"}, DOCKER, "small", "bio", True, ""),
    ({"VMAMI": "docker:bio,aws:lab-tools"}, DOCKER, "small", "default", False, ""),
    ({"VMAMI": "docker:bio,aws:lab-tools"}, AWS, "t3.medium", "lab-tools", True, ""),
    ({"VMAMI": "ami-0456456456456456a"}, AWS, "t3.medium", "lab-tools", True, ""),   # cloudscheduler: the AMI
    ({"VMAMI": "aws:lab-tools"}, DOCKER, "small", "default", False, "+VMAMI 'aws:lab-tools' names none"),
    ({"VMType": "csv2-worker"}, DOCKER, "small", "default", True, ""),
    ({"VMType": "csv2-worker"}, AWS, "t3.medium", "default", False, "+VMType is 'csv2-worker'; its workers have no "
                                                                    "vm_type"),
    ({"Requirements": 'VMType =?= "csv2-worker" && TARGET.Cpus >= 1'}, DOCKER, "small", "default", True, ""),
    ({"Requirements": 'VMType =?= "csv2-worker" && TARGET.Cpus >= 1'}, AWS, "t3.medium", "default", False,
     'Requirements: `VMType is "csv2-worker"` fails (its workers have no VMType)'),
    ({"VMInstanceType": "big"}, DOCKER, "big", "default", True, ""),
    ({"VMInstanceType": "big"}, DOCKER, "small", "default", False, "+VMInstanceType 'big' is not shape small"),
    ({"VMInstanceType": "aws:t3.medium,docker:gpu"}, DOCKER, "gpu", "default", True, ""),
    ({"VMInstanceType": "aws:t3.medium,docker:gpu"}, DOCKER, "big", "default", False, ""),
    ({"VMMem": "2048"}, DOCKER, "small", "default", False, "+VMMem 2048 MB is more than shape small has"),
    ({"VMMem": "2048"}, DOCKER, "big", "default", True, ""),
    ({"VMCPUCores": 2}, DOCKER, "small", "default", False, "+VMCPUCores 2"),
    ({"VMCPUCores": 2}, AWS, "t3.medium", "default", True, ""),
    ({"VMStorage": 10}, DOCKER, "small", "default", False, "+VMStorage 10 GB"),
    ({"VMStorage": 10}, DOCKER, "big", "default", True, ""),
    ({"VMMaximumPrice": "0.1"}, DOCKER, "big", "default", False, "shape big costs 0.2/h, over +VMMaximumPrice 0.1"),
    ({"VMMaximumPrice": "0.1"}, DOCKER, "small", "default", True, ""),    # unpriced: not known to cost more
    ({"VMMem": "lots"}, DOCKER, "big", "default", False, "+VMMem is 'lots'"),
]


@pytest.mark.parametrize("attrs,cloud,shape_name,image,runs,reason", VERDICTS)
def test_the_scheduler_and_the_workers_start_agree(attrs, cloud, shape_name, image, runs, reason):
    group = job(**attrs)
    shape = cloud.shape(shape_name)
    worker_ad = matching.template_ad(cloud, "pool", shape)
    worker_ad["WorkerImage"], worker_ad["WorkerImageRef"] = image, cloud.image_ref(image)
    # the scheduler: would it launch this shape and image for the group, or use such a worker?
    verdict = matching.shape_can_run(group, cloud, shape, matching.template_ad(cloud, "pool", shape))
    chosen, _ = asks.image_for(group.asks, cloud.name, cloud.images)
    scheduler = verdict.ok and asks.accepts_image(group.asks, cloud.name, image, cloud.image_ref(image))
    assert scheduler is runs, verdict.reason
    assert not verdict.ok or chosen is not None and asks.accepts_image(group.asks, cloud.name, chosen,
                                                                       cloud.image_ref(chosen))
    # the negotiator: the job's Requirements and the worker's START, both ways
    assert bool(group.ad.symmetricMatch(worker_ad)) is runs
    assert reason in verdict.reason


# ---------------------------------------------------------------- placement

def test_a_gpu_job_starts_a_gpu_shape_and_a_plain_job_never_does():
    plan = decide(observe([job(gpus=1), job()], clouds=("docker",)), [], views(DOCKER), SETTINGS)
    assert launched(plan) == [("docker", "gpu", "default", None), ("docker", "small", "default", None)]


def test_a_gpu_job_no_cloud_can_serve_is_unschedulable_saying_what_workers_have():
    plan = decide(observe([job(gpus=1)], clouds=("aws",)), [], views(AWS), SETTINGS)
    (report,) = plan.groups
    assert report.status == "unschedulable" and not plan.launches
    assert "asks for 1 cpus, 128 MB, 1 MB disk, 1 gpus; its workers have 2 cpus, 3584 MB" in report.reason


def test_each_image_gets_workers_of_its_own_and_they_are_not_shared():
    plan = decide(observe([job(2, WorkerImage="bio"), job(2)], clouds=("docker",)), [], views(DOCKER), SETTINGS)
    assert launched(plan) == [("docker", "small", "bio", None)] * 2 + [("docker", "small", "default", None)] * 2
    assert all("(image bio)" in x.reason for x in plan.launches if x.image == "bio")


def test_an_image_no_cloud_maps_is_unschedulable_naming_the_known_ones():
    plan = decide(observe([job(WorkerImage="tensorflow")], clouds=("docker", "aws")), [], views(DOCKER, AWS),
                  SETTINGS)
    (report,) = plan.groups
    assert report.status == "unschedulable" and not plan.launches
    assert "docker: +WorkerImage 'tensorflow' names none of its images (default, bio)" in report.reason
    assert "aws: +WorkerImage 'tensorflow' names none of its images (default, lab-tools)" in report.reason


def test_a_worker_of_another_image_is_no_room_for_a_job_that_asks_for_its_own():
    bio_worker = worker("docker-b10", "docker", State.IDLE, shape="big")
    bio_worker = type(bio_worker)(**{**bio_worker.__dict__, "image": "bio"})
    slots = [slot("docker-b10", cpus=4, memory=8192)]
    ws = [bio_worker]
    res = [("docker", "docker-b10")]
    # a job asking for the default image launches its own worker; one asking for none uses the room
    plan = decide(observe([job(WorkerImage="default")], slots, res, ("docker",)), ws, views(DOCKER), SETTINGS)
    assert launched(plan) == [("docker", "small", "default", None)]
    plan = decide(observe([job()], slots, res, ("docker",)), ws, views(DOCKER), SETTINGS)
    assert launched(plan) == [] and plan.groups[0].status == "served"
    plan = decide(observe([job(VMAMI="docker:lab/bio:1.2")], slots, res, ("docker",)), ws, views(DOCKER), SETTINGS)
    assert launched(plan) == [] and plan.groups[0].status == "served"


SHAPE_CHOICE = [
    # (job attributes, the launches)
    ({"VMInstanceType": "big"}, [("docker", "big", "default", None)]),
    ({"VMInstanceType": "aws:t3.medium"}, [("aws", "t3.medium", "default", None)]),
    ({"VMMem": 2048}, [("docker", "big", "default", None)]),
    ({"VMCPUCores": "2"}, [("docker", "big", "default", None)]),
    ({"VMStorage": "10"}, [("docker", "big", "default", None)]),
    ({"VMMaximumPrice": "0.1", "VMCPUCores": 2}, [("aws", "t3.medium", "default", 0.1)]),
    ({"VMAMI": "aws:lab-tools", "TargetClouds": "aws"}, [("aws", "t3.medium", "lab-tools", None)]),
    ({"VMType": "csv2-worker", "VMMem": 4096}, [("docker", "big", "default", None)]),
]


@pytest.mark.parametrize("attrs,expected", SHAPE_CHOICE)
def test_cloudscheduler_attributes_choose_the_shape(attrs, expected):
    plan = decide(observe([job(**attrs)], clouds=("docker", "aws")), [], views(DOCKER, AWS), SETTINGS)
    assert launched(plan) == expected, [g.reason for g in plan.groups]


def test_a_cap_below_every_price_is_unschedulable_with_each_shapes_price():
    plan = decide(observe([job(VMMaximumPrice="0.01", VMCPUCores=2)], clouds=("docker", "aws")), [],
                  views(DOCKER, AWS), SETTINGS)
    (report,) = plan.groups
    assert report.status == "unschedulable", report.reason
    assert "aws: shape t3.medium costs 0.0416/h, over +VMMaximumPrice 0.01" in report.reason
    assert "docker: small: +VMCPUCores 2 is more than shape small has" in report.reason


def test_require_gpus_is_matched_against_the_shapes_gpu_attributes():
    """`require_gpus = Capability >= 7.0` (condor_submit writes countMatches over AvailableGPUs)."""
    group = job(gpus=1, RequireGPUs=classad.ExprTree("Capability >= 8.0"),
                Requirements="TARGET.Cpus >= 1 && countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= RequestGPUs")
    c = loads(CONFIG.replace("gpus: 1, price: 1.0}", "gpus: 1, price: 1.0, attributes: {CUDACapability: 8.6}}")
              ).cloud("docker")
    assert matching.shape_can_run(group, c, c.shape("gpu"), matching.template_ad(c, "pool", c.shape("gpu"))).ok
    assert not matching.shape_can_run(group, DOCKER, DOCKER.shape("gpu"),
                                      matching.template_ad(DOCKER, "pool", DOCKER.shape("gpu"))).ok


def test_a_plain_job_takes_a_gpu_shape_only_when_no_enabled_cloud_has_a_cpu_shape():
    only_gpu = loads(CONFIG.replace("      - {name: small, cpus: 1, memory: 1024, disk: 4096}\n", "")
                     .replace("      - {name: big, cpus: 4, memory: 8192, disk: 20480, price: 0.2}\n", "")
                     ).cloud("docker")
    # aws has a CPU shape that can run it: the GPU shape is left alone
    plan = decide(observe([job()], clouds=("docker", "aws")), [], views(only_gpu, AWS), SETTINGS)
    assert launched(plan) == [("aws", "t3.medium", "default", None)]
    # aws disabled: the GPU shape rather than no worker at all
    off = [*views(only_gpu), CloudView(AWS, CloudHealth("aws", False, 10))]
    plan = decide(observe([job()], clouds=("docker", "aws")), [], off, SETTINGS)
    assert launched(plan) == [("docker", "gpu", "default", None)]
