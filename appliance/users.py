"""Lab users: people who submit jobs from their own machines, each with an account and a token.

`cloud_admin --add-user alice` makes, inside the appliance:
- the account `alice` (uid from USER_UIDS, apart from the image's accounts and from the
  workers' slot accounts at 200000 and above). The schedd runs her jobs' shadows as
  her, and HTCondor's fair share counts her as `alice@<pool>`;
- her signing key `user-alice` in the pool's SEC_PASSWORD_DIRECTORY, and a token for
  `alice@<pool>` signed with it, limited to READ and WRITE: she may read the pool and
  submit and manage her own jobs, never advertise, negotiate, configure or administer.
  Deleting the key (`--remove-user`) makes every token signed with it worthless at once.

The list of users (name, uid, when added) is kept in the state volume (USERS_FILE) and
their accounts are recreated from it at every start (bootstrap calls restore()), so a
replaced container keeps its users with the same uids, and their spooled files stay theirs.
"""
from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .config import Config, PoolConfig
from .keyfiles import new_signing_key, write_atomic
from .ops import OpError, shown

STATE = os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
KEYS_DIR = os.environ.get("APPLIANCE_KEYS_DIR", f"{STATE}/keys")     # the pool's SEC_PASSWORD_DIRECTORY

# Lab users' uids and gids: above the image's accounts and Debian's range for people
# (1000-59999), below the workers' slot accounts (200000-299999, appliance/worker_role.py).
USER_UIDS = (100000, 199999)
GECOS = "appliance lab user"
# what a submitter needs: READ (condor_q, condor_status) and WRITE (submit, spool, retrieve,
# remove her own jobs). Never ADVERTISE_*, DAEMON, NEGOTIATOR, ADMINISTRATOR or CONFIG.
TOKEN_AUTHZ = ("READ", "WRITE")

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
NAME_MAX = 32        # useradd's limit
# identities the pool gives rights to by name (50-appliance.conf, workerconf.py), and the image's own
RESERVED = {
    "admin": "the identity the appliance commands its workers with",
    "root": "an account of the appliance itself", "condor": "an account of the appliance itself",
    "submit": "the appliance's own local submit account", "appliance": "an account of the appliance itself",
    "nobody": "an account of the appliance itself",
}
RESERVED_PREFIXES = {
    "slot": "names starting with 'slot' are reserved for the workers' job accounts",
    "worker-": "names starting with 'worker-' are the workers' identities",
    "schedd-": "names starting with 'schedd-' are remote schedds' identities (cloud_admin --allow-schedd)",
    "condor": "names starting with 'condor' are HTCondor's own identities (condor, condor_pool)",
    "user-": "names starting with 'user-' would be confused with signing keys",
}


class UserError(OpError):
    """Bad input about a user: exit 1 / HTTP 4xx, with what was wrong."""


