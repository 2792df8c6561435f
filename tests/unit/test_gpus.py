"""GPUs on workers: what each driver asks its engine for, and the worker's HTCondor config
(HTCondor's own GPU discovery; simulated devices only with simulate_gpus)."""
from __future__ import annotations

import pytest

from appliance.clouds.docker import gpu_requests
from appliance.clouds.swarm import GPU_RESOURCE, gpu_resources
from appliance.config import loads
from appliance.workerconf import WorkerSpec, gpu_lines, worker_files

CONFIG = """
clouds:
  - name: gpu
    type: docker
    simulate_gpus: {simulate}
    shapes:
      - {{name: cpu, cpus: 1}}
      - {{name: v100x2, cpus: 4, memory: 16384, gpus: 2, attributes: {{CUDACapability: 7.0}}}}
"""

LINES = [
    # (gpus, simulate, the worker's GPU lines)
    (0, False, []),
    (0, True, []),
    (2, False, ["use feature : GPUs"]),
    (2, True, ["use feature : GPUs", "GPU_DISCOVERY_EXTRA = $(GPU_DISCOVERY_EXTRA) -simulate:2,2"]),
]


@pytest.mark.parametrize("gpus,simulate,expected", LINES)
def test_gpu_config_lines(gpus, simulate, expected):
    assert gpu_lines(gpus, simulate) == expected


def test_docker_asks_the_engine_for_real_gpus_only():
    assert gpu_requests(0, False) is None and gpu_requests(2, True) is None
    (request,) = gpu_requests(2, False)
    assert request["Count"] == 2 and request["Capabilities"] == [["gpu"]]      # as `docker run --gpus 2`


def test_swarm_reserves_the_nodes_generic_gpus_only_for_real_ones():
    assert gpu_resources(0, False) is None and gpu_resources(1, True) is None
    assert gpu_resources(2, False) == {GPU_RESOURCE: 2}


@pytest.mark.parametrize("simulate", [True, False])
def test_a_gpu_shapes_worker_runs_gpu_discovery_and_advertises_its_attributes(simulate):
    cloud = loads(CONFIG.format(simulate=str(simulate).lower())).cloud("gpu")
    cpu, gpu = cloud.shapes
    spec = WorkerSpec("gpu-abcdef", cloud, "pool", "cm", token="t", key=b"k", shape=gpu)
    config = worker_files(spec, "/w")["condor_config"][0].decode().splitlines()
    assert "use feature : GPUs" in config and "CUDACapability = 7.0" in config
    assert any("-simulate:" in line for line in config) is simulate
    plain = worker_files(WorkerSpec("gpu-000000", cloud, "pool", "cm", token="t", key=b"k", shape=cpu),
                         "/w")["condor_config"][0].decode()
    assert "GPUs" not in plain.replace("WorkerShape", "")
