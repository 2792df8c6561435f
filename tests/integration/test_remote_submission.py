"""Submitting from where you are: lab users, their tokens, and HTCondor reached through a published port.

The appliance runs on a network of its own and publishes HTCondor on a random host port P
(`-p P:9618`, not 9618), with pool.condor_host set to the host's address and P. The clients
reach it only through that port: a plain Debian HTCondor client in a container on another
Docker network (HTCondor's own tools), and the PyPI htcondor wheel (htcondor2) on the host.
Each uses exactly the token and settings `cloud_admin --add-user` printed.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import pytest
from testcontainers.core.container import DockerContainer

from .conftest import PREFIX, REPO, Appliance, remove_appliance

pytestmark = pytest.mark.timeout(420)

HERE = Path(__file__).parent / "remote_client"
CLIENT_IMAGE = f"{PREFIX}-remote-client:1"
WHEEL_DIR = REPO / ".venv" / "remote-client"      # the htcondor 25 wheel, apart from .venv's 23.10

CONFIG = """
pool: {{name: appliance, condor_host: "{host}:{port}"}}
scheduler: {{interval: 1, idle_timeout: 30, boot_timeout: 120}}
clouds:
  - {{name: local, type: local, max_workers: 2, worker: {{cpus: 1, memory: 1024}}}}
"""

JOB = """#!/bin/sh
echo "ran as $(id -un) uid $(id -u)"
grep -E '^WorkerId ' "$_CONDOR_MACHINE_AD"
cat in.txt
"""
SUBMIT = """executable = job.sh
transfer_input_files = in.txt
output = out.txt
error = err.txt
log = job.log
request_cpus = 1
request_memory = 128
request_disk = 10MB
queue
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class Site:
    """The appliance (network A, HTCondor published on P), a client container on network B, and
    the address both the client and the host use: the host as the client network sees it."""

    def __init__(self, client: docker.DockerClient, image: str, tmp: Path):
        self.docker, self.image, self.tmp = client, image, tmp
        tag = uuid.uuid4().hex[:8]
        self.app_net = client.networks.create(f"{PREFIX}-rs-app-{tag}", driver="bridge")
        self.client_net = client.networks.create(f"{PREFIX}-rs-client-{tag}", driver="bridge")
        self.volumes = {k: f"{PREFIX}-rs-{k}-{tag}" for k in ("state", "spool", "home")}
        self.host = self.client_net.attrs["IPAM"]["Config"][0]["Gateway"]
        self.port = free_port()
        self.config = tmp / "appliance.yaml"
        self.config.write_text(CONFIG.format(host=self.host, port=self.port))
        self.schedd = f"appliance@{self.host}"
        self.container: DockerContainer | None = None
        self.app: Appliance | None = None
        self.cli = None

    def start_appliance(self) -> Appliance:
        name = f"{PREFIX}-rs-{uuid.uuid4().hex[:8]}"
        c = (DockerContainer(self.image).with_name(name)
             .with_volume_mapping(str(self.config), "/etc/appliance/appliance.yaml", "ro")
             .with_bind_ports(9618, self.port)           # -p P:9618
             .with_kwargs(hostname=f"{PREFIX}-rs-appliance", network=self.app_net.name))
        for what, path in (("state", "/var/lib/appliance"), ("spool", "/var/lib/condor/spool"), ("home", "/home")):
            c = c.with_volume_mapping(self.volumes[what], path, "rw")
        c.start()
        self.container, self.app = c, Appliance(c)
        self.app.wait_ready()
        return self.app

    def replace_appliance(self) -> Appliance:
        """A new container on the same volumes, as `docker compose up` after an upgrade does."""
        remove_appliance(self.docker, self.container)
        return self.start_appliance()

    def start_client(self) -> None:
        self.cli = self.docker.containers.run(CLIENT_IMAGE, detach=True, network=self.client_net.name,
                                              name=f"{PREFIX}-rs-client-{uuid.uuid4().hex[:8]}")

    def client(self, cmd: str, user: str = "alice") -> tuple[int, str]:
        rc, out = self.cli.exec_run(["bash", "-lc", cmd], user=user, workdir="/root" if user == "root" else f"/home/{user}")
        return rc, out.decode(errors="replace")

    def client_ok(self, cmd: str, user: str = "alice") -> str:
        rc, out = self.client(cmd, user)
        assert rc == 0, f"`{cmd}` exited {rc} on the client:\n{out}\n{self.app.diagnostics()}"
        return out

    def close(self) -> None:
        if self.container is not None:
            remove_appliance(self.docker, self.container)
        if self.cli is not None:
            self.cli.remove(force=True, v=True)
        for net in (self.client_net, self.app_net):
            for c in self.docker.containers.list(all=True, filters={"network": net.name}):
                c.remove(force=True, v=True)
            net.remove()
        for v in self.volumes.values():
            try:
                self.docker.volumes.get(v).remove(force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture(scope="module")
def client_image():
    subprocess.run(["docker", "build", "-q", "-t", CLIENT_IMAGE, str(HERE)], check=True, stdout=subprocess.DEVNULL)
    return CLIENT_IMAGE


@pytest.fixture(scope="module")
def wheel() -> Path:
    """HTCondor's PyPI wheel, 25.x, installed once into a directory of its own."""
    pins = (HERE / "requirements.txt").read_text()
    marker = WHEEL_DIR / ".requirements"
    if not (marker.exists() and marker.read_text() == pins):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade",
                        "--target", str(WHEEL_DIR), "-r", str(HERE / "requirements.txt")], check=True)
        marker.write_text(pins)
    return WHEEL_DIR


