"""The `swarm` cloud: one Docker Swarm service per worker.

A service per worker (restart condition none, one replica) means scale-down
removes exactly the drained worker, never a busy one: there is no replica
count for Swarm to shrink at random. The worker's files travel as a Docker
secret of its own (mode 0400, readable by root in the task only), removed
with the service. Workers join the attachable overlay network the appliance
itself runs on, so they reach the central manager from any node.
"""
from __future__ import annotations

from collections.abc import Mapping

import docker
import docker.errors
from docker.types import Healthcheck, Resources, RestartPolicy, SecretReference

from ..model import Resource, ResourceState
from ..worker_role import bundle
from ..workerconf import WorkerSpec, worker_files
from . import dockerutil as du
from .base import CloudError, ErrorKind
from .docker import DAEMON_MEMORY_MB
from .swarm_options import SwarmOptions

# task states in which the worker is (or is about to be) running
ALIVE = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}


def overlay_placement(client: docker.DockerClient, wanted: str) -> tuple[str, str]:
    """The overlay network swarm workers join, and the appliance's address on it.

    The appliance must already be on that network when HTCondor starts: its
    daemons advertise one address, and workers must be able to connect back
    to it (the schedd's claim goes through CCB, but the worker dials the
    schedd's advertised address). So we never attach ourselves at run time.
    """
    try:
        me = du.own_container(client)
        nets = list((me.attrs["NetworkSettings"].get("Networks") or {}).keys())
        if wanted == "auto":
            overlays = [n for n in nets if _is_attachable_overlay(client, n)]
            if not overlays:
                raise CloudError(ErrorKind.CONFIG,
                                 "the appliance is on no attachable overlay network (it is on: "
                                 f"{', '.join(nets) or 'none'}); create one with `docker network create -d overlay "
                                 "--attachable NAME` and run the appliance with `--network NAME`")
            wanted = overlays[0]
    except du.ENGINE_ERRORS as err:
        raise du.translate(err, "find the swarm's network") from None
    ip = du.ip_on(me, wanted)
    if ip is None:
        raise CloudError(ErrorKind.CONFIG,
                         f"the appliance's container is not attached to network {wanted!r} "
                         f"(it is on: {', '.join(nets) or 'none'}); start it with `--network {wanted}`")
    return wanted, ip


def _is_attachable_overlay(client: docker.DockerClient, name: str) -> bool:
    try:
        attrs = client.networks.get(name).attrs
    except du.ENGINE_ERRORS:
        return False
    return attrs.get("Driver") == "overlay" and bool(attrs.get("Attachable"))


class SwarmDriver(du.EngineDriver):
    settings: SwarmOptions

    def _find_placement(self) -> tuple[str, str]:
        return overlay_placement(self.client, self.settings.network)

    def launch(self, spec: WorkerSpec) -> str:
        network, _ = self.placement()
        size = spec.size        # the worker's shape: reserved and limited to its cpus and memory
        lab = du.labels(self.pool_id, self.cloud.name, spec.worker_id, self.settings.labels, size.name)
        name = self.name_for(spec.worker_id)
        try:
            existing = self.client.services.list(filters={"name": name})
            if any(s.name == name for s in existing):       # a retried launch
                return next(s.id[:12] for s in existing if s.name == name)
            secret = self._secret(name, bundle(spec.worker_id, worker_files(spec, "/var/lib/condor-worker")), lab)
            service = self.client.services.create(
                spec.image_ref, args=["worker"], name=name, hostname=spec.worker_id,
                labels=lab, container_labels=lab, networks=[network],
                env=[f"APPLIANCE_WORKER_ID={spec.worker_id}"],
                # reserved as well as limited: Swarm then places a worker only on a node
                # with room for it, and spreads workers over the nodes that have room
                resources=Resources(cpu_limit=int(size.cpus * 1e9), cpu_reservation=int(size.cpus * 1e9),
                                    mem_limit=(size.memory + DAEMON_MEMORY_MB) * 1024 * 1024,
                                    mem_reservation=size.memory * 1024 * 1024,
                                    generic_resources=gpu_resources(size.gpus, self.settings.simulate_gpus)),
                restart_policy=RestartPolicy(condition="none"),
                constraints=list(self.settings.constraints),
                secrets=[SecretReference(secret.id, secret.name, filename="appliance-worker", uid="0", gid="0",
                                         mode=0o400)],
                stop_signal="SIGQUIT", healthcheck=Healthcheck(test=["NONE"]))
        except du.ENGINE_ERRORS as err:
            self._remove_secret(name)
            raise du.translate(err, f"create service for {spec.worker_id}") from None
        return service.id[:12]

    def _secret(self, name: str, data: bytes, lab: dict):
        for s in self.client.secrets.list(filters={"name": name}):
            if s.name == name:
                s.remove()
        return self.client.secrets.create(name=name, data=data, labels=lab)

    def list(self) -> Mapping[str, Resource]:
        try:
            services = self.client.services.list(filters={"label": du.label_filter(self.pool_id, self.cloud.name)})
            tasks = self.client.api.tasks(filters={"service": [s.id for s in services]}) if services else []
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, "list worker services") from None
        latest: dict[str, dict] = {}
        for t in tasks:
            sid = t.get("ServiceID")
            if sid and (sid not in latest or t.get("CreatedAt", "") > latest[sid].get("CreatedAt", "")):
                latest[sid] = t
        out = {}
        for s in services:
            wid = (s.attrs.get("Spec", {}).get("Labels") or {}).get(du.LABEL_WORKER)
            if not wid:
                continue
            task = latest.get(s.id)
            state = task["Status"]["State"] if task else "new"
            err = task["Status"].get("Err", "") if task else ""
            if state in ALIVE:
                out[wid] = Resource(wid, s.id[:12], ResourceState.RUNNING)
            else:
                out[wid] = Resource(wid, s.id[:12], ResourceState.EXITED,
                                    f"its task is {state}" + (f": {err}" if err else ""))
        self._sweep_secrets({self.name_for(w) for w in out})
        return out

    def _sweep_secrets(self, keep: set[str]) -> None:
        """Secrets whose service is gone (a removal that failed midway) go too."""
        try:
            for s in self.client.secrets.list(filters={"label": du.label_filter(self.pool_id, self.cloud.name)}):
                if s.name not in keep:
                    s.remove()
        except du.ENGINE_ERRORS:
            pass    # a secret still in use by a stopping task: next cycle

    def terminate(self, worker_id: str, resource_id: str) -> None:
        name = self.name_for(worker_id)
        try:
            self.client.api.remove_service(resource_id or name)
        except docker.errors.NotFound:
            pass
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, f"remove service {name}") from None
        self._remove_secret(name)

    def _remove_secret(self, name: str) -> None:
        try:
            for s in self.client.secrets.list(filters={"name": name}):
                if s.name == name:
                    s.remove()
        except du.ENGINE_ERRORS:
            pass     # swept later by list()



# the generic resource a node offers its GPUs as (dockerd --node-generic-resource NVIDIA-GPU=...)
GPU_RESOURCE = "NVIDIA-GPU"


def gpu_resources(gpus: int, simulated: bool) -> dict[str, int] | None:
    """Swarm places a worker of a GPU shape only on a node with that many GPUs free (its
    generic resources); simulated GPUs need no node to have any."""
    if not gpus or simulated:
        return None
    return {GPU_RESOURCE: gpus}
