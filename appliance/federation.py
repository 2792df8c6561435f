"""Federation: remote schedds that flock jobs here, and pools this appliance flocks to.

Flocking in (`cloud_admin --allow-schedd NAME`):
  - a signing key of its own, `schedd-NAME`, in SEC_PASSWORD_DIRECTORY, and a token
    signed with it for the identity `schedd-NAME@<pool>`, limited to ADVERTISE_SCHEDD
    and READ: the remote schedd may put its schedd and submitter ads in our collector
    (so our negotiator matches its jobs), reach our workers through CCB, and read;
    it may never write (56-federation.conf denies WRITE to every `schedd-*` identity);
  - the identity is added to ALLOW_ADVERTISE_SCHEDD in a generated condor file
    (CONDOR_INCLUDE), which 56-federation.conf includes, and the daemons reconfigured;
  - the lines its admin adds on their side and the token are written to OUT_DIR/NAME/.
`--revoke-schedd NAME` deletes the key (the token can no longer authenticate), moves
the identity to a deny list (which also ends sessions it opened before), and withdraws
its ads from the collector. Nothing else about the pool's security changes.

Flocking out (`federation.flock_to:` in appliance.yaml): condor_lines() installs each
pool's token for the schedd and returns the FLOCK_TO settings bootstrap writes. Jobs
flock only when the scheduler sends them away (it sets their FlockTo).

The state is a small JSON file (STATE_FILE) of allowed and revoked names, next to the
generated condor file; secrets are files of mode 0600, never in the store or a log.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .keyfiles import new_signing_key, write_atomic

STATE = os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
KEYS_DIR = os.environ.get("APPLIANCE_KEYS_DIR", f"{STATE}/keys")
FED_DIR = os.environ.get("APPLIANCE_FEDERATION_DIR", f"{STATE}/federation")
TOKENS_DIR = os.environ.get("APPLIANCE_TOKENS_DIR", "/etc/condor/tokens.d")

SCHEDD_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
SCHEDD_AUTHZ = ("ADVERTISE_SCHEDD", "READ")     # all that flocking needs, nothing more
READER_AUTHZ = ("READ",)


def state_file(fed_dir: str | None = None) -> str:
    return os.path.join(fed_dir or FED_DIR, "schedds.json")


def condor_include(fed_dir: str | None = None) -> str:
    """The generated condor file (56-federation.conf includes it, if it exists)."""
    return os.path.join(fed_dir or FED_DIR, "condor.conf")


def schedd_identity(name: str, pool: str) -> str:
    return f"schedd-{name}@{pool}"


def schedd_key_name(name: str) -> str:
    return f"schedd-{name}"


def reader_key_name(target: str) -> str:
    return f"reader-{target}"


def read_token_path(name: str, fed_dir: str | None = None) -> str:
    """A token the remote schedd's pool gave us to read its queue (optional)."""
    return os.path.join(fed_dir or FED_DIR, "schedds", f"{name}.read-token")


def out_dir(name: str, fed_dir: str | None = None) -> str:
    """Where --allow-schedd writes the files for the remote side."""
    return os.path.join(fed_dir or FED_DIR, "out", name)


