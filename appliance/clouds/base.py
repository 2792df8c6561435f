"""The one interface every cloud driver implements.

A driver does three things and keeps no state of its own that matters: it
launches a worker, lists what exists in the cloud with our labels, and
terminates. The daemon owns the worker rows; drivers are told everything.
"""
from __future__ import annotations

import abc
from typing import Mapping

from ..config import CloudConfig
from ..model import Resource
from ..workerconf import WorkerSpec


class CloudError(Exception):
    """A cloud refused or failed. `kind` drives the response:

    capacity, limit, throttle -> back off and let other clouds take the demand
    auth, config, image       -> back off (longer); an operator must act
    unavailable               -> the endpoint is down; back off
    """

    KINDS = ("capacity", "limit", "throttle", "auth", "config", "image", "unavailable", "other")

    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind if kind in self.KINDS else "other"
        self.retry_after = retry_after


class Driver(abc.ABC):
    def __init__(self, cloud: CloudConfig, pool: str, pool_id: str):
        self.cloud = cloud
        self.pool = pool          # the pool name (trust domain)
        self.pool_id = pool_id    # unique per appliance install: labels our resources

    @abc.abstractmethod
    def condor_host(self) -> str:
        """The central manager's address as this cloud's workers must use it."""

    @abc.abstractmethod
    def launch(self, spec: WorkerSpec) -> str:
        """Start one worker; return its resource id. Raise CloudError on failure."""

    @abc.abstractmethod
    def list(self) -> Mapping[str, Resource]:
        """Every resource of this cloud carrying our pool's labels, by worker id."""

    @abc.abstractmethod
    def terminate(self, worker_id: str, resource_id: str) -> None:
        """Remove a worker's resource. Idempotent: a missing resource is success."""

    def shutdown(self, worker_ids: list[str]) -> None:
        """The appliance is stopping and on_shutdown is `remove`: remove these workers."""
        for wid in worker_ids:
            try:
                self.terminate(wid, "")
            except CloudError:
                pass

    def close(self) -> None:
        pass


def make_driver(cloud: CloudConfig, pool: str, pool_id: str) -> Driver:
    if cloud.type == "local":
        from .local import LocalDriver
        return LocalDriver(cloud, pool, pool_id)
    if cloud.type == "docker":
        from .docker import DockerDriver
        return DockerDriver(cloud, pool, pool_id)
    if cloud.type == "swarm":
        from .swarm import SwarmDriver
        return SwarmDriver(cloud, pool, pool_id)
    if cloud.type == "ec2":
        from .ec2 import Ec2Driver
        return Ec2Driver(cloud, pool, pool_id)
    raise ValueError(f"no driver for cloud type {cloud.type!r}")
