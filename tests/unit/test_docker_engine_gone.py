"""An engine that goes away, or hangs, after the docker driver made its client (a
dockerd restart under a running appliance): every driver call is a CloudError of
kind `unavailable`, never requests' own exception, which failed the whole cycle,
every cloud's (real SDK, no engine; test_docker_errors.py covers an engine that was
never there)."""
from __future__ import annotations

import socket

import docker
import pytest

from appliance.clouds.base import CloudError, ErrorKind
from appliance.clouds.docker import DockerDriver
from appliance.config import parse
from appliance.workerconf import WorkerSpec


def driver_with_client(sock: str, timeout: float = 5) -> DockerDriver:
    cloud = parse({"clouds": [{"name": "docker", "type": "docker", "url": f"unix://{sock}"}]}).clouds[0]
    d = DockerDriver(cloud, "appliance", "p00l")
    # the client the driver made while the engine answered (a fixed API version: no call now)
    d._client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=timeout)
    d._where = ("appnet", "10.0.0.2")      # found while it answered, too
    return d


def calls(d: DockerDriver):
    spec = WorkerSpec("docker-abc123", d.cloud, "appliance", "10.0.0.2", token="t", key=b"k")
    return {"list": d.list, "terminate": lambda: d.terminate("docker-abc123", "0123456789ab"),
            "launch": lambda: d.launch(spec)}


@pytest.mark.parametrize("call", ["list", "terminate", "launch"])
def test_an_engine_gone_after_the_client_was_made_is_unavailable(call, tmp_path):
    d = driver_with_client(str(tmp_path / "docker.sock"))     # its socket removed, as by a dockerd restart
    with pytest.raises(CloudError) as err:
        calls(d)[call]()
    assert err.value.kind is ErrorKind.UNAVAILABLE, err.value
    assert "not reachable" in str(err.value)
    d.close()


@pytest.mark.parametrize("call", ["list", "terminate"])
def test_an_engine_that_hangs_is_unavailable(call, tmp_path):
    path = str(tmp_path / "docker.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(8)            # connections wait in the backlog: nobody ever answers
        d = driver_with_client(path, timeout=0.3)
        with pytest.raises(CloudError) as err:
            calls(d)[call]()
        assert err.value.kind is ErrorKind.UNAVAILABLE, err.value
        d.close()
