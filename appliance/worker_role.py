"""The worker role of the image: `docker run appliance worker`.

Runs only a condor_master + condor_startd that joins the central manager. Its
files (condor config, token, signing key) come from a bundle the appliance
delivers, first found of:

  /run/secrets/appliance-worker      a Docker secret (the swarm cloud)
  /etc/appliance/worker/bundle.json  copied into the container before it starts (the docker cloud)
  the environment                    by hand: APPLIANCE_CONDOR_HOST, APPLIANCE_WORKER_ID,
                                     APPLIANCE_WORKER_TOKEN, APPLIANCE_CLOUD_NAME [, APPLIANCE_CLOUD_TYPE,
                                     APPLIANCE_POOL, APPLIANCE_WORKER_CPUS, APPLIANCE_WORKER_MEMORY]

When the master exits (drained by the appliance, or its own no-claim backstop
fired) the container exits with it: a worker whose scheduler is gone does not
live for ever.
"""
from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
import sys

from .config import CloudConfig, WorkerSize
from .workerconf import (
    CONDOR_DIRS,
    SLOT_ACCOUNTS_FILE,
    WorkerSpec,
    config_value,
    slot_accounts_config,
    slot_users,
    worker_files,
)

HOME = "/var/lib/condor-worker"
SOURCES = ("/run/secrets/appliance-worker", "/etc/appliance/worker/bundle.json")
SECRET_ENV = ("APPLIANCE_WORKER_TOKEN", "APPLIANCE_WORKER_KEY")


def bundle(worker_id: str, files) -> bytes:
    """What the appliance hands a worker: its files, as JSON (content base64)."""
    return json.dumps({"worker_id": worker_id, "home": HOME,
                       "files": {rel: [base64.b64encode(content).decode(), mode]
                                 for rel, (content, mode) in files.items()}}).encode()


def from_environment(env) -> dict:
    missing = [k for k in ("APPLIANCE_CONDOR_HOST", "APPLIANCE_WORKER_ID", "APPLIANCE_WORKER_TOKEN")
               if not env.get(k)]
    if missing:
        raise SystemExit(f"worker: no bundle at {' or '.join(SOURCES)} and {', '.join(missing)} not set")
    cloud = CloudConfig(name=env.get("APPLIANCE_CLOUD_NAME", "manual"), type=env.get("APPLIANCE_CLOUD_TYPE", "docker"),
                        worker=WorkerSize(cpus=int(env.get("APPLIANCE_WORKER_CPUS", os.cpu_count() or 1)),
                                          memory=int(env.get("APPLIANCE_WORKER_MEMORY", "1024"))))
    spec = WorkerSpec(worker_id=env["APPLIANCE_WORKER_ID"], cloud=cloud, pool=env.get("APPLIANCE_POOL", "appliance"),
                      condor_host=env["APPLIANCE_CONDOR_HOST"], token=env["APPLIANCE_WORKER_TOKEN"],
                      key=env.get("APPLIANCE_WORKER_KEY", os.urandom(32).hex()).encode())
    return json.loads(bundle(spec.worker_id, worker_files(spec, HOME)))


def load() -> dict:
    for path in SOURCES:
        if os.path.exists(path):
            with open(path, "rb") as f:
                return json.loads(f.read())
    return from_environment(os.environ)


# Slot accounts' uids and gids come from a range of their own, far above the ids of
# the image's and the host's system groups: a job must never share the group of a
# file the host handed in, such as the Docker socket's (often a gid near 999).
SLOT_ID_RANGE = (200000, 299999)
DOCKER_SOCKET = "/var/run/docker.sock"


def create_accounts(names) -> None:
    """The worker's slot accounts (its jobs run as these): system accounts with a
    group of their own, no home and no login shell. Existing ones are kept."""
    low, high = SLOT_ID_RANGE
    for name in names:
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        proc = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                               "--shell", "/usr/sbin/nologin", "-K", f"SYS_UID_MIN={low}", "-K", f"SYS_UID_MAX={high}",
                               "-K", f"SYS_GID_MIN={low}", "-K", f"SYS_GID_MAX={high}", name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise OSError(f"useradd {name} failed: {(proc.stderr or proc.stdout).strip()[:200]}")
        try:
            socket_gid = os.stat(DOCKER_SOCKET).st_gid
        except OSError:
            continue
        if pwd.getpwnam(name).pw_gid == socket_gid:       # cannot happen with the range above; never allow it
            subprocess.run(["userdel", name], capture_output=True)
            raise OSError(f"account {name} got gid {socket_gid}, the Docker socket's group")


def install(data: dict) -> str:
    home = data.get("home", HOME)
    condor = pwd.getpwnam("condor")
    for sub, mode, owned in (("", 0o755, False), *((d, m, True) for d, m in CONDOR_DIRS.items()),
                             ("keys", 0o700, False), ("tokens.d", 0o700, False)):
        path = os.path.join(home, sub)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        if owned:
            os.chown(path, condor.pw_uid, condor.pw_gid)
    for rel, (content, mode) in data["files"].items():
        path = os.path.join(home, rel)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(content))
        os.chmod(path, mode)
    config = os.path.join(home, "condor_config")
    os.chown(config, 0, condor.pw_gid)          # root and the condor daemons read it; jobs do not
    with open(config, encoding="utf-8") as f:
        text = f.read()
    worker_id, cpus = config_value(text, "MASTER_NAME") or data.get("worker_id", ""), config_value(text, "NUM_CPUS")
    install_accounts(home, worker_id, int(cpus or 1), condor.pw_gid)
    return config


def install_accounts(home: str, worker_id: str, cpus: int, condor_gid: int) -> None:
    """The worker's slot accounts, and the config file naming them (see workerconf)."""
    path = os.path.join(home, SLOT_ACCOUNTS_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(slot_accounts_config(worker_id, cpus))
    os.chmod(path, 0o640)
    os.chown(path, 0, condor_gid)
    create_accounts(slot_users(worker_id, cpus))


def main(argv=None) -> int:
    data = load()
    config = install(data)
    for name in (*SECRET_ENV, "APPLIANCE_WORKER_BUNDLE"):
        os.environ.pop(name, None)           # never hand a secret down to condor or its jobs
    for path in SOURCES[1:]:                 # the copied bundle is no longer needed; secrets are read-only
        try:
            os.unlink(path)
        except OSError:
            pass
    print(f"worker {data.get('worker_id')}: starting condor_master", flush=True)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONDOR_CONFIG": config}
    os.execve("/usr/sbin/condor_master", ["condor_master", "-f"], env)
    return 1


if __name__ == "__main__":
    sys.exit(main())
