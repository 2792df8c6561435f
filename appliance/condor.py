"""The one module that talks to HTCondor: demand, supply, tokens, drains.

Demand is read from the schedd's cluster ads, which carry each cluster's request
(Requirements, sizes, TargetClouds, the worker asks) and its count of idle procs
(JobsIdle, which the schedd keeps as jobs change state), plus a group-by of only
the procs that differ from their cluster ad (a queue that varies requirements or
requests per proc, or a job edited alone), looked for only in clusters where they
may be: new ones, and those whose procs' requests the schedd's job queue log shows
written since (see demand()). The whole read is skipped while that log has not
changed. Supply is the collector's startd ads of our workers (ApplianceWorker =?= true).

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
from dataclasses import replace

import classad
import htcondor

from . import asks, federation
from .keyfiles import new_signing_key
from .model import STALE_CLAIM, JobGroup, RemoteSchedd, ScheddState, SlotSummary

log = logging.getLogger(__name__)

KEYS_DIR = os.environ.get("APPLIANCE_KEYS_DIR", "/var/lib/appliance/keys")
WORKER_KEYS_DIR = os.environ.get("APPLIANCE_WORKER_KEYS_DIR", "/var/lib/appliance/worker-keys")

IDLE = 1
# scheduler, grid and local universe jobs never need an execute node
NO_WORKER_UNIVERSES = {7, 9, 12}
DEMAND_PROJECTION = ["JobStatus", "JobUniverse", "RequestCpus", "RequestMemory", "RequestDisk", "RequestGPUs",
                     "Requirements", "TargetClouds", "FlockTo", *asks.JOB_ATTRIBUTES]
REMOTE_PROJECTION = [*DEMAND_PROJECTION, "User"]
# what a proc may hold differently from its cluster ad and that makes its request (the group key):
# compared proc by proc, by value, in the schedd (deviation_constraint)
PROC_ATTRIBUTES = ("JobUniverse", "RequestCpus", "RequestMemory", "RequestDisk", "RequestGPUs", "TargetClouds",
                   "FlockTo", *asks.JOB_ATTRIBUTES)
# each cluster's request, its idle procs (JobsIdle, kept by the schedd), and what the default
# request_memory/request_disk expressions refer to, so that they evaluate here as in a proc
CLUSTER_PROJECTION = ["ClusterId", "JobsIdle", *DEMAND_PROJECTION, "MemoryUsage", "ImageSize", "DiskUsage"]
# a queue unchanged (its log) is read again after this long all the same
QUEUE_REREAD = 30.0
# more than this written to the job queue log since it was last read is not read: every
# cluster is looked at instead (bounds the daemon's memory and time after a pause)
MAX_LOG_READ = 64 * 1024 * 1024
# clusters compared proc by proc in one query at most (the constraint grows ~0.6 KB a cluster)
COMPARE_BATCH = 500
SUBMITTER_PROJECTION = ["Name", "ScheddName", "IdleJobs", "RunningJobs", "SubmitterTag", "AuthenticatedIdentity"]
# a remote schedd that does not answer within this long is reported, and its answer
# (if it comes) used in a later cycle: a cycle never waits longer for one
REMOTE_TIMEOUT = 5.0
# ...and is asked at most this often (the scheduler cycles every 0.25 s while a worker
# starts): an answer this fresh is used again, sparing the remote schedd (and its log)
REMOTE_MIN_INTERVAL = 1.0
SUPPLY_PROJECTION = ["Name", "WorkerId", "State", "Activity", "EnteredCurrentActivity", "SlotType", "Cpus",
                     "Memory", "Disk", "GPUs", "TotalSlotCpus", "WorkerInterrupted", "WorkerRebalance"]


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
        # the schedd's job queue log, and what demand() last read when it was how (see there)
        self._log = QueueLog(job_queue_log_path())
        self._clean: set[int] = set()        # clusters checked and found without a proc that differs
        self._alike: dict[int, JobGroup | None] = {}    # ... and the group each stands for (None: none)
        self._watch: set[str] = {a.lower() for a in ("Requirements", *PROC_ATTRIBUTES)}
        self._last_mark: tuple | None = None
        self._last_read = 0.0
        self._last_demand: tuple[JobGroup, ...] = ()
        self._references: list[str] = []     # attributes requests were found to refer to (demand())

    # ------------------------------------------------------------ observe
    def demand(self, reuse: bool = True) -> tuple[JobGroup, ...]:
        """Idle jobs that need a worker, grouped by what they ask for.

        1. The cluster ads (QueryOpts.ClusterAds, one per cluster, not per job): each cluster's
           request and its count of idle procs.
        2. A group-by of the idle procs whose request differs from their cluster ad's (a submit
           that varies requirements or requests per proc, late materialization with varying
           items, condor_qedit of one job, our own FlockTo): the schedd compares each proc's
           values with its cluster's (deviation_constraint), by value, and Requirements by its
           text. Those procs are taken out of their cluster's count and form groups of their own.
           Only clusters that may hold such procs are looked at: those not yet checked, and
           those where the job queue log (QueueLog: every change to the queue is written there
           before it is made) shows a proc's request, or what it refers to, written since. A
           cluster checked and found without such a proc is not looked at again until then; with
           no log to read, every cluster is looked at every time.

        With `reuse`, the last answer is returned while the log is unchanged, for at most
        QUEUE_REREAD seconds."""
        mark = self._log.mark()
        if (reuse and mark is not None and mark == self._last_mark
                and time.monotonic() - self._last_read < QUEUE_REREAD):
            return self._last_demand
        written = self._log.written(self._watch)
        if written is None:           # no log to follow (or a new one): look at every cluster
            self._clean.clear()
        else:
            self._clean -= written
        try:
            schedd = htcondor.Schedd()
            projection = [*CLUSTER_PROJECTION, *self._references]
            clusters = schedd.query(constraint="true", projection=projection, opts=htcondor.QueryOpts.ClusterAds)
            more = missing_references([c for c in clusters if int(c.get("ClusterId", -1)) not in self._clean],
                                      projection)
            if more:      # a request refers to attributes of the job's own: read them too, from now on
                self._references = (self._references + more)[-100:]     # bounded, whatever users write
                projection = [*projection, *more]
                clusters = schedd.query(constraint="true", projection=projection, opts=htcondor.QueryOpts.ClusterAds)
            # what is worked out per cluster is kept for those found alike (self._clean): a cycle over
            # thousands of clusters (DAGMan's one-job clusters) costs a look-up each, not a parse
            looked = [c for c in clusters if int(c.get("ClusterId", -1)) not in self._clean]
            self._watch |= watched_attributes(looked)
            deviants = []
            for i in range(0, len(looked), COMPARE_BATCH):
                constraint = deviation_constraint(looked[i:i + COMPARE_BATCH])
                if constraint:
                    deviants += schedd.query(constraint=constraint, projection=[a for a in projection if a != "JobsIdle"],
                                             opts=htcondor.QueryOpts.GroupBy)
        except Exception as err:   # the bindings raise plain RuntimeError/HTCondorIOError
            raise CondorError(f"cannot query the schedd: {err}") from err
        differ = {int(r["ClusterId"]) for r in deviants if "ClusterId" in r}
        checked = {int(c.get("ClusterId", -1)) for c in looked if int(c.get("JobsIdle", 0) or 0) > 0}
        clean = (self._clean & {int(c.get("ClusterId", -1)) for c in clusters}) | (checked - differ)
        groups, self._alike = groups_of_clusters(clusters, deviants, self._alike, clean)
        self._clean = clean
        self._last_mark, self._last_read, self._last_demand = mark, time.monotonic(), groups
        return groups

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
        return summarize_slots(ads, time.time())

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


# what a completed job's history ad says of where and how long its last run was: every job
# records its worker's WorkerId and CloudName (SYSTEM_JOB_MACHINE_ATTRS, 50-appliance.conf)
HISTORY_PROJECTION = ["MachineAttrCloudName0", "MachineAttrWorkerId0", "JobCurrentStartDate", "CompletionDate"]


def completed_jobs(since: float) -> list[tuple[str, str, float]]:
    """The jobs of this appliance's schedd that completed on our workers since `since`,
    newest first: (cloud, worker id, seconds of the run that completed). Read from the
    schedd's history, which stops at the first job that left the queue before `since`
    (the schedd returns at most HISTORY_HELPER_MAX_HISTORY, 10,000 by default)."""
    constraint = f"JobStatus == 4 && CompletionDate >= {int(since)} && MachineAttrCloudName0 =!= undefined"
    try:
        ads = htcondor.Schedd().history(constraint, HISTORY_PROJECTION, since=f"EnteredCurrentStatus < {int(since)}")
        out = []
        for ad in ads:
            start, end = ad.get("JobCurrentStartDate"), ad.get("CompletionDate")
            if isinstance(start, int) and isinstance(end, int) and start > 0:
                out.append((str(ad["MachineAttrCloudName0"]), str(ad.get("MachineAttrWorkerId0", "")),
                            float(end - start)))
        return out
    except Exception as err:
        raise CondorError(f"cannot read the schedd's job history: {_short(err)}") from err


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


def groups_of_clusters(clusters: Sequence[classad.ClassAd], deviants: Sequence[classad.ClassAd],
                       known: dict[int, JobGroup | None], clean: set[int]
                       ) -> tuple[tuple[JobGroup, ...], dict[int, JobGroup | None]]:
    """The demand groups, as groups_from_ads(rows_from_clusters(clusters, deviants)) makes them
    (merged by key, in the clusters' order, then the procs'); and, for the clusters in `clean`,
    the group each stands for (None: its jobs need no worker), kept for the next time. A cluster
    in `known` and `clean` is not worked out again: only its idle count is new."""
    taken: dict[int, int] = {}
    for row in deviants:
        if row.get("JobStatus") == IDLE and "ClusterId" in row:
            taken[int(row["ClusterId"])] = taken.get(int(row["ClusterId"]), 0) + int(row.get("JobCount", 0))
    keep: dict[int, JobGroup | None] = {}
    first: dict[str, JobGroup] = {}      # by key, the first group seen: the one the merged group is
    counts: dict[str, int] = {}

    def add(g: JobGroup, n: int) -> None:
        first.setdefault(g.key, g)
        counts[g.key] = counts.get(g.key, 0) + n
    for cluster in clusters:
        cid = int(cluster.get("ClusterId", -1))
        idle = int(cluster.get("JobsIdle", 0) or 0) - taken.get(cid, 0)
        if cid in clean and cid in known:
            group = known[cid]
        elif idle > 0:
            found = groups_from_ads(rows_from_clusters([cluster], []))
            group = found[0] if found else None
        else:
            continue
        if cid in clean:
            keep[cid] = group
        if group is not None and idle > 0:
            add(group, idle)
    for g in groups_from_ads(deviants):
        add(g, g.count)
    return tuple(g if g.count == counts[k] else replace(g, count=counts[k]) for k, g in first.items()), keep


def rows_from_clusters(clusters: Iterable[classad.ClassAd], deviants: Iterable[classad.ClassAd]
                       ) -> list[classad.ClassAd]:
    """Group-by rows (JobStatus, JobCount, the request) from cluster ads and the group-by rows of
    the procs that differ from their cluster: each cluster stands for its idle procs but those."""
    deviants = list(deviants)
    taken: dict[int, int] = {}
    for row in deviants:
        if row.get("JobStatus") == IDLE and "ClusterId" in row:
            cid = int(row["ClusterId"])
            taken[cid] = taken.get(cid, 0) + int(row.get("JobCount", 0))
    rows = []
    for cluster in clusters:
        idle = int(cluster.get("JobsIdle", 0) or 0) - taken.get(int(cluster.get("ClusterId", -1)), 0)
        if idle <= 0:
            continue
        row = classad.ClassAd()
        row.update(cluster)
        for attr in ("JobsIdle", "ClusterId"):
            if attr in row:
                del row[attr]
        row["JobStatus"], row["JobCount"] = IDLE, idle
        rows.append(row)
    return rows + deviants


def deviation_constraint(clusters: Iterable[classad.ClassAd]) -> str | None:
    """A constraint true for exactly the idle procs whose request could differ from their cluster
    ad's: one of PROC_ATTRIBUTES evaluates to another value, or Requirements unparses to another
    text (the key is made of its text). None when no cluster has an idle proc.

    The schedd evaluates it for every job, so it finds the job's cluster by a binary search on
    ClusterId (nested ifThenElse) and compares plain literals: a proc of a cluster looked at costs
    a few comparisons and one unparse of its Requirements; a proc of another, a few comparisons. A value only the text can say (an
    error, a list) is compared as text. A proc flagged that does not differ after all (1 against
    1.0) only costs its own group-by row, which merges with its cluster's group."""
    leaves = sorted(((int(c["ClusterId"]), _same_request(c)) for c in clusters
                     if int(c.get("JobsIdle", 0) or 0) > 0 and "ClusterId" in c), key=lambda x: x[0])
    if not leaves:
        return None

    def tree(items: list[tuple[int, str]]) -> str:
        if len(items) == 1:
            cid, differs = items[0]
            return f"(ClusterId == {cid} && {differs})"
        mid = len(items) // 2
        return f"ifThenElse(ClusterId < {items[mid][0]}, {tree(items[:mid])}, {tree(items[mid:])})"
    return f"JobStatus == {IDLE} && {tree(leaves)}"


