"""Options of the `docker` cloud (appliance/clouds/docker.py).

Kept apart from the driver so that loading the config never imports the Docker SDK.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import boolean, text, text_map
from .registry import SIMULATE_GPUS_DOC, CloudOptions, option, register

DEFAULT_URL = "unix:///var/run/docker.sock"
DEFAULT_IMAGE = "appliance:latest"


@dataclass(frozen=True, kw_only=True)
class DockerOptions(CloudOptions):
    url: str = option(text(), DEFAULT_URL, "the Docker engine to start workers on")
    image: str = option(text(), DEFAULT_IMAGE, "the image workers run, in its `worker` role")
    network: str = option(text(), "auto", "the network workers join; `auto`: the appliance's own "
                                          "(its first user-defined network, else `bridge`)")
    labels: Mapping[str, str] = option(text_map, {}, "extra labels on every worker container")
    simulate_gpus: bool = option(boolean, False, SIMULATE_GPUS_DOC)

    def own_image(self) -> str:
        return self.image


register("docker", "appliance.clouds.docker:DockerDriver", DockerOptions)
