"""Options of the `local` cloud (appliance/clouds/local.py).

Kept apart from the driver so that loading the config imports no driver code.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import boolean
from .registry import SIMULATE_GPUS_DOC, CloudOptions, OptionError, option, register


@dataclass(frozen=True, kw_only=True)
class LocalOptions(CloudOptions):
    """Workers are processes inside the appliance: their GPUs are the appliance's own."""
    simulate_gpus: bool = option(boolean, False, SIMULATE_GPUS_DOC)

    def own_image(self) -> str:
        return "appliance"

    def validate_images(self, images: Mapping[str, str]) -> None:
        raise OptionError("images", "local workers run inside the appliance, on its own software; give images "
                                    "to a docker, swarm or ec2 cloud")


register("local", "appliance.clouds.local:LocalDriver", LocalOptions)
