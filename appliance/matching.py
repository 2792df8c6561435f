"""Could a worker of this cloud run these jobs? ClassAd matching, no I/O.

Each cloud has a template machine ad: what a fresh, empty worker of that cloud
will advertise. A job group matches a cloud when the job's Requirements and the
worker's START (which enforces +TargetClouds) accept each other, exactly as the
negotiator will decide once the worker exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import classad
import htcondor  # noqa: F401  (registers HTCondor's ClassAd functions: stringListIMember, split, ...)

from .config import CloudConfig
from .model import JobGroup
from .shapes import DISK_QUANTUM_KB, MEMORY_QUANTUM_MB, rounded_disk, rounded_memory  # noqa: F401 (re-exported)

# The worker's START expression. Also written into every worker's condor
# config (workerconf.py), so the negotiator enforces what we matched on.
WORKER_START = ("(TARGET.TargetClouds =?= undefined) || "
                "stringListIMember(MY.CloudName, TARGET.TargetClouds)")



def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "X86_64", "amd64": "X86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine, machine)


def template_ad(cloud: CloudConfig, pool_name: str = "appliance") -> classad.ClassAd:
    size = cloud.worker
    ad = classad.ClassAd()
    ad["MyType"] = "Machine"
    ad["TargetType"] = "Job"
    ad["Name"] = f"slot1@{cloud.name}-template"
    ad["Arch"] = _arch()
    ad["OpSys"] = "LINUX"
    ad["Cpus"] = size.cpus
    ad["TotalCpus"] = size.cpus
    ad["Memory"] = size.memory
    ad["TotalMemory"] = size.memory
    ad["Disk"] = size.disk * 1024
    ad["HasFileTransfer"] = True
    ad["FileSystemDomain"] = f"{cloud.name}-template.{pool_name}"
    ad["UidDomain"] = pool_name
    ad["SlotType"] = "Partitionable"
    ad["ApplianceWorker"] = True
    ad["WorkerId"] = f"{cloud.name}-template"
    ad["CloudName"] = cloud.name
    ad["CloudType"] = cloud.type
    for key, value in size.attributes.items():
        ad[key] = value
    ad["START"] = classad.ExprTree(WORKER_START)
    ad["Requirements"] = classad.ExprTree("START")
    return ad


def fits(cpus: int, memory_mb: int, disk_kb: int, group: JobGroup) -> int:
    """How many jobs of `group` fit in the given free resources."""
    counts = [cpus // max(group.cpus, 1)]
    mem = rounded_memory(group.memory)
    if mem:
        counts.append(memory_mb // mem)
    disk = rounded_disk(group.disk)
    if disk:
        counts.append(disk_kb // disk)
    return max(min(counts), 0)


def per_worker(cloud: CloudConfig, group: JobGroup) -> int:
    s = cloud.worker
    return fits(s.cpus, s.memory, s.disk * 1024, group)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""


def can_run(group: JobGroup, cloud: CloudConfig, template: classad.ClassAd) -> Verdict:
    """Could a fresh worker of `cloud` ever run a job of `group`? And if not, why."""
    if group.target_clouds is not None and cloud.name not in group.target_clouds:
        return Verdict(False, f"+TargetClouds is {','.join(group.target_clouds)}")
    if per_worker(cloud, group) < 1:
        s = cloud.worker
        return Verdict(False, f"asks for {group.cpus} cpus, {group.memory} MB, {group.disk // 1024} MB disk; "
                              f"its workers have {s.cpus} cpus, {s.memory} MB, {s.disk} MB disk")
    if group.ad is not None and not _matches(group.ad, template):
        return Verdict(False, f"Requirements do not match its workers: {group.requirements}")
    return Verdict(True)


def _matches(job: classad.ClassAd, machine: classad.ClassAd) -> bool:
    try:
        return bool(job.symmetricMatch(machine))
    except Exception:   # an expression the library cannot evaluate matches nothing
        return False
