"""Shared by the operator-surface tests (CLIs, API, page, metrics): one appliance
per module, reached from the host on its container address, port 8080."""
from __future__ import annotations

import base64
import json
import secrets
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import docker
from testcontainers.core.container import DockerContainer

from .conftest import Appliance

# two clouds: `local` launches; `burst` starts disabled, for enable/disable tests
CONFIG = """
scheduler: {interval: 1, idle_timeout: 10, boot_timeout: 120}
clouds:
  - {name: local, type: local, max_workers: 2, worker: {cpus: 1, memory: 1024}}
  - {name: burst, type: local, enabled: false, priority: 1, max_workers: 1, worker: {cpus: 2, memory: 2048}}
"""


class WebAppliance(Appliance):
    def __init__(self, container: DockerContainer, password: str):
        super().__init__(container)
        self.password = password
        self.c.reload()
        ip = next(iter(self.c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.url = f"http://{ip}:8080"

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
            with urllib.request.urlopen(req, timeout=15) as r:
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


def start(client: docker.DockerClient, image: str, tmp: Path, tag: str, config: str = CONFIG) -> WebAppliance:
    name = f"apptest-ops-{tag}-{uuid.uuid4().hex[:6]}"
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(config)
    cfg.chmod(0o644)
    password = "pw-" + secrets.token_urlsafe(12)
    c = (DockerContainer(image).with_name(name)
         .with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
         .with_env("APPLIANCE_ADMIN_PASSWORD", password)
         .with_kwargs(hostname=name))
    c.start()
    app = WebAppliance(c, password)
    try:
        app.wait_ready(90)
        app.wait("the web app", lambda: app.http("GET", "/healthz", auth=None)[0] == 200, timeout=30)
    except BaseException:
        stop(app)
        raise
    return app


def stop(app: WebAppliance) -> None:
    try:
        app.c.remove(force=True)
    except docker.errors.NotFound:
        pass


def job(count: int, seconds: int, extra: str = "") -> str:
    return (f"executable = /bin/sleep\narguments = {seconds}\nlog = job.log\nrequest_cpus = 1\n"
            f"request_memory = 128\nrequest_disk = 10MB\n{extra}\nqueue {count}")
