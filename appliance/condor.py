"""The one module that talks to HTCondor: demand, supply, tokens, drains.

Demand is read with the schedd's group-by query: the schedd walks its queue
once and returns one ad per distinct (status, request) with a JobCount, so the
cost here grows with the number of distinct requests, not of jobs. Supply is
the collector's startd ads of our workers (ApplianceWorker =?= true).

Remote demand (appliance/federation.py): each allowed remote schedd that flocks
here is found by the identity its ads came with into our collector, and its
queue is read with the same group-by query (READ, anonymously as HTCondor's
default security allows, or with a token its pool gave us), limited to the
submitters it offers us. A schedd that cannot be read is reported, never an
error for the cycle.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import classad
import htcondor

from . import asks, federation
from .keyfiles import new_signing_key
from .model import JobGroup, RemoteSchedd, ScheddState, SlotSummary

log = logging.getLogger(__name__)

KEYS_DIR = os.environ.get("APPLIANCE_KEYS_DIR", "/var/lib/appliance/keys")
WORKER_KEYS_DIR = os.environ.get("APPLIANCE_WORKER_KEYS_DIR", "/var/lib/appliance/worker-keys")

IDLE = 1
# scheduler, grid and local universe jobs never need an execute node
NO_WORKER_UNIVERSES = {7, 9, 12}
DEMAND_PROJECTION = ["JobStatus", "JobUniverse", "RequestCpus", "RequestMemory", "RequestDisk", "RequestGPUs",
                     "Requirements", "TargetClouds", "FlockTo", *asks.JOB_ATTRIBUTES]
REMOTE_PROJECTION = [*DEMAND_PROJECTION, "User"]
SUBMITTER_PROJECTION = ["Name", "ScheddName", "IdleJobs", "RunningJobs", "SubmitterTag", "AuthenticatedIdentity"]
# a remote schedd that does not answer within this long is reported, and its answer
# (if it comes) used in a later cycle: a cycle never waits longer for one
REMOTE_TIMEOUT = 5.0
# ...and is asked at most this often (the scheduler cycles every 0.25 s while a worker
# starts): an answer this fresh is used again, sparing the remote schedd (and its log)
REMOTE_MIN_INTERVAL = 1.0
SUPPLY_PROJECTION = ["Name", "WorkerId", "State", "SlotType", "Cpus", "Memory", "Disk", "GPUs", "TotalSlotCpus",
                     "WorkerInterrupted", "WorkerRebalance"]


class CondorError(Exception):
    pass


def worker_identity(worker_id: str, pool: str) -> str:
    return f"worker-{worker_id}@{pool}"


def admin_identity(pool: str) -> str:
    return f"admin@{pool}"


def worker_key_name(worker_id: str) -> str:
    return f"worker-{worker_id}"


def reconfig_daemons(daemons: Sequence[str] = ("collector", "schedd", "negotiator")) -> str | None:
    """Reconfigure each daemon directly (`condor_reconfig -daemon X`); None, or what failed.

    Each daemon keeps the security policy it last computed, with the list of signing keys
    in it, until a session of another authorization level starts one again; a reconfig is
    such a session, so the next client recomputes it with the keys and settings on disk.
    `condor_reconfig` sent to the master did not do that in our tests. (Shelled out like
    the drains: one short-lived call each.)"""
    failed = []
    for daemon in daemons:
        try:
            proc = subprocess.run(["condor_reconfig", "-daemon", daemon], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as err:
            failed.append(f"{daemon}: {err}")
            continue
        if proc.returncode != 0:
            failed.append(f"{daemon}: {(proc.stderr or proc.stdout).strip()[-200:]}")
    return "; ".join(failed) or None


def token_create(identity: str, key: str, key_dir: str, authz: Iterable[str] = (), lifetime: int | None = None,
                 trust_domain: str | None = None) -> str:
    """A token for `identity` signed with the key file `key` of key_dir: the one place tokens
    are made (workers', users', remote schedds'). trust_domain, when given, is set explicitly,
    so that it is right even before the generated condor settings exist (bootstrap)."""
    cmd = ["condor_token_create", "-identity", identity, "-key", key]
    for a in authz:
        cmd += ["-authz", a]
    if lifetime:
        cmd += ["-lifetime", str(lifetime)]
    env = dict(os.environ, _CONDOR_SEC_PASSWORD_DIRECTORY=key_dir)
    if trust_domain:
        env["_CONDOR_TRUST_DOMAIN"] = trust_domain
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise CondorError(f"condor_token_create failed for {identity}: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip()


class Condor:
    def __init__(self, pool: str, keys_dir: str = KEYS_DIR, worker_keys_dir: str = WORKER_KEYS_DIR,
                 fed_dir: str | None = None):
        self.pool = pool
        self.keys_dir = keys_dir
        self.worker_keys_dir = worker_keys_dir
        self.fed_dir = fed_dir
        self._remote: ThreadPoolExecutor | None = None
        self._inflight: dict[str, Future] = {}      # remote schedd address -> its query still running
        self._answers: dict[str, tuple[float, list]] = {}   # ... -> (when, its last answer)

    # ------------------------------------------------------------ observe
    def demand(self) -> tuple[JobGroup, ...]:
        """Idle jobs that need a worker, grouped by what they ask for."""
        try:
            ads = htcondor.Schedd().query(constraint="true", projection=DEMAND_PROJECTION,
                                          opts=htcondor.QueryOpts.GroupBy)
        except Exception as err:   # the bindings raise plain RuntimeError/HTCondorIOError
            raise CondorError(f"cannot query the schedd: {err}") from err
        return groups_from_ads(ads)

    def remote_demand(self, allowed: Sequence[federation.Allowed] | None = None
                      ) -> tuple[tuple[JobGroup, ...], tuple[RemoteSchedd, ...]]:
        """Idle jobs the allowed remote schedds offer this pool, and what was found of each.

        Never raises: whatever cannot be read is reported per schedd."""
        if allowed is None:
            allowed = federation.allowed_schedds(self.fed_dir)
        if not allowed:
            return (), ()
        idents = {federation.schedd_identity(a.name, self.pool): a for a in allowed}
        members = "{" + ", ".join(classad.quote(i) for i in idents) + "}"
        constraint = f"member(AuthenticatedIdentity, {members})"
        try:
            coll = htcondor.Collector()
            schedd_ads = coll.query(htcondor.AdTypes.Schedd, constraint)
            submitter_ads = coll.query(htcondor.AdTypes.Submitter, constraint, SUBMITTER_PROJECTION)
        except Exception as err:
            return (), tuple(RemoteSchedd(a.name, ScheddState.UNREADABLE, f"cannot ask our collector: {err}")
                             for a in allowed)
        groups: list[JobGroup] = []
        reports = []
        for ident, a in idents.items():
            ads = [ad for ad in schedd_ads if ad.get("AuthenticatedIdentity") == ident]
            if not ads:
                reports.append(RemoteSchedd(a.name, ScheddState.ABSENT,
                                            "has not advertised itself to this pool: are the lines "
                                            "`cloud_admin --allow-schedd` wrote applied on its side?"))
                continue
            found, report = self._read_remote(a, ads, [s for s in submitter_ads
                                                        if s.get("AuthenticatedIdentity") == ident])
            groups += found
            reports.append(report)
        return tuple(groups), tuple(reports)

    def _read_remote(self, allowed: federation.Allowed, ads: list, submitters: list
                     ) -> tuple[list[JobGroup], RemoteSchedd]:
        token = _read_file(federation.read_token_path(allowed.name, self.fed_dir))
        groups: list[JobGroup] = []
        offered, users, problems, names = 0, set(), [], []
        for ad in ads:
            name = str(ad.get("Name", "?"))
            names.append(name)
            mine = [s for s in submitters if s.get("ScheddName") == ad.get("Name")]
            idle = sum(max(int(s.get("IdleJobs", 0) or 0), 0) for s in mine)
            offering = sorted({str(s["Name"]) for s in mine if int(s.get("IdleJobs", 0) or 0) > 0 and "Name" in s})
            if idle <= 0 or not offering:
                continue
            offered += idle
            users.update(offering)
            tags = sorted({str(s["SubmitterTag"]) for s in mine if s.get("SubmitterTag")})
            query = remote_constraint(offering, tags, bool(ad.get("FLOCK_BY_DEFAULT", True)))
            try:
                found = self._remote_query(ad, query, token)
            except Exception as err:    # the bindings raise plain RuntimeError/HTCondorIOError
                problems.append(f"cannot read the queue of {name}: {_short(err)}")
                continue
            groups += groups_from_ads(found, schedd=allowed.name)
        where = ", ".join(names)
        if problems:
            how = "with the read token it gave us" if token else "anonymously (READ)"
            return groups, RemoteSchedd(allowed.name, ScheddState.UNREADABLE,
                                        f"{'; '.join(problems)} ({how}); its {offered} idle job(s) offered here "
                                        f"are not counted", offered, tuple(sorted(users)))
        if not offered:
            return groups, RemoteSchedd(allowed.name, ScheddState.QUIET, f"{where}: offers no idle job here now")
        return groups, RemoteSchedd(allowed.name, ScheddState.FLOCKING, f"{where}: flocking here",
                                    offered, tuple(sorted(users)))

    def _remote_query(self, location: classad.ClassAd, constraint: str, token: str | None) -> list:
        """One group-by query of a remote schedd, in a thread of its own: a schedd that does
        not answer delays a cycle by REMOTE_TIMEOUT at most, and is not asked again while
        the query is still waiting."""
        if self._remote is None:
            self._remote = ThreadPoolExecutor(max_workers=4, thread_name_prefix="remote-schedd")
        key = str(location.get("MyAddress", "")) + "|" + constraint
        when, answer = self._answers.get(key, (0.0, []))
        if time.monotonic() - when < REMOTE_MIN_INTERVAL:
            return answer
        fut = self._inflight.get(key)
        if fut is None:
            fut = self._remote.submit(_query_schedd, location, constraint, token)
            self._inflight[key] = fut
        try:
            result = fut.result(timeout=REMOTE_TIMEOUT)
        except FutureTimeout:
            raise CondorError(f"no answer within {REMOTE_TIMEOUT:.0f}s") from None
        finally:
            if fut.done():
                self._inflight.pop(key, None)
        if len(self._answers) > 256:       # addresses and user lists come and go
            self._answers.clear()
        self._answers[key] = (time.monotonic(), result)
        return result

    def send_away(self, group_key: str, count: int, flock_to: str) -> int:
        """Let up to `count` idle jobs of one demand group flock: set their FlockTo.

        With FLOCK_BY_DEFAULT false (federation.condor_lines) the schedd flocks only
        jobs whose FlockTo names a pool; the newest jobs of the group go first, so the
        oldest keep their place here. Returns how many jobs were changed."""
        try:
            schedd = htcondor.Schedd()
            ads = schedd.query(constraint="JobStatus == 1 && FlockTo =?= undefined",
                               projection=["ClusterId", "ProcId", *DEMAND_PROJECTION])
        except Exception as err:
            raise CondorError(f"cannot query the schedd: {err}") from err
        ids = sorted(((int(a["ClusterId"]), int(a["ProcId"])) for a in ads
                      if a.get("JobUniverse") not in NO_WORKER_UNIVERSES and job_group_key(a) == group_key),
                     reverse=True)[:max(count, 0)]
        if not ids:
            return 0
        try:
            schedd.edit([f"{c}.{p}" for c, p in ids], "FlockTo", classad.quote(flock_to))
        except Exception as err:
            raise CondorError(f"cannot set FlockTo on {len(ids)} job(s): {err}") from err
        return len(ids)

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
        return new_signing_key(os.path.join(self.worker_keys_dir, worker_key_name(worker_id)))

    def drop_worker_key(self, worker_id: str) -> None:
        try:
            os.unlink(os.path.join(self.worker_keys_dir, worker_key_name(worker_id)))
        except FileNotFoundError:
            pass

    def _token_create(self, identity: str, key: str, key_dir: str, authz: Iterable[str] = (),
                      lifetime: int | None = None) -> str:
        return token_create(identity, key, key_dir, authz, lifetime)

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


    def requeue(self, worker_id: str, started_before: float | None = None,
                now: float | None = None) -> tuple[int, int]:
        """Put the jobs that were running on a dead worker back in the queue, now.

        A shadow whose worker vanished waits for it to reconnect for the job's
        whole lease (40 minutes by default), and neither hold nor vacate ends
        that wait: HTCondor cannot know the worker is gone for good. We do (its
        resource has just been removed), so its shadows are ended; the schedd
        then puts each job back to idle, and it runs again elsewhere.

        Returns (jobs still running on it, shadows ended). After a restart of
        the schedd a job can be "running" before its reconnect shadow exists:
        the caller asks again until no job is left running on the worker, with
        `started_before` (when the worker was removed) and `now`; which of the jobs
        found are ended then is `shadows_to_end`'s rule.
        """
        try:
            ads = htcondor.Schedd().query(constraint=requeue_constraint(worker_id, started_before),
                                          projection=["ClusterId", "ProcId", "EnteredCurrentStatus"])
        except Exception as err:
            raise CondorError(f"cannot find the jobs of {worker_id}: {err}") from err
        jobs = {f"{a['ClusterId']}.{a['ProcId']}".encode()
                for a in shadows_to_end(ads, started_before, time.time() if now is None else now)}
        return len(ads), (_kill_shadows(jobs) if jobs else 0)


# a shadow the schedd starts on the removed worker's claim after the removal fails by itself
# within seconds (the worker is gone) and frees the claim; ending it sooner only makes the
# schedd try the claim again (seen: a job put back every cycle for minutes). One still
# "running" after this long is a reconnect shadow, which waits out the whole lease.
REUSED_CLAIM_GRACE = 30.0


def shadows_to_end(ads, started_before: float | None, now: float) -> list:
    """Of the jobs found running on a removed worker, those whose shadows to end: all of them
    at the removal; later, those running since before it (a reconnect after a restart), and
    those started on its claim since then that have not failed by themselves within the grace."""
    if started_before is None:
        return list(ads)
    return [a for a in ads if float(a.get("EnteredCurrentStatus", 0)) <= started_before
            or float(a.get("EnteredCurrentStatus", 0)) <= now - REUSED_CLAIM_GRACE]


def requeue_constraint(worker_id: str, started_before: float | None = None) -> str:
    """The jobs "running" on a worker the appliance removed. With `started_before`: those
    running since before the removal (a reconnect after a restart never leaves "running"),
    or since then but on that same worker still. The schedd reuses its claim on the dead
    worker for a job put back to idle, before it learns the worker is gone, and a restart of
    the schedd then turns that shadow into a reconnect that waits the whole lease (seen under
    load in CI; `shadows_to_end` leaves such a job its grace); a job started again elsewhere is left alone,
    though its MachineAttrWorkerId0 names the dead worker for a while: its RemoteHost names
    the new one. A job whose RemoteHost is unknown is taken to be on the dead worker.

    No regular expression and no backslash: the 23.x schedd reads a query's constraint with
    old-ClassAd quoting, where `regexp("docker\\-e69e1d", ...)` looks for a backslash and never
    matches (seen in CI: the job again waited out its lease). RemoteHost is
    `slot1_1@<worker id>@<host>`, so the worker is one of its "@"-separated parts."""
    quoted = classad.quote(worker_id)
    constraint = f"JobStatus == 2 && MachineAttrWorkerId0 =?= {quoted}"
    if started_before is not None:
        constraint += (f" && (EnteredCurrentStatus <= {int(started_before)} || RemoteHost =?= undefined"
                       f" || member({quoted}, split(RemoteHost, \"@\")) =?= true)")
    return constraint


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


def _request(ad: classad.ClassAd) -> tuple:
    """What one job (or group-by row) asks for: (cpus, memory, disk, requirements, target clouds, flock to)."""
    cpus = _int(ad, "RequestCpus", 1)
    memory = _int(ad, "RequestMemory", 0)
    disk = _int(ad, "RequestDisk", 0)
    req = str(ad.lookup("Requirements")) if "Requirements" in ad else "true"
    return cpus, memory, disk, req, _names(ad.get("TargetClouds")), _names(ad.get("FlockTo"))


def _gpus(ad: classad.ClassAd) -> int:
    """What one job asks of GPUs (request_gpus); 0 when it asks none."""
    return _int(ad, "RequestGPUs", 0)


def worker_asks(ad: classad.ClassAd) -> asks.WorkerAsks:
    """What the job asks of its worker beyond its size (+WorkerImage, cloudscheduler's +VM*)."""
    values = {}
    for name in asks.JOB_ATTRIBUTES:
        if name not in ad:
            continue
        try:
            value = ad.eval(name)
        except Exception:       # an expression the library cannot evaluate: said as it is
            value = str(ad.lookup(name))
        if isinstance(value, classad.Value):
            if value is classad.Value.Undefined:
                continue
            value = str(ad.lookup(name))     # an error: reported as the job wrote it
        values[name] = value
    return asks.from_values(values)


def _names(value) -> tuple[str, ...] | None:
    if value is None or isinstance(value, classad.Value):     # unset, or set to undefined/error
        return None
    return tuple(t.strip() for t in str(value).split(",") if t.strip()) or None


def job_group_key(ad: classad.ClassAd, schedd: str = "", owner: str = "") -> str:
    """The demand group a job belongs to (the same for its group-by row)."""
    cpus, memory, disk, req, target_clouds, flock_to = _request(ad)
    # the key of a local group without FlockTo is what it was before flocking existed,
    # and of one asking no GPU what it was before GPUs were counted
    extra = f"|{schedd}|{owner}|{flock_to}" if (schedd or owner or flock_to) else ""
    gpus = f"|gpus={_gpus(ad)}" if _gpus(ad) else ""
    wanted = worker_asks(ad)
    worker = f"|{wanted.key()}" if wanted.any else ""
    return hashlib.sha1(f"{cpus}|{memory}|{disk}|{req}|{target_clouds}{gpus}{worker}{extra}".encode()
                        ).hexdigest()[:12]


def groups_from_ads(ads: Iterable[classad.ClassAd], schedd: str = "") -> tuple[JobGroup, ...]:
    """Turn schedd group-by ads into JobGroups of idle jobs that need a worker.

    `schedd` names the remote schedd they came from ("" for our own); a remote
    schedd's groups are also split by owner (its submitters), to show who waits."""
    merged: dict[str, JobGroup] = {}
    for ad in ads:
        if ad.get("JobStatus") != IDLE or ad.get("JobUniverse") in NO_WORKER_UNIVERSES:
            continue
        count = int(ad.get("JobCount", 0))
        if count <= 0:
            continue
        cpus, memory, disk, req, target_clouds, flock_to = _request(ad)
        owner = str(ad.get("User", "")) if schedd else ""
        key = job_group_key(ad, schedd, owner)
        if key in merged:
            g = merged[key]
            merged[key] = JobGroup(key, g.count + count, cpus, memory, disk, req, target_clouds, owner, ad=g.ad,
                                   schedd=schedd, flock_to=flock_to, gpus=g.gpus, asks=g.asks)
        else:
            job = classad.ClassAd()
            job.update(ad)
            job["MyType"] = "Job"
            job["TargetType"] = "Machine"
            merged[key] = JobGroup(key, count, cpus, memory, disk, req, target_clouds, owner, ad=job,
                                   schedd=schedd, flock_to=flock_to, gpus=_gpus(ad), asks=worker_asks(ad))
    return tuple(merged.values())


def remote_constraint(users: Sequence[str], tags: Sequence[str], flock_by_default: bool) -> str:
    """The idle jobs a remote schedd offers us: those of its submitters that flock here
    (by user, or accounting group) and, if it flocks only jobs that ask to (FLOCK_BY_DEFAULT
    false, as an appliance does), whose FlockTo names this pool as it calls it (SubmitterTag)."""
    names = "{" + ", ".join(classad.quote(u) for u in users) + "}"
    who = (f"(member(User, {names}) || "
           f"member(strcat(AccountingGroup, \"@\", splitUserName(User)[1]), {names})) =?= true")
    query = f"JobStatus == 1 && {who}"
    if not flock_by_default:
        asked = " || ".join(f"stringListIMember({classad.quote(t)}, FlockTo)" for t in tags) or "false"
        query += f" && ({asked}) =?= true"
    return query


def _query_schedd(location: classad.ClassAd, constraint: str, token: str | None) -> list:
    """Runs in a thread of its own: the SecMan settings below hold for this thread only.

    With a token (its pool's, for READ) the usual policy holds: authenticated and
    encrypted. Without one, the query is anonymous, as HTCondor's default security
    (ALLOW_READ = *, SEC_READ_AUTHENTICATION = OPTIONAL) allows; encryption and
    integrity need an authenticated session, so they are optional too."""
    with htcondor.SecMan() as sec:
        if token:
            sec.setToken(htcondor.Token(token))
        else:
            for what in ("AUTHENTICATION", "ENCRYPTION", "INTEGRITY"):
                sec.setConfig(f"SEC_CLIENT_{what}", "OPTIONAL")
        return list(htcondor.Schedd(location).query(constraint=constraint, projection=REMOTE_PROJECTION,
                                                    opts=htcondor.QueryOpts.GroupBy))


def _read_file(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
        a = acc.setdefault(wid, {"name": "", "claimed": 0, "cpus": 0, "memory": 0, "disk": 0, "gpus": 0, "total": 0,
                                 "notice": ""})
        name = str(ad.get("Name", ""))
        daemon = name.split("@", 1)[1] if name.startswith("slot") and "@" in name else name
        a["name"] = a["name"] or daemon
        if ad.get("State") == "Claimed":
            a["claimed"] += 1
        if ad.get("SlotType") in ("Partitionable", "Static") and ad.get("State") != "Claimed":
            a["cpus"] += int(ad.get("Cpus", 0))
            a["memory"] += int(ad.get("Memory", 0))
            a["disk"] += int(ad.get("Disk", 0))
            a["gpus"] += _int(ad, "GPUs", 0)
        a["total"] = max(a["total"], int(ad.get("TotalSlotCpus", ad.get("Cpus", 0)) or 0))
        # the boot script's notice watcher (config/ec2-user-data.sh): an interruption outranks a rebalance
        if isinstance(ad.get("WorkerInterrupted"), str) and ad.get("WorkerInterrupted"):
            a["notice"] = "spot"
        elif ad.get("WorkerRebalance") is True and not a["notice"]:
            a["notice"] = "rebalance"
    out = {}
    for wid, a in acc.items():
        free = (0, 0, 0, 0) if a["notice"] else (a["cpus"], a["memory"], a["disk"], a["gpus"])  # it takes no new job
        out[wid] = SlotSummary(wid, a["name"], a["claimed"], free[0], free[1], free[2], a["total"],
                               free_gpus=free[3], notice=a["notice"])
    return out
