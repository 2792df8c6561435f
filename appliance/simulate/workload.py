"""Workloads for the simulator: read from CSV or JSON, or exported from the schedd's history.

A workload is a list of jobs, each (submit time, request, duration). The columns
(CSV header, or JSON object keys) are:

    submit_time      seconds; absolute (an epoch) or relative: the earliest becomes 0
    request_cpus     whole number >= 1
    request_memory   MB, or with a unit as condor_submit takes it (2GB, 512M)
    duration         seconds the job runs once started, > 0
    request_disk     optional: KiB as HTCondor's RequestDisk, or with a unit (10MB); 0
    request_gpus     optional: whole number; 0
    count            optional: this many identical jobs; 1

Every problem is a WorkloadError naming the file, the row and the column, in one
line: a simulation of the wrong workload is worse than none.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REQUIRED = ("submit_time", "request_cpus", "request_memory", "duration")
OPTIONAL = ("request_disk", "request_gpus", "count")
COLUMNS = REQUIRED + OPTIONAL
MAX_JOBS = 10_000_000


class WorkloadError(Exception):
    """A workload that cannot be simulated: file, row (or key) and problem in one line."""


@dataclass(frozen=True)
class Job:
    """One job of a workload. submit is seconds from the workload's start."""
    submit: float
    cpus: int
    memory: int          # MB (RequestMemory)
    disk: int            # KiB (RequestDisk)
    duration: float      # seconds
    gpus: int = 0


# condor_submit's units: request_memory defaults to MB, request_disk to KiB
_UNIT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_KIB = {"K": 1, "M": 1024, "G": 1024 ** 2, "T": 1024 ** 3}


def _size(value: Any, default_unit: str) -> int:
    """A size as HTCondor reads request_memory (MB by default) or request_disk (KiB), in that default unit."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = _UNIT_RE.match(str(value))
        if not m:
            raise ValueError("expected a number, optionally with a unit K, M, G or T (e.g. 2048 or 2GB)")
        number, unit = float(m.group(1)), m.group(2).upper()
    if not math.isfinite(number) or number < 0:
        raise ValueError("expected a size >= 0")
    kib = number * _KIB[unit or default_unit]
    return int(math.ceil(kib / _KIB[default_unit]))


def _whole(value: Any, lo: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number >= {lo}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a whole number >= {lo}") from None
    if not math.isfinite(number) or number != int(number) or number < lo:
        raise ValueError(f"expected a whole number >= {lo}")
    return int(number)


def _seconds(value: Any, positive: bool) -> float:
    if isinstance(value, bool):
        raise ValueError("expected seconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not math.isfinite(number) or number < 0 or (positive and number <= 0):
        raise ValueError("expected a number of seconds " + ("> 0" if positive else ">= 0"))
    return number


_CHECKS = {
    "submit_time": lambda v: _seconds(v, positive=False),
    "request_cpus": lambda v: _whole(v, 1),
    "request_memory": lambda v: _size(v, "M"),
    "duration": lambda v: _seconds(v, positive=True),
    "request_disk": lambda v: _size(v, "K"),
    "request_gpus": lambda v: _whole(v, 0),
    "count": lambda v: _whole(v, 1),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def rows_to_jobs(rows: Iterable[tuple[str, Mapping[str, Any]]], source: str) -> list[Job]:
    """(where, row) pairs -> jobs sorted by submit time, relative to the earliest."""
    raw: list[tuple[float, int, int, int, float, int, int]] = []
    total = 0
    for where, row in rows:
        unknown = [k for k in row if k not in COLUMNS]
        if unknown:
            raise WorkloadError(f"{source}: {where}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
        values = {}
        for col in COLUMNS:
            value = row.get(col)
            if value is None or (isinstance(value, str) and not value.strip()):
                if col in REQUIRED:
                    raise WorkloadError(f"{source}: {where}: {col}: is required")
                continue
            try:
                values[col] = _CHECKS[col](value)
            except ValueError as err:
                raise WorkloadError(f"{source}: {where}: {col}: {err}, got {_shown(value)}") from None
        count = values.get("count", 1)
        total += count
        if total > MAX_JOBS:
            raise WorkloadError(f"{source}: {where}: more than {MAX_JOBS:,} jobs")
        raw.append((values["submit_time"], values["request_cpus"], values["request_memory"],
                    values.get("request_disk", 0), values["duration"], values.get("request_gpus", 0), count))
    if not raw:
        raise WorkloadError(f"{source}: no jobs")
    start = min(r[0] for r in raw)
    jobs = [Job(s - start, c, m, d, t, g) for s, c, m, d, t, g, n in raw for _ in range(n)]
    jobs.sort(key=lambda j: j.submit)      # stable: jobs submitted together keep their order
    return jobs


def parse_csv(text: str, source: str = "<csv>") -> list[Job]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames
    if not header:
        raise WorkloadError(f"{source}: empty: expected a header line naming the columns ({', '.join(REQUIRED)})")
    header = [h.strip() for h in header]
    reader.fieldnames = header
    for col in header:
        if col not in COLUMNS:
            raise WorkloadError(f"{source}: header: unknown column {col!r} (known: {', '.join(COLUMNS)})")
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise WorkloadError(f"{source}: header: missing column {missing[0]!r} (required: {', '.join(REQUIRED)})")

    def rows():
        for row in reader:
            where = f"row {reader.line_num}"     # the line in the file, header = line 1
            if None in row:
                raise WorkloadError(f"{source}: {where}: more fields than the header has columns")
            if all(v is None or not v.strip() for v in row.values()):
                continue                        # a blank line
            if any(v is None for v in row.values()):
                raise WorkloadError(f"{source}: {where}: fewer fields than the header has columns")
            yield where, row
    return rows_to_jobs(rows(), source)


def parse_json(text: str, source: str = "<json>") -> list[Job]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise WorkloadError(f"{source}: line {err.lineno}, column {err.colno}: not valid JSON: {err.msg}") from None
    if isinstance(data, dict) and set(data) == {"jobs"}:
        data = data["jobs"]
    if not isinstance(data, list):
        raise WorkloadError(f"{source}: expected a list of jobs (or {{\"jobs\": [...]}}), got {type(data).__name__}")

    def rows():
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise WorkloadError(f"{source}: job {i}: expected an object with {', '.join(REQUIRED)}, "
                                    f"got {_shown(row)}")
            yield f"job {i}", row
    return rows_to_jobs(rows(), source)


def load(path: str) -> list[Job]:
    """Read a workload file; its type from its name: .csv, or .json."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json"):
        raise WorkloadError(f"{path}: unknown workload file type {ext or '(none)'!r}: name it .csv or .json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise WorkloadError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise WorkloadError(f"{path}: is not UTF-8 text") from None
    return parse_csv(text, path) if ext == ".csv" else parse_json(text, path)


def to_csv(jobs: Sequence[Job]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["submit_time", "request_cpus", "request_memory", "request_disk", "request_gpus", "duration"])
    for j in jobs:
        w.writerow([_num(j.submit), j.cpus, j.memory, j.disk, j.gpus, _num(j.duration)])
    return out.getvalue()


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:.3f}"