def _same_request(cluster: classad.ClassAd) -> str:
    """'(A =!= v || ... || unparse(Requirements) =!= "...")': true for a proc of this cluster that differs."""
    tests = []
    for attr in PROC_ATTRIBUTES:
        value = _literal(cluster, attr)
        tests.append(f"{attr} =!= {value}" if value is not None
                     else f"unparse({attr}) =!= {classad.quote(str(cluster.lookup(attr)))}")
    if "Requirements" in cluster:
        tests.append(f"unparse(Requirements) =!= {classad.quote(str(cluster.lookup('Requirements')))}")
    else:
        tests.append("Requirements =!= undefined")
    return "(" + " || ".join(tests) + ")"


def _literal(ad: classad.ClassAd, attr: str) -> str | None:
    """The value `attr` evaluates to in `ad`, written as a ClassAd literal; None when only its text says it."""
    if attr not in ad:
        return "undefined"
    try:
        value = ad.eval(attr)
    except Exception:
        return None
    if value is classad.Value.Undefined:
        return "undefined"
    if isinstance(value, classad.Value):      # an error (the enum is an int: tested first)
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        return classad.quote(value)
    return None


def missing_references(ads: Iterable[classad.ClassAd], projection: Sequence[str]) -> list[str]:
    """Attributes of the job's own that a request refers to (Requirements' MY.x, a request_memory
    expression) and the projection did not ask for: without them the cluster's request would not
    evaluate here as it does in its procs."""
    asked = {a.lower() for a in projection}
    more: dict[str, str] = {}
    for ad in ads:
        for attr in ("Requirements", *PROC_ATTRIBUTES):
            if attr not in ad:
                continue
            try:
                refs = ad.externalRefs(ad.lookup(attr))
            except Exception:
                continue
            for ref in refs:
                name = ref[3:] if ref.lower().startswith("my.") else ref
                if "." not in name and name.lower() not in asked:
                    more.setdefault(name.lower(), name)
    return sorted(more.values())


