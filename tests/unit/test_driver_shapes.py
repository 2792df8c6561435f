"""Each driver sizes its worker from the shape the scheduler chose (no engine, no processes:
the SDK client and the process start are fakes that record what they were asked)."""
from __future__ import annotations

import types

import pytest

from appliance.clouds import local as local_mod
from appliance.clouds.docker import DAEMON_MEMORY_MB, DockerDriver
from appliance.clouds.local import LocalDriver
from appliance.clouds.swarm import SwarmDriver
from appliance.config import parse
from appliance.workerconf import WorkerSpec

SHAPES = [{"name": "small", "cpus": 1, "memory": 512}, {"name": "big", "cpus": 4, "memory": 4096, "price": 0.2}]


def cloud(ctype: str):
    return parse({"clouds": [{"name": ctype, "type": ctype, "shapes": SHAPES}]}).clouds[0]


def spec_of(c, wid: str, shape: str) -> WorkerSpec:
    return WorkerSpec(wid, c, "appliance", "10.0.0.2", token="t", key=b"k", shape=c.shape(shape))


class Recorder:
    """Any attribute is a callable that records its keyword arguments and returns a stub."""

    def __init__(self, calls: list, prefix: str = ""):
        self._calls, self._prefix = calls, prefix

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self._calls.append((self._prefix + name, kwargs))
            return [] if name == "list" else types.SimpleNamespace(
                id="0123456789abcdef", name=kwargs.get("name", ""), put_archive=lambda *a: None,
                start=lambda: None, remove=lambda: None)
        return call


def fake_client(calls: list):
    return types.SimpleNamespace(containers=Recorder(calls, "containers."), services=Recorder(calls, "services."),
                                 secrets=Recorder(calls, "secrets."), close=lambda: None)


@pytest.mark.parametrize("shape,cpus,memory", [("small", 1, 512), ("big", 4, 4096)])
def test_docker_container_limits_and_label_follow_the_shape(shape, cpus, memory):
    calls: list = []
    d = DockerDriver(cloud("docker"), "appliance", "p00l")
    d._client, d._where = fake_client(calls), ("appnet", "10.0.0.2")
    assert d.launch(spec_of(d.cloud, f"docker-{shape}1", shape)) == "0123456789ab"
    [(_, kwargs)] = [c for c in calls if c[0] == "containers.create"]
    assert kwargs["nano_cpus"] == cpus * 1_000_000_000
    assert kwargs["mem_limit"] == f"{memory + DAEMON_MEMORY_MB}m"
    assert kwargs["labels"]["appliance.shape"] == shape


@pytest.mark.parametrize("shape,cpus,memory", [("small", 1, 512), ("big", 4, 4096)])
def test_swarm_service_reservations_limits_and_label_follow_the_shape(shape, cpus, memory):
    calls: list = []
    d = SwarmDriver(cloud("swarm"), "appliance", "p00l")
    d._client, d._where = fake_client(calls), ("overlay", "10.0.0.2")
    d.launch(spec_of(d.cloud, f"swarm-{shape}1", shape))
    [(_, kwargs)] = [c for c in calls if c[0] == "services.create"]
    res = kwargs["resources"]
    assert res["Limits"]["NanoCPUs"] == res["Reservations"]["NanoCPUs"] == cpus * 1_000_000_000
    assert res["Limits"]["MemoryBytes"] == (memory + DAEMON_MEMORY_MB) * 1024 * 1024
    assert res["Reservations"]["MemoryBytes"] == memory * 1024 * 1024
    assert kwargs["labels"]["appliance.shape"] == shape


def test_a_local_worker_has_its_shapes_cpus_and_slot_accounts(tmp_path, monkeypatch):
    accounts, started = [], []
    monkeypatch.setattr(local_mod, "install_accounts", lambda home, wid, cpus, gid: accounts.append((wid, cpus)))
    monkeypatch.setattr(local_mod, "_chown_to_condor", lambda home, subdirs: 0)
    monkeypatch.setattr(local_mod, "_start_time", lambda pid: 0)
    monkeypatch.setattr(local_mod.subprocess, "Popen",
                        lambda args, **kw: started.append(kw["env"]["CONDOR_CONFIG"]) or types.SimpleNamespace(pid=4242))
    d = LocalDriver(cloud("local"), "appliance", "p00l", root=str(tmp_path))
    d.launch(spec_of(d.cloud, "local-big001", "big"))
    config = (tmp_path / "local" / "local-big001" / "condor_config").read_text().splitlines()
    assert {"NUM_CPUS = 4", "MEMORY = 4096", 'WorkerShape = "big"'} <= set(config)
    assert accounts == [("local-big001", 4)] and started
