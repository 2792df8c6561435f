"""What a job asks of its worker beyond cpus, memory, disk and GPUs. Pure: no I/O.

- `+WorkerImage = "name"`: the worker image, one of the names a cloud's `images:` maps
  (or the image itself); cloudscheduler's `+VMAMI` says the same, plain or per cloud
  (`"cloud:image,cloud2:image"`).
- cloudscheduler's `+VMType` (the cloud's `vm_type`), `+VMInstanceType` (a shape by name,
  plain or per cloud), `+VMMem` (MB), `+VMCPUCores` and `+VMStorage` (GB), the least a
  worker must have, and `+VMMaximumPrice`, the most its worker may cost per hour.

The scheduler checks these here (refusal(), accepts_image()) and every worker's START
says the same rules in ClassAd language (start_clauses()), so the negotiator never puts
a job on a worker the scheduler would not have launched for it. A job that asks none of
these runs on any worker, as before.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

# the job attributes read here, as the schedd's demand query projects them
JOB_ATTRIBUTES = ("WorkerImage", "VMAMI", "VMType", "VMInstanceType", "VMMem", "VMCPUCores", "VMStorage",
                  "VMMaximumPrice")
# the name a job asks for when it wants the cloud's own image (a cloud without `images:`)
DEFAULT_IMAGE = "default"


@dataclass(frozen=True)
class WorkerAsks:
    image: str | None = None             # +WorkerImage
    vm_ami: str | None = None            # +VMAMI: "image" or "cloud:image,cloud2:image"
    vm_type: str | None = None           # +VMType
    instance_type: str | None = None     # +VMInstanceType: "shape" or "cloud:shape,..."
    min_memory: float | None = None      # +VMMem, MB
    min_cpus: float | None = None        # +VMCPUCores
    min_disk_gb: float | None = None     # +VMStorage, GB
    max_price: float | None = None       # +VMMaximumPrice, per hour
    invalid: str = ""                    # an attribute that is not what it should be, said as it is

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) not in (None, "") for f in fields(self))

    def key(self) -> str:
        """For the demand group's key: only what is set (a job asking none keeps its old key)."""
        return "|".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) not in (None, ""))

    @property
    def wants_image(self) -> bool:
        return self.image is not None or self.vm_ami is not None


_NUMBERS = {"VMMem": "min_memory", "VMCPUCores": "min_cpus", "VMStorage": "min_disk_gb",
            "VMMaximumPrice": "max_price"}
_TEXTS = {"WorkerImage": "image", "VMAMI": "vm_ami", "VMType": "vm_type", "VMInstanceType": "instance_type"}


def from_values(values: Mapping[str, Any]) -> WorkerAsks:
    """The asks of one job from its attributes (a missing or undefined one is None).
    Numbers may be given quoted, as cloudscheduler's examples do (`+VMMem = "2048"`)."""
    out: dict[str, Any] = {}
    bad: list[str] = []
    for attr, name in _TEXTS.items():
        v = values.get(attr)
        if v is None:
            continue
        if not isinstance(v, str) or not v.strip():
            bad.append(f"+{attr} is {v!r}, not a name")
            continue
        out[name] = v.strip()
    for attr, name in _NUMBERS.items():
        v = values.get(attr)
        if v is None:
            continue
        try:
            number = float(v.strip() if isinstance(v, str) else v)
            if isinstance(v, bool) or number < 0 or number != number:
                raise ValueError
        except (TypeError, ValueError):
            bad.append(f"+{attr} is {v!r}, not a number of at least 0")
            continue
        out[name] = number
    return WorkerAsks(**out, invalid="; ".join(bad))


def for_cloud(listing: str, cloud: str) -> list[str]:
    """The entries of a cloudscheduler list that apply to `cloud`: its own (`cloud:x`) if it
    has any, else all of them. Entries are split at commas and spaces, as HTCondor's
    stringListMember splits them."""
    entries = [e for e in re.split(r"[ ,]+", listing) if e]
    own = [e[len(cloud) + 1:] for e in entries if e.startswith(cloud + ":")]
    return own or entries


def cloud_images(images: Mapping[str, str], own: str) -> Mapping[str, str]:
    """The images a cloud's workers may run, name -> reference: its `images:`, else its own one as 'default'."""
    return images or {DEFAULT_IMAGE: own}


def default_image(images: Mapping[str, str]) -> str:
    """The image of a job that asks for none: `default`, else the first listed."""
    return DEFAULT_IMAGE if DEFAULT_IMAGE in images or not images else next(iter(images))


