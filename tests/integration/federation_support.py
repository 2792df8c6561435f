"""What the federation tests share: a lab's submit node, pools on one network, their files.

Three pools on one Docker network, started once for the module:
  A  a lab's existing submit node: a plain HTCondor container (Debian trixie's
     htcondor package, its default security) with its own collector, negotiator
     and schedd, and no execute node;
  B  the appliance, with a local and a docker cloud whose workers advertise Site = "b";
  C  a second appliance with a local cloud only, which flocks to B (federation.flock_to).
Everything is named PREFIX-fed-*, and removed at the end, whatever happened.
"""
from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
import time
import uuid
from pathlib import Path

import docker
from testcontainers.core.container import DockerContainer

from .conftest import PREFIX, Appliance, docker_build, remove_appliance

LAB_IMAGE = f"{PREFIX}-lab:trixie"
# A lab's submit node as Debian ships HTCondor: only what makes it a central manager and
# submit point of its own, nothing for the appliance.
LAB_DOCKERFILE = """\
FROM debian:trixie-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends htcondor procps \\
 && rm -rf /var/lib/apt/lists/* \\
 && useradd --create-home --shell /bin/bash alice \\
 && printf 'CONDOR_HOST = $(FULL_HOSTNAME)\\nDAEMON_LIST = MASTER, COLLECTOR, NEGOTIATOR, SCHEDD\\n' \\
      > /etc/condor/config.d/10-lab.conf
CMD ["/usr/sbin/condor_master", "-f"]
"""

NUMBERS: dict[str, object] = {}
NUMBERS_FILE = os.environ.get("APPLIANCE_FEDERATION_NUMBERS", "/tmp/federation-numbers.json")


def note(key: str, value) -> None:
    """A measured number for the report (written to NUMBERS_FILE as the tests go)."""
    NUMBERS[key] = value
    try:
        Path(NUMBERS_FILE).write_text(json.dumps(NUMBERS, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def build_lab_image() -> str:
    return docker_build(LAB_IMAGE, LAB_DOCKERFILE)


class Lab:
    """A plain HTCondor submit node (not an appliance)."""

    def __init__(self, container):
        self.c = container
        self.name = container.name

    def sh(self, cmd: str, user: str = "root", check: bool = True) -> str:
        rc, out = self.c.exec_run(["bash", "-lc", cmd], user=user)
        text = out.decode(errors="replace")
        if check and rc != 0:
            raise AssertionError(f"{self.name}: `{cmd}` exited {rc}:\n{text}")
        return text

    def put(self, path: str, content: bytes, mode: int = 0o644) -> None:
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w") as tar:
            info = tarfile.TarInfo(os.path.basename(path))
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
        self.c.put_archive(os.path.dirname(path), data.getvalue())

    def submit(self, sub: str, files: dict[str, str], user: str = "alice", directory: str = "job") -> int:
        home = f"/home/{user}/{directory}"
        self.sh(f"mkdir -p {home}", user=user)
        for name, content in {**files, "job.sub": sub}.items():
            self.sh(f"cat > {home}/{name} <<'EOF'\n{content}\nEOF\nchmod +x {home}/{name}", user=user)
        out = self.sh(f"cd {home} && condor_submit job.sub", user=user)
        return int(out.strip().split()[-1].rstrip("."))

    def jobs(self, cluster: int) -> list[tuple[int, int]]:
        """(proc, JobStatus) of the cluster's jobs still in the queue."""
        out = self.sh(f"condor_q {cluster} -allusers -af ProcId JobStatus", check=False)
        return [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()[:1].isdigit()]

    def history(self, cluster: int) -> int:
        out = self.sh(f"condor_history {cluster} -af ProcId JobStatus", check=False)
        return sum(1 for line in out.splitlines() if line.split()[1:2] == ["4"])

    def logs(self, daemon: str = "SchedLog", chars: int = 3000) -> str:
        return self.sh(f"tail -c {chars} /var/log/condor/{daemon}", check=False)


def start_lab(client, network: str, name: str) -> Lab:
    c = client.containers.run(LAB_IMAGE, name=name, hostname=name, network=network, detach=True)
    lab = Lab(c)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rc, _ = c.exec_run(["condor_q", "-totals"])
        if rc == 0:
            return lab
        time.sleep(0.5)
    raise AssertionError(f"{name}: its schedd did not answer in 60s:\n{lab.logs('MasterLog')}")


def start_appliance(client, image: str, config: str, name: str, network: str, tmp: Path,
                    mounts: dict[str, str] | None = None, docker_socket: bool = False) -> Appliance:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(config)
    c = DockerContainer(image).with_name(name).with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
    for host, inside in (mounts or {}).items():
        c = c.with_volume_mapping(host, inside, "ro")
    if docker_socket:
        c = c.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
    c = c.with_kwargs(hostname=name, network=network)
    c.start()
    return Appliance(c)


class Federation:
    """The three pools of the module, and what a test needs of them."""

    def __init__(self, client, tmp: Path):
        self.client = client
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:6]
        self.network = f"{PREFIX}-fed-{self.tag}"
        self.containers: list = []      # testcontainers of the appliances
        self.labs: list[Lab] = []
        self.net = client.networks.create(self.network, driver="bridge")

    def name(self, what: str) -> str:
        return f"{PREFIX}-fed{what}-{self.tag}"

    def close(self) -> None:
        for c in self.containers:
            try:
                remove_appliance(self.client, c)
            except docker.errors.APIError:
                pass
        for lab in self.labs:
            try:
                lab.c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
        for c in self.client.containers.list(all=True, filters={"network": self.network}):
            c.remove(force=True, v=True)
        try:
            self.net.remove()
        except docker.errors.APIError:
            pass


def copy_out(app: Appliance, path: str) -> bytes:
    """A file from an appliance container, as bytes (its tokens are root's, mode 0600)."""
    rc, out = app.c.exec_run(["cat", path])
    assert rc == 0, f"cannot read {path} in {app.name}: {out.decode(errors='replace')}"
    return out


def put(container, path: str, content: bytes, mode: int = 0o644) -> None:
    Lab(container).put(path, content, mode)


def q(text: str) -> str:
    return shlex.quote(text)
