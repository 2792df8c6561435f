"""The `local` cloud: each worker is its own condor_master + startd, run as a
process inside the appliance, with its own name, directories, token and key.

It needs nothing outside the container, so a plain `docker run` scales.
"""
from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping

from ..model import Resource, ResourceState
from ..worker_role import install_accounts
from ..workerconf import CONDOR_DIRS, WorkerSpec, slot_user, worker_files
from .base import CloudError, Driver, ErrorKind
from .local_options import LocalOptions

log = logging.getLogger(__name__)

WORKERS_DIR = os.environ.get("APPLIANCE_WORKERS_DIR", "/var/lib/appliance/workers")
# where a job can leave files outside its sandbox: cleaned of a worker's slot accounts when it ends
SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
# useradd and userdel lock /etc/passwd; launches and removals run on several threads
_ACCOUNTS_LOCK = threading.Lock()


class LocalDriver(Driver):
    settings: LocalOptions

    def __init__(self, cloud, pool, pool_id, root: str = WORKERS_DIR):
        super().__init__(cloud, pool, pool_id)
        self.root = os.path.join(root, cloud.name)
        self._children: dict[str, subprocess.Popen] = {}
        # launch/terminate run on the act threads while list() reaps: one dict, one lock
        self._children_lock = threading.Lock()

    def condor_host(self) -> str:
        return "127.0.0.1"

    def home(self, worker_id: str) -> str:
        return os.path.join(self.root, worker_id)

    def launch(self, spec: WorkerSpec) -> str:
        home = self.home(spec.worker_id)
        try:
            # explicit modes: the daemon's umask keeps its own files private, but
            # the worker's condor daemons (user condor) must traverse these
            os.makedirs(self.root, exist_ok=True)
            os.chmod(self.root, 0o755)
            os.makedirs(home)
            os.chmod(home, 0o755)
            for sub, mode in CONDOR_DIRS.items():
                os.makedirs(os.path.join(home, sub))
                os.chmod(os.path.join(home, sub), mode)
            for sub in ("keys", "tokens.d"):
                os.makedirs(os.path.join(home, sub), mode=0o700)
            for rel, (content, mode) in worker_files(spec, home).items():
                path = os.path.join(home, rel)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.chmod(path, mode)     # the daemon's umask (007) must not narrow the job wrapper's mode
            condor_gid = _chown_to_condor(home, CONDOR_DIRS)
            # its jobs run as accounts of its own, inside the appliance: never as their owner,
            # never as an account of another worker or of the appliance
            with _ACCOUNTS_LOCK:
                install_accounts(home, spec.worker_id, spec.size.cpus, condor_gid)
            err = open(os.path.join(home, "log", "master.stderr"), "ab")
            proc = subprocess.Popen(
                ["condor_master", "-f"],
                env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                     "CONDOR_CONFIG": os.path.join(home, "condor_config")},
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True,   # a restart of the scheduler must not take its workers along
                cwd=home,
            )
            err.close()
        except FileExistsError:
            raise CloudError(ErrorKind.CONFIG, f"worker directory {home} already exists") from None
        except OSError as e:
            raise CloudError(ErrorKind.OTHER, f"cannot start a local worker: {e}") from None
        with self._children_lock:
            self._children[spec.worker_id] = proc
        with open(os.path.join(home, "pid"), "w") as f:
            f.write(f"{proc.pid} {_start_time(proc.pid)}\n")
        return f"pid:{proc.pid}"

    def list(self) -> Mapping[str, Resource]:
        with self._children_lock:
            for wid, proc in list(self._children.items()):
                if proc.poll() is not None:      # reap our exited masters
                    del self._children[wid]
        out: dict[str, Resource] = {}
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return out
        for wid in names:
            pid, started = _read_pid(self.home(wid))
            if pid is None:
                # the scheduler may have died between starting the master and
                # writing its pid file: find it by the config it was started with
                found = _started_with(self.home(wid))
                if found:
                    out[wid] = Resource(wid, f"pid:{min(found)}", ResourceState.RUNNING)
                else:
                    out[wid] = Resource(wid, "", ResourceState.EXITED, "its process was never started")
            elif _alive(pid, started):
                out[wid] = Resource(wid, f"pid:{pid}", ResourceState.RUNNING)
            else:
                out[wid] = Resource(wid, f"pid:{pid}", ResourceState.EXITED, "its condor_master has exited")
        return out

    def terminate(self, worker_id: str, resource_id: str) -> None:
        home = self.home(worker_id)
        pid, started = _read_pid(home)
        if pid is not None and _alive(pid, started):
            family = [pid, *_descendants(pid)]
            _signal(family, signal.SIGQUIT)     # fast shutdown of the master and its daemons
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(_alive(p) for p in family):
                self._reap(worker_id)
                time.sleep(0.2)
            _signal([p for p in family if _alive(p)] + _descendants(pid), signal.SIGKILL)
        self._reap(worker_id)
        _kill_strays(home)
        _signal(_started_with(home), signal.SIGKILL)   # a master whose pid file was never written
        _remove_accounts(worker_id)
        shutil.rmtree(home, ignore_errors=True)

    def _reap(self, worker_id: str) -> None:
        with self._children_lock:
            proc = self._children.get(worker_id)
            if proc is not None and proc.poll() is not None:
                del self._children[worker_id]


