"""A Docker engine the tests may restart: a Docker-in-Docker node (the image of
tests/integration/dind) whose dockerd is not its PID 1, so it can be stopped,
killed and started again while the node, and what its engine stores, stays.

The node's PID 1 is `tini -- sleep infinity` (tini reaps what the engine leaves);
dockerd is started by `docker exec`, listening on the node's /var/run/docker.sock
(which the appliance inside mounts, as a user's appliance mounts its host's) and
on a socket in a host directory, through which the test drives the inner engine
with an ordinary docker-py client. The node runs with the near-privileged flags of
../shared/tools/README.md (--privileged fails here); images reach the inner
engine with `docker save | docker load`.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from tests.waiting import wait_until

from .conftest import PREFIX

DIND_IMAGE = "apptest-dind:1"       # the same image test_swarm_multinode.py builds
DIND_DIR = Path(__file__).parent / "dind"
FLAGS = dict(cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
             security_opt=["seccomp=unconfined", "apparmor=unconfined"], cgroupns="host",
             environment={"DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE": "1"}, tmpfs={"/var/lib/docker": "exec"})
PIDFILE = "/var/run/docker.pid"
LOG = "/var/log/dockerd.log"
# what the inner engine answers while it is down or not up yet
ENGINE_DOWN = (requests.exceptions.ConnectionError, docker.errors.DockerException)


class Node:
    """One DinD node; `engine` is a docker-py client of its inner dockerd."""

    def __init__(self, client: docker.DockerClient):
        subprocess.run(["docker", "build", "-q", "-t", DIND_IMAGE, str(DIND_DIR)], check=True,
                       stdout=subprocess.DEVNULL)
        self.dir = tempfile.mkdtemp(prefix=f"{PREFIX}-drs-", dir="/tmp")   # short: a socket path has 108 bytes
        self.name = f"{PREFIX}-drs-{uuid.uuid4().hex[:8]}"
        try:
            self.c = client.containers.run(
                DIND_IMAGE, entrypoint=["tini", "--"], command=["sleep", "infinity"], detach=True,
                name=self.name, hostname="drsnode",
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                         self.dir: {"bind": "/ext", "mode": "rw"}}, **FLAGS)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.engine: docker.DockerClient | None = None     # made once the engine first answers

    def sh(self, cmd: str) -> tuple[int, str]:
        rc, out = self.c.exec_run(["sh", "-c", cmd])
        return rc, out.decode(errors="replace")

    # ------------------------------------------------------------ the inner dockerd
    def start_dockerd(self, timeout: float = 60) -> float:
        """Start the inner dockerd; return when it answers (seconds it took)."""
        started = time.monotonic()
        self.c.exec_run(["sh", "-c", "exec dockerd --host unix:///var/run/docker.sock --host unix:///ext/docker.sock "
                                     f">>{LOG} 2>&1"], detach=True)
        wait_until("the inner dockerd to answer", self.answering, timeout, 0.2, context=self.log_tail)
        return time.monotonic() - started

    def answering(self) -> bool:
        try:
            if self.engine is None:    # it asks the engine for its API version at once
                self.engine = docker.DockerClient(base_url=f"unix://{self.dir}/docker.sock", timeout=60)
            return bool(self.engine.ping())
        except ENGINE_DOWN:
            return False

    def dockerd_pid(self) -> str:
        rc, out = self.sh(f"cat {PIDFILE}")
        assert rc == 0 and out.strip().isdigit(), f"no dockerd pid: {out}"
        return out.strip()

    def dockerd_alive(self, pid: str) -> bool:
        rc, _ = self.sh(f"test -e /proc/{pid} && ! grep -q '^State:[[:space:]]*Z' /proc/{pid}/status")
        return rc == 0

    def stop_dockerd(self, signal: str, timeout: float = 90) -> float:
        """Send the inner dockerd `signal` (TERM: what `systemctl restart docker` sends
        first; KILL: a crash) and wait until it has exited (seconds it took)."""
        pid = self.dockerd_pid()
        started = time.monotonic()
        rc, out = self.sh(f"kill -{signal} {pid}")
        assert rc == 0, out
        wait_until("the inner dockerd to exit", lambda: not self.dockerd_alive(pid), timeout, 0.2,
                   context=self.log_tail)
        return time.monotonic() - started

    def ensure_dockerd(self) -> None:
        if not self.answering():
            self.start_dockerd()

    def log_tail(self, chars: int = 3000) -> str:
        return "--- inner dockerd log ---\n" + self.sh(f"tail -c {chars} {LOG}")[1]

    # ------------------------------------------------------------ images, removal
    def load(self, image: str) -> None:
        """`docker save IMAGE | docker load` into the inner engine."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", f"unix://{self.dir}/docker.sock", "load", "-q"], stdin=save.stdout,
                              capture_output=True)
        save.stdout.close()
        assert save.wait() == 0 and load.returncode == 0, load.stderr.decode()[-2000:]

    def remove(self) -> None:
        try:
            if self.engine is not None:
                self.engine.close()
        finally:
            try:
                self.c.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            shutil.rmtree(self.dir, ignore_errors=True)


class Held:
    """What conftest's Appliance wraps (a testcontainers container), for a container
    of the inner engine."""

    def __init__(self, container):
        self._c = container

    def get_wrapped_container(self):
        return self._c