class FederationError(Exception):
    """An operator's request that cannot be done: the message says what and why."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not SCHEDD_NAME_RE.fullmatch(name):
        shown = name if isinstance(name, str) and name.isprintable() and len(name) <= 40 else repr(str(name)[:40])
        raise FederationError(f"a schedd's name must be 1-31 lower-case letters, digits and '-' "
                              f"(starting with a letter or digit), got {shown}")
    return name


# ------------------------------------------------------------------ state

@dataclass(frozen=True)
class Allowed:
    name: str
    since: float
    address: str          # the address its lines tell it to flock to
    read_token: bool      # we were given a token to read its queue


def load_state(fed_dir: str | None = None) -> dict:
    try:
        with open(state_file(fed_dir)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"allowed": {}, "revoked": {}}
    except (OSError, ValueError) as err:
        raise FederationError(f"cannot read {state_file(fed_dir)}: {err}") from None
    if not isinstance(data, dict):
        data = {}
    return {"allowed": dict(data.get("allowed") or {}), "revoked": dict(data.get("revoked") or {})}


def allowed_schedds(fed_dir: str | None = None) -> list[Allowed]:
    """The allowed remote schedds, by name. Never raises: an unreadable file allows none."""
    try:
        data = load_state(fed_dir)
    except FederationError:
        return []
    out = []
    for name, rec in sorted(data["allowed"].items()):
        if not isinstance(rec, dict) or not SCHEDD_NAME_RE.fullmatch(name):
            continue
        out.append(Allowed(name, float(rec.get("since", 0)), str(rec.get("address", "")),
                           bool(rec.get("read_token", False))))
    return out


def _save_state(data: dict, fed_dir: str | None = None) -> None:
    os.makedirs(fed_dir or FED_DIR, mode=0o755, exist_ok=True)
    write_atomic(state_file(fed_dir), json.dumps(data, indent=1, sort_keys=True) + "\n", 0o644)


def condor_file(allowed: Iterable[str], revoked: Iterable[str]) -> str:
    """The generated condor settings for the allowed and revoked remote schedds."""
    allowed, revoked = sorted(allowed), sorted(set(revoked) - set(allowed))
    lines = ["# Generated by cloud_admin --allow-schedd/--revoke-schedd (appliance/federation.py). Do not edit.",
             "# Included by /etc/condor/config.d/56-federation.conf."]
    if allowed:
        ids = " ".join(f"schedd-{n}@$(UID_DOMAIN)" for n in allowed)
        lines += ["# allowed remote schedds: each may advertise its schedd and submitter ads (and read)",
                  f"ALLOW_ADVERTISE_SCHEDD = $(ALLOW_ADVERTISE_SCHEDD) {ids}"]
    if revoked:
        ids = " ".join(f"schedd-{n}@$(UID_DOMAIN)" for n in revoked)
        lines += ["# revoked: their keys are deleted; this also refuses sessions they opened before",
                  f"DENY_READ = $(DENY_READ) {ids}",
                  f"DENY_ADVERTISE_SCHEDD = $(DENY_ADVERTISE_SCHEDD) {ids}"]
    return "\n".join(lines) + "\n"


def _write_condor_file(data: dict, fed_dir: str | None = None) -> None:
    write_atomic(condor_include(fed_dir), condor_file(data["allowed"], data["revoked"]), 0o644)


def _reconfig(param: str, identity: str, present: bool, wait: float = 20.0) -> str | None:
    """Make the running daemons read the generated file, and wait until the collector has
    (its `param` names `identity`, or no longer does): a schedd that came a moment too soon
    would be refused, and try again only at its next update. None, or why it failed."""
    from .condor import reconfig_daemons
    problem = reconfig_daemons()
    if problem:
        return problem
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        got = subprocess.run(["condor_config_val", "-collector", param], capture_output=True, text=True, timeout=30)
        if got.returncode == 0 and (identity in got.stdout.split()) == present:
            return None
        time.sleep(0.2)
    return f"the collector has not applied the change after {wait:.0f}s"


# ------------------------------------------------------------------ keys and tokens

def _new_key(name: str, keys_dir: str) -> None:
    new_signing_key(os.path.join(keys_dir, name))


def mint_token(identity: str, key: str, authz: Iterable[str], trust_domain: str, keys_dir: str) -> str:
    """A token for `identity`, signed with the key file `key` of keys_dir (condor.token_create)."""
    from .condor import CondorError, token_create
    try:
        return token_create(identity, key, keys_dir, authz, trust_domain=trust_domain)
    except CondorError as err:
        raise FederationError(str(err)) from None


# ------------------------------------------------------------------ the remote side's lines

def remote_lines(name: str, pool: str, address: str, when: float | None = None) -> str:
    """What the admin of schedd NAME adds on their side to flock to this appliance."""
    stamp = datetime.datetime.fromtimestamp(when or time.time(), datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""\
# Flock this schedd's jobs to the elastic HTCondor pool {pool} ({address}).
# Written by `cloud_admin --allow-schedd {name}` on {stamp}.
#
# Install, as root on the submit node:
#   install -m 0600 -o root {pool}.token /etc/condor/tokens.d/{pool}
#   cp flock-to-{pool}.conf /etc/condor/config.d/ && condor_reconfig
# The schedd shows up at {pool} at its next update: the next submission, a
# condor_reschedule, or within SCHEDD_INTERVAL. (For a user who had jobs here
# before, `condor_restart -daemon schedd` makes MIN_FLOCK_LEVEL apply at once.)
#
# Nothing else changes on this side. It relies on HTCondor's defaults since 9.0:
# IDTOKENS among the client authentication methods (the token above), negotiation with
# the pool's negotiator over the session this schedd offers it (no trust needed), and
# READ of this schedd's queue for anyone (ALLOW_READ = *, SEC_READ_AUTHENTICATION = OPTIONAL),
# which the pool's scheduler uses to see what the jobs ask for. {pool}'s central manager
# and workers connect to this schedd's address (its shared port, 9618).

# 1. the pool to flock to (appended to any FLOCK_TO you already have)
FLOCK_TO = $(FLOCK_TO), {address}
# 2. flock to it at once, not only when this pool's own machines are busy
#    (leave it out if this pool has execute nodes of its own and should be tried first)
MIN_FLOCK_LEVEL = 1
"""


