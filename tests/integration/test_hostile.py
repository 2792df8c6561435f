"""A hostile job is contained, on every cloud type.

On each cloud a second user, alice, runs a job that holds a secret (spooled with it, in its
sandbox, its process's environment and its output) and, before that, a short job that leaves
the secret in /tmp, /var/tmp and /dev/shm, in files only its own account may read. Then `submit` submits a hostile job, with condor_submit inside
the appliance like any job, which runs next to alice's (on the other local worker, or in the
other slot of the same worker) and tries some fifty ways out of its sandbox: its worker's token,
key and config, the appliance's keys, password and state, the Docker socket, the instance
metadata, alice's files and processes, and HTCondor commands (submit, drain, reconfigure,
advertise as a worker) with whatever credential it finds. It writes one line per attempt;
the test asserts each was refused and that nothing it tried took effect
(tests/integration/hostile_support.py has the job and the checks).

The ec2 worker is the boot script the appliance generated, run in a fresh debian:trixie-slim
container standing in for the instance (as in test_ec2_boot.py; it installs htcondor with apt).
The real metadata service cannot run here: a stand-in at 169.254.169.254 (on a link-local
Docker network of the test's own) serves the instance's user-data, which holds the worker's
token and key, as the real one would. root on the instance reads it (the control); the job
cannot, because the boot script blocked the address for everyone but root.
"""
from __future__ import annotations

import io
import tarfile
import time
import uuid

import docker
import pytest

from .conftest import IMAGE
from .ec2_support import boot_script_config, booting_worker, ec2_world, token_in, user_data, wait_for
from .hostile_support import alice_leftover, appliance_secrets, check, job_status, run_hostile, secrets_in, start_alice

pytestmark = pytest.mark.timeout(600)

REPORT: list[str] = []      # each cloud's attempts and timing, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter and capture and REPORT:
        with capture.global_and_fixture_disabled():     # shown even when the tests pass
            reporter.write_line("")
            for line in REPORT:
                reporter.write_line(line)


def contain(app, cloud: str, remote: bool, worker_secrets, boot=None, running_timeout: float = 120) -> None:
    """alice's jobs, then the hostile job next to them; every attempt refused, nothing changed."""
    started = time.monotonic()
    requirements = f'TARGET.CloudName == "{cloud}"'
    schedd = app.sh("condor_status -schedd -af Name").strip()
    cm = f"{app.name}:9618" if remote else "127.0.0.1:9618"
    web = f"{app.name}:8080" if remote else "127.0.0.1:8080"
    alice = start_alice(app, requirements)
    try:
        if boot:
            boot()
        app.wait("alice's job to run", lambda: job_status(app, alice.long_job) == 2, timeout=running_timeout)
        left = alice_leftover(app, alice, requirements)
        assert "-rw------- " in left, f"alice's short job did not leave its private files:\n{left}"
        cluster, outcome = run_hostile(app, cloud, cm, schedd, web, requirements)
        REPORT.append(outcome.summary())
        secrets = appliance_secrets(app) + worker_secrets()
        assert secrets, "no secret found to look for"
        check(outcome, app, alice, cluster, cloud, secrets)
        # alice's short job and the hostile job ran in the same slot, as the same account (so the
        # wrapper's clean-up is what kept its leftovers away), alice's long job in another one
        assert left.split("|")[3].split()[0] == outcome.info["account"].split()[0], (left, outcome.info)
    finally:
        app.sh(f"condor_rm {alice.long_job}", check=False)
    REPORT.append(f"  {cloud}: {len(outcome.refused)}/{len(outcome.attempts)} attempts refused; "
                  f"alice's jobs and the hostile job took {time.monotonic() - started:.0f}s")


def containers_of(client, app) -> list:
    return client.containers.list(filters={"label": f"appliance.pool={app.pool_id()}"})


def worker_container_secrets(client, app) -> list[str]:
    found = []
    for c in containers_of(client, app):
        rc, out = c.exec_run(["sh", "-c", "cat /var/lib/condor-worker/tokens.d/* /var/lib/condor-worker/keys/*"])
        found += secrets_in(out.decode(errors="replace"))
    return found


# ------------------------------------------------------------------ local: workers inside the appliance

LOCAL = """
scheduler: {interval: 1, idle_timeout: 20, boot_timeout: 120}
clouds:
  - {name: local, type: local, max_workers: 2, worker: {cpus: 1, memory: 1024}}
"""


