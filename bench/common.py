"""Shared helpers for the benchmarks: run an appliance container, submit, time things.

The benchmarks use only the docker CLI and the standard library, so any user
with Docker can run them with a plain `python3 -m bench.<name>` from the
repository's root. They share the tests' polling loop, tests/waiting.py
(standard library only), rather than keep a copy of their own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.waiting import wait_cycles, wait_until

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
IMAGE = os.environ.get("APPLIANCE_IMAGE", "appliance:latest")


def sh(*args: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def build_image() -> float:
    t = time.monotonic()
    sh("docker", "build", "-q", "-t", IMAGE, str(REPO))
    return time.monotonic() - t


def parser(doc: str, out_help: str = "write the JSON here instead of bench/results/") -> argparse.ArgumentParser:
    """A benchmark's command line: its own options are added to this one's --no-build and --out."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-build", action="store_true", help=f"use the existing {IMAGE}")
    p.add_argument("--out", help=out_help)
    return p


def image_ready(args: argparse.Namespace) -> None:
    """Build the image from this checkout unless --no-build."""
    if not args.no_build:
        build_image()


class Appliance:
    """One appliance container for a benchmark run; removed on exit, with the
    worker containers it started, its anonymous volumes and its network."""

    def __init__(self, config: str, docker_socket: bool = False, network: str | bool | None = None,
                 extra: list[str] | None = None):
        tag = uuid.uuid4().hex[:8]
        self.name = f"bench-{tag}"
        self.network = None
        if network is True:    # a network of our own, removed on exit
            self.network = f"bench-net-{tag}"
            sh("docker", "network", "create", self.network)
            network = self.network
        self.cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        self.cfg.write(config)
        self.cfg.close()
        os.chmod(self.cfg.name, 0o644)
        args = ["docker", "run", "-d", "--name", self.name, "--hostname", self.name,
                "-v", f"{self.cfg.name}:/etc/appliance/appliance.yaml:ro"]
        if docker_socket:
            args += ["-v", "/var/run/docker.sock:/var/run/docker.sock"]
        if network:
            args += ["--network", network]
        self.started = time.monotonic()
        try:
            sh(*args, *(extra or []), IMAGE)
        except Exception:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pool = subprocess.run(["docker", "exec", self.name, "cat", "/var/lib/appliance/pool-id"],
                              capture_output=True, text=True).stdout.strip()
        subprocess.run(["docker", "rm", "-f", "-v", self.name], capture_output=True)
        if pool:   # worker containers of the docker cloud
            ids = sh("docker", "ps", "-aq", "--filter", f"label=appliance.pool={pool}", check=False).split()
            if ids:
                subprocess.run(["docker", "rm", "-f", "-v", *ids], capture_output=True)
        if self.network:
            subprocess.run(["docker", "network", "rm", self.network], capture_output=True)
        try:
            os.unlink(self.cfg.name)
        except FileNotFoundError:
            pass

    def python(self, code: str, timeout: float = 600, user: str = "root") -> str:
        """Run Python code inside the appliance (its bindings, its package) and return stdout."""
        proc = subprocess.run(["docker", "exec", "-i", "-u", user, self.name, "python3", "-"], input=code,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"python in {self.name} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        return proc.stdout

    def rss_mb(self, pattern: str) -> float:
        """Resident memory (MB, VmRSS from /proc) of the process whose command line contains pattern."""
        code = f"""
import os
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmd = open(f'/proc/{{pid}}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()
        if {pattern!r} in cmd and int(pid) != os.getpid():
            print([l for l in open(f'/proc/{{pid}}/status') if l.startswith('VmRSS')][0].split()[1]); break
    except OSError:
        pass
"""
        out = self.python(code).strip()
        return round(int(out) / 1024, 1) if out else 0.0

    def memory_mb(self) -> float:
        """The whole container's memory as Docker accounts it (docker stats)."""
        out = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", self.name).strip()
        return round(to_mb(out.split("/")[0].strip()), 1)

    def sh(self, cmd: str, user: str = "root", check: bool = True) -> str:
        return sh("docker", "exec", "-u", user, self.name, "bash", "-c", cmd, check=check)

    def status(self, *args: str) -> dict:
        out = sh("docker", "exec", self.name, "cloud_status", "--json", *args, check=False)
        return json.loads(out)

    def wait(self, what: str, predicate, timeout: float = 300, every: float = 0.2):
        """wait_until (tests/waiting.py), retrying while `docker exec` fails or its JSON is not there yet."""
        return wait_until(what, predicate, timeout, every, retry_on=(RuntimeError, ValueError, KeyError))

    def wait_cycles(self, n: int = 2, timeout: float = 300) -> int:
        """Wait until the scheduler daemon has completed n more cycles (its heartbeat's counter)."""
        return wait_cycles(lambda: self.status()["scheduler"].get("cycle"), n, timeout,
                           retry_on=(RuntimeError, ValueError, KeyError))

    def wait_ready(self) -> float:
        """Wait until a job can be submitted; returns seconds since `docker run`."""
        self.wait("the appliance", lambda: self.status()["scheduler"]["running"]
                  and "Total for all users" in self.sh("condor_q -allusers -totals", check=False), 120)
        return time.monotonic() - self.started

    def live_workers(self) -> list[dict]:
        return self.status("-m")["data"]


def to_mb(text: str) -> float:
    units = {"B": 1 / 2**20, "KiB": 1 / 1024, "kB": 1 / 1024, "MiB": 1, "MB": 1, "GiB": 1024, "GB": 1024}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[:-len(unit)]) * units[unit]
    return float(text)


def load() -> list[float]:
    """The host's load averages (1, 5, 15 min): this is a shared 2-core machine, so say how busy it was."""
    return [round(x, 2) for x in os.getloadavg()]


def stamp_job(directory: str, name: str = "job", named_outputs: bool = False) -> str:
    """A job that writes the time it starts executing (the worker's clock is the host's).

    named_outputs: the job names its output files (none but its stdout and stderr), as
    `transfer_output_files` does. Without that, HTCondor 23's starter sleeps one second
    after the input transfer (mtimes have one-second resolution, and it must tell which
    files the job changed), so such a job starts a second sooner."""
    named = "+TransferOutput = \\\"\\\"\\n" if named_outputs else ""
    return (f"mkdir -p {directory} && cd {directory} && "
            "printf '#!/bin/sh\\ndate +%%s.%%N\\nsleep ${1:-1}\\n' > stamp.sh && chmod +x stamp.sh && "
            f"printf 'executable = stamp.sh\\narguments = 1\\noutput = {name}.out\\nerror = {name}.err\\n{named}"
            "request_cpus = 1\\nrequest_memory = 128\\nrequest_disk = 10MB\\nqueue\\n' > job.sub")


def summary(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    def pct(p):
        k = (len(values) - 1) * p
        lo, hi = int(k), min(int(k) + 1, len(values) - 1)
        return values[lo] + (values[hi] - values[lo]) * (k - lo)
    return {"n": len(values), "min": round(values[0], 2), "p50": round(statistics.median(values), 2),
            "p95": round(pct(0.95), 2), "max": round(values[-1], 2), "mean": round(statistics.fmean(values), 2)}


def machine() -> dict:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "docker": sh("docker", "version", "--format", "{{.Server.Version}}").strip()}


def write_result(name: str, data: dict, out: str | None = None) -> Path:
    """Write bench/results/<name>.json (or `out`, e.g. for a smoke run that must not overwrite results)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
            "image": IMAGE, "load_at_end": load(), **data}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def table(rows: list[list], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)
