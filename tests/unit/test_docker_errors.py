"""Docker engine faults become CloudErrors whose kind drives the backoff (real SDK, no engine)."""
from __future__ import annotations

import threading
import time

import pytest

from appliance.clouds import dockerutil
from appliance.clouds.base import CloudError, ErrorKind
from appliance.clouds.docker import DockerDriver
from appliance.clouds.swarm import SwarmDriver
from appliance.config import parse


def _cloud(ctype: str, tmp_path):
    url = f"unix://{tmp_path}/no-engine.sock"     # nothing listens there: the engine is down
    return parse({"clouds": [{"name": ctype, "type": ctype, "url": url}]}).clouds[0]


@pytest.mark.parametrize("driver", [DockerDriver, SwarmDriver])
def test_engine_down_is_unavailable_for_listing(driver, tmp_path):
    d = driver(_cloud(driver.__name__.replace("Driver", "").lower(), tmp_path), "appliance", "p00l")
    with pytest.raises(CloudError) as err:
        d.list()
    assert err.value.kind == "unavailable", err.value
    assert err.value.kind is ErrorKind.UNAVAILABLE
    assert "no-engine.sock" in str(err.value) or "not reachable" in str(err.value)


def test_engine_down_is_unavailable_for_removal(tmp_path):
    d = DockerDriver(_cloud("docker", tmp_path), "appliance", "p00l")
    with pytest.raises(CloudError) as err:
        d.terminate("docker-abc123", "")
    assert err.value.kind == "unavailable"


@pytest.mark.parametrize("driver", [DockerDriver, SwarmDriver])
def test_act_threads_share_one_lazily_made_client(driver, tmp_path, monkeypatch):
    made = []

    class Slow:
        def __init__(self, url):
            time.sleep(0.05)        # wide open for a second thread to make another one
            made.append(url)

        def close(self):
            pass

    monkeypatch.setattr(dockerutil, "client", Slow)
    d = driver(_cloud(driver.__name__.replace("Driver", "").lower(), tmp_path), "appliance", "p00l")
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(d.client)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(c) for c in seen}) == 1
    assert made == [d.settings.url]
    d.close()