def check_name(name: Any) -> str:
    """A lab user's name, or UserError saying exactly what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise UserError("a user name is required")
    what = repr(name[:80])
    if len(name) > NAME_MAX:
        raise UserError(f"user name {what} is {len(name)} characters long: at most {NAME_MAX}")
    if not name[0].islower() or not name[0].isascii():
        raise UserError(f"user name {what} must start with a lower-case letter (a-z)")
    if not NAME_RE.match(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.islower() or c.isdigit() or c in "-_"))})
        raise UserError(f"user name {what} may hold only lower-case letters, digits, '-' and '_'; "
                        f"it has {' '.join(repr(c) for c in bad)}")
    if name in RESERVED:
        raise UserError(f"user name {what} is reserved: {RESERVED[name]}")
    for prefix, why in RESERVED_PREFIXES.items():
        if name.startswith(prefix):
            raise UserError(f"user name {what} is reserved: {why}")
    return name


def identity(name: str, pool: str) -> str:
    return f"{name}@{pool}"


def key_name(name: str) -> str:
    return f"user-{name}"


def schedd_name(pool: PoolConfig) -> str | None:
    """The schedd's name when pool.condor_host is set: <pool>@<public host>. It holds an '@', so
    clients use it as it is (`condor_submit -remote`, `condor_q -name`) instead of trying to
    resolve it as a host name, and it says which appliance it is. None with 'auto'."""
    address = pool.public_address
    return f"{pool.name}@{address[0]}" if address else None


def client_settings(cfg: Config) -> dict[str, Any]:
    """What a submitting machine needs, besides its token: three condor_config lines."""
    address = cfg.pool.public_address
    if address:
        host, port = address
        settings = {"CONDOR_HOST": f"{host}:{port}", "SCHEDD_HOST": schedd_name(cfg.pool)}
        warning = None
    else:
        host = socket.gethostname()
        settings = {"CONDOR_HOST": f"{host}:9618", "SCHEDD_HOST": host}
        warning = ("pool.condor_host is auto: HTCondor advertises the container's own address, which only "
                   "clients on its Docker network can reach. Set pool.condor_host to the address clients use "
                   "(host or host:port) and restart the appliance; see docs/remote-submission.md")
    settings["SEC_CLIENT_AUTHENTICATION_METHODS"] = "IDTOKENS"
    return {"config": [f"{k} = {v}" for k, v in settings.items()],
            "env": {f"_CONDOR_{k}": v for k, v in settings.items()},
            "token_file": f"~/.condor/tokens.d/{cfg.pool.name}",
            "warning": warning}


# ------------------------------------------------------------------ the list, on the state volume

@dataclass(frozen=True)
class User:
    name: str
    uid: int
    added: float


class Registry:
    """users.json on the state volume: who the lab users are and their uids. A uid is never
    given twice, even after a removal: files a removed user left behind never become
    another user's."""

    def __init__(self, state: str | None = None):
        self.state = state or STATE
        self.path = os.path.join(self.state, "users.json")
        self.conf_path = os.path.join(self.state, "users.conf")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One change at a time (two cloud_admin runs at once)."""
        fd = os.open(os.path.join(self.state, "users.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {"next_uid": USER_UIDS[0], "users": {}}
        except (OSError, ValueError) as err:
            raise OSError(f"cannot read {self.path}: {err}") from None
        return data if isinstance(data, dict) and isinstance(data.get("users"), dict) else \
            {"next_uid": USER_UIDS[0], "users": {}}

    def _write(self, data: dict) -> None:
        # group appliance: the web app may read it
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n", 0o640, group="appliance", sync=True)

    def users(self) -> list[User]:
        data = self._read()
        out = []
        for name, u in sorted(data["users"].items()):
            if isinstance(u, dict) and isinstance(u.get("uid"), int):
                out.append(User(name, u["uid"], float(u.get("added", 0))))
        return out

    def get(self, name: str) -> User | None:
        return next((u for u in self.users() if u.name == name), None)

    def revoked(self) -> list[str]:
        return sorted(n for n in self._read().get("revoked", []) if isinstance(n, str))

    def add(self, name: str, taken: set[int], now: float | None = None) -> User:
        """Record a new user with the next free uid (not in `taken`, the accounts that exist)."""
        data = self._read()
        used = taken | {u["uid"] for u in data["users"].values() if isinstance(u, dict)}
        uid = max(int(data.get("next_uid", USER_UIDS[0])), USER_UIDS[0])
        while uid in used:
            uid += 1
        if uid > USER_UIDS[1]:
            raise UserError(f"no uid left for lab users ({USER_UIDS[0]}-{USER_UIDS[1]} are all given)")
        user = User(name, uid, time.time() if now is None else now)
        data["users"][name] = {"uid": uid, "added": user.added}
        data["next_uid"] = uid + 1
        data["revoked"] = [n for n in data.get("revoked", []) if n != name]    # a new user of an old name
        self._write(data)
        return user

    def remove(self, name: str) -> None:
        data = self._read()
        data["users"].pop(name, None)
        data["revoked"] = sorted(set(data.get("revoked", [])) | {name})
        self._write(data)

    def write_condor_conf(self) -> None:
        """users.conf, which 55-remote.conf includes: the lab users, whom the schedd holds to
        its submit requirements (spooled jobs, on workers only), and the removed ones, denied."""
        names = ", ".join(u.name for u in self.users())
        text = ("# Written by cloud_admin --add-user/--remove-user and at every start (appliance/users.py).\n"
                f"LAB_USERS = {names}\n")
        if revoked := self.revoked():
            ids = " ".join(f"{n}@$(UID_DOMAIN)" for n in revoked)
            text += ("# removed lab users: their keys are deleted; this also refuses sessions they opened before\n"
                     f"DENY_READ = $(DENY_READ) {ids}\nDENY_WRITE = $(DENY_WRITE) {ids}\n")
        tmp = f"{self.conf_path}.tmp-{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.conf_path)


# ------------------------------------------------------------------ what is done on the machine

class System:
    """Accounts, keys and HTCondor, for real. The unit tests swap in a recording fake."""

    def __init__(self, pool: str, keys_dir: str | None = None):
        self.pool = pool
        self.keys_dir = keys_dir or KEYS_DIR

    # accounts
    def account_uid(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def lab_accounts(self) -> dict[str, int]:
        """Accounts made by add_account (their uid in USER_UIDS and our GECOS)."""
        return {p.pw_name: p.pw_uid for p in pwd.getpwall()
                if USER_UIDS[0] <= p.pw_uid <= USER_UIDS[1] and p.pw_gecos == GECOS}

    def taken_uids(self) -> set[int]:
        return {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}

    def add_account(self, name: str, uid: int) -> None:
        """The account and its own group, both `uid`: no home and no login shell (jobs come
        in through the schedd, which runs their shadows as this account)."""
        low, high = USER_UIDS
        try:
            grp.getgrnam(name)
        except KeyError:
            _run(["groupadd", "-K", f"GID_MIN={low}", "-K", f"GID_MAX={high}", "-g", str(uid), name])
        _run(["useradd", "-K", f"UID_MIN={low}", "-K", f"UID_MAX={high}", "-u", str(uid), "-g", name,
              "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", "-c", GECOS, name])

    def remove_account(self, name: str) -> None:
        # -f: her shadows may not have exited yet; her uid is never given again
        _run(["userdel", "-f", name], ok=(0, 6))          # 6: no such user
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            _run(["groupdel", name], ok=(0, 6))

    # keys and tokens
    def key_path(self, name: str) -> str:
        return os.path.join(self.keys_dir, key_name(name))

    def has_key(self, name: str) -> bool:
        return os.path.exists(self.key_path(name))

    def make_key(self, name: str) -> bool:
        """The user's own signing key, if she has none yet. True if it was made now."""
        return new_signing_key(self.key_path(name), keep_existing=True) is not None

    def drop_key(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.key_path(name))

    def mint_token(self, name: str) -> str:
        from .condor import token_create
        return token_create(identity(name, self.pool), key_name(name), self.keys_dir, authz=TOKEN_AUTHZ)

    # the pool's daemons
    def refresh_daemons(self) -> str | None:
        """Make the daemons users talk to offer the new key (condor.reconfig_daemons).
        Returns what failed, or None."""
        from .condor import reconfig_daemons
        return reconfig_daemons()

    def remove_jobs(self, name: str) -> int:
        """Remove the user's jobs from the queue (running ones are killed). Returns how many."""
        import classad
        import htcondor
        try:
            result = htcondor.Schedd().act(htcondor.JobAction.Remove, f"Owner == {classad.quote(name)}")
        except Exception as err:        # the bindings raise plain RuntimeError/HTCondorIOError
            if "no jobs" in str(err).lower() or "matching constraint" in str(err).lower():
                return 0
            raise OSError(f"cannot remove the jobs of {name}: {err}") from None
        return int(result.get("TotalSuccess", 0))