def config_line_count(text: str) -> int:
    """Settings a remote admin changes: lines that are neither blank nor comments."""
    return sum(1 for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))


def default_address(pool_condor_host: str) -> str:
    if pool_condor_host and pool_condor_host != "auto":
        host = pool_condor_host
    else:
        host = socket.getfqdn() or socket.gethostname()
    return host if ":" in host else f"{host}:9618"


# ------------------------------------------------------------------ operator actions

def allow_schedd(name: str, pool: str, address: str, read_token_file: str | None = None,
                 fed_dir: str | None = None, keys_dir: str | None = None, reconfig: bool = True) -> dict:
    """Allow a remote schedd to flock here (again: a new key, so an older token stops working).

    With `read_token_file` for a schedd already allowed, only that token is recorded (the
    schedd's own token stays valid): its pool may give it after it has ours.
    Returns what was done, for the CLI: the files written for the remote side, whether
    the daemons were reconfigured (and why not)."""
    check_name(name)
    fed_dir, keys_dir = fed_dir or FED_DIR, keys_dir or KEYS_DIR
    data = load_state(fed_dir)
    again = name in data["allowed"]
    read_token = None
    if read_token_file:
        try:
            with open(read_token_file) as f:
                read_token = f.read().strip()
        except OSError as err:
            raise FederationError(f"cannot read the read token {read_token_file}: {err.strerror}") from None
        if not read_token or len(read_token.split(".")) != 3:
            raise FederationError(f"{read_token_file} does not hold an IDTOKEN (header.payload.signature)")

    if again and read_token:
        write_atomic(read_token_path(name, fed_dir), read_token + "\n", 0o600)
        data["allowed"][name]["read_token"] = True
        _save_state(data, fed_dir)
        target = out_dir(name, fed_dir)
        return {"schedd": name, "identity": schedd_identity(name, pool), "again": True, "read_token_only": True,
                "files": {"config": os.path.join(target, f"flock-to-{pool}.conf"),
                          "token": os.path.join(target, f"{pool}.token")},
                "config_lines": None, "address": data["allowed"][name].get("address", ""), "read_token": True,
                "reconfig_error": None}

    key = schedd_key_name(name)
    _new_key(key, keys_dir)
    try:
        token = mint_token(schedd_identity(name, pool), key, SCHEDD_AUTHZ, pool, keys_dir)
    except Exception:
        _drop(os.path.join(keys_dir, key))
        raise
    now = time.time()
    target = out_dir(name, fed_dir)
    os.makedirs(target, mode=0o700, exist_ok=True)
    conf = os.path.join(target, f"flock-to-{pool}.conf")
    tok = os.path.join(target, f"{pool}.token")
    lines = remote_lines(name, pool, address, now)
    write_atomic(conf, lines, 0o644)
    write_atomic(tok, token + "\n", 0o600)
    if read_token:
        write_atomic(read_token_path(name, fed_dir), read_token + "\n", 0o600)

    data["allowed"][name] = {"since": now, "address": address,
                             "read_token": bool(read_token) or os.path.exists(read_token_path(name, fed_dir))}
    data["revoked"].pop(name, None)
    _save_state(data, fed_dir)
    _write_condor_file(data, fed_dir)
    problem = _reconfig("ALLOW_ADVERTISE_SCHEDD", schedd_identity(name, pool), True) if reconfig else None
    return {"schedd": name, "identity": schedd_identity(name, pool), "again": again, "read_token_only": False,
            "files": {"config": conf, "token": tok}, "config_lines": config_line_count(lines),
            "address": address, "read_token": bool(read_token) or os.path.exists(read_token_path(name, fed_dir)),
            "reconfig_error": problem}


