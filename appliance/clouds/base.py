"""The one interface every cloud driver implements.

A driver does three things and keeps no state of its own that matters: it
launches a worker, lists what exists in the cloud with our labels, and
terminates. The daemon owns the worker rows; drivers are told everything.
"""
from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from ..config import CloudConfig, cloud_settings
from ..model import Resource
from ..workerconf import WorkerSpec
from . import registry


class ErrorKind(StrEnum):
    """What went wrong, which decides what the daemon does (appliance/backoff.py).

    A StrEnum (a str Enum whose str() and format() are the value): code that
    compares with or looks up by "capacity", or writes f"{kind}: ...", sees the
    same strings as before. A plain (str, Enum) would print as ErrorKind.CAPACITY.
    """
    CAPACITY = "capacity"        # back off and let other clouds take the demand
    LIMIT = "limit"              # ditto: a quota
    THROTTLE = "throttle"        # ditto: too many requests
    AUTH = "auth"                # back off longer: an operator must act
    CONFIG = "config"            # ditto
    IMAGE = "image"              # ditto
    UNAVAILABLE = "unavailable"  # the endpoint is down; back off
    OTHER = "other"


class CloudError(Exception):
    """A cloud refused or failed; `kind` (an ErrorKind) drives the response."""

    Kind = ErrorKind
    KINDS = tuple(k.value for k in ErrorKind)

    def __init__(self, kind: ErrorKind | str, message: str, retry_after: float | None = None):
        super().__init__(message)
        try:
            # a misspelt kind must fail where it is written, not back off as 'other'
            self.kind = ErrorKind(kind)
        except ValueError:
            raise ValueError(f"unknown CloudError kind {kind!r} (known: {', '.join(self.KINDS)})") from None
        self.retry_after = retry_after


class Driver(abc.ABC):
    def __init__(self, cloud: CloudConfig, pool: str, pool_id: str):
        self.cloud = cloud
        self.pool = pool          # the pool name (trust domain)
        self.pool_id = pool_id    # unique per appliance install: labels our resources
        # the type's options dataclass (DockerOptions...): typed access to the cloud's keys
        self.settings: Any = cloud_settings(cloud)

    @abc.abstractmethod
    def condor_host(self) -> str:
        """The central manager's address as this cloud's workers must use it."""

    @abc.abstractmethod
    def launch(self, spec: WorkerSpec) -> str:
        """Start one worker; return its resource id. Raise CloudError on failure."""

    @abc.abstractmethod
    def list(self) -> Mapping[str, Resource]:
        """Every resource of this cloud carrying our pool's labels, by worker id."""

    @abc.abstractmethod
    def terminate(self, worker_id: str, resource_id: str) -> None:
        """Remove a worker's resource. Idempotent: a missing resource is success."""

    def shape_sizes(self, names: Sequence[str]) -> dict[str, tuple[int, ...]]:
        """(cpus, memory MiB, GPUs) of the named shapes as the cloud knows them, and their disk
        in MB when it knows that too; only for types whose options say reads_shape_sizes
        (ec2: DescribeInstanceTypes; openstack: the flavors)."""
        raise CloudError(ErrorKind.CONFIG, f"a {self.cloud.type} cloud cannot tell its shapes' sizes: give each "
                                           f"shape its cpus and memory")

    def close(self) -> None:  # noqa: B027 - optional: only drivers that hold a client need it
        """Release what the driver holds (a client's connections)."""


def make_driver(cloud: CloudConfig, pool: str, pool_id: str) -> Driver:
    try:
        ctype = registry.lookup(cloud.type)
    except KeyError:
        raise ValueError(f"no driver for cloud type {cloud.type!r}") from None
    cls = ctype.driver_class()
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"cloud type {cloud.type!r} is registered with {cls!r}, not a Driver")
    return cls(cloud, pool, pool_id)


def shorten(text: str) -> str:
    """An error text on one line, at most 300 characters."""
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


_LONG_BLOB = re.compile(r"[A-Za-z0-9+/=_-]{120,}")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Scrub known secrets, then any long base64-like run (user-data, tokens) an endpoint echoed."""
    for s in sorted(secrets, key=len, reverse=True):
        if s and len(s) >= 8:
            text = text.replace(s, "[redacted]")
    return _LONG_BLOB.sub("[redacted]", text)


def env_file_lines(path: str, example: str = "KEY=VALUE") -> list[tuple[int, str, str]]:
    """(line number, key, value) of a credentials file of KEY=VALUE lines, as an env file or an
    openrc writes them: `export`, quotes and `#` comments allowed. Errors name the file and
    line, never a value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CloudError(ErrorKind.AUTH, f"cannot read env_file {path}: "
                                         f"{getattr(err, 'strerror', None) or 'not UTF-8 text'}") from None
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise CloudError(ErrorKind.CONFIG, f"env_file {path}, line {n}: expected {example}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out.append((n, key, value))
    return out