def wanted_images(asks: WorkerAsks, cloud: str) -> list[str] | None:
    """What the job accepts on `cloud` (names or references), None if it asks for no image."""
    if asks.image is not None:
        return [asks.image]
    if asks.vm_ami is not None:
        return for_cloud(asks.vm_ami, cloud)
    return None


def image_for(asks: WorkerAsks, cloud: str, images: Mapping[str, str]) -> tuple[str | None, str]:
    """(the name of the image to launch for the job on this cloud, "") or (None, why not).
    `images` is cloud_images(): name -> reference."""
    wanted = wanted_images(asks, cloud)
    if wanted is None:
        return default_image(images), ""
    for w in wanted:
        if w in images:
            return w, ""
        for name, ref in images.items():
            if ref == w:
                return name, ""
    attr = "+WorkerImage" if asks.image is not None else "+VMAMI"
    value = asks.image if asks.image is not None else asks.vm_ami
    return None, f"{attr} {value!r} names none of its images ({', '.join(images)})"


def accepts_image(asks: WorkerAsks, cloud: str, name: str, ref: str) -> bool:
    """May a worker of this image (name and reference) run the job? As its START says."""
    wanted = wanted_images(asks, cloud)
    return wanted is None or name in wanted or ref in wanted


def refusal(asks: WorkerAsks, cloud: str, vm_type: str | None, shape_name: str, cpus: int, memory: int,
            disk_mb: int, price: float | None) -> str:
    """Why a worker of this cloud and shape may not run the job ("" if it may); the image apart
    (image_for). Sizes are what the worker offers jobs (memory and disk in MB)."""
    if asks.invalid:
        return asks.invalid
    if asks.vm_type is not None and asks.vm_type != vm_type:
        return f"+VMType is {asks.vm_type!r}; its workers have " + (
            f"vm_type {vm_type!r}" if vm_type else "no vm_type")
    if asks.instance_type is not None and shape_name not in for_cloud(asks.instance_type, cloud):
        return f"+VMInstanceType {asks.instance_type!r} is not shape {shape_name}"
    for wanted, has, what in ((asks.min_cpus, cpus, "+VMCPUCores {:g}"), (asks.min_memory, memory, "+VMMem {:g} MB"),
                              (asks.min_disk_gb, disk_mb / 1024, "+VMStorage {:g} GB")):
        if wanted is not None and has < wanted:
            return f"{what.format(wanted)} is more than shape {shape_name} has ({_size(cpus, memory, disk_mb)})"
    if asks.max_price is not None and price is not None and price > asks.max_price:
        return f"shape {shape_name} costs {price:g}/h, over +VMMaximumPrice {asks.max_price:g}"
    return ""


def _size(cpus: int, memory: int, disk_mb: int) -> str:
    return f"{cpus} cpus, {memory} MB, {disk_mb / 1024:g} GB disk"


def _listed(attr: str, value: str) -> str:
    """ClassAd: `value` is among the entries of the job's `attr` that apply to this worker's
    cloud (for_cloud(), said in ClassAd language)."""
    mine = f'regexp(strcat("(^|[ ,])", MY.CloudName, ":"), TARGET.{attr})'
    return (f"ifThenElse({mine}, stringListMember(strcat(MY.CloudName, \":\", {value}), TARGET.{attr}), "
            f"stringListMember({value}, TARGET.{attr}))")


def start_clauses(cpus: int, memory: int, disk_mb: int, price: float | None = None) -> Sequence[str]:
    """The START clauses of a worker of this size and price per hour, one per ask; the worker
    advertises CloudName, WorkerShape, WorkerImage, WorkerImageRef and (if its cloud has one) VMType."""
    image = ("ifThenElse(TARGET.WorkerImage isnt undefined, "
             "TARGET.WorkerImage =?= MY.WorkerImage || TARGET.WorkerImage =?= MY.WorkerImageRef, "
             f"TARGET.VMAMI is undefined || {_listed('VMAMI', 'MY.WorkerImage')} || "
             f"{_listed('VMAMI', 'MY.WorkerImageRef')})")
    return (
        image,
        "(TARGET.VMType is undefined || TARGET.VMType =?= MY.VMType)",
        f"(TARGET.VMInstanceType is undefined || {_listed('VMInstanceType', 'MY.WorkerShape')})",
        f"(TARGET.VMCPUCores is undefined || real(TARGET.VMCPUCores) <= {cpus})",
        f"(TARGET.VMMem is undefined || real(TARGET.VMMem) <= {memory})",
        f"(TARGET.VMStorage is undefined || real(TARGET.VMStorage) * 1024 <= {disk_mb})",
        # a worker without a price is not known to cost more than any cap
        *([f"(TARGET.VMMaximumPrice is undefined || real(TARGET.VMMaximumPrice) >= {price!r})"]
          if price is not None else []),
    )