def revoke_schedd(name: str, pool: str, fed_dir: str | None = None, keys_dir: str | None = None,
                  reconfig: bool = True) -> dict:
    """Make the schedd's token useless: its key is deleted, its identity denied, its ads withdrawn."""
    check_name(name)
    fed_dir, keys_dir = fed_dir or FED_DIR, keys_dir or KEYS_DIR
    data = load_state(fed_dir)
    if name not in data["allowed"]:
        known = ", ".join(sorted(data["allowed"])) or "none"
        raise FederationError(f"no allowed schedd named {name} (allowed: {known})")
    _drop(os.path.join(keys_dir, schedd_key_name(name)))
    _drop(read_token_path(name, fed_dir))
    shutil.rmtree(out_dir(name, fed_dir), ignore_errors=True)     # it holds the token
    del data["allowed"][name]
    data["revoked"][name] = time.time()
    _save_state(data, fed_dir)
    _write_condor_file(data, fed_dir)
    problem = _reconfig("DENY_ADVERTISE_SCHEDD", schedd_identity(name, pool), True) if reconfig else None
    withdrawn = withdraw_ads(schedd_identity(name, pool)) if reconfig else None
    return {"schedd": name, "identity": schedd_identity(name, pool), "reconfig_error": problem,
            "withdraw_error": withdrawn}


