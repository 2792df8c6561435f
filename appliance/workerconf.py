"""The files that make a machine one of our workers, whatever the cloud.

A worker is a condor_master + condor_startd with its own name, directories,
token and signing key. Each driver only decides where these files go (a
directory inside the appliance, a container, an instance's user-data).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .condor import admin_identity, worker_key_name
from .config import CloudConfig
from .matching import worker_start
from .shapes import Shape

# A worker whose scheduler is gone still goes away on its own: no claim for
# this long (seconds) and the startd exits, and with it the master.
NOCLAIM_SHUTDOWN_DEFAULT = 1200

# The worker's directories below its home, with their modes. Only `execute` is
# open: each job's sandbox in it belongs to the job's own account (mode 0700).
# Logs, spool, locks and sockets are the condor daemons' alone.
CONDOR_DIRS = {"log": 0o700, "spool": 0o700, "execute": 0o755, "lock": 0o700, "run": 0o700}
# an account no worker ever has: a slot without an account of its own fails its
# job rather than run it as an account another slot shares (`nobody`)
NO_SHARED_SLOT_USER = "no-shared-slot-user"
# Written on the worker by its installer (slot_accounts_config): one SLOT1_<n>_USER
# line per cpu, so that the size of what a worker is sent (EC2 user-data: 16 KB at
# most) does not grow with its cpus. The condor config includes it.
SLOT_ACCOUNTS_FILE = "slot-accounts.conf"

# Run by the starter as the job's own slot account, in place of the job
# (USER_JOB_WRAPPER): it removes what an earlier job of this account left outside
# its sandbox, so that no job reads another's leftovers, then execs the job.
JOB_WRAPPER = """#!/bin/sh
for d in /tmp /var/tmp /dev/shm /run/lock; do
  find "$d" -xdev -mindepth 1 -user "$(id -u)" -type d -exec chmod u+rwx {} + 2>/dev/null
  find "$d" -xdev -mindepth 1 -user "$(id -u)" -delete 2>/dev/null
done
exec "$@"
"""


@dataclass(frozen=True)
class WorkerSpec:
    worker_id: str
    cloud: CloudConfig
    pool: str
    condor_host: str          # how this worker reaches the central manager (host or host:port)
    token: str = ""           # secret: the worker's pool token
    key: bytes = b""          # secret: the worker's own signing key
    noclaim_shutdown: int = NOCLAIM_SHUTDOWN_DEFAULT
    # the size the scheduler chose (one of the cloud's shapes); None: the cloud's first
    shape: Shape | None = None
    # the name of the image the scheduler chose (one of the cloud's images); "": its default
    image: str = ""
    # the most its cloud may charge per hour (a job's +VMMaximumPrice; spot launches bid it)
    max_price: float | None = None

    @property
    def image_name(self) -> str:
        return self.image or self.cloud.default_image

    @property
    def image_ref(self) -> str:
        """What the worker runs: an image reference (docker, swarm; ec2 with worker_image) or an AMI."""
        return self.cloud.image_ref(self.image_name)

    @property
    def size(self) -> Shape:
        """What the worker is: its cpus, memory, disk, gpus, attributes and shape name.
        Every driver sizes its container, process or instance from this."""
        return self.shape if self.shape is not None else self.cloud.shapes[0]

    def __repr__(self) -> str:   # never let a secret reach a log line
        return (f"WorkerSpec({self.worker_id!r}, cloud={self.cloud.name!r}, shape={self.size.name!r}, "
                f"condor_host={self.condor_host!r})")


# the device condor_gpu_discovery -simulate reports (2: a Tesla V100-PCIE-16GB)
SIMULATED_GPU_TYPE = 2


def simulated_gpus(cloud: CloudConfig) -> bool:
    """The cloud's simulate_gpus option (only the types whose workers the engine or host equips)."""
    return bool(getattr(cloud.settings, "simulate_gpus", False))


def gpu_lines(gpus: int, simulate: bool) -> list[str]:
    """The condor config of a worker with `gpus` GPUs: HTCondor's GPU discovery, which
    advertises the devices and assigns them to jobs (CUDA_VISIBLE_DEVICES); simulated
    devices only when asked, never as a silent stand-in for missing ones."""
    if not gpus:
        return []
    lines = ["use feature : GPUs"]
    if simulate:
        lines.append(f"GPU_DISCOVERY_EXTRA = $(GPU_DISCOVERY_EXTRA) -simulate:{SIMULATED_GPU_TYPE},{gpus}")
    return lines


