"""What the upgrade tests need besides conftest: the previous release's image, a starter
for any image (conftest's start_appliance runs only the current one), and probes of the
state volume (schema version, tables, secrets) made inside the container.

The previous release is built from its commit, not its tag: a fresh clone has the
history but tags may not travel. Docker's layer cache makes the build cheap after the
first time (and its first layer, the Debian packages, is the current image's too).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import uuid

import docker
import pytest
from testcontainers.core.container import DockerContainer

from .conftest import PREFIX, REPO, Appliance, remove_labelled

OLD_COMMIT = "7035a17"           # v0.1.0: its store has no schema version (user_version 0)
OLD_IMAGE = "appliance:v0.1.0"
DB = "/var/lib/appliance/state/appliance.db"


def build_old_image() -> str:
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.fail(f"commit {OLD_COMMIT} (release v0.1.0) is not in this clone; the upgrade test builds that "
                    "release from it: use a full clone (git fetch --unshallow)")
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", OLD_COMMIT], stdout=subprocess.PIPE)
    try:
        subprocess.run(["docker", "build", "-q", "-t", OLD_IMAGE, "-"], stdin=archive.stdout, check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        archive.stdout.close()
        assert archive.wait() == 0, f"git archive {OLD_COMMIT} failed"
    return OLD_IMAGE


class Releases:
    """Starts appliances of any image, as conftest's start_appliance does, and removes them after the test."""

    def __init__(self, client, tmp_path):
        self.client, self.tmp_path = client, tmp_path
        self.started: list[DockerContainer] = []

    def start(self, image: str, config: str, name: str | None = None, network: str | None = None,
              volumes: dict[str, str] | None = None, docker_socket: bool = False, wait: bool = True) -> Appliance:
        name = name or f"{PREFIX}-{uuid.uuid4().hex[:8]}"
        cfg = self.tmp_path / f"{name}-{uuid.uuid4().hex[:4]}.yaml"
        cfg.write_text(config)
        c = DockerContainer(image).with_name(name).with_volume_mapping(str(cfg), "/etc/appliance/appliance.yaml", "ro")
        if volumes:
            c = c.with_volume_mapping(volumes["state"], "/var/lib/appliance", "rw")
            c = c.with_volume_mapping(volumes["spool"], "/var/lib/condor/spool", "rw")
            c = c.with_volume_mapping(volumes["home"], "/home", "rw")
        if docker_socket:
            c = c.with_volume_mapping("/var/run/docker.sock", "/var/run/docker.sock", "rw")
        kwargs = {"hostname": name}
        if network:
            kwargs["network"] = network
        c = c.with_kwargs(**kwargs)
        c.start()
        self.started.append(c)
        app = Appliance(c)
        if wait:
            app.wait_ready()
        return app

    def stop_and_remove(self, app: Appliance, timeout: float = 10) -> tuple[int, float]:
        """docker stop (the default 10 s grace), then docker rm keeping the volumes; (exit code, seconds)."""
        import time
        started = time.monotonic()
        subprocess.run(["docker", "stop", "-t", str(int(timeout)), app.name], check=True, capture_output=True)
        took = time.monotonic() - started
        app.c.reload()
        code = app.c.attrs["State"]["ExitCode"]
        app.c.remove(v=False)
        return code, took

    def cleanup(self) -> None:
        pools = set()
        for c in self.started:
            wrapped = c.get_wrapped_container()
            try:
                wrapped.reload()
                if wrapped.status == "running":
                    rc, out = wrapped.exec_run(["cat", "/var/lib/appliance/pool-id"])
                    if rc == 0:
                        pools.add(out.decode().strip())
                wrapped.remove(force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError:
                pass
        for pool in pools:
            remove_labelled(self.client, pool)


def sql(app: Appliance, query: str, *, write: bool = False) -> list:
    """Run one statement on the state DB inside the container, with python3's sqlite3 (no sqlite3 CLI there)."""
    script = ("import json, sqlite3, sys\n"
              f"db = sqlite3.connect({DB!r}, isolation_level=None)\n"
              "rows = db.execute(sys.argv[1]).fetchall()\n"
              + ("db.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n" if write else "")
              + "print(json.dumps(rows))\n")
    out = app.sh(f"python3 -c {shlex.quote(script)} {shlex.quote(query)}")
    return json.loads(out.strip().splitlines()[-1])


def user_version(app: Appliance) -> int:
    return sql(app, "PRAGMA user_version")[0][0]


def schema_names(app: Appliance) -> set[str]:
    return {r[0] for r in sql(app, "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def secrets_digest(app: Appliance) -> str:
    """Hashes of what the state volume keeps besides the DB: pool id, admin password, pool and worker keys."""
    return app.sh("cd /var/lib/appliance && sha256sum pool-id admin-password keys/* worker-keys/* | sort -k2")


def api_status(app: Appliance, password: str, path: str = "/api/clouds") -> int:
    """The HTTP status of an API call with HTTP Basic as admin, made inside the container with
    python3 (no curl there); over HTTPS (its own certificate, not verified) or else plain HTTP,
    whichever the release serves."""
    script = ("import base64, ssl, sys, urllib.error, urllib.request\n"
              "auth = 'Basic ' + base64.b64encode(('admin:' + sys.argv[2]).encode()).decode()\n"
              "for scheme in ('https', 'http'):\n"
              "    req = urllib.request.Request(scheme + '://127.0.0.1:8080' + sys.argv[1], headers={'Authorization': auth})\n"
              "    try:\n"
              "        print(urllib.request.urlopen(req, timeout=10, context=ssl._create_unverified_context()).status)\n"
              "        break\n"
              "    except urllib.error.HTTPError as e:\n"
              "        print(e.code)\n"
              "        break\n"
              "    except OSError as e:\n"
              "        print(scheme, e, file=sys.stderr)\n")
    out = app.sh(f"python3 -c {shlex.quote(script)} {shlex.quote(path)} {shlex.quote(password)}").split()
    assert out and out[-1].isdigit(), out
    return int(out[-1])


def scheduler_state(app: Appliance) -> str:
    out = app.sh("supervisorctl -c /etc/appliance/supervisord.conf status scheduler", check=False)
    return out.split()[1] if len(out.split()) > 1 else out.strip()
