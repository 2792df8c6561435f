"""Integration fixtures: the built image, running appliances, and helpers to drive them.

Everything here runs the real image with real HTCondor daemons on the real
dockerd. Containers, networks and volumes are named `apptest-*` and removed
by the tests themselves (testcontainers' reaper cannot be pulled here).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path

import docker
import pytest
from testcontainers.core.container import DockerContainer

from tests.waiting import wait_cycles, wait_until

REPO = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("APPLIANCE_IMAGE", "appliance:latest")
# every container, network and volume a test creates is named PREFIX-...
PREFIX = os.environ.get("APPLIANCE_TEST_PREFIX", "apptest")


def pytest_terminal_summary(terminalreporter):
    """The fault-injection suite's totals, at the end of the run (see test_reliability.py)."""
    from .reliability_support import NUMBERS
    if NUMBERS:
        terminalreporter.write_line("reliability numbers: " + ", ".join(f"{k} {v}" for k, v in sorted(NUMBERS.items())))


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def client():
    return docker.from_env()


@pytest.fixture(scope="session")
def image(client):
    """Build the image once per run (Docker's cache makes a rebuild cheap)."""
    if not os.environ.get("APPLIANCE_SKIP_BUILD"):
        subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(REPO)], check=True, stdout=subprocess.DEVNULL)
    return IMAGE


@pytest.fixture(scope="session", autouse=True)
def soak_beside(request, image, tmp_path_factory):
    """The soak (test_soak.py) started with the first integration test and run beside the
    others, when it is among the tests selected; test_soak collects its result."""
    if not any(item.nodeid.endswith("test_soak.py::test_soak") for item in request.session.items):
        yield None
        return
    from .test_soak import Soak
    soak = Soak(image, tmp_path_factory.mktemp("soak"))
    yield soak
    soak.stop()


@pytest.fixture
def network(client):
    net = client.networks.create(f"{PREFIX}-{uuid.uuid4().hex[:8]}", driver="bridge")
    yield net.name
    for c in client.containers.list(all=True, filters={"network": net.name}):
        c.remove(force=True, v=True)
    net.remove()


@pytest.fixture(scope="module")
def swarm(client):
    """The host engine as a one-node Swarm, for the module that asks (left again after it)."""
    if client.info().get("Swarm", {}).get("LocalNodeState") == "active":
        yield client
        return
    client.swarm.init(advertise_addr="127.0.0.1")
    try:
        yield client
    finally:
        client.swarm.leave(force=True)


@pytest.fixture
def overlay(swarm):
    """An attachable overlay network: the appliance runs on it, its workers join it."""
    net = swarm.networks.create(f"{PREFIX}-ov-{uuid.uuid4().hex[:8]}", driver="overlay", attachable=True)
    yield net.name
    for c in swarm.containers.list(all=True, filters={"network": net.name}):
        c.remove(force=True, v=True)
    net.remove()


@pytest.fixture
def volumes(client):
    """Named volumes for state and queue, so a test can restart or replace the container."""
    tag = uuid.uuid4().hex[:8]
    names = {"state": f"{PREFIX}-state-{tag}", "spool": f"{PREFIX}-spool-{tag}", "home": f"{PREFIX}-home-{tag}"}
    yield names
    for n in names.values():
        for c in client.containers.list(all=True, filters={"volume": n}):
            c.remove(force=True, v=True)
        try:
            client.volumes.get(n).remove(force=True)
        except docker.errors.NotFound:
            pass