def watched_attributes(clusters: Iterable[classad.ClassAd]) -> set[str]:
    """The attributes (lower case) that make a proc's request: PROC_ATTRIBUTES, Requirements, and
    what their expressions refer to in each cluster ad, through other attributes too (the default
    request_memory refers to MemoryUsage, which refers to ResidentSetSize). A proc that writes
    none of these asks what its cluster asks."""
    out = {a.lower() for a in ("Requirements", *PROC_ATTRIBUTES)}
    for ad in clusters:
        todo = [a for a in ("Requirements", *PROC_ATTRIBUTES) if a in ad]
        seen = set()
        while todo:
            attr = todo.pop()
            if attr.lower() in seen:
                continue
            seen.add(attr.lower())
            try:
                expr = ad.lookup(attr)
                refs = set(ad.externalRefs(expr)) | set(ad.internalRefs(expr))
            except Exception:
                continue
            for ref in refs:
                name = ref[3:] if ref.lower().startswith("my.") else ref
                if "." in name:
                    continue
                out.add(name.lower())
                if name in ad:
                    todo.append(name)
    return out


def written_clusters(lines: Iterable[str], watch: set[str]) -> set[int]:
    """The clusters whose request may have changed, from job queue log records
    (`103 <cluster>.<proc> <attribute> <value>` sets, `104 ... <attribute>` deletes): a watched
    attribute written to one of its procs, or to the cluster ad itself (`<cluster>.-1`)."""
    out = set()
    for line in lines:
        if not line.startswith(("103 ", "104 ")):
            continue
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[2].lower() not in watch:
            continue
        cluster, _, proc = parts[1].partition(".")
        try:
            c, p = int(cluster), int(proc)
        except ValueError:
            continue
        if c > 0 and p >= -1:
            out.add(c)
    return out


