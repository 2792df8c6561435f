"""Per-job worker images and cloudscheduler job files, on the docker cloud, end to end.

The test builds a worker image FROM the appliance image with one extra file (as the docs
tell a lab to add its software), maps it as `lab-tools` beside the appliance image, and
submits with HTCondor's own condor_submit: a job asking for `lab-tools` finds the file, a
plain job runs (on any image: it asked for none), and a cloudscheduler job file (its VMType
requirement, +VMType, +VMAMI per cloud, quoted +VMMem and +VMCPUCores, +TargetClouds) runs
unchanged on a worker of the image and size it asked for. A name no cloud maps is
reported unschedulable with the names known. Nothing here is a stand-in.
"""
from __future__ import annotations

import io
import re
import tarfile

import pytest

from .conftest import IMAGE, job_sub
from .test_appliance import completed
from .test_docker_cloud import worker_containers

pytestmark = pytest.mark.timeout(600)

DERIVED = "appliance-test-lab-tools:latest"
MARKER = "samtools 1.21 (a stand-in file: the lab's software)"

SCRIPT = """#!/bin/sh
cat /opt/lab/VERSION 2>/dev/null || echo "no lab software"
grep -E '^(WorkerImage|WorkerImageRef|WorkerShape|VMType) ' "$_CONDOR_MACHINE_AD"
sleep "${1:-1}"
"""

CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - name: docker
    type: docker
    max_workers: 4
    vm_type: csv2-worker
    images: {{default: "{IMAGE}", lab-tools: "{DERIVED}"}}
    shapes:
      - {{name: small, cpus: 1, memory: 512}}
      - {{name: large, cpus: 2, memory: 1024}}
"""

# a cloudscheduler (v1/v2) job file, as its users write them: not one line changed
CLOUDSCHEDULER_JOB = """universe = vanilla
executable = job.sh
arguments = 3
output = out.$(Process)
error = err.$(Process)
log = job.log
request_cpus = 1
request_memory = 128
request_disk = 10MB
Requirements = VMType =?= "csv2-worker"
+VMType = "csv2-worker"
+VMAMI = "aws:ami-0123456789abcdef0,docker:lab-tools"
+VMMem = "768"
+VMCPUCores = "1"
+VMStorage = "1"
+TargetClouds = "docker"
queue 1"""


@pytest.fixture
def derived_image(client, tmp_path):
    """The appliance image with one extra file, built as a lab would (a Dockerfile FROM it)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in {"Dockerfile": f"FROM {IMAGE}\nCOPY VERSION /opt/lab/VERSION\n",
                           "VERSION": MARKER + "\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=DERIVED, rm=True)
    yield DERIVED
    client.images.remove(DERIVED, force=True)


def test_each_job_runs_on_the_image_it_asked_for_and_a_cloudscheduler_file_runs_unchanged(
        start_appliance, network, client, derived_image):
    app = start_appliance(CONFIG, network=network, docker_socket=True)
    lab = app.submit(job_sub(1, seconds=3, extra='+WorkerImage = "lab-tools"'), {"job.sh": SCRIPT},
                     directory="/home/submit/lab")
    plain = app.submit(job_sub(1, seconds=3), {"job.sh": SCRIPT}, directory="/home/submit/plain")
    csv = app.submit(CLOUDSCHEDULER_JOB, {"job.sh": SCRIPT}, directory="/home/submit/csv")
    unknown = app.submit(job_sub(1, extra='+WorkerImage = "tensorflow"'), {"job.sh": SCRIPT},
                         directory="/home/submit/unknown")
    app.wait("the three jobs to complete",
             lambda: all(len(completed(app, c)) == 1 for c in (lab, plain, csv)), timeout=300)

    out = {d: app.sh(f"cat /home/submit/{d}/out.0") for d in ("lab", "plain", "csv")}
    assert MARKER in out["lab"] and 'WorkerImage = "lab-tools"' in out["lab"], out["lab"]
    assert f'WorkerImageRef = "{DERIVED}"' in out["lab"], out["lab"]
    # a job that asks for no image may run on any worker (here: whichever joined first)
    assert re.search(r'^WorkerImage = "(default|lab-tools)"$', out["plain"], re.M), out["plain"]
    # the cloudscheduler job: its image for this cloud, and a shape with the memory +VMMem asked for
    assert MARKER in out["csv"] and 'WorkerImage = "lab-tools"' in out["csv"], out["csv"]
    assert 'WorkerShape = "large"' in out["csv"] and 'VMType = "csv2-worker"' in out["csv"], out["csv"]

    # the launches said which image, and the engine ran it
    launches = [e["reason"] for e in app.events() if e["to_state"] == "requested"]
    assert sum("(image lab-tools)" in r for r in launches) >= 1, launches
    # the name nobody maps waits, unschedulable, naming the images there are
    groups = app.status("-q")["data"]["groups"]
    (group,) = [g for g in groups if g["status"] == "unschedulable"]
    assert "+WorkerImage 'tensorflow' names none of its images (default, lab-tools)" in group["reason"], group
    assert re.search(r"tensorflow", app.sh("cloud_status -q")), "cloud_status -q does not show the reason"
    app.sh(f"condor_rm {unknown}", user="submit")
    app.wait("the workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    app.wait("no labelled container left", lambda: worker_containers(client, app) == [], timeout=30)