@pytest.fixture(scope="module")
def site(client, image, client_image, tmp_path_factory):
    s = Site(client, image, tmp_path_factory.mktemp("remote"))
    try:
        s.start_appliance()
        s.start_client()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def alice(site) -> dict:
    """cloud_admin --add-user alice, and her machine set up with exactly what it printed."""
    out = site.app.sh("cloud_admin --add-user alice --json -C test")
    added = json.loads(out)
    assert added["created"] and added["identity"] == "alice@appliance" and added["authorizations"] == ["READ", "WRITE"]
    assert 100000 <= added["uid"] < 200000
    assert site.app.sh("id -u alice").strip() == str(added["uid"])
    settings = added["client"]
    assert settings["config"] == [f"CONDOR_HOST = {site.host}:{site.port}", f"SCHEDD_HOST = {site.schedd}",
                                  "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS"], settings
    assert settings["token_file"] == "~/.condor/tokens.d/appliance" and settings["warning"] is None
    token = added["token"]
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token), "a token is one JWT"
    site.client_ok("mkdir -p ~/.condor/tokens.d && chmod 700 ~/.condor/tokens.d && "
                   f"printf '%s\\n' {shlex.quote(token)} > ~/.condor/tokens.d/appliance && "
                   "chmod 600 ~/.condor/tokens.d/appliance && "
                   f"printf '%s\\n' {' '.join(shlex.quote(line) for line in settings['config'])} > ~/.condor/user_config")
    return added