def withdraw_ads(identity: str) -> str | None:
    """Remove the schedd and submitter ads a revoked schedd left in our collector, so our
    negotiator stops negotiating with it at once. None, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="revoke-") as tmp:
        for command, target in (("INVALIDATE_SUBMITTOR_ADS", "Submitter"), ("INVALIDATE_SCHEDD_ADS", "Scheduler")):
            query = os.path.join(tmp, "query")
            with open(query, "w") as f:
                f.write(f'MyType = "Query"\nTargetType = "{target}"\n'
                        f'Requirements = AuthenticatedIdentity =?= "{identity}"\n')
            proc = subprocess.run(["condor_advertise", command, query], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                return f"{command}: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return None


def _drop(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------ what the operator sees

def schedds_status(store, fed_dir: str | None = None) -> list[dict]:
    """The allowed remote schedds with what the scheduler last saw of each."""
    seen, _ = store.get("schedds", [])
    by_name = {s["name"]: s for s in seen or [] if isinstance(s, dict) and "name" in s}
    out = []
    for a in allowed_schedds(fed_dir):
        s = by_name.get(a.name, {})
        out.append({"name": a.name, "allowed_since": a.since, "address": a.address, "read_token": a.read_token,
                    "state": s.get("state", "unknown"), "detail": s.get("detail", "the scheduler has not looked yet"),
                    "offered": s.get("offered", 0), "idle_jobs": s.get("idle_jobs", 0),
                    "users": s.get("users", [])})
    return out


# ------------------------------------------------------------------ flocking out (bootstrap)

def condor_lines(cfg, tokens_dir: str | None = None, keys_dir: str | None = None,
                 fed_dir: str | None = None, log=None) -> list[str]:
    """Settings for flocking out, for the generated condor file bootstrap writes at start.

    Installs each `federation.flock_to` pool's token where the schedd finds it, and
    makes a read-only token per pool (federation/flock-to/NAME.read-token) that the
    operator gives that pool (`cloud_admin --allow-schedd ... --read-token`), so its
    scheduler can see what our sent-away jobs ask for. Tokens of pools no longer
    configured are removed. Never raises: a problem is printed and the pool left out.
    """
    log = log or (lambda msg: print(f"appliance: {msg}", file=sys.stderr, flush=True))
    tokens_dir, keys_dir, fed_dir = tokens_dir or TOKENS_DIR, keys_dir or KEYS_DIR, fed_dir or FED_DIR
    targets = tuple(cfg.federation.flock_to) if cfg is not None else ()
    wanted = {f"flock-{t.name}" for t in targets}
    for directory, prefix, keep in ((tokens_dir, "flock-", wanted),
                                    (keys_dir, "reader-", {reader_key_name(t.name) for t in targets})):
        try:
            for entry in os.listdir(directory):
                if entry.startswith(prefix) and entry not in keep:
                    _drop(os.path.join(directory, entry))
        except FileNotFoundError:
            pass
    usable = []
    for t in targets:
        try:
            with open(t.token_file) as f:
                token = f.read().strip()
            if len(token.split(".")) != 3:
                raise ValueError("it does not hold an IDTOKEN (header.payload.signature)")
            os.makedirs(tokens_dir, mode=0o700, exist_ok=True)
            write_atomic(os.path.join(tokens_dir, f"flock-{t.name}"), token + "\n", 0o600)
        except (OSError, ValueError) as err:
            log(f"federation.flock_to {t.name}: cannot use the token file {t.token_file}: "
                f"{getattr(err, 'strerror', None) or err}; not flocking to {t.collector}")
            continue
        try:
            key = reader_key_name(t.name)
            if not os.path.exists(os.path.join(keys_dir, key)):
                _new_key(key, keys_dir)
            reader = mint_token(f"{key}@{cfg.pool.name}", key, READER_AUTHZ, cfg.pool.name, keys_dir)
            write_atomic(os.path.join(fed_dir, "flock-to", f"{t.name}.read-token"), reader + "\n", 0o600)
        except (OSError, FederationError) as err:
            log(f"federation.flock_to {t.name}: cannot make its read token: {err}")
        usable.append(t)
    if not usable:
        return []
    log(f"flocking out to {', '.join(f'{t.name} ({t.collector})' for t in usable)}: only jobs the scheduler "
        f"sends away (no enabled cloud here can run them, or they wait at max_workers)")
    return [
        "# federation.flock_to: jobs the scheduler sends away (it sets their FlockTo) may flock to",
        "# these pools; no other job flocks. Flocking starts at once (MIN_FLOCK_LEVEL), and the",
        "# pools see FLOCK_BY_DEFAULT in our schedd ad, so they know only such jobs are offered.",
        f"FLOCK_TO = {', '.join(t.collector for t in usable)}",
        "FLOCK_BY_DEFAULT = False",
        f"MIN_FLOCK_LEVEL = {len(usable)}",
        "SCHEDD_ATTRS = $(SCHEDD_ATTRS) FLOCK_BY_DEFAULT",
    ]


def flock_targets_in_use(cfg, tokens_dir: str | None = None) -> tuple:
    """The configured pools whose token bootstrap installed (those FLOCK_TO names)."""
    tokens_dir = tokens_dir or TOKENS_DIR
    return tuple(t for t in cfg.federation.flock_to if os.path.exists(os.path.join(tokens_dir, f"flock-{t.name}")))

