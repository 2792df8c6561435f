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
import sys

from .config import CloudConfig, WorkerSize
from .workerconf import WorkerSpec, worker_files

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


def install(data: dict) -> str:
    home = data.get("home", HOME)
    condor = pwd.getpwnam("condor")
    for sub, mode, owned in (("", 0o755, False), ("log", 0o755, True), ("spool", 0o755, True),
                             ("execute", 0o755, True), ("lock", 0o755, True), ("run", 0o755, True),
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
    return os.path.join(home, "condor_config")


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