class Appliance:
    def __init__(self, container: DockerContainer):
        self.tc = container
        self.c = container.get_wrapped_container()
        self.name = self.c.name

    def sh(self, cmd: str, user: str = "root", check: bool = True, workdir: str | None = None) -> str:
        rc, out = self.c.exec_run(["bash", "-lc", cmd], user=user, workdir=workdir)
        text = out.decode(errors="replace")
        if check and rc != 0:
            raise AssertionError(f"`{cmd}` exited {rc}:\n{text}")
        return text

    def rc(self, cmd: str, user: str = "root") -> tuple[int, str]:
        rc, out = self.c.exec_run(["bash", "-lc", cmd], user=user)
        return rc, out.decode(errors="replace")

    def status(self, *args: str) -> dict:
        rc, out = self.rc("cloud_status --json " + " ".join(shlex.quote(a) for a in args))
        assert rc in (0, 3), out
        return json.loads(out)

    def submit(self, sub: str, files: dict[str, str] | None = None, user: str = "submit",
               directory: str = "/home/submit/job") -> int:
        self.sh(f"mkdir -p {directory}", user=user)
        for name, content in {**(files or {}), "job.sub": sub}.items():
            self.sh(f"cat > {directory}/{name} <<'EOF'\n{content}\nEOF\nchmod +x {directory}/{name}", user=user)
        out = self.sh(f"cd {directory} && condor_submit job.sub", user=user)
        return int(out.strip().split()[-1].rstrip("."))

    def events(self) -> list[dict]:
        return self.status("-e", "-n", "1000")["data"]

    def pool_id(self) -> str:
        return self.sh("cat /var/lib/appliance/pool-id").strip()

    def logs(self) -> str:
        return self.c.logs().decode(errors="replace")

    def wait(self, what: str, predicate, timeout: float = 120, every: float = 1.0):
        """wait_until (tests/waiting.py), retrying while a check fails or the JSON is not there yet,
        with this appliance's recent events and log in the failure message."""
        return wait_until(what, predicate, timeout, every, retry_on=(AssertionError, ValueError),
                          context=self.diagnostics)

    def wait_cycles(self, n: int = 3, timeout: float = 60) -> int:
        """Wait until the scheduler has completed n more cycles: what a check that something
        does NOT happen waits for, instead of a sleep (see tests/waiting.py)."""
        return wait_cycles(lambda: self.status()["scheduler"].get("cycle"), n, timeout,
                           retry_on=(AssertionError, ValueError), context=self.diagnostics)

    def diagnostics(self, events: int = 60, log_chars: int = 4000) -> str:
        """The recent events, the workers' slots as the collector has them, and the end of the
        container's log, for a failure message."""
        slots = self.sh("condor_status -constraint 'ApplianceWorker =?= true' -af Name State Activity "
                        "EnteredCurrentActivity LastHeardFrom", check=False)
        return (f"--- events ---\n{self.sh(f'cloud_status -e -n {events}', check=False)}\n"
                f"--- worker slots (Name State Activity EnteredCurrentActivity LastHeardFrom; now "
                f"{self.sh('date +%s', check=False).strip()}) ---\n{slots}\n"
                f"--- logs ---\n{self.logs()[-log_chars:]}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait("the appliance to answer", lambda: self.status()["scheduler"]["running"] and
                  self.rc("condor_q -allusers -totals")[0] == 0, timeout)


@pytest.fixture
def start_appliance(client, image, tmp_path):
    """Start an appliance with a given config; removed after the test."""
    started: list[DockerContainer] = []

    def start(config: str, name: str | None = None, network: str | None = None,
              volumes: dict[str, str] | None = None, env: dict[str, str] | None = None,
              docker_socket: bool = False, wait: bool = True) -> Appliance:
        name = name or f"{PREFIX}-{uuid.uuid4().hex[:8]}"
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(config)
        c = DockerContainer(image).with_name(name).with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
        if volumes:
            c = c.with_volume_mapping(volumes["state"], "/var/lib/appliance", "rw")
            c = c.with_volume_mapping(volumes["spool"], "/var/lib/condor/spool", "rw")
            c = c.with_volume_mapping(volumes["home"], "/home", "rw")     # submit directories, as compose keeps them
        if docker_socket:
            c = c.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
        for k, v in (env or {}).items():
            c = c.with_env(k, v)
        kwargs = {"hostname": name}    # as compose does: the pool's names match the container's
        if network:
            kwargs["network"] = network
        c = c.with_kwargs(**kwargs)
        c.start()
        started.append(c)
        app = Appliance(c)
        if wait:
            app.wait_ready()
        return app

    yield start
    for c in started:
        remove_appliance(client, c)


def remove_appliance(client, c: DockerContainer) -> None:
    """Remove a test's appliance container and whatever workers it left behind."""
    wrapped = c.get_wrapped_container()
    pool_id = None
    try:
        rc, out = wrapped.exec_run(["cat", "/var/lib/appliance/pool-id"])
        pool_id = out.decode().strip() if rc == 0 else None
    except docker.errors.APIError:
        pass
    try:
        wrapped.remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    if pool_id:
        remove_labelled(client, pool_id)


def labelled(client, pool_id: str) -> list:
    """Containers and swarm services that carry an appliance's pool label."""
    found = list(client.containers.list(all=True, filters={"label": f"appliance.pool={pool_id}"}))
    try:
        found += client.services.list(filters={"label": f"appliance.pool={pool_id}"})
    except docker.errors.APIError:
        pass    # not a swarm manager
    return found


def remove_labelled(client, pool_id: str) -> None:
    """What a test's appliance left behind (a test that failed midway)."""
    for thing in labelled(client, pool_id):
        try:
            thing.remove(force=True, v=True) if hasattr(thing, "status") else thing.remove()
        except docker.errors.NotFound:
            pass


JOB_SCRIPT = """#!/bin/sh
# proves where it ran: the worker's own name and id, from the machine ad HTCondor gives every job
echo "host=$(hostname)"
grep -E '^(WorkerId|CloudName) ' "$_CONDOR_MACHINE_AD"
sleep ${1:-3}
echo done
"""


def docker_build(tag: str, dockerfile: str) -> str:
    """Build a helper image from a Dockerfile given as text (no context); cached layers make a
    second build of the same text instant. Returns the tag."""
    subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile.encode(), check=True,
                   stdout=subprocess.DEVNULL)
    return tag


def job_sub(count: int, seconds: int = 3, extra: str = "") -> str:
    return (f"executable = job.sh\narguments = {seconds}\noutput = out.$(Process)\nerror = err.$(Process)\n"
            f"log = job.log\nrequest_cpus = 1\nrequest_memory = 128\nrequest_disk = 10MB\n{extra}\nqueue {count}")
