"""Could a worker of this cloud, of this shape, run these jobs? ClassAd matching, no I/O.

Each shape of each cloud has a template machine ad: what a fresh, empty worker
of that shape will advertise (WorkerShape names it). A job group matches a
shape when the job's Requirements and the worker's START (which enforces
+TargetClouds) accept each other, exactly as the negotiator will decide once
the worker exists; a cloud can run the group when one of its shapes can.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import classad
import htcondor  # noqa: F401  (registers HTCondor's ClassAd functions: stringListIMember, split, ...)

from . import asks
from .config import CloudConfig
from .model import JobGroup
from .shapes import DISK_QUANTUM_KB, MEMORY_QUANTUM_MB, Shape, rounded_disk, rounded_memory  # noqa: F401

# The worker's START: +TargetClouds, then what the job asks of its worker (asks.py).
# Also written into every worker's condor config (workerconf.py), so the negotiator
# enforces what we matched on.
TARGET_CLOUDS_START = ("(TARGET.TargetClouds =?= undefined) || "
                       "stringListIMember(MY.CloudName, TARGET.TargetClouds)")


def worker_start(shape: Shape) -> str:
    """The START expression of a worker of this shape."""
    return " && ".join([f"({TARGET_CLOUDS_START})",
                        *asks.start_clauses(shape.cpus, shape.memory, shape.disk, shape.price)])


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine, machine)


# templates by (cloud name, shape name)
TemplateKey = tuple[str, str]


def template_ad(cloud: CloudConfig, pool_name: str = "appliance", shape: Shape | None = None) -> classad.ClassAd:
    """What a fresh worker of `shape` (by default the cloud's first) will advertise."""
    size = shape or cloud.shapes[0]
    ad = classad.ClassAd()
    ad["MyType"] = "Machine"
    ad["TargetType"] = "Job"
    ad["Name"] = f"slot1@{cloud.name}-{size.name}-template"
    ad["Arch"] = _arch()
    ad["OpSys"] = "LINUX"
    ad["Cpus"] = size.cpus
    ad["TotalCpus"] = size.cpus
    ad["Memory"] = size.memory
    ad["TotalMemory"] = size.memory
    ad["Disk"] = size.disk * 1024
    if size.gpus:
        ad["GPUs"] = size.gpus
        ad["TotalGPUs"] = size.gpus
        # as HTCondor's GPU discovery lists the devices, for require_gpus (countMatches over them)
        ad["AvailableGPUs"] = [gpu_properties(size.attributes, n) for n in range(size.gpus)]
    ad["HasFileTransfer"] = True
    ad["FileSystemDomain"] = f"{cloud.name}-template.{pool_name}"
    ad["UidDomain"] = pool_name
    ad["SlotType"] = "Partitionable"
    ad["ApplianceWorker"] = True
    ad["WorkerId"] = f"{cloud.name}-template"
    ad["CloudName"] = cloud.name
    ad["CloudType"] = cloud.type
    ad["WorkerShape"] = size.name
    ad["WorkerImage"] = cloud.default_image
    ad["WorkerImageRef"] = cloud.image_ref(cloud.default_image)
    if cloud.vm_type:
        ad["VMType"] = cloud.vm_type
    for key, value in size.attributes.items():
        ad[key] = value
    ad["START"] = classad.ExprTree(worker_start(size))
    ad["Requirements"] = classad.ExprTree("START")
    return ad


# a shape's GPU attributes, as the devices' own properties: CUDACapability -> Capability
GPU_ATTRIBUTE_PREFIXES = ("CUDA", "GPUs_")


def gpu_properties(attributes: Mapping, n: int) -> classad.ClassAd:
    """What discovery would say of device n of a shape whose attributes describe its GPUs
    (CUDACapability: 7.0 -> Capability = 7.0), for matching require_gpus before it exists."""
    props = classad.ClassAd()
    props["Id"] = f"GPU-{n}"
    for key, value in attributes.items():
        for prefix in GPU_ATTRIBUTE_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                props[key[len(prefix):]] = value
    return props


def template_ads(clouds: Iterable[CloudConfig], pool_name: str = "appliance") -> dict[TemplateKey, classad.ClassAd]:
    """One template ad per (cloud, shape)."""
    return {(c.name, s.name): template_ad(c, pool_name, s) for c in clouds for s in c.shapes}


def fits(cpus: int, memory_mb: int, disk_kb: int, group: JobGroup, gpus: int = 0) -> int:
    """How many jobs of `group` fit in the given free resources (GPUs count only for jobs asking some)."""
    counts = [cpus // max(group.cpus, 1)]
    if group.gpus > 0:
        counts.append(gpus // group.gpus)
    mem = rounded_memory(group.memory)
    if mem:
        counts.append(memory_mb // mem)
    disk = rounded_disk(group.disk)
    if disk:
        counts.append(disk_kb // disk)
    return max(min(counts), 0)


def per_worker(shape: Shape, group: JobGroup) -> int:
    """How many jobs of `group` one fresh worker of this shape holds."""
    return fits(shape.cpus, shape.memory, shape.disk * 1024, group, shape.gpus)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    # the Requirements clauses a worker fails, each with what the worker has there
    clauses: tuple[tuple[str, str], ...] = ()


def can_run(group: JobGroup, cloud: CloudConfig, templates: Mapping[TemplateKey, classad.ClassAd]) -> Verdict:
    """Could a fresh worker of some shape of `cloud` ever run a job of `group`? And if not, why."""
    return cloud_verdict(group, cloud, shape_verdicts(group, cloud, templates))


def shape_verdicts(group: JobGroup, cloud: CloudConfig,
                   templates: Mapping[TemplateKey, classad.ClassAd]) -> dict[str, Verdict]:
    """For each shape of `cloud` (by name): could a fresh worker of it run a job of `group`?"""
    return {s.name: shape_can_run(group, cloud, s, templates[(cloud.name, s.name)]) for s in cloud.shapes}


def cloud_verdict(group: JobGroup, cloud: CloudConfig, verdicts: Mapping[str, Verdict]) -> Verdict:
    """The cloud can run the group if one of its shapes can; if none can, why (naming each shape's size)."""
    if any(v.ok for v in verdicts.values()):
        return Verdict(True)
    if len(verdicts) == 1:
        return next(iter(verdicts.values()))
    reasons = {v.reason for v in verdicts.values()}
    if len(reasons) == 1 and not next(iter(verdicts.values())).clauses:
        return next(iter(verdicts.values()))        # the same on every shape (an image, a +VMType): once
    if all(v.reason.startswith("asks for") for v in verdicts.values()):
        sizes = "; ".join(f"{s.name} {_size(s)}" for s in cloud.shapes)
        return Verdict(False, f"{_asks(group)}; its shapes have: {sizes}")
    if all(v.reason.startswith((*ASKS_PREFIXES, "asks for")) for v in verdicts.values()):
        return Verdict(False, "; ".join(f"{name}: {v.reason}" for name, v in verdicts.items()))
    if any(v.reason.startswith("+TargetClouds") for v in verdicts.values()):
        return next(iter(verdicts.values()))
    failing = {name: v for name, v in verdicts.items() if v.clauses}
    if failing:
        everywhere = [c for c, _ in next(iter(failing.values())).clauses
                      if all(c in dict(v.clauses) for v in failing.values())]
        if everywhere:
            return Verdict(False, "Requirements: " + "; ".join(
                f"`{c}` fails on every shape that fits (" + "; ".join(
                    f"{name} has {dict(v.clauses)[c]}" for name, v in failing.items() if dict(v.clauses)[c]) + ")"
                for c in everywhere).replace(" ()", ""))
        return Verdict(False, "Requirements: " + "; ".join(f"on {name}, " + _clauses(v.clauses)
                                                          for name, v in failing.items()))
    if any(v.reason == START_REFUSES for v in verdicts.values()):
        return Verdict(False, START_REFUSES)
    return Verdict(False, f"Requirements do not match its workers of any shape that fits: {group.requirements}")


def shape_can_run(group: JobGroup, cloud: CloudConfig, shape: Shape, template: classad.ClassAd) -> Verdict:
    """Could a fresh worker of `cloud` of this shape ever run a job of `group`? And if not, why."""
    if group.target_clouds is not None and cloud.name not in group.target_clouds:
        return Verdict(False, f"+TargetClouds is {','.join(group.target_clouds)}")
    image, no_image = asks.image_for(group.asks, cloud.name, cloud.images)
    if image is None:
        return Verdict(False, no_image)
    refused = asks.refusal(group.asks, cloud.name, cloud.vm_type, shape.name, shape.cpus, shape.memory, shape.disk,
                           shape.price)
    if refused:
        return Verdict(False, refused)
    if per_worker(shape, group) < 1:
        return Verdict(False, f"{_asks(group)}; its workers have {_size(shape)}")
    if image != cloud.default_image:        # the worker launched for it runs that image
        template = classad.ClassAd(str(template))
        template["WorkerImage"] = image
        template["WorkerImageRef"] = cloud.image_ref(image)
    if group.ad is not None and not _matches(group.ad, template):
        return why_not(group.ad, template)
    return Verdict(True)


START_REFUSES = "its workers' START refuses it"
# how asks.refusal() reasons begin (shape by shape, they are listed with each shape's name)
ASKS_PREFIXES = ("+VM", "+WorkerImage", "shape ")


def why_not(job: classad.ClassAd, machine: classad.ClassAd) -> Verdict:
    """Why a job does not match a worker, as condor_q -better-analyze says it: the clauses of
    its Requirements the worker fails, each with what the worker has ("Requirements:
    `TARGET.GPUs >= RequestGPUs` fails (its workers have GPUs = 0)"); else the worker's own
    START (or Requirements) refuses the job."""
    failing = failing_clauses(job, machine)
    if failing:
        return Verdict(False, "Requirements: " + _clauses(failing, "its workers have "), tuple(failing))
    if _matches_one_way(job, machine):
        return Verdict(False, START_REFUSES)
    return Verdict(False, f"Requirements do not match its workers: {str(job.lookup('Requirements'))}")


def _clauses(failing, has: str = "") -> str:
    return "; ".join(f"`{c}` fails" + (f" ({has}{values})" if values else "") for c, values in failing)


def failing_clauses(job: classad.ClassAd, machine: classad.ClassAd) -> list[tuple[str, str]]:
    """Each top-level `&&` clause of the job's Requirements the machine fails, with the
    machine's values of the attributes it names ('GPUs = 0')."""
    try:
        requirements = job.lookup("Requirements")
    except KeyError:
        return []
    out = []
    for clause in conjuncts(str(requirements)):
        trial = classad.ClassAd(str(job))
        try:
            trial["Requirements"] = classad.ExprTree(clause)
            ok = bool(machine.matches(trial))       # X.matches(Y): Y's Requirements, evaluated against X
            refs = [r.split(".", 1)[-1] for r in job.externalRefs(classad.ExprTree(clause))]
        except Exception:       # a clause the library cannot evaluate on its own: say it as it is
            ok, refs = False, []
        if not ok:
            out.append((clause, ", ".join(_has(machine, r) for r in dict.fromkeys(refs))))
    return out


def conjuncts(expr: str) -> list[str]:
    """The top-level `&&` clauses of an expression (outside parentheses and strings),
    each without the parentheses around the whole of it."""
    if _top_level(expr, "||"):
        return [_unwrap(expr.strip())]     # a || b && c is a || (b && c): no clause must hold alone
    return [_unwrap(p.strip()) for p in _top_level(expr, "&&") or [expr] if p.strip()]


def _top_level(expr: str, op: str) -> list[str]:
    """expr split at `op` outside parentheses and strings; [] when there is no such `op`."""
    parts, start = [], 0
    for i, depth in _scan(expr):
        if depth == 0 and i >= start and expr.startswith(op, i):
            parts.append(expr[start:i])
            start = i + len(op)
    return parts + [expr[start:]] if parts else []


def _unwrap(clause: str) -> str:
    """'(a && b)' -> 'a && b', when the parentheses enclose the whole clause."""
    while clause.startswith("(") and clause.endswith(")") and _balanced(clause[1:-1]):
        clause = clause[1:-1].strip()
    return clause


def _balanced(inner: str) -> bool:
    """Its parentheses balance without going below zero: the pair around it encloses it all."""
    depths = [depth for _, depth in _scan(inner)]
    return min(depths, default=0) >= 0 and _depth_after(inner) == 0


def _scan(expr: str):
    """(index, bracket depth before it) of each character outside string literals."""
    depth, quote, escaped = 0, False, False
    for i, ch in enumerate(expr):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quote = False
            continue
        if ch == '"':
            quote = True
            continue
        if ch in ")]}":
            depth -= 1
        yield i, depth
        if ch in "([{":
            depth += 1


def _depth_after(expr: str) -> int:
    return sum(1 if ch in "([{" else -1 if ch in ")]}" else 0 for i, _ in _scan(expr) for ch in expr[i])


def _has(ad: classad.ClassAd, attr: str) -> str:
    """'GPUs = 2', or 'no GPUs' when the worker does not advertise it."""
    try:
        return f"{attr} = {ad.lookup(attr)}"
    except KeyError:
        return f"no {attr}"


def _matches_one_way(job: classad.ClassAd, machine: classad.ClassAd) -> bool:
    """The job's Requirements hold on the machine (whatever the machine's own say)."""
    try:
        return bool(machine.matches(job))
    except Exception:
        return False


def _asks(group: JobGroup) -> str:
    return (f"asks for {group.cpus} cpus, {group.memory} MB, {group.disk // 1024} MB disk"
            + (f", {group.gpus} gpus" if group.gpus else ""))


def _size(s: Shape) -> str:
    return f"{s.cpus} cpus, {s.memory} MB, {s.disk} MB disk" + (f", {s.gpus} gpus" if s.gpus else "")


def _matches(job: classad.ClassAd, machine: classad.ClassAd) -> bool:
    try:
        return bool(job.symmetricMatch(machine))
    except Exception:   # an expression the library cannot evaluate matches nothing
        return False
