"""The one module that talks to HTCondor: demand, supply, tokens, drains.

Demand is read with the schedd's group-by query: the schedd walks its queue
once and returns one ad per distinct (status, request) with a JobCount, so the
cost here grows with the number of distinct requests, not of jobs. Supply is
the collector's startd ads of our workers (ApplianceWorker =?= true).
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Iterable

import classad
import htcondor

from .model import JobGroup, SlotSummary

log = logging.getLogger(__name__)

KEYS_DIR = os.environ.get("APPLIANCE_KEYS_DIR", "/var/lib/appliance/keys")
WORKER_KEYS_DIR = os.environ.get("APPLIANCE_WORKER_KEYS_DIR", "/var/lib/appliance/worker-keys")

IDLE = 1
# scheduler, grid and local universe jobs never need an execute node
NO_WORKER_UNIVERSES = {7, 9, 12}
DEMAND_PROJECTION = ["JobStatus", "JobUniverse", "RequestCpus", "RequestMemory", "RequestDisk",
                     "Requirements", "TargetClouds"]
SUPPLY_PROJECTION = ["Name", "WorkerId", "State", "SlotType", "Cpus", "Memory", "Disk", "TotalSlotCpus"]


class CondorError(Exception):
    pass


def worker_identity(worker_id: str, pool: str) -> str:
    return f"worker-{worker_id}@{pool}"


def admin_identity(pool: str) -> str:
    return f"admin@{pool}"


def worker_key_name(worker_id: str) -> str:
    return f"worker-{worker_id}"


class Condor:
    def __init__(self, pool: str, keys_dir: str = KEYS_DIR, worker_keys_dir: str = WORKER_KEYS_DIR):
        self.pool = pool
        self.keys_dir = keys_dir
        self.worker_keys_dir = worker_keys_dir

    # ------------------------------------------------------------ observe
    def demand(self) -> tuple[JobGroup, ...]:
        """Idle jobs that need a worker, grouped by what they ask for."""
        try:
            ads = htcondor.Schedd().query(constraint="true", projection=DEMAND_PROJECTION,
                                          opts=htcondor.QueryOpts.GroupBy)
        except Exception as err:   # the bindings raise plain RuntimeError/HTCondorIOError
            raise CondorError(f"cannot query the schedd: {err}") from err
        return groups_from_ads(ads)

    def supply(self) -> dict[str, SlotSummary]:
        """Our workers as the collector sees them, by worker id."""
        try:
            ads = htcondor.Collector().query(htcondor.AdTypes.Startd, constraint="ApplianceWorker =?= true",
                                             projection=SUPPLY_PROJECTION)
        except Exception as err:
            raise CondorError(f"cannot query the collector: {err}") from err
        return summarize_slots(ads)

    def reschedule(self) -> None:
        """Ask the schedd for a negotiation cycle now (a worker just joined)."""
        try:
            htcondor.Schedd().reschedule()
        except Exception as err:
            log.warning("reschedule failed: %s", err)

    # ------------------------------------------------------------ credentials
    def mint_worker_token(self, worker_id: str) -> str:
        """A token that lets one worker advertise itself and read, nothing more."""
        return self._token_create(worker_identity(worker_id, self.pool), "POOL", self.keys_dir,
                                  authz=("ADVERTISE_STARTD", "ADVERTISE_MASTER", "READ"))

    def new_worker_key(self, worker_id: str) -> bytes:
        """The worker's own signing key: with it, and only it, we can command that worker.

        Kept outside the central manager's SEC_PASSWORD_DIRECTORY, so the pool's
        daemons never accept a token signed with it.
        """
        os.makedirs(self.worker_keys_dir, mode=0o700, exist_ok=True)
        key = os.urandom(48).hex().encode()
        path = os.path.join(self.worker_keys_dir, worker_key_name(worker_id))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key

    def drop_worker_key(self, worker_id: str) -> None:
        try:
            os.unlink(os.path.join(self.worker_keys_dir, worker_key_name(worker_id)))
        except FileNotFoundError:
            pass

    def _token_create(self, identity: str, key: str, key_dir: str, authz: Iterable[str] = (),
                      lifetime: int | None = None) -> str:
        cmd = ["condor_token_create", "-identity", identity, "-key", key]
        for a in authz:
            cmd += ["-authz", a]
        if lifetime:
            cmd += ["-lifetime", str(lifetime)]
        env = dict(os.environ, _CONDOR_SEC_PASSWORD_DIRECTORY=key_dir)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise CondorError(f"condor_token_create failed for {identity}: {proc.stderr.strip()[:200]}")
        return proc.stdout.strip()

    # ------------------------------------------------------------ act
    def drain(self, worker_id: str, condor_name: str) -> None:
        """Tell a worker's master to shut down peacefully: no new jobs, running
        jobs finish, then it exits. Authenticated with a five-minute admin token
        signed by that worker's own key."""
        if not condor_name:
            raise CondorError(f"worker {worker_id} has no known condor name")
        token = self._token_create(admin_identity(self.pool), worker_key_name(worker_id),
                                   self.worker_keys_dir, lifetime=300)
        with tempfile.TemporaryDirectory(prefix="drain-") as tokdir:
            _write_private(os.path.join(tokdir, "admin"), token + "\n")
            # FS still authenticates us to our own collector (to find the worker);
            # the worker accepts IDTOKENS only, and only this token is offered
            env = dict(os.environ, _CONDOR_SEC_TOKEN_DIRECTORY=tokdir, _CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY=tokdir)
            proc = subprocess.run(["condor_off", "-peaceful", "-daemon", "master", "-name", condor_name],
                                  capture_output=True, text=True, env=env, timeout=60)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise CondorError(f"condor_off -peaceful {condor_name} failed: {detail[-1] if detail else proc.returncode}")


    def invalidate(self, worker_id: str) -> None:
        """Remove a dead worker's ads from the collector at once.

        A killed startd never withdraws its ads; until they expire the
        negotiator would keep matching jobs to a slot that is gone. Done with a
        five-minute token of the worker's own identity: only worker identities
        may advertise (or withdraw) startds.
        """
        token = self._token_create(worker_identity(worker_id, self.pool), "POOL", self.keys_dir,
                                   authz=("ADVERTISE_STARTD", "ADVERTISE_MASTER"), lifetime=300)
        with tempfile.TemporaryDirectory(prefix="invalidate-") as tokdir:
            _write_private(os.path.join(tokdir, "worker"), token + "\n")
            env = dict(os.environ, _CONDOR_SEC_TOKEN_DIRECTORY=tokdir, _CONDOR_SEC_TOKEN_SYSTEM_DIRECTORY=tokdir,
                       _CONDOR_SEC_CLIENT_AUTHENTICATION_METHODS="IDTOKENS")
            for command, target in (("INVALIDATE_STARTD_ADS", "Machine"), ("INVALIDATE_MASTER_ADS", "DaemonMaster")):
                query = os.path.join(tokdir, "query")
                with open(query, "w") as f:
                    f.write(f'MyType = "Query"\nTargetType = "{target}"\n'
                            f'Requirements = WorkerId =?= "{worker_id}"\n')
                proc = subprocess.run(["condor_advertise", command, query], capture_output=True, text=True,
                                      env=env, timeout=30)
                if proc.returncode != 0:
                    raise CondorError(f"{command} for {worker_id} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")


    def requeue(self, worker_id: str, started_before: float | None = None) -> tuple[int, int]:
        """Put the jobs that were running on a dead worker back in the queue, now.

        A shadow whose worker vanished waits for it to reconnect for the job's
        whole lease (40 minutes by default), and neither hold nor vacate ends
        that wait: HTCondor cannot know the worker is gone for good. We do (its
        resource has just been removed), so its shadows are ended; the schedd
        then puts each job back to idle, and it runs again elsewhere.

        Returns (jobs still running on it, shadows ended). After a restart of
        the schedd a job can be "running" before its reconnect shadow exists:
        the caller asks again until no job is left running on the worker;
        `started_before` (when the worker was removed) keeps such a retry off a job
        that has meanwhile started again elsewhere: its MachineAttrWorkerId0 still
        names the dead worker for a while, but it entered "running" after the removal
        (a reconnect after a restart never leaves "running", so it is still caught).
        """
        constraint = f"JobStatus == 2 && MachineAttrWorkerId0 =?= {classad.quote(worker_id)}"
        if started_before is not None:
            constraint += f" && EnteredCurrentStatus <= {int(started_before)}"
        try:
            ads = htcondor.Schedd().query(constraint=constraint, projection=["ClusterId", "ProcId"])
        except Exception as err:
            raise CondorError(f"cannot find the jobs of {worker_id}: {err}") from err
        jobs = {f"{a['ClusterId']}.{a['ProcId']}".encode() for a in ads}
        return len(jobs), (_kill_shadows(jobs) if jobs else 0)


