"""Options of the `swarm` cloud (appliance/clouds/swarm.py).

Kept apart from the driver so that loading the config never imports the Docker SDK.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import boolean, text, text_list, text_map
from .docker_options import DEFAULT_IMAGE, DEFAULT_URL
from .registry import SIMULATE_GPUS_DOC, CloudOptions, option, register


@dataclass(frozen=True, kw_only=True)
class SwarmOptions(CloudOptions):
    url: str = option(text(), DEFAULT_URL, "the Swarm manager's Docker engine")
    image: str = option(text(), DEFAULT_IMAGE, "the image workers run, in its `worker` role; "
                                               "every node must be able to pull it")
    network: str = option(text(), "auto", "the attachable overlay network workers join; `auto`: "
                                          "the first one the appliance is on")
    labels: Mapping[str, str] = option(text_map, {}, "extra labels on every worker service and its containers")
    constraints: tuple[str, ...] = option(text_list(text()), (),
                                          "Swarm placement constraints, e.g. `node.labels.htcondor == yes`")
    simulate_gpus: bool = option(boolean, False, SIMULATE_GPUS_DOC)

    def own_image(self) -> str:
        return self.image


register("swarm", "appliance.clouds.swarm:SwarmDriver", SwarmOptions)
