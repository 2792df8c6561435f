"""Shared by the operator-surface tests (CLIs, API, page, metrics): one appliance
per module, reached from the host on its container address, https://IP:8080.

The page is HTTPS only. The host's requests trust exactly the certificate the appliance
serves (read from the container, as an operator would copy it; see docs/security.md),
without checking the name, since the container's address is in no certificate."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import docker
from testcontainers.core.container import DockerContainer

from .conftest import Appliance

# two clouds: `local` launches; `burst` starts disabled, for enable/disable tests
CONFIG = """
scheduler: {interval: 1, idle_timeout: 5, boot_timeout: 120}
clouds:
  - {name: local, type: local, max_workers: 2, worker: {cpus: 1, memory: 1024}}
  - {name: burst, type: local, enabled: false, priority: 1, max_workers: 1, worker: {cpus: 2, memory: 2048}}
"""


SERVED_CERT = "/run/appliance/web/tls.crt"      # the pair gunicorn serves (appliance/bootstrap.py)
# the image's HEALTHCHECK command, probed every 2 s; a failure counts after 10 s (Docker's start period)
HEALTH_FAST = {"interval": 2 * 10 ** 9, "timeout": 5 * 10 ** 9, "retries": 1, "start_period": 10 * 10 ** 9}


def fingerprint(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


class WebAppliance(Appliance):
    def __init__(self, container: DockerContainer, password: str):
        super().__init__(container)
        self.password = password
        self.c.reload()
        self.ip = next(iter(self.c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.url = f"https://{self.ip}:8080"
        self._ctx: ssl.SSLContext | None = None

    def cert_pem(self) -> str:
        return self.sh(f"cat {SERVED_CERT}")

    @property
    def ctx(self) -> ssl.SSLContext:
        """Trusts only the certificate this appliance serves (pinned); the name is not checked."""
        if self._ctx is None:
            ctx = ssl.create_default_context(cadata=self.cert_pem())
            ctx.check_hostname = False
            self._ctx = ctx
        return self._ctx

    def restarted(self) -> None:
        """After `docker restart`: the address may have changed, the certificate too."""
        self.c.reload()
        self.ip = next(iter(self.c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.url = f"https://{self.ip}:8080"
        self._ctx = None

    def status_of(self, path: str) -> int | None:
        """The HTTP status of GET path without credentials, or None while nothing answers."""
        try:
            return self.http("GET", path, auth=None)[0]
        except OSError:           # refused, reset, or the handshake failed: not up (yet)
            return None

    def served(self, server_hostname: str | None = None, cafile: str | None = None) -> tuple[str, dict | None]:
        """(SHA-256 fingerprint, peer cert dict or None) of what 8080 serves, from one TLS handshake:
        unverified, or verified against cafile for server_hostname (as curl --cacert does)."""
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection((self.ip, 8080), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            return fingerprint(tls.getpeercert(binary_form=True)), tls.getpeercert() if cafile else None

    def health(self) -> str:
        """Docker's health status of the container: starting, healthy or unhealthy."""
        self.c.reload()
        return self.c.attrs["State"]["Health"]["Status"]

    def http(self, method: str, path: str, body=None, auth: tuple[str, str] | None | bool = True,
             headers: dict | None = None, raw: bytes | None = None):
        """(status, headers, parsed JSON or text) of one request from the host."""
        h = dict(headers or {})
        if auth is True:
            auth = ("admin", self.password)
        if auth:
            h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=15, context=self.ctx) as r:
                status, hdrs, text = r.status, r.headers, r.read().decode()
        except urllib.error.HTTPError as e:
            status, hdrs, text = e.code, e.headers, e.read().decode()
        try:
            return status, hdrs, json.loads(text)
        except ValueError:
            return status, hdrs, text

    def status(self, *args: str) -> dict:
        """cloud_status --json, stdout only (its stderr says when the scheduler is not running)."""
        rc, (out, err) = self.c.exec_run(["cloud_status", "--json", *args], demux=True)
        assert rc in (0, 3), (out, err)
        return json.loads(out)

    def cloud(self, name: str) -> dict:
        return next(c for c in self.status()["data"] if c["name"] == name)


def start(client: docker.DockerClient, image: str, tmp: Path, tag: str, config: str = CONFIG,
          env: dict[str, str] | None = None, mounts: dict[str, str] | None = None, hostname: str | None = None,
          fast_health: bool = False, ready: bool = True, web: bool = True) -> WebAppliance:
    """Start an appliance. mounts: {host path or volume name: "container path[:ro]"};
    fast_health: the image's own HEALTHCHECK command, probed every 2 s; ready: wait for the
    scheduler; web: wait for /healthz to answer 200 from the host."""
    name = f"apptest-ops-{tag}-{uuid.uuid4().hex[:6]}"
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(config)
    cfg.chmod(0o644)
    password = "pw-" + secrets.token_urlsafe(12)
    c = (DockerContainer(image).with_name(name)
         .with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
         .with_env("APPLIANCE_ADMIN_PASSWORD", password))
    for k, v in (env or {}).items():
        c = c.with_env(k, v)
    for src, dst in (mounts or {}).items():
        path, _, mode = dst.partition(":")
        c = c.with_volume_mapping(src, path, mode or "rw")
    kwargs = {"hostname": hostname or name}
    if fast_health:
        kwargs["healthcheck"] = HEALTH_FAST          # no test: the image's HEALTHCHECK command
    c = c.with_kwargs(**kwargs)
    c.start()
    app = WebAppliance(c, password)
    app.config_file = cfg
    try:
        if ready:
            app.wait_ready(90)
        if web:
            app.wait("the web app", lambda: app.status_of("/healthz") == 200, timeout=30)
    except BaseException:
        stop(app)
        raise
    return app


def stop(app: WebAppliance) -> None:
    try:
        app.c.remove(force=True, v=True)     # and its anonymous volumes (the image declares some)
    except docker.errors.NotFound:
        pass


def job(count: int, seconds: int, extra: str = "") -> str:
    return (f"executable = /bin/sleep\narguments = {seconds}\nlog = job.log\nrequest_cpus = 1\n"
            f"request_memory = 128\nrequest_disk = 10MB\n{extra}\nqueue {count}")