def test_a_hostile_job_on_a_local_worker_is_contained(start_appliance, network):
    # with the Docker socket mounted, as compose runs it (its local cloud is the fallback)
    app = start_appliance(LOCAL, network=network, docker_socket=True)
    contain(app, "local", remote=False, worker_secrets=lambda: [])
    # the worker's files, as the installer left them
    modes = app.sh("cd /var/lib/appliance/workers/local && stat -c '%a %U %G %n' */condor_config */tokens.d "
                   "*/tokens.d/pool */keys */keys/* */log */execute */job-wrapper */slot-accounts.conf")
    for line in modes.splitlines():
        mode, owner, group, path = line.split()
        expected = {"condor_config": ("640", "root", "condor"), "tokens.d": ("700", "root", "root"),
                    "pool": ("600", "root", "root"), "keys": ("700", "root", "root"),
                    "log": ("700", "condor", "condor"), "execute": ("755", "condor", "condor"),
                    "job-wrapper": ("755", "root", "root"), "slot-accounts.conf": ("640", "root", "condor"),
                    }.get(path.rsplit("/", 1)[-1], ("600", "root", "root"))
        assert (mode, owner, group) == expected, line
    # when its workers end, their slot accounts go, with every process and leftover file of theirs
    accounts = app.sh("getent passwd | cut -d: -f1,3 | grep ^slot").split()
    assert len(accounts) == 2, accounts
    # ended by an operator's drain, not idle_timeout: the same drain and exit, without the 20 s idle
    # that is there for the checks above (the hostile job's worker must not drain before them)
    app.sh("cloud_admin -k -c local -a -C test")
    app.wait("both workers to retire", lambda: app.status("-m")["data"] == [], timeout=120)
    assert not app.sh("getent passwd | grep ^slot", check=False).strip()
    uids = [a.split(":")[1] for a in accounts]
    assert not set(app.sh("ps -eo uid=").split()) & set(uids), app.sh("ps -eo uid,args")
    assert not app.sh("find /tmp /var/tmp /dev/shm /run/lock -xdev -nouser", check=False).strip()


# ------------------------------------------------------------------ docker: sibling containers

DOCKER = f"""
scheduler: {{interval: 1, idle_timeout: 120, boot_timeout: 120}}
clouds:
  - {{name: docker, type: docker, image: {IMAGE}, max_workers: 1, worker: {{cpus: 2, memory: 1024}}}}
"""


def test_a_hostile_job_on_a_docker_worker_is_contained(start_appliance, network, client):
    app = start_appliance(DOCKER, network=network, docker_socket=True)
    contain(app, "docker", remote=True, worker_secrets=lambda: worker_container_secrets(client, app))


# ------------------------------------------------------------------ swarm: one service per worker

SWARM = f"""
scheduler: {{interval: 1, idle_timeout: 120, boot_timeout: 120}}
clouds:
  - name: swarm
    type: swarm
    image: {IMAGE}
    max_workers: 1
    worker: {{cpus: 2, memory: 1024}}
    constraints: ["node.role == manager"]
"""


def test_a_hostile_job_on_a_swarm_worker_is_contained(start_appliance, overlay, client):
    app = start_appliance(SWARM, network=overlay, docker_socket=True)
    try:
        contain(app, "swarm", remote=True, worker_secrets=lambda: worker_container_secrets(client, app))
    finally:
        for s in client.services.list(filters={"label": f"appliance.pool={app.pool_id()}"}):
            s.remove()


# ------------------------------------------------------------------ ec2: the boot script on a fresh Debian

EC2 = boot_script_config(idle_timeout=120, cpus=2, memory=2048)

# The stand-in metadata service: the instance's user-data, and IMDSv2 tokens, to whoever asks.
IMDS = r"""
import http.server
data = open("/srv/user-data", "rb").read()
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_PUT(self):
        self.answer(b"stand-in-imdsv2-token") if self.path == "/latest/api/token" else self.send_error(404)
    def do_GET(self):
        self.answer(data) if self.path == "/latest/user-data" else self.send_error(404)
http.server.ThreadingHTTPServer(("0.0.0.0", 80), H).serve_forever()
"""

ROOT_GET = ("exec 3<>/dev/tcp/169.254.169.254/80 && printf 'GET /latest/user-data HTTP/1.0\\r\\n\\r\\n' >&3 "
            "&& cat <&3")


def tar_of(name: str, text: str, mode: int = 0o600) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def imds_network(client):
    net = client.networks.create(f"apptest-imds-{uuid.uuid4().hex[:8]}", driver="bridge",
                                 ipam=docker.types.IPAMConfig(pool_configs=[
                                     docker.types.IPAMPool(subnet="169.254.169.0/24", gateway="169.254.169.1")]))
    yield net
    for c in client.containers.list(all=True, filters={"network": net.name}):
        c.remove(force=True, v=True)
    net.remove()