def test_htcondor_tools_from_another_network_through_the_published_port(site, alice, capsys):
    # every daemon the client is told about is at the public address and port
    ads = site.client_ok("condor_status -any -af MyType Name MyAddress")
    schedd = [l for l in ads.splitlines() if l.startswith("Scheduler ")]
    assert len(schedd) == 1 and schedd[0].split()[1] == site.schedd, ads
    for line in ads.splitlines():
        if line.split()[0] in ("Scheduler", "Collector", "Negotiator"):
            assert line.split()[-1].startswith(f"<{site.host}:{site.port}?"), ads

    site.client_ok(f"mkdir -p job && cd job && printf '%s' {shlex.quote(JOB)} > job.sh && chmod +x job.sh && "
                   f"echo input-from-alice > in.txt && printf '%s' {shlex.quote(SUBMIT)} > job.sub")
    t0 = time.monotonic()
    out = site.client_ok(f"cd job && condor_submit -remote {site.schedd} job.sub")
    cluster = int(re.search(r"submitted to cluster (\d+)", out).group(1))

    def status():
        return site.client_ok(f"condor_q -name {site.schedd} {cluster} -af JobStatus").strip()
    site.app.wait("her job to run", lambda: status() in ("2", "4"), timeout=120, every=0.2)
    running_after = time.monotonic() - t0
    site.app.wait("her job to complete", lambda: status() == "4", timeout=120)
    with capsys.disabled():
        print(f"\nremote submit (condor_submit -remote, another network) to running on a new worker: "
              f"{running_after:.1f} s; client settings: {len(alice['client']['config'])} lines")

    site.client_ok(f"cd job && condor_transfer_data -name {site.schedd} {cluster}")
    result = site.client_ok("cat job/out.txt")
    m = re.search(r"^ran as (\S+) uid (\d+)$", result, re.M)
    assert m and "input-from-alice" in result and re.search(r'^WorkerId = "local-', result, re.M), result
    # on the worker the job runs as that slot's own account (workerconf.py), never as a person's
    assert m.group(1).startswith("slot") and int(m.group(2)) >= 200000, result

    # the job is alice's: its owner, the accounting user fair share counts, and on the appliance the
    # account its files (and shadow) belong to
    owner = site.client_ok(f"condor_q -name {site.schedd} {cluster} -af Owner User").split()
    assert owner == ["alice", "alice@appliance"], owner
    spool = site.app.sh(f"find /var/lib/condor/spool -maxdepth 3 -name 'cluster{cluster}.proc0.subproc0' -printf '%u\\n'")
    assert spool.split() == ["alice"], spool
    assert "alice@appliance" in site.app.sh("condor_userprio -allusers")

    # with SCHEDD_HOST from the settings, no -name is needed: -spool, condor_q, condor_transfer_data by owner
    site.client_ok("cp -r job job2 && cd job2 && rm -f out.txt && echo second > in.txt && condor_submit -spool job.sub")
    site.app.wait("her second job to complete", lambda: site.client_ok("condor_q -af JobStatus").split() == ["4", "4"],
                  timeout=120)
    site.client_ok("condor_transfer_data alice")        # each job's output goes back to its own directory
    assert "second" in site.client_ok("cat job2/out.txt") and "input-from-alice" in site.client_ok("cat job/out.txt")

    # the appliance's own local submitter is unchanged
    local = site.app.submit("executable = /bin/echo\narguments = local\noutput = out\nqueue")
    site.app.wait("the local job", lambda: site.app.sh(f"condor_history {local} -af JobStatus").strip() == "4",
                  timeout=120)

    # what would not work from her machine is refused at submit, saying why
    rc, out = site.client(f"cd job && condor_submit -name {site.schedd} job.sub")
    assert rc != 0 and "submit with -spool" in out, out
    rc, out = site.client(f"cd job && printf 'universe = local\\nexecutable = /bin/true\\nqueue\\n' > local.sub && "
                          f"condor_submit -remote {site.schedd} local.sub")
    assert rc != 0 and "run on the pool's workers" in out, out


def wheel_env(wheel: Path, user: dict, home: Path) -> dict[str, str]:
    """The environment of Python with the PyPI wheel: only the settings the user was given."""
    tokens = home / "tokens.d"
    tokens.mkdir(mode=0o700, exist_ok=True)
    (tokens / "appliance").write_text(user["token"] + "\n")
    (tokens / "appliance").chmod(0o600)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONPATH": str(wheel), "CONDOR_CONFIG": "ONLY_ENV",
            **user["client"]["env"], "_CONDOR_SEC_TOKEN_DIRECTORY": str(tokens)}


def wheel_python(wheel: Path, user: dict, home: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], env=wheel_env(wheel, user, home), capture_output=True, text=True,
                          timeout=240)


# the schedd at an address the client already knew (no collector involved), queried once, and
# once more, over the same security session, for each line read from stdin
SCHEDD_QUERY = ["-c", "import sys, classad2, htcondor2\n"
                "ad = classad2.ClassAd({'MyType': 'Scheduler', 'MyAddress': sys.argv[1], 'CondorVersion': sys.argv[2]})\n"
                "schedd = htcondor2.Schedd(ad)\n"
                "print(len(schedd.query('true', ['ClusterId'])), flush=True)\n"
                "for _ in sys.stdin:\n"
                "    print(len(schedd.query('true', ['ClusterId'])), flush=True)\n"]