def _kill_shadows(job_ids: set[bytes]) -> int:
    """SIGKILL the condor_shadow of each job (its argv is `condor_shadow <cluster>.<proc> ...`)."""
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) > 1 and argv[0].endswith(b"condor_shadow") and argv[1] in job_ids:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
        except (OSError, ProcessLookupError):
            pass
    return killed


def _write_private(path: str, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)


def groups_from_ads(ads: Iterable[classad.ClassAd]) -> tuple[JobGroup, ...]:
    """Turn schedd group-by ads into JobGroups of idle jobs that need a worker."""
    merged: dict[str, JobGroup] = {}
    for ad in ads:
        if ad.get("JobStatus") != IDLE or ad.get("JobUniverse") in NO_WORKER_UNIVERSES:
            continue
        count = int(ad.get("JobCount", 0))
        if count <= 0:
            continue
        cpus = _int(ad, "RequestCpus", 1)
        memory = _int(ad, "RequestMemory", 0)
        disk = _int(ad, "RequestDisk", 0)
        req = str(ad.lookup("Requirements")) if "Requirements" in ad else "true"
        target = ad.get("TargetClouds")
        target_clouds = tuple(t.strip() for t in str(target).split(",") if t.strip()) if target else None
        key = hashlib.sha1(f"{cpus}|{memory}|{disk}|{req}|{target_clouds}".encode()).hexdigest()[:12]
        if key in merged:
            g = merged[key]
            merged[key] = JobGroup(key, g.count + count, cpus, memory, disk, req, target_clouds, ad=g.ad)
        else:
            job = classad.ClassAd()
            job.update(ad)
            job["MyType"] = "Job"
            job["TargetType"] = "Machine"
            merged[key] = JobGroup(key, count, cpus, memory, disk, req, target_clouds, ad=job)
    return tuple(merged.values())


