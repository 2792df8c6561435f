"""The `openstack` cloud: each worker is one Nova server, started through openstacksdk.

The server is made a worker by its user-data, the same boot script as EC2's
(config/ec2-user-data.sh, or the cloud's `user_data` file; cloud-init runs it):
it installs Debian's htcondor (or runs the appliance image in its worker role),
writes the worker's files and starts it, and powers the server off when the
worker ends or its maximum lifetime passes. A powered-off (SHUTOFF) server is
deleted by the scheduler; so is one in ERROR, with Nova's fault as the reason.

Servers carry metadata for pool, cloud and worker id and are named
`<pool>-<worker id>`. Each cycle lists the project's servers (one paginated call)
and keeps those whose metadata is ours, whatever their name; orphans and vanished
workers are found from that. Nova has no client
token: a launch looks the worker's server up by name and metadata first, so a
retried launch never makes a second server.

Calls: per cycle, one GET /servers/detail (paginated; and a GET /servers/<id> for
a server in ERROR whose fault the listing does not show yet); per launch, one lookup
of the worker's server by name and one POST /servers (image, flavor and network names
are resolved to ids once and kept); per removal, one DELETE.

Secrets: the worker's token and key travel only in the user-data; the cloud's
credentials stay in clouds.yaml or the env_file. openstacksdk's and keystoneauth's
debug logs (which would show request bodies) are kept quiet, and error texts are
scrubbed of the launch's secrets and any long base64 run before they are shown.
"""
from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence

import openstack
import openstack.config
from keystoneauth1 import exceptions as ks
from openstack import exceptions as os_exc

from ..model import Resource, ResourceState
from ..workerconf import WorkerSpec
from . import bootscript
from .base import CloudError, Driver, ErrorKind, env_file_lines, scrub, shorten
from .openstack_options import OpenStackOptions

log = logging.getLogger(__name__)

