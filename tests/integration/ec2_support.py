"""What the ec2 integration tests share: a Docker network of their own, an EC2
endpoint (moto over HTTP, behind the fault proxy) on that network's gateway
address, and one appliance per module that talks to it with credentials from
an env_file.

moto listens on 127.0.0.1; the proxy listens on the gateway address of the
test's own bridge network, the only non-loopback address these tests use.
"""
from __future__ import annotations

import base64
import json
import re
import uuid
from contextlib import contextmanager
from pathlib import Path

import docker
from testcontainers.core.container import DockerContainer

from tests.ec2_endpoint import Ec2Endpoint
from tests.waiting import wait_until

from .conftest import Appliance

AMI = "ami-12c6146b"          # one of moto's built-in images
SECRET_KEY = "apptest-secret-access-key-never-shown"

# One worker whose boot script a test runs in a container standing in for the instance
# (apt-installing htcondor there takes minutes: hence the long boot_timeout).
BOOT_SCRIPT_CONFIG = """
pool: {{{{condor_host: {{name}}}}}}
scheduler: {{{{interval: 1, idle_timeout: {idle_timeout}, boot_timeout: 420, lost_timeout: 30}}}}
clouds:
  - name: aws
    type: ec2
    max_workers: 1
    region: us-west-2
    ami: {{ami}}
    instance_type: t3.small
    endpoint_url: {{endpoint}}
    env_file: /etc/appliance/aws.env
    max_lifetime: 3600
    worker: {{{{cpus: {cpus}, memory: {memory}}}}}
"""


def boot_script_config(idle_timeout: int, cpus: int, memory: int) -> str:
    """BOOT_SCRIPT_CONFIG for ec2_world, which fills in name, ami and endpoint."""
    return BOOT_SCRIPT_CONFIG.format(idle_timeout=idle_timeout, cpus=cpus, memory=memory)
ACCESS_KEY = "AKIAAPPTESTAPPTEST00"


@contextmanager
def ec2_world(client: docker.DockerClient, image: str, tmp: Path, config: str):
    """(appliance, endpoint, network name) for one test module; everything removed afterwards."""
    tag = uuid.uuid4().hex[:8]
    net = client.networks.create(f"apptest-ec2-{tag}", driver="bridge")
    try:
        net.reload()
        gateway = net.attrs["IPAM"]["Config"][0]["Gateway"]
        with Ec2Endpoint(bind=gateway) as ep:
            name = f"apptest-ec2-app-{tag}"
            env = tmp / "aws.env"
            env.write_text(f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={SECRET_KEY}\n")
            cfg = tmp / "appliance.yaml"
            cfg.write_text(config.format(name=name, endpoint=ep.url, ami=AMI))
            c = (DockerContainer(image).with_name(name)
                 .with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
                 .with_volume_mapping(str(env), "/etc/appliance/aws.env", "ro")
                 .with_kwargs(hostname=name, network=net.name))
            c.start()
            try:
                app = Appliance(c)
                app.wait_ready()
                yield app, ep, net.name
            finally:      # the appliance goes before its endpoint does
                _remove_all(client, net.name)
    finally:
        _remove_all(client, net.name)
        net.remove()


def _remove_all(client: docker.DockerClient, network: str) -> None:
    for c in client.containers.list(all=True, filters={"network": network}):
        if c.name.startswith("apptest-"):
            c.remove(force=True, v=True)     # and its anonymous state and spool volumes


def pool_id(app: Appliance) -> str:
    return app.sh("cat /var/lib/appliance/pool-id").strip()


def workers(app: Appliance, ended: bool = True) -> list[dict]:
    return app.status("-m", "-a")["data"] if ended else app.status("-m")["data"]


def worker(app: Appliance, wid: str) -> dict | None:
    return next((w for w in workers(app) if w["id"] == wid), None)


def cloud(app: Appliance, name: str) -> dict:
    return next(c for c in app.status()["data"] if c["name"] == name)


def booting_worker(app: Appliance, cloud_name: str, exclude=()) -> dict | None:
    for w in workers(app, ended=False):
        if w["cloud"] == cloud_name and w["state"] == "booting" and w["resource_id"] and w["id"] not in exclude:
            return w
    return None


def user_data(ep: Ec2Endpoint, instance_id: str) -> str:
    raw = ep.client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(raw["UserData"]["Value"]).decode()


def token_in(script: str) -> str:
    """The worker token the boot script writes to tokens.d/pool."""
    m = re.search(r"<<'APPLIANCE_TOKENS_D_POOL'\n(.*?)\nAPPLIANCE_TOKENS_D_POOL\n", script, re.S)
    assert m, "the boot script writes no token"
    return base64.b64decode(m.group(1)).decode().strip()


def token_subject(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def instance_state(ep: Ec2Endpoint, instance_id: str) -> str:
    inst = ep.instances(instance_id=instance_id)
    return inst[0]["State"]["Name"] if inst else "missing"


def wait_for(what: str, predicate, timeout: float = 60, every: float = 1.0, app: Appliance | None = None):
    """wait_until (tests/waiting.py) for the ec2 tests: any exception from the predicate fails
    at once (test_ec2_boot's predicate asserts that its instance still runs), and with `app`
    the failure message shows the appliance's recent events and log."""
    context = (lambda: app.diagnostics(events=40, log_chars=3000)) if app is not None else None
    return wait_until(what, predicate, timeout, every, context=context)