class QueueLog:
    """The schedd's job queue log, read from where it was last read: which clusters' requests
    were written since (written()), and whether anything at all was (mark()).

    The schedd writes every change to its queue there, one record a line, before it makes it,
    and rewrites the file now and then (a new file, whose first record, its sequence number, is
    another): then, as when the file cannot be read, written() says None: look at everything.
    The daemon and the schedd share the container, so the file is there; the daemon runs as
    root, who may read it."""

    def __init__(self, path: str):
        self.path = path
        self.head: bytes | None = None      # its first record: `107 <sequence number> CreationTimestamp <time>`
        self.offset = 0

    def mark(self) -> tuple | None:
        """What changes whenever the queue does: the file's inode, size and modification time."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def written(self, watch: set[str]) -> set[int] | None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.readline(200)
                if head != self.head or size < self.offset or size - self.offset > MAX_LOG_READ:
                    self.head, self.offset = head, size     # new to us (or too much to read): from its end
                    return None
                f.seek(self.offset)
                data = f.read(max(size - self.offset, 0))
        except OSError:
            self.head = None
            return None
        end = data.rfind(b"\n") + 1           # a record being written is read next time, whole
        self.offset += end
        return written_clusters(data[:end].decode("utf-8", "replace").splitlines(), watch)


def job_queue_log_path() -> str:
    """The schedd's job queue log, where HTCondor's configuration puts it."""
    return _param("JOB_QUEUE_LOG") or os.path.join(_param("SPOOL") or "", "job_queue.log")


def _param(name: str) -> str | None:
    try:
        return htcondor.param.get(name)
    except Exception:
        return None


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
    # undefined and error are an enum of int: not numbers
    if isinstance(value, (bool, classad.Value)) or not isinstance(value, (int, float)):
        return default
    return max(int(value), 0)


def stale_claim(ad: classad.ClassAd, now: float | None, stale_after: float = STALE_CLAIM) -> bool:
    """A claimed slot that has run no job for `stale_after` seconds (see STALE_CLAIM)."""
    if now is None or ad.get("Activity") != "Idle":
        return False
    entered = ad.get("EnteredCurrentActivity")
    return isinstance(entered, (int, float)) and not isinstance(entered, bool) and now - entered >= stale_after


def summarize_slots(ads: Iterable[classad.ClassAd], now: float | None = None) -> dict[str, SlotSummary]:
    """Our workers' slots by worker id. `now`: the time to judge stale claims by (none: no claim is)."""
    # each attribute read once per ad: at 10,000 workers every look-up costs ~5 ms a cycle
    acc: dict[str, dict] = {}
    for ad in ads:
        wid = ad.get("WorkerId")
        if not wid:
            continue
        a = acc.setdefault(wid, {"name": "", "claimed": 0, "stale": 0, "cpus": 0, "memory": 0, "disk": 0, "gpus": 0,
                                 "total": 0, "notice": ""})
        name = str(ad.get("Name", ""))
        daemon = name.split("@", 1)[1] if name.startswith("slot") and "@" in name else name
        a["name"] = a["name"] or daemon
        claimed = ad.get("State") == "Claimed"
        cpus = ad.get("Cpus", 0)
        if claimed and stale_claim(ad, now):
            a["stale"] += 1
        elif claimed:
            a["claimed"] += 1
        elif ad.get("SlotType") in ("Partitionable", "Static"):
            a["cpus"] += int(cpus)
            a["memory"] += int(ad.get("Memory", 0))
            a["disk"] += int(ad.get("Disk", 0))
            a["gpus"] += _int(ad, "GPUs", 0)
        a["total"] = max(a["total"], int(ad.get("TotalSlotCpus", cpus) or 0))
        # the boot script's notice watcher (config/ec2-user-data.sh): an interruption outranks a rebalance
        interrupted = ad.get("WorkerInterrupted")
        if isinstance(interrupted, str) and interrupted:
            a["notice"] = "spot"
        elif not a["notice"] and ad.get("WorkerRebalance") is True:
            a["notice"] = "rebalance"
    out = {}
    for wid, a in acc.items():
        free = (0, 0, 0, 0) if a["notice"] else (a["cpus"], a["memory"], a["disk"], a["gpus"])  # it takes no new job
        out[wid] = SlotSummary(wid, a["name"], a["claimed"], free[0], free[1], free[2], a["total"],
                               free_gpus=free[3], notice=a["notice"], stale_claims=a["stale"])
    return out
