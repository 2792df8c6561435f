"""First-start set-up of the central role, run by the entrypoint before supervisord.

Creates what must exist before any daemon starts, idempotently:
- the state directories on the /var/lib/appliance volume;
- the pool signing key (HTCondor's POOL key) and this install's pool id;
- the admin password, unless APPLIANCE_ADMIN_PASSWORD is given (the log says where
  to read it, never the password itself);
- HTCondor settings derived from appliance.yaml (trust domain, addresses).

Nothing secret is ever baked into the image: it is all made here, at first start.
"""
from __future__ import annotations

import grp
import os
import pwd
import secrets
import sys

from .config import ConfigError, load

STATE = os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
CONDOR_GENERATED = "/etc/condor/config.d/60-appliance-generated.conf"
SPOOL = "/var/lib/condor/spool"


def _ids(user: str, group: str | None = None) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group or user).gr_gid
    except KeyError:
        return -1, -1
    return uid, gid


def _dir(path: str, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def _secret_file(path: str, content: str, mode: int = 0o600, owner: tuple[int, int] = (0, 0)) -> bool:
    """Write a secret once; never overwrite. Returns True if it was created now."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        os.chmod(path, mode)
        os.chown(path, *owner)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chown(path, *owner)
    return True


def _advertised_address(cfg) -> list[str]:
    """With a swarm cloud, HTCondor must advertise the overlay network's address.

    A container on an overlay network has a second interface (docker_gwbridge);
    workers on other nodes can only dial back the overlay address, so it is
    chosen here, before the daemons start, instead of left to interface order.
    """
    swarm = [c for c in cfg.clouds if c.type == "swarm"]
    if not swarm:
        return []
    try:
        from .clouds import dockerutil
        from .clouds.swarm import overlay_placement
        network, ip = overlay_placement(dockerutil.client(swarm[0].opt("url")), swarm[0].opt("network"))
    except Exception as err:   # the cloud reports it too, with backoff; the pool still starts
        print(f"appliance: cloud {swarm[0].name}: {err}", file=sys.stderr, flush=True)
        return []
    print(f"appliance: advertising {ip}, the address on swarm network {network}", flush=True)
    return [f"# the address swarm workers reach us at (network {network})", f"NETWORK_INTERFACE = {ip}"]


def main() -> int:
    app_group = _ids("root", "appliance")
    condor = _ids("condor")
    _dir(STATE, 0o755)
    _dir(f"{STATE}/state", 0o2770, app_group)
    _dir(f"{STATE}/keys", 0o700)
    _dir(f"{STATE}/worker-keys", 0o700)
    _dir(f"{STATE}/workers", 0o755)
    _dir(SPOOL, 0o755, condor)
    _dir("/var/log/condor", 0o755, condor)

    _secret_file(f"{STATE}/pool-id", secrets.token_hex(6) + "\n", 0o644)
    if _secret_file(f"{STATE}/keys/POOL", secrets.token_hex(48)):
        print("appliance: generated the pool signing key", flush=True)

    if os.environ.get("APPLIANCE_ADMIN_PASSWORD"):
        print("appliance: admin password taken from APPLIANCE_ADMIN_PASSWORD", flush=True)
    else:
        password = secrets.token_urlsafe(18)
        if _secret_file(f"{STATE}/admin-password", password + "\n", 0o640, app_group):
            # logs are copied to places secrets must not go: say where it is, not what it is
            print(f"appliance: generated an admin password for the web page (user admin); read it with "
                  f"`docker exec <container> cat {STATE}/admin-password`", flush=True)

    try:
        cfg = load()
        pool, problem = cfg.pool.name, None
    except ConfigError as err:
        pool, problem = "appliance", str(err)
        print(f"appliance: configuration error (the scheduler will not start): {err}", file=sys.stderr, flush=True)

    lines = [
        "# Generated at start from appliance.yaml by appliance.bootstrap. Do not edit.",
        f"UID_DOMAIN = {pool}",
        f"TRUST_DOMAIN = {pool}",
        f"COLLECTOR_NAME = {pool}",
    ]
    if problem:
        lines.append(f"# configuration error: {problem}")
    else:
        lines += _advertised_address(cfg)
    with open(CONDOR_GENERATED, "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
