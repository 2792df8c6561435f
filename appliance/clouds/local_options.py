"""Options of the `local` cloud (appliance/clouds/local.py): none of its own.

Kept apart from the driver so that loading the config imports no driver code.
"""
from __future__ import annotations

from dataclasses import dataclass

from .registry import CloudOptions, register


@dataclass(frozen=True, kw_only=True)
class LocalOptions(CloudOptions):
    """Workers are processes inside the appliance: nothing to choose."""


register("local", "appliance.clouds.local:LocalDriver", LocalOptions)