# ---------------------------------------------------------------- the schedd's history

# what --from-history asks condor_history for
HISTORY_PROJECTION = ["ClusterId", "ProcId", "JobStatus", "JobUniverse", "QDate", "JobStartDate",
                      "JobCurrentStartDate", "CompletionDate", "RemoteWallClockTime", "NumJobStarts",
                      "RequestCpus", "RequestMemory", "RequestDisk", "RequestGPUs"]
COMPLETED = 4
NO_WORKER_UNIVERSES = {7, 9, 12}      # scheduler, grid, local: they never needed a worker


def _number(ad: Any, key: str) -> float | None:
    try:
        value = ad.eval(key) if hasattr(ad, "eval") else ad.get(key)
    except Exception:      # undefined, or an expression of a job that can no longer be evaluated
        value = ad.get(key) if hasattr(ad, "get") else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def jobs_from_history(ads: Iterable[Any]) -> tuple[list[Job], dict[str, int]]:
    """Jobs from condor_history ads: completed jobs that needed a worker. Returns the
    jobs and how many ads were skipped, by why.

    submit   QDate
    duration the last run: CompletionDate - JobCurrentStartDate (or JobStartDate for a
             job that started once), else RemoteWallClockTime / NumJobStarts
    request  RequestCpus, RequestMemory (MB), RequestDisk (KiB), RequestGPUs, as evaluated
    """
    rows: list[tuple[float, int, int, int, float, int]] = []
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for ad in ads:
        if _number(ad, "JobStatus") != COMPLETED:
            skip("not completed")
            continue
        if _number(ad, "JobUniverse") in NO_WORKER_UNIVERSES:
            skip("scheduler/local/grid universe")
            continue
        qdate = _number(ad, "QDate")
        if qdate is None:
            skip("no QDate")
            continue
        done = _number(ad, "CompletionDate")
        start = _number(ad, "JobCurrentStartDate") or _number(ad, "JobStartDate")
        duration = None
        if done and start and done > start:
            duration = done - start
        else:
            wall = _number(ad, "RemoteWallClockTime")
            starts = _number(ad, "NumJobStarts") or 1
            if wall and wall > 0:
                duration = wall / max(starts, 1)
        if not duration:
            skip("no run time")
            continue
        cpus = int(_number(ad, "RequestCpus") or 1)
        memory = int(_number(ad, "RequestMemory") or 0)
        disk = int(_number(ad, "RequestDisk") or 0)
        gpus = int(_number(ad, "RequestGPUs") or 0)
        rows.append((qdate, max(cpus, 1), max(memory, 0), max(disk, 0), duration, max(gpus, 0)))
    if not rows:
        return [], skipped
    first = min(r[0] for r in rows)
    jobs = sorted((Job(q - first, c, m, d, t, g) for q, c, m, d, t, g in rows), key=lambda j: j.submit)
    return jobs, skipped


def read_history(constraint: str = "true", limit: int = -1, since: float | None = None) -> tuple[list[Job], dict]:
    """The local schedd's history through the htcondor bindings (inside the appliance)."""
    import htcondor  # only here: the simulator itself needs no HTCondor daemons
    if since is not None:
        constraint = f"({constraint}) && QDate >= {int(since)}"
    try:
        ads = htcondor.Schedd().history(constraint, HISTORY_PROJECTION, match=limit)
        return jobs_from_history(ads)
    except Exception as err:
        raise WorkloadError(f"cannot read the schedd's history: {err}") from None
