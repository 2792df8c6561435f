"""What the docker and swarm drivers share: the engine client, labels, the
appliance's own container and network, and turning Docker errors into CloudErrors."""
from __future__ import annotations

import io
import re
import tarfile
import threading

import docker
import docker.errors
import requests.exceptions

from .base import CloudError, Driver, ErrorKind

# What an engine call raises. The SDK lets requests' own errors through: an engine that
# went away after the client was made (dockerd restarting, its socket gone) raises
# ConnectionError, one that hangs a Timeout; as anything but a CloudError they failed
# the whole scheduler cycle, every cloud's, until the engine was back.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)

LABEL_POOL = "appliance.pool"
LABEL_WORKER = "appliance.worker"
LABEL_CLOUD = "appliance.cloud"
LABEL_SHAPE = "appliance.shape"     # for operators (docker ps --filter); nothing reads it back


def labels(pool_id: str, cloud: str, worker_id: str, extra=None, shape: str = "") -> dict[str, str]:
    out = {**dict(extra or {}), LABEL_POOL: pool_id, LABEL_CLOUD: cloud, LABEL_WORKER: worker_id}
    if shape:
        out[LABEL_SHAPE] = shape
    return out


def label_filter(pool_id: str, cloud: str) -> list[str]:
    return [f"{LABEL_POOL}={pool_id}", f"{LABEL_CLOUD}={cloud}"]


def client(url: str) -> docker.DockerClient:
    try:
        return docker.DockerClient(base_url=url, timeout=20)
    except ENGINE_ERRORS as err:
        raise CloudError(ErrorKind.UNAVAILABLE, f"cannot reach the Docker engine at {url}: {_short(err)}") from None


def own_container_id() -> str | None:
    """This process's container id, if it runs in one (the mounts name it)."""
    try:
        with open("/proc/self/mountinfo") as f:
            m = re.search(r"/containers/([0-9a-f]{64})/", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def own_container(cli: docker.DockerClient):
    cid = own_container_id()
    if cid is None:
        raise CloudError(ErrorKind.CONFIG,
                         "the appliance does not run in a container here: set pool.condor_host "
                         "and the cloud's network explicitly")
    try:
        return cli.containers.get(cid)
    except docker.errors.NotFound:
        raise CloudError(ErrorKind.CONFIG,
                         f"the appliance's container {cid[:12]} is not on this Docker engine: "
                         "set pool.condor_host and the cloud's network explicitly") from None
    except ENGINE_ERRORS as err:
        raise translate(err, "inspect the appliance's own container") from None


def ip_on(container, network: str) -> str | None:
    nets = container.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
    ip = (nets.get(network) or {}).get("IPAddress")
    return ip or None


def bundle_tar(name: str, content: bytes, mode: int = 0o600) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(content), mode
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


_CAPACITY = re.compile(r"insufficient|no suitable node|cannot allocate|out of memory|no space|resources", re.I)


def translate(err: Exception, doing: str) -> CloudError:
    """A Docker SDK error as a CloudError whose kind drives the backoff."""
    text = _short(err)
    if isinstance(err, docker.errors.ImageNotFound) or "no such image" in text.lower():
        return CloudError(ErrorKind.IMAGE, f"{doing}: image not found ({text})")
    if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)) or \
            "connection" in text.lower() and "refused" in text.lower():
        return CloudError(ErrorKind.UNAVAILABLE, f"{doing}: the Docker engine is not reachable ({text})")
    if isinstance(err, docker.errors.APIError):
        if _CAPACITY.search(text):
            return CloudError(ErrorKind.CAPACITY, f"{doing}: {text}")
        if err.status_code in (401, 403):
            return CloudError(ErrorKind.AUTH, f"{doing}: {text}")
        if err.status_code == 400:
            return CloudError(ErrorKind.CONFIG, f"{doing}: {text}")
    if isinstance(err, docker.errors.DockerException) and "Error while fetching server API version" in text:
        return CloudError(ErrorKind.UNAVAILABLE, f"{doing}: the Docker engine is not reachable ({text})")
    return CloudError(ErrorKind.OTHER, f"{doing}: {text}")


def _short(err: Exception) -> str:
    if isinstance(err, docker.errors.APIError) and getattr(err, "explanation", None):
        text = str(err.explanation)
    else:
        text = str(err)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


class EngineDriver(Driver):
    """What the docker and swarm drivers share: a lazy engine client, our names, and
    where workers go (a network and the central manager's address on it), found once."""

    def __init__(self, cloud, pool, pool_id):
        super().__init__(cloud, pool, pool_id)
        self._client: docker.DockerClient | None = None
        self._where: tuple[str, str] | None = None    # (network, condor host)
        self._lock = threading.Lock()                  # guards _where
        # guards _client: the act threads launch and terminate at once, and two first
        # calls must not each make a client (one would leak its connections).
        # Not _lock: placement() holds that while _find_placement() asks for the client.
        self._client_lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                self._client = client(self.settings.url)
            return self._client

    def name_for(self, worker_id: str) -> str:
        return f"appliance-{self.pool_id}-{worker_id}"

    def placement(self) -> tuple[str, str]:
        """The network workers join and the central manager's address on it."""
        with self._lock:
            if self._where is None:
                self._where = self._find_placement()
            return self._where

    def _find_placement(self) -> tuple[str, str]:
        raise NotImplementedError

    def condor_host(self) -> str:
        return self.placement()[1]

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
