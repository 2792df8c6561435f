"""The `docker` cloud: each worker is a sibling container of the appliance,
started through the mounted Docker socket from the same image (`worker` role).

Containers carry labels for pool, cloud and worker id; listing by label each
cycle is how orphans are found and vanished workers noticed. The worker's
files reach it by `put_archive` before it starts, so no secret is ever in
its environment or in `docker inspect`.
"""
from __future__ import annotations

import time
from collections.abc import Mapping

import docker
import docker.errors

from ..model import Resource, ResourceState
from ..worker_role import bundle
from ..workerconf import WorkerSpec, worker_files
from . import dockerutil as du
from .base import CloudError, ErrorKind
from .docker_options import DockerOptions

# headroom over the condor-visible memory for the worker's own daemons
DAEMON_MEMORY_MB = 256
ALIVE = ("created", "running", "restarting")
# a container still only `created` this long after its creation was never started
NEVER_STARTED = 60.0


class DockerDriver(du.EngineDriver):
    settings: DockerOptions

    def _find_placement(self) -> tuple[str, str]:
        wanted = self.settings.network
        me = du.own_container(self.client)
        nets = list((me.attrs.get("NetworkSettings", {}).get("Networks") or {}).keys())
        if wanted == "auto":
            user_defined = [n for n in nets if n not in ("bridge", "host", "none")]
            if not user_defined and "bridge" not in nets:
                raise CloudError(ErrorKind.CONFIG,
                                 f"the appliance is on no usable network ({', '.join(nets) or 'none'}); "
                                 "set the cloud's network")
            wanted = user_defined[0] if user_defined else "bridge"
        ip = du.ip_on(me, wanted)
        if ip is None:
            raise CloudError(ErrorKind.CONFIG,
                             f"the appliance's container is not attached to network {wanted!r} "
                             f"(it is on: {', '.join(nets) or 'none'})")
        return wanted, ip

    def launch(self, spec: WorkerSpec) -> str:
        try:
            network, _ = self.placement()
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, "inspect the appliance's own container") from None
        size = spec.size        # the worker's shape: its container gets that many cpus and that much memory
        files = worker_files(spec, "/var/lib/condor-worker")
        try:
            container = self.client.containers.create(
                spec.image_ref, command=["worker"], name=self.name_for(spec.worker_id),
                hostname=spec.worker_id, detach=True, network=network,
                labels=du.labels(self.pool_id, self.cloud.name, spec.worker_id, self.settings.labels, size.name),
                environment={"APPLIANCE_WORKER_ID": spec.worker_id},
                nano_cpus=int(size.cpus * 1e9), mem_limit=f"{size.memory + DAEMON_MEMORY_MB}m",
                restart_policy={"Name": "no"}, stop_signal="SIGQUIT",
                device_requests=gpu_requests(size.gpus, self.settings.simulate_gpus),
                healthcheck={"test": ["NONE"]})    # the image's check probes the web page, not a worker
        except docker.errors.APIError as err:
            if err.status_code == 409:      # a retried launch: the container is already there
                return self._existing(spec.worker_id)
            raise du.translate(err, f"create container for {spec.worker_id}") from None
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, f"create container for {spec.worker_id}") from None
        try:
            container.put_archive("/etc/appliance/worker", du.bundle_tar("bundle.json", bundle(spec.worker_id, files)))
            container.start()
        except du.ENGINE_ERRORS as err:
            self._remove(container.id)
            raise du.translate(err, f"start container for {spec.worker_id}") from None
        return container.id[:12]

    def _existing(self, worker_id: str) -> str:
        try:
            c = self.client.containers.get(self.name_for(worker_id))
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, f"find container for {worker_id}") from None
        if c.labels.get(du.LABEL_POOL) != self.pool_id:
            raise CloudError(ErrorKind.CONFIG, f"a container named {self.name_for(worker_id)} exists but is not ours")
        return c.id[:12]

    def list(self) -> Mapping[str, Resource]:
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": du.label_filter(self.pool_id, self.cloud.name)}, sparse=True)
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, "list worker containers") from None
        out = {}
        for c in containers:
            wid = c.attrs.get("Labels", {}).get(du.LABEL_WORKER)
            if not wid:
                continue
            state = c.attrs.get("State", "")
            if state in ALIVE:
                res_state, detail = ResourceState.RUNNING, ""
            else:
                res_state, detail = ResourceState.EXITED, f"its container is {state} ({c.attrs.get('Status', '')})"
            if state == "created" and time.time() - float(c.attrs.get("Created") or 0) > NEVER_STARTED:
                # the scheduler stopped between creating and starting it: it never will start
                res_state, detail = ResourceState.EXITED, "its container was created but never started"
            out[wid] = Resource(wid, c.id[:12], res_state, detail)
        return out

    def terminate(self, worker_id: str, resource_id: str) -> None:
        target = resource_id or self.name_for(worker_id)
        self._remove(target)

    def _remove(self, target: str) -> None:
        try:
            # v=True: the image's VOLUME lines give every worker container two anonymous
            # volumes; without it each worker left them behind on the engine for ever
            self.client.api.remove_container(target, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:
            if "already in progress" in str(err):
                return
            raise du.translate(err, f"remove container {target}") from None
        except du.ENGINE_ERRORS as err:
            raise du.translate(err, f"remove container {target}") from None



def gpu_requests(gpus: int, simulated: bool) -> list[docker.types.DeviceRequest] | None:
    """What `docker run --gpus N` asks the engine for (its NVIDIA runtime hands out N
    devices); nothing for simulated GPUs, which HTCondor invents inside the worker."""
    if not gpus or simulated:
        return None
    return [docker.types.DeviceRequest(count=gpus, capabilities=[["gpu"]])]