def test_a_hostile_job_on_an_ec2_worker_is_contained(client, image, tmp_path, imds_network):
    with ec2_world(client, image, tmp_path, EC2) as (app, ep, network):
        booted: dict = {}

        def boot():
            w = wait_for("an aws worker booting", lambda: booting_worker(app, "aws"), timeout=60, app=app)
            script = user_data(ep, w["resource_id"])
            # the stand-in metadata service, at the address the boot script blocks
            api = client.api
            imds = api.create_container(
                image, ["python3", "-c", IMDS], name=f"apptest-imds-{w['id']}",
                host_config=api.create_host_config(network_mode=imds_network.name),
                networking_config=api.create_networking_config(
                    {imds_network.name: api.create_endpoint_config(ipv4_address="169.254.169.254")}))
            imds = client.containers.get(imds["Id"])
            imds.put_archive("/srv", tar_of("user-data", script))
            imds.start()
            # the instance: root may change its own firewall (CAP_NET_ADMIN), as on EC2
            inst = client.containers.create("debian:trixie-slim", ["/root/user-data"], name=f"apptest-ec2-{w['id']}",
                                            hostname=w["id"], network=network, cap_add=["NET_ADMIN"], detach=True)
            imds_network.connect(inst)
            inst.put_archive("/root", tar_of("user-data", script, 0o700))
            inst.start()
            booted.update(worker=w, script=script, instance=inst, started=time.monotonic())

        def instance_secrets() -> list[str]:
            inst = booted["instance"]
            rc, out = inst.exec_run(["sh", "-c", "cat /var/lib/condor-worker/tokens.d/* /var/lib/condor-worker/keys/*"])
            return secrets_in(out.decode(errors="replace")) + [token_in(booted["script"])]

        contain(app, "aws", remote=True, worker_secrets=instance_secrets, boot=boot, running_timeout=360)
        inst = booted["instance"]

        def root(cmd: str) -> str:
            rc, out = inst.exec_run(["bash", "-c", cmd])
            return out.decode(errors="replace")

        # the control: the stand-in answers root on the instance, with the user-data holding the token
        answer = root(ROOT_GET)
        assert answer.startswith("HTTP/1.0 200") and booted["script"] in answer, answer[:200]
        # what the boot script wrote is root's (the config: root and the condor daemons')
        log = root("cat /var/log/appliance-worker.log")
        assert "the metadata service is blocked for everyone but root" in log, log[-2000:]
        modes = root("cd /var/lib/condor-worker && stat -c '%a %U %G %n' condor_config tokens.d tokens.d/pool keys "
                     "keys/* log spool execute job-wrapper /var/log/appliance-worker.log /root/user-data /root")
        expected = {"condor_config": "640 root condor", "tokens.d": "700 root root", "tokens.d/pool": "600 root root",
                    "keys": "700 root root", "log": "700 condor condor", "spool": "700 condor condor",
                    "execute": "755 condor condor", "job-wrapper": "755 root root",
                    "/var/log/appliance-worker.log": "600 root root", "/root/user-data": "700 root root",
                    "/root": "700 root root"}
        for line in modes.splitlines():
            mode_owner, path = line.rsplit(" ", 1)
            assert mode_owner == expected.get(path, "600 root root"), line
        # every file holding the token is root's alone: no other account can read it
        token = token_in(booted["script"])
        hits = root(f"grep -rlF -D skip '{token}' /etc /var /root /home /tmp /run /opt /srv /usr/local "
                    "2>/dev/null").split()
        assert "/var/lib/condor-worker/tokens.d/pool" in hits, hits
        for path in hits:
            assert not readable_by_others(root, path), f"{path} holds the token and another account can read it"
        REPORT.append(f"  aws: {len(hits)} file(s) on the instance hold the token, all root's only: "
                      f"{' '.join(hits)}; the metadata stand-in answered root and not the job")


def readable_by_others(root, path: str) -> bool:
    """Can an account other than root and the file's owner's group read it: the file readable by
    others and every directory above it searchable by others."""
    parts = path.strip("/").split("/")
    chain = ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    modes = root("stat -c '%a' " + " ".join(chain)).split()
    if len(modes) != len(chain):
        return True
    *dirs, leaf = [int(m, 8) for m in modes]
    return bool(leaf & 0o004) and all(d & 0o001 for d in dirs)