def _int(ad: classad.ClassAd, attr: str, default: int) -> int:
    try:
        value = ad.eval(attr)
    except Exception:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return max(int(value), 0)


def summarize_slots(ads: Iterable[classad.ClassAd]) -> dict[str, SlotSummary]:
    acc: dict[str, dict] = {}
    for ad in ads:
        wid = ad.get("WorkerId")
        if not wid:
            continue
        a = acc.setdefault(wid, {"name": "", "claimed": 0, "cpus": 0, "memory": 0, "disk": 0, "total": 0})
        name = str(ad.get("Name", ""))
        daemon = name.split("@", 1)[1] if name.startswith("slot") and "@" in name else name
        a["name"] = a["name"] or daemon
        if ad.get("State") == "Claimed":
            a["claimed"] += 1
        if ad.get("SlotType") in ("Partitionable", "Static") and ad.get("State") != "Claimed":
            a["cpus"] += int(ad.get("Cpus", 0))
            a["memory"] += int(ad.get("Memory", 0))
            a["disk"] += int(ad.get("Disk", 0))
        a["total"] = max(a["total"], int(ad.get("TotalSlotCpus", ad.get("Cpus", 0)) or 0))
    return {wid: SlotSummary(wid, a["name"], a["claimed"], a["cpus"], a["memory"], a["disk"], a["total"])
            for wid, a in acc.items()}