def _chown_to_condor(home: str, subdirs) -> int:
    """The condor daemons' directories are theirs; their config is root's, readable by group condor."""
    try:
        pw = pwd.getpwnam("condor")
    except KeyError:
        return 0
    for sub in subdirs:
        os.chown(os.path.join(home, sub), pw.pw_uid, pw.pw_gid)
    os.chown(os.path.join(home, "condor_config"), 0, pw.pw_gid)
    return pw.pw_gid


def _accounts_of(worker_id: str) -> list[pwd.struct_passwd]:
    """The worker's slot accounts that exist (whatever its size was: slot1-, slot2-, ...)."""
    suffix = slot_user(worker_id, 1).split("-", 1)[1]
    return [pw for pw in pwd.getpwall()
            if pw.pw_name.startswith("slot") and pw.pw_name.split("-", 1)[-1] == suffix
            and pw.pw_name.split("-", 1)[0][4:].isdigit()]


def _remove_accounts(worker_id: str) -> None:
    """A worker's slot accounts go with it: first every process still running as one
    of them (a job that escaped its starter must not outlive its worker), then the
    files they left in the shared writable directories (a later account may get the
    same uid), then the accounts."""
    accounts = _accounts_of(worker_id)
    if not accounts:
        return
    uids = {pw.pw_uid for pw in accounts}
    _signal([p for p in _pids() if _uid(p) in uids], signal.SIGKILL)
    for top in SHARED_WRITABLE:
        _remove_owned(top, uids)
    with _ACCOUNTS_LOCK:
        for pw in accounts:
            proc = subprocess.run(["userdel", pw.pw_name], capture_output=True, text=True)
            if proc.returncode != 0:
                log.warning("could not remove account %s: %s", pw.pw_name, (proc.stderr or proc.stdout).strip()[:200])


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _remove_owned(top: str, uids: set[int]) -> None:
    try:
        dev = os.lstat(top).st_dev
    except OSError:
        return
    for root, dirs, files in os.walk(top, topdown=False):
        for name in files + dirs:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if st.st_dev != dev or st.st_uid not in uids:
                    continue
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
            except OSError:
                pass


def _read_pid(home: str) -> tuple[int | None, int | None]:
    try:
        with open(os.path.join(home, "pid")) as f:
            pid, started = f.read().split()
        return int(pid), int(started)
    except (OSError, ValueError):
        return None, None


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces
    return data[data.rfind(")") + 2:].split()


def _start_time(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[19]) if fields else 0


def _alive(pid: int, started: int | None = None) -> bool:
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return started is None or int(fields[19]) == started   # guards against pid reuse


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _signal(pids, sig) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_strays(home: str) -> None:
    """A worker's condor_procd outlives its master; it names the worker's run dir."""
    marker = os.path.join(home, "run").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    os.kill(int(entry), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _started_with(home: str) -> list[int]:
    """Processes of a worker found by the CONDOR_CONFIG in their environment
    (the master and every daemon it started inherit it)."""
    marker = f"CONDOR_CONFIG={os.path.join(home, 'condor_config')}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            pass
    return [p for p in found if _alive(p)]
