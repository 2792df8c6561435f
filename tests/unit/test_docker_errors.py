"""Docker engine faults become CloudErrors whose kind drives the backoff (real SDK, no engine)."""
from __future__ import annotations

import pytest

from appliance.clouds.base import CloudError
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
    assert "no-engine.sock" in str(err.value) or "not reachable" in str(err.value)


def test_engine_down_is_unavailable_for_removal(tmp_path):
    d = DockerDriver(_cloud("docker", tmp_path), "appliance", "p00l")
    with pytest.raises(CloudError) as err:
        d.terminate("docker-abc123", "")
    assert err.value.kind == "unavailable"
