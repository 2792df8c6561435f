"""What the openstack integration tests share: a Docker network of their own, the test
OpenStack on it (tests/openstack/up: real Keystone, Nova with its fake virt driver,
Placement, Glance and Neutron), and appliances that talk to it with the clouds.yaml it
prints, mounted read-only.

The tests look at the cloud as an operator would, with openstacksdk as the test project's
admin (`appliance-admin` in that clouds.yaml), run inside the appliance container: it is
on the network and has openstacksdk, and the control plane's names resolve there.
"""
from __future__ import annotations

import json
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

import docker
from testcontainers.core.container import DockerContainer

from .conftest import REPO, Appliance, docker_build

# The server's disk: Debian with HTCondor already on it, as labs bake their cloud images. The
# boot script's install from a bare Debian is the EC2 boot test's (the same script); here its
# apt-get finds everything installed, which saves that test's install (13 s measured).
VM_IMAGE = "appliance-test-vm:trixie-htcondor"
VM_DOCKERFILE = """\
FROM debian:trixie-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends htcondor ca-certificates nftables \\
 && rm -rf /var/lib/apt/lists/*
"""

UP = REPO / "tests" / "openstack" / "up"
DOWN = REPO / "tests" / "openstack" / "down"
CLOUDS_YAML = "/etc/appliance/clouds.yaml"


@contextmanager
def openstack_network(client: docker.DockerClient, tmp: Path):
    """(network name, clouds.yaml path, control plane name): the test OpenStack, started by
    the same command people use, and removed with everything on its network afterwards."""
    tag = uuid.uuid4().hex[:8]
    net = client.networks.create(f"apptest-os-{tag}", driver="bridge")
    plane = f"apptest-os-cp-{tag}"
    try:
        proc = subprocess.run([str(UP), plane, net.name, "--admin"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"tests/openstack/up failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
        clouds = tmp / "clouds.yaml"
        clouds.write_text(proc.stdout)
        clouds.chmod(0o644)
        yield net.name, clouds, plane
    finally:
        for c in client.containers.list(all=True, filters={"network": net.name}):
            if c.name.startswith("apptest-"):
                c.remove(force=True, v=True)
        net.remove()


def build_vm_image() -> str:
    return docker_build(VM_IMAGE, VM_DOCKERFILE)


def start_appliance(client: docker.DockerClient, image: str, tmp: Path, network: str, clouds: Path,
                    config: str, label: str) -> Appliance:
    """An appliance on the network with `config` (its {name} filled in) and the clouds.yaml."""
    name = f"apptest-os-{label}-{uuid.uuid4().hex[:6]}"
    cfg = tmp / f"{label}.yaml"
    cfg.write_text(config.format(name=name))
    c = (DockerContainer(image).with_name(name)
         .with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
         .with_volume_mapping(str(clouds), CLOUDS_YAML, "ro")
         .with_kwargs(hostname=name, network=network))
    c.start()
    app = Appliance(c)
    app.wait_ready()
    return app


ADMIN = f"""
import json, sys, openstack, openstack.config
openstack.enable_logging(debug=False)

def connect(entry):
    config = openstack.config.OpenStackConfig(config_files=["{CLOUDS_YAML}"], load_envvars=False)
    return openstack.connection.Connection(config=config.get_one(cloud=entry))

conn = connect("appliance-admin")
"""


def admin(app: Appliance, code: str):
    """Run `code` with `conn` (openstacksdk, as admin) inside the appliance; it prints one JSON value."""
    out = app.sh(f"python3 - <<'PYEOF'\n{ADMIN}\n{code}\nPYEOF")
    return json.loads(out.strip().splitlines()[-1])


def servers(app: Appliance, pool_id: str) -> list[dict]:
    """Every server of the appliance project with this pool's metadata (all projects, as admin)."""
    return admin(app, f"""
out = []
for s in conn.compute.servers(details=True, all_projects=True):
    if (s.metadata or {{}}).get("appliance:pool") == {pool_id!r}:
        out.append({{"id": s.id, "name": s.name, "status": s.status, "metadata": s.metadata,
                    "flavor": s.flavor.get("original_name") or s.flavor.get("name"), "image": (s.image or {{}}).get("id"),
                    "addresses": s.addresses, "fault": s.fault, "security_groups": s.security_groups}})
print(json.dumps(out))
""")


def user_data(app: Appliance, server_id: str) -> str:
    """The server's user-data as Nova hands it to cloud-init (an admin-only field)."""
    return admin(app, f"""
import base64
s = conn.compute.get_server({server_id!r})
print(json.dumps(base64.b64decode(s.user_data).decode()))
""")


def pool_id(app: Appliance) -> str:
    return app.sh("cat /var/lib/appliance/pool-id").strip()


def workers(app: Appliance, ended: bool = True) -> list[dict]:
    return app.status("-m", "-a")["data"] if ended else app.status("-m")["data"]


def cloud(app: Appliance, name: str) -> dict:
    return next(c for c in app.status()["data"] if c["name"] == name)