for _name in ("openstack", "keystoneauth", "keystoneauth1", "urllib3", "stevedore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

META_POOL = "appliance:pool"
META_CLOUD = "appliance:cloud"
META_WORKER = "appliance:worker"
META_SHAPE = "appliance:shape"       # for operators; nothing reads it back

# statuses of a server that is, or is becoming, a worker; the others exist but have ended
ALIVE = {"BUILD", "ACTIVE", "REBOOT", "HARD_REBOOT", "PASSWORD", "REBUILD", "MIGRATING", "RESIZE",
         "VERIFY_RESIZE", "REVERT_RESIZE"}
USER_DATA_LIMIT = 49152               # Nova allows 65535 bytes of base64: this much before it
ENV_KEYS = {
    # openrc's variables -> openstacksdk's auth and connection arguments
    "OS_AUTH_URL": "auth_url", "OS_USERNAME": "username", "OS_PASSWORD": "password",
    "OS_PROJECT_NAME": "project_name", "OS_PROJECT_ID": "project_id", "OS_USER_DOMAIN_NAME": "user_domain_name",
    "OS_USER_DOMAIN_ID": "user_domain_id", "OS_PROJECT_DOMAIN_NAME": "project_domain_name",
    "OS_PROJECT_DOMAIN_ID": "project_domain_id", "OS_APPLICATION_CREDENTIAL_ID": "application_credential_id",
    "OS_APPLICATION_CREDENTIAL_SECRET": "application_credential_secret",
    "OS_APPLICATION_CREDENTIAL_NAME": "application_credential_name",
}
ENV_OTHER = {"OS_REGION_NAME": "region_name", "OS_INTERFACE": "interface", "OS_AUTH_TYPE": "auth_type",
             "OS_IDENTITY_API_VERSION": "identity_api_version", "OS_CACERT": "cacert"}
SECRET_ENV = {"OS_PASSWORD", "OS_APPLICATION_CREDENTIAL_SECRET"}

# what a refusal's text says, for the kinds an HTTP status does not tell apart
QUOTA = re.compile(r"quota exceeded|exceeds? (the )?quota|over ?quota|limit exceeded", re.I)
NO_HOST = re.compile(r"no valid host", re.I)
NOT_FOUND_WHAT = re.compile(r"\b(image|flavor|network|security group|key ?pair)\b[^.]*\b(could not be found|not "
                            r"found|cannot be found)", re.I)


class OpenStackDriver(Driver):
    settings: OpenStackOptions

    def __init__(self, cloud, pool, pool_id, template: str | None = None):
        super().__init__(cloud, pool, pool_id)
        self._template = template
        self._conn = None
        self._lock = threading.Lock()          # guards _conn and _ids: the act threads share them
        self._ids: dict[tuple[str, str], str] = {}     # (kind, name) -> id, resolved once
        self._secrets: set[str] = set()

    # ------------------------------------------------------------ connection
    @property
    def conn(self):
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            return self._conn

    def _connect(self):
        o = self.settings
        try:
            if o.cloud:
                files = [o.clouds_yaml] if o.clouds_yaml else None
                config = openstack.config.OpenStackConfig(config_files=files, load_envvars=False)
                region = config.get_one(cloud=o.cloud, region_name=o.region)
                self._secrets.update(_secret_values(region.config.get("auth") or {}))
                return openstack.connection.Connection(config=region, api_timeout=30)
            kwargs = read_env_file(o.env_file)
            self._secrets.update(v for k, v in kwargs.items() if k in ("password", "application_credential_secret"))
            if o.region:
                kwargs["region_name"] = o.region
            if "application_credential_id" in kwargs or "application_credential_name" in kwargs:
                kwargs.setdefault("auth_type", "v3applicationcredential")
            return openstack.connection.Connection(api_timeout=30, load_envvars=False, load_yaml_config=False,
                                                   **kwargs)
        except CloudError:
            raise
        except Exception as err:
            kind, text = classify(err)
            raise CloudError(ErrorKind.CONFIG if kind is ErrorKind.OTHER else kind,
                             f"cannot connect to OpenStack: {shorten(scrub(text, self._secrets))}") from None

    def _call(self, what: str, fn, *args, secrets: Iterable[str] = (), **kwargs):
        try:
            return fn(*args, **kwargs)
        except CloudError:
            raise
        except Exception as err:
            kind, text = classify(err)
            if kind is ErrorKind.AUTH:
                with self._lock:            # credentials may have been rotated: connect again next call
                    self._conn = None
            raise CloudError(kind, f"{what}: {shorten(scrub(text, {*self._secrets, *secrets}))}") from None

    # ------------------------------------------------------------ Driver
    def condor_host(self) -> str:
        raise CloudError(ErrorKind.CONFIG, "pool.condor_host is auto, but OpenStack servers need the central "
                                           "manager's address as they reach it: set pool.condor_host")

    def server_name(self, worker_id: str) -> str:
        return f"{self.pool}-{worker_id}"

    def metadata(self, spec: WorkerSpec) -> dict[str, str]:
        return {**dict(self.settings.metadata), META_POOL: self.pool_id, META_CLOUD: self.cloud.name,
                META_WORKER: spec.worker_id, META_SHAPE: spec.size.name}

    def flavor(self, spec: WorkerSpec) -> str:
        """The worker's shape is its flavor; a cloud with one `worker:` names it in flavor."""
        return self.settings.flavor or spec.size.name

    def launch(self, spec: WorkerSpec) -> str:
        existing = self._find(spec.worker_id)
        if existing:                        # a retried launch: the server is already there
            return existing
        user_data = self.user_data(spec)
        encoded = base64.b64encode(user_data.encode()).decode()
        secrets = {spec.token, spec.key.decode(errors="replace"), encoded} - {""}
        o = self.settings
        image = o.image if o.worker_image else spec.image_ref
        params = {
            "name": self.server_name(spec.worker_id),
            "image_id": self.resolve("image", image),
            "flavor_id": self.resolve("flavor", self.flavor(spec)),
            "networks": [{"uuid": self.resolve("network", n)} for n in o.network] or "auto",
            "metadata": self.metadata(spec),
            "user_data": encoded,
        }
        if o.security_groups:
            params["security_groups"] = [{"name": g} for g in o.security_groups]
        if o.key_name:
            params["key_name"] = o.key_name
        if o.availability_zone:
            params["availability_zone"] = o.availability_zone
        server = self._call("create server", self.conn.compute.create_server, secrets=secrets, **params)
        return server.id

    def _servers(self, name: str | None) -> Iterable:
        """Our servers (by metadata), of those whose name matches the regular expression `name`
        (Nova filters by it) or all the project's."""
        try:
            for s in self.conn.compute.servers(details=True, **({"name": name} if name else {})):
                meta = s.metadata or {}
                if meta.get(META_POOL) == self.pool_id and meta.get(META_CLOUD) == self.cloud.name:
                    yield s
        except CloudError:
            raise
        except Exception as err:
            kind, text = classify(err)
            raise CloudError(kind, f"list servers: {shorten(scrub(text, self._secrets))}") from None

    def _find(self, worker_id: str) -> str | None:
        """The live server of this worker, if one exists already."""
        for s in self._servers(f"^{re.escape(self.server_name(worker_id))}$"):
            if (s.metadata or {}).get(META_WORKER) == worker_id and s.status in ALIVE:
                return s.id
        return None

    def list(self) -> Mapping[str, Resource]:
        out: dict[str, Resource] = {}
        for s in self._servers(None):     # by metadata: a server renamed by someone is still ours
            wid = (s.metadata or {}).get(META_WORKER)
            if not wid:
                continue
            if s.status == "ERROR" and not s.fault:
                s = self._with_fault(s)
            res = resource(wid, s)
            old = out.get(wid)
            if old is None or _RANK[res.state] > _RANK[old.state]:
                out[wid] = res
        return out

    def _with_fault(self, server):
        """The server as Nova shows it alone: a listing may show ERROR before the fault is saved."""
        try:
            return self.conn.compute.get_server(server.id)
        except Exception:       # gone meanwhile, or unreachable: the listing's view will do
            return server

    def terminate(self, worker_id: str, resource_id: str) -> None:
        ids = [resource_id] if resource_id else [
            s.id for s in self._servers(f"^{re.escape(self.server_name(worker_id))}$")
            if (s.metadata or {}).get(META_WORKER) == worker_id]
        for sid in ids:      # a server already gone is success: removal is idempotent
            self._call("delete server", self.conn.compute.delete_server, sid, ignore_missing=True)

    def shape_sizes(self, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """(vCPUs, RAM MiB, GPUs, root disk MB) of each flavor, from Nova; an unknown flavor is a config
        error naming it. The image and networks are looked up too, so that a misspelt one
        is reported when the appliance starts, not at the first launch."""
        sizes = {}
        for name in names:
            flavor = self._call("find flavor", self.conn.compute.find_flavor, name, ignore_missing=True,
                                get_extra_specs=True)
            if flavor is None:
                raise CloudError(ErrorKind.CONFIG, f"no flavor {name!r} in this cloud (shape {name})")
            sizes[name] = (flavor.vcpus, flavor.ram, flavor_gpus(flavor.extra_specs or {}), (flavor.disk or 0) * 1024)
        o = self.settings
        self.resolve("image", o.image if o.worker_image else self.cloud.image_ref(self.cloud.default_image))
        for n in o.network:
            self.resolve("network", n)
        return sizes

    def resolve(self, kind: str, name: str) -> str:
        """The id of the image, flavor or network of this name (or id), looked up once."""
        with self._lock:
            known = self._ids.get((kind, name))
        if known:
            return known
        finder = {"image": self.conn.image.find_image, "flavor": self.conn.compute.find_flavor,
                  "network": self.conn.network.find_network}[kind]
        found = self._call(f"find {kind}", finder, name, ignore_missing=True)
        if found is None:
            raise CloudError(ErrorKind.IMAGE if kind == "image" else ErrorKind.CONFIG,
                             f"no {kind} {name!r} in this cloud")
        with self._lock:
            self._ids[(kind, name)] = found.id
        return found.id

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:       # closing is best effort
                pass

    # ------------------------------------------------------------ user-data
    def user_data(self, spec: WorkerSpec) -> str:
        """The boot script that makes a fresh server this worker: EC2's, rendered the same way."""
        return bootscript.user_data(spec, self.settings, self._template, USER_DATA_LIMIT, "Nova")


# ---------------------------------------------------------------- helpers

_RANK = {ResourceState.GONE: 0, ResourceState.EXITED: 1, ResourceState.RUNNING: 2}


def resource(worker_id: str, server) -> Resource:
    """What a server says of its worker: alive, ended (to delete, with Nova's fault), or gone."""
    status = (server.status or "UNKNOWN").upper()
    task = getattr(server, "task_state", None) or ""
    if status == "DELETED" or task == "deleting" or status == "SOFT_DELETED":
        return Resource(worker_id, server.id, ResourceState.GONE, f"its server {server.id} is being deleted")
    if status in ALIVE:
        return Resource(worker_id, server.id, ResourceState.RUNNING)
    fault = getattr(server, "fault", None) or {}
    why = fault.get("message") if isinstance(fault, Mapping) else ""
    detail = f"its server {server.id} is {status}" + (f" ({shorten(why)})" if why else "")
    return Resource(worker_id, server.id, ResourceState.EXITED, detail)


def flavor_gpus(extra_specs: Mapping[str, str]) -> int:
    """GPUs a flavor gives: vGPUs (resources:VGPU) or passed-through devices (pci_passthrough:alias 'a:2,b:1')."""
    try:
        vgpus = int(extra_specs.get("resources:VGPU", 0))
    except ValueError:
        vgpus = 0
    passed = 0
    for entry in str(extra_specs.get("pci_passthrough:alias", "")).split(","):
        _, _, count = entry.partition(":")
        passed += int(count) if count.strip().isdigit() else 0
    return vgpus + passed


def classify(err: Exception) -> tuple[ErrorKind, str]:
    """(CloudError kind, short text) for an openstacksdk or keystoneauth exception."""
    if isinstance(err, (ks.Unauthorized, ks.AuthorizationFailure, ks.MissingAuthPlugin, ks.MissingRequiredOptions)):
        return ErrorKind.AUTH, f"authentication failed ({type(err).__name__}): {err}"
    if isinstance(err, (ks.ConnectFailure, ks.ConnectTimeout, ks.DiscoveryFailure, ks.EndpointNotFound,
                        ks.ServiceUnavailable, ks.GatewayTimeout, ks.BadGateway)):
        return ErrorKind.UNAVAILABLE, f"the OpenStack endpoint is not reachable ({type(err).__name__}): {err}"
    if isinstance(err, os_exc.ConfigException):
        return ErrorKind.CONFIG, f"clouds.yaml: {err}"
    if isinstance(err, os_exc.HttpException):
        status = err.status_code or 0
        text = " ".join(str(x) for x in (err.details or err.message or str(err),) if x)
        if status == 429:
            return ErrorKind.THROTTLE, text
        if QUOTA.search(text) or status == 413:
            return ErrorKind.LIMIT, text
        if NO_HOST.search(text):
            return ErrorKind.CAPACITY, text
        if status == 401:
            return ErrorKind.AUTH, text
        if status == 403:
            return ErrorKind.AUTH, text
        if NOT_FOUND_WHAT.search(text):
            return ErrorKind.IMAGE if re.search(r"\bimage\b", text, re.I) else ErrorKind.CONFIG, text
        if status >= 500:
            return ErrorKind.UNAVAILABLE, text
        if status in (400, 404, 409):
            return ErrorKind.CONFIG, text
        return ErrorKind.OTHER, text
    if isinstance(err, ks.ClientException):
        return ErrorKind.UNAVAILABLE, f"{type(err).__name__}: {err}"
    return ErrorKind.OTHER, f"{type(err).__name__}: {err}"


def read_env_file(path: str) -> dict[str, str]:
    """openstacksdk's connection arguments from a file of OS_*=value lines (an openrc's
    variables: `export`, quotes and comments allowed). Errors name the file and line, never a value."""
    out: dict[str, str] = {}
    for n, key, value in env_file_lines(path, "OS_NAME=value"):
        name = ENV_KEYS.get(key) or ENV_OTHER.get(key)
        if name is None:
            raise CloudError(ErrorKind.CONFIG, f"env_file {path}, line {n}: unknown key {key} (known: "
                                               f"{', '.join(sorted({*ENV_KEYS, *ENV_OTHER}))})")
        out[name] = value
    if "auth_url" not in out:
        raise CloudError(ErrorKind.CONFIG, f"env_file {path}: OS_AUTH_URL is required")
    return out


def _secret_values(auth: Mapping) -> set[str]:
    return {str(v) for k, v in auth.items() if v and ("password" in k or "secret" in k or k == "token")}