def slot_user(worker_id: str, n: int) -> str:
    """The account the jobs of dynamic slot n (slot1_n) run as: one per slot, and
    unique per worker, because local workers share the appliance's accounts.
    At most 32 characters (useradd's limit): a long worker id keeps its last 20,
    which hold its random part. config/ec2-user-data.sh names them the same way."""
    name = f"slot{n}-{worker_id}"
    return name if len(name) <= 32 else f"slot{n}-{worker_id[-20:]}"


def slot_users(worker_id: str, cpus: int) -> list[str]:
    """One account per dynamic slot. Each dynamic slot holds at least one cpu (the
    startd rounds requests up to whole cpus) and takes the lowest free number, so
    slots 1..cpus are all a worker ever has."""
    return [slot_user(worker_id, n) for n in range(1, max(1, cpus) + 1)]


def slot_accounts_config(worker_id: str, cpus: int) -> str:
    """The worker's SLOT_ACCOUNTS_FILE: which account each dynamic slot's jobs run as."""
    return "".join(f"SLOT1_{n}_USER = {user}\n" for n, user in enumerate(slot_users(worker_id, cpus), 1))


def config_value(config: str, name: str) -> str | None:
    """A plain `NAME = value` of a generated condor config (what an installer needs from it)."""
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _classad_literal(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def condor_config(spec: WorkerSpec, home: str) -> str:
    c = spec.cloud
    size = spec.size
    host = spec.condor_host if ":" in spec.condor_host else f"{spec.condor_host}:9618"
    extra = dict(size.attributes)
    if c.vm_type:
        extra = {"VMType": c.vm_type, **extra}
    attrs = " ".join(["ApplianceWorker", "WorkerId", "CloudName", "CloudType", "WorkerShape", "WorkerImage",
                      "WorkerImageRef", *extra])
    lines = [
        f"# Generated by the appliance for worker {spec.worker_id} of cloud {c.name}. Do not edit.",
        "RELEASE_DIR = /usr",
        "BIN = $(RELEASE_DIR)/bin",
        "SBIN = $(RELEASE_DIR)/sbin",
        "LIB = $(RELEASE_DIR)/lib/condor",
        "LIBEXEC = $(RELEASE_DIR)/libexec/condor",
        f"LOCAL_DIR = {home}",
        "LOG = $(LOCAL_DIR)/log",
        "SPOOL = $(LOCAL_DIR)/spool",
        "EXECUTE = $(LOCAL_DIR)/execute",
        "LOCK = $(LOCAL_DIR)/lock",
        "RUN = $(LOCAL_DIR)/run",
        "DAEMON_SOCKET_DIR = $(RUN)",
        "",
        f"CONDOR_HOST = {host}",
        "COLLECTOR_HOST = $(CONDOR_HOST)",
        f"UID_DOMAIN = {spec.pool}",
        f"TRUST_DOMAIN = {spec.pool}",
        # never share a filesystem with the submit side: every job gets its sandbox by file transfer
        f"FILESYSTEM_DOMAIN = {spec.worker_id}.{spec.pool}",
        "",
        "# Only what a worker needs: no shared port, no benchmarks, no sharing a host's sessions.",
        "DAEMON_LIST = MASTER, STARTD",
        "USE_SHARED_PORT = False",
        f"MASTER_NAME = {spec.worker_id}",
        f"STARTD_NAME = {spec.worker_id}",
        "RUNBENCHMARKS = False",
        # Start-up trimmed for speed (bench/latency.py): the master otherwise sleeps 1 s
        # for kernel tuning it cannot do in a container, and the startd initialises the
        # mips/kflops benchmark cron jobs nobody reads here.
        "ENABLE_KERNEL_TUNING = False",
        "BENCHMARKS_JOBLIST =",
        "STARTD_CRON_JOBLIST =",
        "SEC_USE_FAMILY_SESSION = False",
        # outbound only: the central manager reaches this worker through its own connection
        "CCB_ADDRESS = $(COLLECTOR_HOST)",
        "",
        "# Security: our token to the central manager; only the appliance's admin may command us.",
        "SEC_DEFAULT_AUTHENTICATION = REQUIRED",
        "SEC_DEFAULT_ENCRYPTION = REQUIRED",
        "SEC_DEFAULT_INTEGRITY = REQUIRED",
        "SEC_DEFAULT_AUTHENTICATION_METHODS = IDTOKENS",
        "SEC_CLIENT_AUTHENTICATION_METHODS = IDTOKENS",
        "SEC_PASSWORD_DIRECTORY = $(LOCAL_DIR)/keys",
        f"SEC_TOKEN_ISSUER_KEY = {worker_key_name(spec.worker_id)}",
        "SEC_TOKEN_SYSTEM_DIRECTORY = $(LOCAL_DIR)/tokens.d",
        "SEC_TOKEN_DIRECTORY = $(LOCAL_DIR)/tokens.d",
        "SEC_ENABLE_TOKEN_REQUEST = False",
        "SEC_ENABLE_TOKEN_FETCH = False",
        f"ALLOW_ADMINISTRATOR = {admin_identity(spec.pool)}",
        f"ALLOW_DAEMON = {admin_identity(spec.pool)}",
        f"ALLOW_WRITE = {admin_identity(spec.pool)}",
        f"ALLOW_READ = {admin_identity(spec.pool)}",
        "",
        "# What we advertise, and the size the scheduler planned for.",
        "ApplianceWorker = True",
        f"WorkerId = {_classad_literal(spec.worker_id)}",
        f"CloudName = {_classad_literal(c.name)}",
        f"CloudType = {_classad_literal(c.type)}",
        f"WorkerShape = {_classad_literal(size.name)}",
        f"WorkerImage = {_classad_literal(spec.image_name)}",
        f"WorkerImageRef = {_classad_literal(spec.image_ref)}",
        *[f"{k} = {_classad_literal(v)}" for k, v in extra.items()],
        f"STARTD_ATTRS = $(STARTD_ATTRS) {attrs}",
        f"MASTER_ATTRS = $(MASTER_ATTRS) {attrs}",
        f"NUM_CPUS = {size.cpus}",
        f"MEMORY = {size.memory}",
        # a shape with GPUs: the startd finds the machine's own and hands them to jobs; with
        # simulate_gpus (demos and tests) HTCondor's own discovery invents that many instead
        *gpu_lines(size.gpus, simulated_gpus(c)),
        "NUM_SLOTS_TYPE_1 = 1",
        "SLOT_TYPE_1 = 100%",
        "SLOT_TYPE_1_PARTITIONABLE = True",
        "",
        "# Jobs are never suspended, preempted or evicted here; +TargetClouds, the image and",
        "# cloudscheduler's +VMType, +VMInstanceType and least sizes are honoured.",
        f"START = {worker_start(size)}",
        "SUSPEND = False",
        "PREEMPT = False",
        "KILL = False",
        "WANT_SUSPEND = False",
        "WANT_VACATE = False",
        "MAXJOBRETIREMENTTIME = 365 * 24 * 3600",
        "",
        "# Jobs run as their slot's own account (slot<n>-<worker id>), never as their owner nor as",
        "# one two slots share: no job reads or signals another's files or processes. The accounts",
        "# are dedicated: the starter kills what one left running when its job ends, and the wrapper",
        "# removes what an earlier job of the account left outside its sandbox.",
        "STARTER_ALLOW_RUNAS_OWNER = False",
        f"NOBODY_SLOT_USER = {NO_SHARED_SLOT_USER}",
        "DEDICATED_EXECUTE_ACCOUNT_REGEXP = slot[0-9]+-.+",
        "USER_JOB_WRAPPER = $(LOCAL_DIR)/job-wrapper",
        f"include : $(LOCAL_DIR)/{SLOT_ACCOUNTS_FILE}",
        "",
        "# Re-advertise often enough that a restarted collector knows us again within a minute,",
        "# and re-register with its CCB soon (default 60 s): until then nobody can reach us.",
        "UPDATE_INTERVAL = 30",
        "CCB_RECONNECT_TIME = 10",
        "MASTER_UPDATE_INTERVAL = 30",
        "UPDATE_OFFSET = 0",
        "",
        "# Backstop: if nobody claims us for this long, shut down (and the machine with us).",
        f"STARTD_NOCLAIM_SHUTDOWN = {spec.noclaim_shutdown}",
        "MASTER.DAEMON_SHUTDOWN = STARTD_StartTime =?= 0",
        "",
    ]
    return "\n".join(lines)


def worker_files(spec: WorkerSpec, home: str) -> Mapping[str, tuple[bytes, int]]:
    """Relative path -> (content, mode) of everything a worker needs at `home`.

    The condor config is for root and the condor group only (the installer makes
    it group condor): jobs run as slot accounts and read none of these files."""
    return {
        "condor_config": (condor_config(spec, home).encode(), 0o640),
        "job-wrapper": (JOB_WRAPPER.encode(), 0o755),
        "tokens.d/pool": ((spec.token + "\n").encode(), 0o600),
        f"keys/{worker_key_name(spec.worker_id)}": (spec.key, 0o600),
    }