def _run(cmd: list[str], ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode not in ok:
        raise OSError(f"{cmd[0]} {cmd[-1]} failed: {(proc.stderr or proc.stdout).strip()[:200]}")


# ------------------------------------------------------------------ what operators do

class Users:
    def __init__(self, cfg: Config, registry: Registry | None = None, system: System | None = None):
        self.cfg = cfg
        self.pool = cfg.pool.name
        self.registry = registry or Registry()
        self.system = system or System(self.pool)

    def add(self, name: Any) -> dict[str, Any]:
        """Add a lab user (or, for one that exists, mint another token: earlier ones keep working).
        Returns the user, her token and the client settings."""
        name = check_name(name)
        with self.registry.locked():
            user = self.registry.get(name)
            created = user is None
            if created:
                if name in self.system.lab_accounts():      # left by a removal that could not finish
                    self.system.remove_account(name)
                if self.system.account_uid(name) is not None:
                    raise UserError(f"user name {name} is taken: an account of the appliance has that name")
                user = self.registry.add(name, self.system.taken_uids())
            if self.system.account_uid(name) is None:
                self.system.add_account(name, user.uid)
            made_key = self.system.make_key(name)
            token = self.system.mint_token(name)
            if created:
                self.registry.write_condor_conf()
        problem = self.system.refresh_daemons() if made_key or created else None
        return {"user": name, "identity": identity(name, self.pool), "uid": user.uid, "created": created,
                "authorizations": list(TOKEN_AUTHZ), "token": token, "client": client_settings(self.cfg),
                "daemons_problem": problem}

    def remove(self, name: Any) -> dict[str, Any]:
        """Revoke every token of the user (her key goes first), remove her jobs and her account."""
        if not isinstance(name, str) or not name:
            raise UserError("a user name is required")
        with self.registry.locked():
            user = self.registry.get(name)
            if user is None:
                known = ", ".join(u.name for u in self.registry.users()) or "none"
                raise UserError(f"no user named {shown(name)} (users: {known})", 404)
            self.system.drop_key(name)           # from now on her tokens are refused
            self.registry.remove(name)
            self.registry.write_condor_conf()
            problem = None
            try:
                jobs = self.system.remove_jobs(name)
            except OSError as err:               # the schedd is down: her account goes anyway
                jobs, problem = 0, str(err)
            self.system.remove_account(name)
        self.system.refresh_daemons()            # the schedd's list of lab users
        return {"user": name, "identity": identity(name, self.pool), "removed_jobs": jobs, "jobs_problem": problem}

    def list(self) -> list[dict[str, Any]]:
        out = []
        for u in self.registry.users():
            uid = self.system.account_uid(u.name)
            out.append({"user": u.name, "identity": identity(u.name, self.pool), "uid": u.uid,
                        "added": u.added, "account": "ok" if uid == u.uid else ("missing" if uid is None else
                                                                                 f"uid {uid}, expected {u.uid}"),
                        "key": "ok" if self.system.has_key(u.name) else "missing (her tokens are refused)"})
        return out


def restore(registry: Registry | None = None, system: System | None = None, log=print) -> list[str]:
    """At every start (bootstrap): recreate the accounts of the users in the list, with their
    uids, and remove lab accounts no longer in it. Returns the names recreated. Never raises:
    the pool starts even if an account cannot be made (the log says why)."""
    registry = registry or Registry()
    system = system or System("")
    try:
        users = registry.users()
        registry.write_condor_conf()
    except OSError as err:
        log(f"appliance: lab users: {err}", file=sys.stderr)
        return []
    made = []
    for u in users:
        if not system.has_key(u.name):
            log(f"appliance: lab user {u.name}: her signing key is missing, so her tokens are refused; "
                f"`cloud_admin --add-user {u.name} -C WHY` makes a new key and token", file=sys.stderr)
        uid = system.account_uid(u.name)
        if uid == u.uid:
            continue
        if uid is not None:
            log(f"appliance: lab user {u.name}: the name belongs to another account (uid {uid}); "
                f"her jobs cannot run", file=sys.stderr)
            continue
        try:
            system.add_account(u.name, u.uid)
            made.append(u.name)
        except OSError as err:
            log(f"appliance: lab user {u.name}: {err}", file=sys.stderr)
    listed = {u.name for u in users}
    for name in sorted(set(system.lab_accounts()) - listed):
        with contextlib.suppress(OSError):
            system.remove_account(name)
    if made:
        log(f"appliance: recreated the accounts of {len(made)} lab user(s): {', '.join(made)}")
    return made