def test_python_wheel_from_the_host(site, alice, wheel, tmp_path, capsys):
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.sh").write_text(JOB)
    (job / "job.sh").chmod(0o755)
    (job / "in.txt").write_text("input-from-the-host\n")
    proc = wheel_python(wheel, alice, tmp_path, str(HERE / "wheel_client.py"), str(job))
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{site.app.diagnostics()}"
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "25." in got["version"], got["version"]
    assert (got["owner"], got["user"]) == ("alice", "alice@appliance")
    assert "input-from-the-host" in got["out"] and re.search(r'^WorkerId = "local-', got["out"], re.M), got
    with capsys.disabled():
        print(f"\nremote submit (htcondor2 {got['version'].split()[1]}, from the host) to running: "
              f"{got['running_after']:.1f} s")


def test_users_survive_a_replaced_container_and_removal_revokes_their_tokens(site, alice, wheel, tmp_path):
    bob = json.loads(site.app.sh("cloud_admin --add-user bob --json -C test"))
    assert bob["uid"] != alice["uid"]
    # bad names are refused, saying what is wrong
    for name, why in (("slot7", "reserved for the workers' job accounts"), ("root", "reserved"),
                      ("Alice", "must start with a lower-case letter"), ("a.b", "may hold only"),
                      ("worker-x", "the workers' identities")):
        rc, out = site.app.rc(f"cloud_admin --add-user {shlex.quote(name)} -C test")
        assert rc == 1 and why in out, (name, out)

    app = site.replace_appliance()
    assert "recreated the accounts of 2 lab user(s): alice, bob" in app.logs()
    assert app.sh("id -u alice").strip() == str(alice["uid"]) and app.sh("id -u bob").strip() == str(bob["uid"])
    listed = {u["user"]: u for u in json.loads(app.sh("cloud_admin --list-users --json"))["users"]}
    assert set(listed) == {"alice", "bob"} and all(u["account"] == u["key"] == "ok" for u in listed.values())
    # her token still works with the new container
    assert "Total for alice" in site.client_ok(f"condor_q -name {site.schedd} -totals")

    address, version = site.client_ok("condor_status -schedd -af MyAddress CondorVersion").strip().split(" ", 1)
    # a program of hers that is connected already: it has a security session with the schedd
    session = subprocess.Popen([sys.executable, *SCHEDD_QUERY, address, version], env=wheel_env(wheel, alice, tmp_path),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert session.stdout.readline().strip().isdigit()

        out = app.sh("cloud_admin --remove-user alice -C test")
        assert out.startswith("alice: removed; tokens for alice@appliance no longer work"), out
        # refused by the collector, by the schedd even at an address she already knew...
        rc, out = site.client("condor_status -schedd")
        assert rc != 0 and "Failed to authenticate using IDTOKENS" in out, out
        proc = wheel_python(wheel, alice, tmp_path, *SCHEDD_QUERY, address, version)
        assert proc.returncode != 0 and "Failed to authenticate" in proc.stderr, (proc.stdout, proc.stderr)
        # ...and over the session opened before the removal
        out, err = session.communicate("again\n", timeout=60)
        assert session.returncode != 0 and not out.strip(), (out, err)
    finally:
        session.kill()
    assert app.rc("id alice")[0] != 0
    assert [u["user"] for u in json.loads(app.sh("cloud_admin --list-users --json"))["users"]] == ["bob"]
    rc, out = app.rc("cloud_admin --remove-user alice -C test")
    assert rc == 1 and "no user named alice (users: bob)" in out, out
    # bob's token, made the same way, still works
    site.client_ok("useradd --create-home bob", user="root")
    site.client_ok("mkdir -p ~/.condor/tokens.d && chmod 700 ~/.condor/tokens.d && "
                   f"printf '%s\\n' {shlex.quote(bob['token'])} > ~/.condor/tokens.d/appliance && "
                   "chmod 600 ~/.condor/tokens.d/appliance && "
                   f"printf '%s\\n' {' '.join(shlex.quote(l) for l in bob['client']['config'])} > ~/.condor/user_config",
                   user="bob")
    assert "Total for bob" in site.client_ok("condor_q -totals", user="bob")
