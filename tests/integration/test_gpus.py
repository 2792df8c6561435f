"""GPU jobs on the docker cloud, end to end, with simulated devices.

This machine has no GPU, so the cloud sets `simulate_gpus: true`: the worker runs
HTCondor's own GPU discovery with `-simulate` (the one stand-in here), and everything
else is real: the demand query reads RequestGPUs, the scheduler picks the GPU shape
only for the GPU job, the startd advertises and assigns the devices, and the job sees
its device in its environment. What the docker driver would ask a real engine for
(DeviceRequests, as `docker run --gpus N`) is checked on a container created by the
driver with simulate_gpus off, which the engine here accepts without starting it.
"""
from __future__ import annotations

import re

import pytest

from .conftest import IMAGE, job_sub
from .test_appliance import completed
from .test_docker_cloud import worker_containers

pytestmark = pytest.mark.timeout(600)

GPU_SCRIPT = """#!/bin/sh
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-none}"
echo "AssignedGPUs=${_CONDOR_AssignedGPUs:-none}"
grep -E '^(WorkerShape|GPUs|CUDACapability) ' "$_CONDOR_MACHINE_AD"
sleep "${1:-1}"
"""

CONFIG = f"""
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - name: docker
    type: docker
    image: {IMAGE}
    max_workers: 3
    simulate_gpus: true
    shapes:
      - {{name: cpu, cpus: 1, memory: 512}}
      - {{name: gpu, cpus: 1, memory: 512, gpus: 1, attributes: {{CUDACapability: 7.0}}}}
"""


def test_a_gpu_job_starts_a_gpu_worker_and_sees_its_device_and_a_plain_job_does_not(start_appliance, network,
                                                                                     client):
    app = start_appliance(CONFIG, network=network, docker_socket=True)
    gpu = app.submit(job_sub(1, seconds=5, extra="request_gpus = 1"), {"job.sh": GPU_SCRIPT}, directory="/home/submit/gpu")
    plain = app.submit(job_sub(1, seconds=5), {"job.sh": GPU_SCRIPT}, directory="/home/submit/plain")
    app.wait("both jobs to complete", lambda: len(completed(app, gpu)) == len(completed(app, plain)) == 1,
             timeout=240)
    out = app.sh("cat /home/submit/gpu/out.0")
    assert 'WorkerShape = "gpu"' in out and "CUDACapability = 7.0" in out, out
    device = re.search(r"^AssignedGPUs=(\S+)$", out, re.M).group(1)
    assert device != "none" and re.search(r"^CUDA_VISIBLE_DEVICES=\S+$", out, re.M), out
    plain_out = app.sh("cat /home/submit/plain/out.0")
    # a job given no GPU sees none: HTCondor sets the device list to its "no device" id, 10000
    assert 'WorkerShape = "cpu"' in plain_out and "GPUs = 0" in plain_out, plain_out
    assert re.search(r"^AssignedGPUs=(none|10000)$", plain_out, re.M), plain_out
    shapes = [e["reason"] for e in app.events() if e["to_state"] == "requested"]
    assert sum("x gpu " in r for r in shapes) == 1 and sum("x cpu " in r for r in shapes) == 1, shapes
    app.wait("the workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    app.wait("no labelled container left", lambda: worker_containers(client, app) == [], timeout=30)


def test_the_docker_driver_asks_the_engine_for_the_shapes_gpus(client):
    """The driver's own launch of a GPU shape without simulate_gpus: the engine here has no
    GPU runtime, so the start fails (a clear error, nothing launched), and the container it
    created shows in `docker inspect` what a real GPU host would have been asked for."""
    from appliance.clouds.base import CloudError
    from appliance.clouds.docker import DockerDriver
    from appliance.config import loads
    from appliance.workerconf import WorkerSpec

    cloud = loads(CONFIG.replace("simulate_gpus: true", "simulate_gpus: false")).cloud("docker")
    kept: list[str] = []

    class Kept(DockerDriver):
        def _find_placement(self):
            return "bridge", "127.0.0.1"

        def _remove(self, target):        # keep the failed container to inspect it
            kept.append(target)

    driver = Kept(cloud, "apptest", "apptest-gpu")
    spec = WorkerSpec("docker-9a9a9a", cloud, "apptest", "127.0.0.1", token="t", key=b"k", shape=cloud.shape("gpu"))
    try:
        with pytest.raises(CloudError) as err:
            driver.launch(spec)
        assert "gpu" in str(err.value).lower(), err.value
        (container,) = kept
        (request,) = client.api.inspect_container(container)["HostConfig"]["DeviceRequests"]
        assert request["Count"] == 1 and request["Capabilities"] == [["gpu"]], request
    finally:
        for c in kept:
            client.api.remove_container(c, force=True, v=True)
        driver.close()
