"""Load and validate appliance.yaml into frozen dataclasses.

Every problem in the file is reported, together in one ConfigError: one line
each, naming the key path and what is wrong, e.g. ``/etc/appliance/appliance.yaml:
clouds[1].worker.cpus: expected a whole number >= 1, got 'two'`` (several: a first
line saying how many, then one line each). Unknown keys are errors too: a typo must
never silently fall back to a default. Checking goes on past a bad key to the next
one, and past a bad section or cloud to the next; only what depends on a bad value
(a cloud's cross-checks after one of its keys failed) is left unchecked.
"""
from __future__ import annotations

import functools
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import yaml

from . import asks  # pure: the names of worker images
from .budget import Caps  # pure, as shapes
from .clouds import registry  # imports no driver and no cloud SDK
from .headroom import DailyWindow, WindowError, parse_window  # pure
from .shapes import Shape, host_shapes  # pure: imports nothing of HTCondor

DEFAULT_PATH = "/etc/appliance/appliance.yaml"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
POOL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
ATTR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# a shape's name: an EC2 instance type (t3.medium), a flavor (p2-3gb) or any short label
SHAPE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
IMAGE_NAME_RE = SHAPE_NAME_RE
VM_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


# a file with more problems than this lists the first ones and says how many more
ERRORS_SHOWN = 20


class ConfigError(Exception):
    """A bad configuration: file, key path and problem, in one line; or, for a file with
    several problems, a first line saying how many and then one line each (`errors`
    holds them all as (path, problem); `path` and `problem` are the first's)."""

    def __init__(self, file: str, path: str, problem: str, more: tuple[tuple[str, str], ...] = ()):
        self.file, self.path, self.problem = file, path, problem
        self.errors: tuple[tuple[str, str], ...] = ((path, problem), *more)
        super().__init__(_message(file, self.errors))


def _message(file: str, errors: tuple[tuple[str, str], ...]) -> str:
    if len(errors) == 1:
        return f"{file}: {errors[0][0]}: {errors[0][1]}"
    lines = [f"{file}: {len(errors)} errors:"]
    lines += [f"  {path}: {problem}" for path, problem in errors[:ERRORS_SHOWN]]
    if len(errors) > ERRORS_SHOWN:
        lines.append(f"  ... and {len(errors) - ERRORS_SHOWN} more")
    return "\n".join(lines)


# ---------------------------------------------------------------- value checks
# A check takes (value, path) and returns the cleaned value or raises _Bad.
# Each also carries a `type_name` ("int", "list[str]"...) for the generated docs.

class _Bad(Exception):
    """A problem at `path`; `problems` is it and any others found with it, in file order."""

    def __init__(self, path: str, problem: str, more: tuple[tuple[str, str], ...] = ()):
        super().__init__(problem)
        self.path, self.problem = path, problem
        self.problems: tuple[tuple[str, str], ...] = ((path, problem), *more)


class _Found:
    """The problems found so far in one part of the file, so that checking goes on past each."""

    def __init__(self):
        self.problems: list[tuple[str, str]] = []

    def add(self, bad: _Bad) -> None:
        self.problems.extend(bad.problems)

    def attempt(self, check: Callable, *args: Any) -> Any:
        """check(*args), or _FAILED (its problems kept) if it found any."""
        try:
            return check(*args)
        except _Bad as bad:
            self.add(bad)
            return _FAILED

    def raise_any(self) -> None:
        if self.problems:
            raise _Bad(*self.problems[0], more=tuple(self.problems[1:]))


_FAILED = object()     # what _Found.attempt returns for a part that has problems


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother = 3, 4, 6, 60, 60


def _shown(value: Any) -> str:
    # bounded: a huge or self-sharing value (YAML anchors) must not blow up the message
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _described(check: Callable, type_name: str) -> Callable:
    check.type_name = type_name
    return check


def integer(lo: int | None = None, hi: int | None = None) -> Callable:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(path, f"expected a whole number{_range(lo, hi)}, got {_shown(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Bad(path, f"must be a whole number{_range(lo, hi)}, got {value}")
        return value
    return _described(check, "int")


def number(lo: float | None = None, hi: float | None = None) -> Callable:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Bad(path, f"expected a number{_range(lo, hi)}, got {_shown(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Bad(path, f"must be a number{_range(lo, hi)}, got {value}")
        return float(value)
    return _described(check, "float")


def _range(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def boolean(value, path):
    if not isinstance(value, bool):
        raise _Bad(path, f"expected true or false, got {_shown(value)}")
    return value


_described(boolean, "bool")


def text(pattern: re.Pattern | None = None, what: str = "", choices: tuple = ()) -> Callable:
    def check(value, path):
        if not isinstance(value, str) or not value.strip():
            raise _Bad(path, f"expected a non-empty string, got {_shown(value)}")
        if choices and value not in choices:
            raise _Bad(path, f"must be one of {', '.join(choices)}, got {_shown(value)}")
        if pattern is not None and not pattern.match(value):
            raise _Bad(path, f"must be {what}, got {_shown(value)}")
        return value
    return _described(check, "str")


def text_list(item: Callable) -> Callable:
    def check(value, path):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise _Bad(path, f"expected a list, got {_shown(value)}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))
    return _described(check, f"list[{getattr(item, 'type_name', 'str')}]")


def text_map(value, path):
    if not isinstance(value, dict):
        raise _Bad(path, f"expected a mapping of names to strings, got {_shown(value)}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k:
            raise _Bad(path, f"keys must be non-empty strings, got {_shown(k)}")
        if not isinstance(v, (str, int, float, bool)):
            raise _Bad(f"{path}.{k}", f"expected a string, got {_shown(v)}")
        out[k] = str(v)
    return MappingProxyType(out)


_described(text_map, "dict[str, str]")


def image_map(value, path):
    """A cloud's `images:`: names jobs may ask for -> image references (AMIs for ec2), in order."""
    if not isinstance(value, dict) or not value:
        raise _Bad(path, f"expected a mapping of image names to images (e.g. {{default: appliance:latest}}), "
                         f"got {_shown(value)}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not IMAGE_NAME_RE.match(k):
            raise _Bad(path, f"image names are 1-64 letters, digits, '.', '_' and '-', got {_shown(k)}")
        if not isinstance(v, str) or not v.strip() or any(c.isspace() or c in ',"' for c in v.strip()):
            raise _Bad(f"{path}.{k}", f"expected an image reference without spaces, commas or quotes, got {_shown(v)}")
        out[k] = v.strip()
    return MappingProxyType(out)


def classad_attributes(value, path):
    """Extra attributes workers of a cloud advertise (and its template ad has)."""
    if not isinstance(value, dict):
        raise _Bad(path, f"expected a mapping of attribute names to values, got {_shown(value)}")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not ATTR_RE.match(k):
            raise _Bad(path, f"attribute names must be ClassAd identifiers, got {_shown(k)}")
        if k.lower() in _RESERVED_ATTRS:
            raise _Bad(f"{path}.{k}", "is set by the appliance and cannot be overridden")
        if isinstance(v, bool) or isinstance(v, (int, float)) or (isinstance(v, str) and v):
            out[k] = v
        else:
            raise _Bad(f"{path}.{k}", f"expected a string, number or boolean, got {_shown(v)}")
    return MappingProxyType(out)


_RESERVED_ATTRS = {"applianceworker", "workerid", "cloudname", "cloudtype", "workershape", "cpus", "memory",
                   "disk", "gpus", "requirements", "start", "name", "mytype", "workerimage", "workerimageref",
                   "vmtype"}


@dataclass(frozen=True)
class Key:
    """One key of a mapping: its check, and its default (or required)."""
    check: Callable
    default: Any = None
    required: bool = False


def _section(raw: Any, path: str, keys: Mapping[str, Key], found: _Found | None = None) -> dict:
    """The checked values of a mapping, every key checked. Its problems are raised together,
    or, given `found`, kept there (a key with a problem then has its default)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _Bad(path, f"expected a mapping, got {_shown(raw)}")
    mine = _Found() if found is None else found
    for k in raw:
        if k not in keys:
            known = ", ".join(sorted(keys))
            mine.add(_Bad(_join(path, k), f"unknown key (known keys here: {known})"))
    out = {}
    for name, key in keys.items():
        out[name] = key.default
        if name in raw and raw[name] is not None:
            value = mine.attempt(key.check, raw[name], _join(path, name))
            if value is not _FAILED:
                out[name] = value
        elif key.required:
            mine.add(_Bad(_join(path, name), "is required"))
    if found is None:
        mine.raise_any()
    return out


_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _join(path: str, key: Any) -> str:
    if not (isinstance(key, str) and _PLAIN_KEY.match(key)):
        return f"{path}[{_shown(key)}]"     # a key like '0.0' or 7 must not read as a path
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------- the schema

DEFAULT_CONDOR_PORT = 9618     # HTCondor's shared port inside the container


def split_host_port(value: str) -> tuple[str, int]:
    """'cm.example.org:19618' -> ('cm.example.org', 19618); no port means 9618."""
    host, sep, port = value.rpartition(":")
    return (host, int(port)) if sep else (value, DEFAULT_CONDOR_PORT)


def condor_address(value, path):
    """pool.condor_host: 'auto', or a host name or IPv4 address with an optional :port."""
    value = text()(value, path)
    if value == "auto":
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, None
    if not HOST_RE.match(host):
        raise _Bad(path, f"must be 'auto' or a host name or IPv4 address, optionally with :port "
                         f"(e.g. cm.example.org or 192.0.2.10:19618), got {_shown(value)}")
    if port is not None:
        if not (port.isdigit() and 1 <= int(port) <= 65535):
            raise _Bad(path, f"the port after ':' must be a number from 1 to 65535, got {_shown(port)}")
        if int(port) == 8080:
            raise _Bad(path, "port 8080 is the web page's, inside the container: choose another port for HTCondor")
    return value


_described(condor_address, "str")

POOL_KEYS = {
    "name": Key(text(POOL_NAME_RE, "lower-case letters, digits, '.' and '-'"), "appliance"),
    # how workers and remote submitters reach the central manager; HTCondor advertises it
    "condor_host": Key(condor_address, "auto"),
}

SCHEDULER_KEYS = {
    # 1 s: new demand is seen within a second, and a cycle costs milliseconds
    # even at 100,000 queued jobs (bench/decision.py), so polling this often is cheap
    "interval": Key(number(0.2, 3600), 1.0),
    "idle_timeout": Key(number(0, 7 * 86400), 300.0),
    "boot_timeout": Key(number(5, 86400), 600.0),
    # a joined worker missing from the collector this long is lost; long enough
    # to ride out a collector restart (workers re-advertise every 60 s or less)
    "lost_timeout": Key(number(30, 86400), 300.0),
    "max_booting": Key(integer(1, 10000), 10),
    "max_workers": Key(integer(0, 100000), 100),
    # what `docker stop` of the appliance does with workers outside it
    "on_shutdown": Key(text(choices=("keep", "remove")), "keep"),
    # the first delay after a failed launch or a worker that died before joining;
    # each further failure in a row doubles it (capped at 600 s)
    "backoff_base": Key(number(1, 600), 10.0),
}

# How long the store keeps history, so a pool that runs for a year does not grow
# without bound. Counters (/metrics) are kept apart and survive pruning.
RETENTION_KEYS = {
    "event_days": Key(number(1, 36500), 30.0),
    "max_events": Key(integer(1000, 100_000_000), 100_000),
    "worker_days": Key(number(1, 36500), 30.0),      # rows of retired and failed workers
    # seconds between applications of the limits above; short only for soak runs
    "prune_every": Key(number(60, 86400), 3600.0),
}


def collector_address(value, path):
    """federation.flock_to[].collector: a pool's central manager, host or host:port."""
    value = text()(value, path)
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, None
    if not HOST_RE.match(host) or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
        raise _Bad(path, f"must be a host name or IP address, optionally with :port "
                         f"(e.g. cm.example.org or 192.0.2.10:9618), got {_shown(value)}")
    return value


_described(collector_address, "str")


def absolute_path(value, path):
    value = text()(value, path)
    if not value.startswith("/") or "\0" in value:
        raise _Bad(path, f"must be an absolute path inside the container, got {_shown(value)}")
    return value


_described(absolute_path, "str")

# Other pools this appliance's schedd flocks jobs to (appliance/federation.py): jobs no
# enabled cloud here can run, or that wait at max_workers, are offered to them.
FLOCK_TO_KEYS = {
    "name": Key(text(NAME_RE, "1-31 lower-case letters, digits and '-'"), required=True),
    "collector": Key(collector_address, required=True),
    # the IDTOKEN that pool's `cloud_admin --allow-schedd` (or condor_token_create) made for us
    "token_file": Key(absolute_path, required=True),
}
FEDERATION_KEYS = {
    "flock_to": Key(lambda v, p: v, ()),     # checked with FLOCK_TO_KEYS in _parse_federation
}

WORKER_KEYS = {
    "cpus": Key(integer(1, 1024), 1),
    "memory": Key(integer(128, 16 * 1024 * 1024), 1024),      # MB
    "disk": Key(integer(64, 1024 * 1024 * 1024), 4096),      # MB
    "gpus": Key(integer(0, 64), 0),
    "attributes": Key(classad_attributes, MappingProxyType({})),
}

# One size of worker a cloud can launch: `shapes:` lists several instead of one `worker:`.
SHAPE_KEYS = {
    "name": Key(text(SHAPE_NAME_RE, "1-64 letters, digits, '.', '_' and '-' (for ec2: the instance type)"),
                required=True),
    # cpus, memory and gpus default to 1, 1024 and 0, or on a cloud that can tell (ec2) are read from it
    "cpus": Key(WORKER_KEYS["cpus"].check, None),
    "memory": Key(WORKER_KEYS["memory"].check, None),
    "disk": Key(WORKER_KEYS["disk"].check, None),     # MB; read from an openstack flavor when left out
    "gpus": Key(integer(0, 64), None),
    "attributes": WORKER_KEYS["attributes"],
    # per hour, in any currency as long as every cloud uses the same; none: unknown
    "price": Key(number(0, 1_000_000), None),
    # idle workers of this shape kept ready, never drained by idle_timeout (appliance/headroom.py)
    "min_idle": Key(integer(0, 100000), 0),
}

# Spending caps (appliance/budget.py), for all clouds together and per cloud; none: no cap.
BUDGET_KEYS = {
    "max_per_hour": Key(number(0, 1_000_000_000), None),     # the cost per hour of the workers alive
    "max_per_day": Key(number(0, 1_000_000_000), None),      # the spend over the last 24 hours
}

# ---------------------------------------------------------------- notifications
# Webhooks (appliance/notify.py): a JSON POST for each event an operator chose. A webhook's
# URL (Slack's and Matrix's carry their token in it) and its headers' values are secrets:
# no message here shows them, only the scheme or the header's name.

NOTIFICATION_EVENTS = ("breaker_open", "budget_reached", "unschedulable", "boot_failed")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")     # an HTTP token
# set by the appliance on every delivery: a header of the file must not change them
_RESERVED_HEADERS = {"content-type", "content-length", "host", "user-agent"}


def webhook_url(value, path):
    """notifications.webhooks[].url: http(s)://host[:port]/path. Never shown back: it may hold a token."""
    if not isinstance(value, str) or not value.strip():
        raise _Bad(path, "expected a URL (https://host/path)")
    scheme, sep, rest = value.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        shown = f"'{scheme[:10]}://...'" if sep else "a value without a scheme"
        raise _Bad(path, f"must be an http:// or https:// URL, got {shown}")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if not host or any(c.isspace() for c in value.strip()):
        raise _Bad(path, "must be a URL with a host and no spaces (https://host/path)")
    return value.strip()


_described(webhook_url, "str")


def secret_headers(value, path):
    """notifications.webhooks[].headers: name -> value, sent with each delivery; the values
    are secrets (a bearer token), so no message names them, only the header."""
    if not isinstance(value, dict):
        raise _Bad(path, "expected a mapping of header names to values")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str) or not HEADER_NAME_RE.match(k):
            raise _Bad(path, f"header names are 1-64 letters, digits and -_.!#$%&'*+^`|~, got {_shown(k)}")
        if k.lower() in _RESERVED_HEADERS:
            raise _Bad(_join(path, k), "is set by the appliance and cannot be overridden")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or not str(v).strip() \
                or any(c in str(v) for c in "\r\n\0"):
            raise _Bad(_join(path, k), "expected a one-line string (the value is not shown: it may be a secret)")
        out[k] = str(v)
    return MappingProxyType(out)


_described(secret_headers, "dict[str, str]")

WEBHOOK_KEYS = {
    "url": Key(webhook_url, required=True),
    # the operator's choice; by default every kind of notification there is
    "events": Key(text_list(text(choices=NOTIFICATION_EVENTS)), NOTIFICATION_EVENTS),
    "headers": Key(secret_headers, MappingProxyType({})),
    # seconds one attempt may take; a slow receiver delays only the notifications, never scheduling
    "timeout": Key(number(1, 120), 10.0),
    # how the log names this webhook (default: the URL's host, as the URL itself may be a secret)
    "name": Key(text(NAME_RE, "1-31 lower-case letters, digits and '-'"), None),
}
NOTIFICATIONS_KEYS = {
    "webhooks": Key(lambda v, p: v, ()),     # checked with WEBHOOK_KEYS in _parse_notifications
}


def daily_window(value, path):
    """clouds[].min_idle_window: 'HH:MM-HH:MM' in UTC, optionally followed by an IANA time zone."""
    try:
        return parse_window(value)
    except WindowError as err:
        raise _Bad(path, str(err)) from None


_described(daily_window, "str")

COMMON_CLOUD_KEYS = {
    "name": Key(text(NAME_RE, "1-31 lower-case letters, digits and '-'"), required=True),
    "type": Key(text(), required=True),    # checked against the registry first, in _parse_cloud
    "enabled": Key(boolean, True),
    "priority": Key(integer(-1000, 1000), 0),
    "max_workers": Key(integer(0, 100000), 10),
    "worker": Key(lambda v, p: v, None),   # checked with WORKER_KEYS below
    "shapes": Key(lambda v, p: v, None),   # checked with SHAPE_KEYS in _parse_shapes
    "budget": Key(lambda v, p: v, None),   # checked with BUDGET_KEYS
    # cloudscheduler's VMType: what its workers advertise (jobs' Requirements = VMType =?= "...")
    "vm_type": Key(text(VM_TYPE_RE, "1-64 letters, digits, '.', '_', ':' and '-'"), None),
    # the worker images jobs may ask for (+WorkerImage, +VMAMI): name -> what the type launches
    "images": Key(lambda v, p: v, None),   # checked by image_map and the type's validate_images
    # warm headroom: idle workers kept ready (of any shape), never drained by idle_timeout,
    # replaced when they take work; only within min_idle_window if given (appliance/headroom.py)
    "min_idle": Key(integer(0, 100000), 0),
    "min_idle_window": Key(daily_window, None),
}

# Each cloud type's own keys are declared by its options dataclass beside its driver
# (appliance/clouds/*_options.py) and found through appliance.clouds.registry.


def __getattr__(name: str) -> Any:
    # CLOUD_TYPES is asked of the registry on first use, not at import: the options
    # modules import this module's checks, so they cannot load while it loads
    if name == "CLOUD_TYPES":
        return registry.types()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def option_keys(ctype: str) -> dict[str, Key]:
    """The type-specific keys of a cloud type, as the loader checks them."""
    return {f.key: Key(f.check, f.default, f.required) for f in registry.lookup(ctype).fields}


# ---------------------------------------------------------------- typed result

@dataclass(frozen=True)
class PoolConfig:
    name: str = "appliance"
    condor_host: str = "auto"

    @property
    def public_address(self) -> tuple[str, int] | None:
        """(host, port) that clients outside reach HTCondor at, or None when condor_host is 'auto'."""
        return None if self.condor_host == "auto" else split_host_port(self.condor_host)


@dataclass(frozen=True)
class SchedulerConfig:
    interval: float = 1.0
    idle_timeout: float = 300.0
    boot_timeout: float = 600.0
    lost_timeout: float = 300.0
    max_booting: int = 10
    max_workers: int = 100
    on_shutdown: str = "keep"
    backoff_base: float = 10.0


@dataclass(frozen=True)
class RetentionConfig:
    event_days: float = 30.0
    max_events: int = 100_000
    worker_days: float = 30.0
    prune_every: float = 3600.0


@dataclass(frozen=True)
class WorkerSize:
    cpus: int = 1
    memory: int = 1024   # MB
    disk: int = 4096     # MB
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    gpus: int = 0


@dataclass(frozen=True)
class CloudConfig:
    name: str
    type: str
    enabled: bool = True
    priority: int = 0
    max_workers: int = 10
    # the size of each worker when the cloud has one; `shapes` instead when it has several
    worker: WorkerSize = WorkerSize()
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # the same options, typed: an instance of the type's options dataclass (DockerOptions...).
    # None when a CloudConfig is built by hand; drivers then validate `options` themselves.
    settings: Any = None
    # the sizes of worker this cloud launches, in the order given; never empty once made:
    # without `shapes:` the one `worker:` is one unpriced shape (lone_shape)
    shapes: tuple[Shape, ...] = ()
    budget: Caps = Caps()
    vm_type: str | None = None
    # the worker images jobs may ask for, name -> reference, in order; never empty once made:
    # without `images:` the type's own image (its `image` option) is the one named 'default'
    images: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # warm headroom: idle workers of any shape kept ready, and the daily hours when (None: all day)
    min_idle: int = 0
    min_idle_window: DailyWindow | None = None

    def __post_init__(self):
        if self.settings is not None and not self.options:
            object.__setattr__(self, "options", MappingProxyType(self.settings.as_dict()))
        lone = lone_shape(self.worker, self.settings)
        shapes = tuple(self.shapes)
        if not shapes or (self.worker != WorkerSize() and _is_lone(shapes, lone)):
            # made from `worker` (dataclasses.replace() passes the shapes made before back in)
            shapes = (lone,)
        elif self.worker != WorkerSize():
            raise ValueError(f"cloud {self.name!r}: give shapes or worker, not both")
        object.__setattr__(self, "shapes", shapes)
        own = self.settings.own_image() if self.settings is not None else ""
        object.__setattr__(self, "images", MappingProxyType(dict(asks.cloud_images(self.images, own))))

    @property
    def default_image(self) -> str:
        """The name of the image a job that asks for none gets: `default`, else the first."""
        return asks.default_image(self.images)

    def image_ref(self, name: str) -> str:
        """What a worker of the image of this name runs (a name no longer listed: the default's)."""
        return self.images.get(name) or self.images[self.default_image]

    def opt(self, key: str) -> Any:
        return self.options[key]

    def shape(self, name: str) -> Shape | None:
        """The shape of this name, or None (a worker recorded before shapes, or under an older file)."""
        for s in self.shapes:
            if s.name == name:
                return s
        return None

    def shape_of(self, name: str) -> Shape:
        """A worker's shape from its recorded name. A name this cloud no longer has (or none,
        from before shapes were recorded) means its only shape, or else its smallest one:
        planning on less room than a worker has launches too much, which is cancelled;
        planning on more would leave jobs waiting on a worker that cannot hold them."""
        found = self.shape(name)
        if found is not None:
            return found
        return min(self.shapes, key=lambda s: s.size)


DEFAULT_SHAPE = "default"


def _is_lone(shapes: tuple[Shape, ...], lone: Shape) -> bool:
    """These shapes are a lone worker's (perhaps of an earlier `worker`): one unpriced shape of its name."""
    return (len(shapes) == 1 and shapes[0].name == lone.name and shapes[0].price is None
            and shapes[0].gpus == lone.gpus)


def lone_shape(size: WorkerSize, settings: Any = None) -> Shape:
    """A cloud's one `worker:` as a shape: unpriced, named by its type's options (an ec2
    cloud's instance_type) or else 'default'."""
    name = settings.lone_shape_name() if settings is not None else None
    return Shape(name or DEFAULT_SHAPE, size.cpus, size.memory, size.disk, size.gpus, attributes=size.attributes)


@dataclass(frozen=True)
class FlockTarget:
    """A pool this appliance's schedd flocks to: its collector and the token it gave us."""
    name: str
    collector: str
    token_file: str


@dataclass(frozen=True)
class FederationConfig:
    flock_to: tuple[FlockTarget, ...] = ()


@dataclass(frozen=True)
class Webhook:
    """Where notifications are POSTed. url and headers are secrets: repr() shows neither."""
    url: str = field(repr=False)
    events: tuple[str, ...] = NOTIFICATION_EVENTS
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), repr=False)
    timeout: float = 10.0
    name: str | None = None

    @property
    def label(self) -> str:
        """How logs name it: its name, else the URL's host (never the URL: it may hold a token)."""
        if self.name:
            return self.name
        rest = self.url.partition("://")[2].split("/", 1)[0].rsplit("@", 1)[-1]
        return rest or "webhook"


@dataclass(frozen=True)
class NotificationsConfig:
    webhooks: tuple[Webhook, ...] = ()


@dataclass(frozen=True)
class Config:
    pool: PoolConfig
    scheduler: SchedulerConfig
    clouds: tuple[CloudConfig, ...]
    source: str = "<defaults>"
    retention: RetentionConfig = RetentionConfig()
    federation: FederationConfig = FederationConfig()
    budget: Caps = Caps()        # for all clouds together; each cloud may have its own too
    notifications: NotificationsConfig = NotificationsConfig()

    def cloud(self, name: str) -> CloudConfig:
        for c in self.clouds:
            if c.name == name:
                return c
        raise KeyError(name)

    def with_shape_sizes(self, sizes: Mapping[str, Mapping[str, Any]] | None) -> Config:
        """This configuration with the sizes the clouds gave for shapes that left theirs out:
        sizes[cloud][shape] = {"cpus", "memory" (MiB, as the cloud says), "gpus"}, as the
        scheduler keeps them in the store (kv 'shape_sizes')."""
        if not sizes:
            return self
        clouds = []
        for c in self.clouds:
            known = sizes.get(c.name) or {}
            shapes = tuple(s.read(**known[s.name]) if not s.sized and s.name in known else s for s in c.shapes)
            clouds.append(c if shapes == c.shapes else replace(c, shapes=shapes))
        return replace(self, clouds=tuple(clouds))

    def priced_shape(self, cloud: str, shape: str) -> tuple[str, float | None]:
        """A worker's shape (from its recorded name, as CloudConfig.shape_of reads it) and its
        price per hour; None: unpriced, or a cloud no longer configured."""
        for c in self.clouds:
            if c.name == cloud:
                found = c.shape_of(shape)
                return found.name, found.price
        return shape, None

    @property
    def budgets(self) -> bool:
        """Some budget is set, here or on a cloud."""
        return self.budget.any or any(c.budget.any for c in self.clouds)

    @property
    def daily_budgets(self) -> bool:
        """Some max_per_day is set: the last 24 hours' workers must be accounted, not only live ones."""
        return self.budget.max_per_day is not None or any(c.budget.max_per_day is not None for c in self.clouds)

    @property
    def shaped_clouds(self) -> frozenset[str]:
        """Clouds with several shapes: a capacity error there backs off the shape, not the cloud."""
        return frozenset(c.name for c in self.clouds if len(c.shapes) > 1)

    @property
    def priced(self) -> bool:
        return any(s.price for c in self.clouds for s in c.shapes)

    @property
    def cloud_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clouds)


# ---------------------------------------------------------------- loading

def parse(data: Any, source: str = "<string>") -> Config:
    """Validate already-parsed YAML data (a dict) into a Config; every problem found is in
    the one ConfigError raised."""
    try:
        return _parse(data)
    except _Bad as bad:
        (path, problem), *more = [(p or "(top level)", q) for p, q in bad.problems]
        raise ConfigError(source, path, problem, tuple(more)) from None


def _parse(data: Any) -> Config:
    found = _Found()
    top = _section(data, "", {
        "pool": Key(lambda v, p: v), "scheduler": Key(lambda v, p: v), "clouds": Key(lambda v, p: v),
        "retention": Key(lambda v, p: v), "federation": Key(lambda v, p: v), "budget": Key(lambda v, p: v),
        "notifications": Key(lambda v, p: v),
    }, found)
    pool = found.attempt(lambda: PoolConfig(**_section(top["pool"], "pool", POOL_KEYS)))
    sched = found.attempt(lambda: SchedulerConfig(**_section(top["scheduler"], "scheduler", SCHEDULER_KEYS)))
    retention = found.attempt(lambda: RetentionConfig(**_section(top["retention"], "retention", RETENTION_KEYS)))
    raw_clouds = top["clouds"]
    if raw_clouds is None:
        raw_clouds = [{"name": "local", "type": "local", "max_workers": 2}]
    if not isinstance(raw_clouds, list):
        found.add(_Bad("clouds", f"expected a list of clouds, got {_shown(raw_clouds)}"))
        raw_clouds = []
    clouds, seen, needs_host = [], set(), False
    for i, raw in enumerate(raw_clouds):
        cloud = found.attempt(_parse_cloud, raw, f"clouds[{i}]")
        if cloud is _FAILED:
            # its name still counts: a later cloud of the same name is a duplicate whatever else is wrong
            if isinstance(raw, dict) and isinstance(raw.get("name"), str) and NAME_RE.match(raw["name"]):
                seen.add(raw["name"])
            continue
        if cloud.name in seen:
            found.add(_Bad(f"clouds[{i}].name", f"duplicate cloud name {cloud.name!r}"))
            continue
        seen.add(cloud.name)
        clouds.append(cloud)
        if cloud.settings.needs_condor_host and pool is not _FAILED and pool.condor_host == "auto" \
                and not needs_host:
            needs_host = True      # said once, for the first such cloud
            found.add(_Bad("pool.condor_host", f"must be the central manager's public address (a host name or IP "
                                               f"that instances reach on port 9618) when an {cloud.type} cloud is "
                                               f"configured (clouds[{i}], {cloud.name!r}); 'auto' cannot know it"))
    federation = found.attempt(_parse_federation, top["federation"])
    budget = found.attempt(lambda: Caps(**_section(top["budget"], "budget", BUDGET_KEYS)))
    notifications = found.attempt(_parse_notifications, top["notifications"])
    found.raise_any()
    return Config(pool=pool, scheduler=sched, clouds=tuple(clouds), retention=retention, federation=federation,
                  budget=budget, notifications=notifications)


def _parse_notifications(raw: Any) -> NotificationsConfig:
    section = _section(raw, "notifications", NOTIFICATIONS_KEYS)
    hooks = section["webhooks"]
    if hooks in ((), None):
        return NotificationsConfig()
    if not isinstance(hooks, list):
        raise _Bad("notifications.webhooks", "expected a list of webhooks, each with at least a url")
    out: list[Webhook] = []
    found = _Found()
    for i, item in enumerate(hooks):
        path = f"notifications.webhooks[{i}]"
        if not isinstance(item, dict):
            found.add(_Bad(path, "expected a mapping with at least a url (and events, headers, timeout, name)"))
            continue
        values = found.attempt(_section, item, path, WEBHOOK_KEYS)
        if values is _FAILED:
            continue
        if not values["events"]:
            found.add(_Bad(f"{path}.events", f"is empty: leave it out for all of {', '.join(NOTIFICATION_EVENTS)}"))
            continue
        hook = Webhook(**{**values, "events": tuple(dict.fromkeys(values["events"]))})
        if hook.name and any(h.name == hook.name for h in out):
            found.add(_Bad(f"{path}.name", f"duplicate webhook name {hook.name!r}"))
            continue
        out.append(hook)
    found.raise_any()
    return NotificationsConfig(tuple(out))


def _parse_federation(raw: Any) -> FederationConfig:
    section = _section(raw, "federation", FEDERATION_KEYS)
    targets = section["flock_to"]
    if targets in ((), None):
        return FederationConfig()
    if not isinstance(targets, list):
        raise _Bad("federation.flock_to", f"expected a list of pools, got {_shown(targets)}")
    out: list[FlockTarget] = []
    found = _Found()
    for i, item in enumerate(targets):
        path = f"federation.flock_to[{i}]"
        if not isinstance(item, dict):
            found.add(_Bad(path, f"expected a mapping with name, collector and token_file, got {_shown(item)}"))
            continue
        values = found.attempt(_section, item, path, FLOCK_TO_KEYS)
        if values is _FAILED:
            continue
        target = FlockTarget(**values)
        if found.attempt(_check_flock_target, target, out, path) is not _FAILED:
            out.append(target)
    found.raise_any()
    return FederationConfig(tuple(out))


def _check_flock_target(target: FlockTarget, earlier_targets: list[FlockTarget], path: str) -> None:
    for earlier in earlier_targets:
        if earlier.name == target.name:
            raise _Bad(f"{path}.name", f"duplicate pool name {target.name!r}")
        if earlier.collector.lower() == target.collector.lower():
            raise _Bad(f"{path}.collector", f"{target.collector!r} is already federation.flock_to's "
                                            f"{earlier.name!r}")


def _parse_cloud(raw: Any, path: str) -> CloudConfig:
    if not isinstance(raw, dict):
        raise _Bad(path, f"expected a mapping with at least name and type, got {_shown(raw)}")
    ctype = raw.get("type")
    known = registry.types()
    if ctype is None:
        raise _Bad(f"{path}.type", f"is required (one of {', '.join(known)})")
    if not isinstance(ctype, str) or ctype not in known:
        raise _Bad(f"{path}.type", f"unknown cloud type {_shown(ctype)} (known: {', '.join(known)})")
    keys = {**COMMON_CLOUD_KEYS, **option_keys(ctype)}
    found = _Found()         # every key, and each part below, is checked whatever failed before
    values = _section(raw, path, keys, found)
    raw_worker, raw_shapes = values.pop("worker"), values.pop("shapes")
    budget = found.attempt(lambda: Caps(**_section(values.pop("budget"), f"{path}.budget", BUDGET_KEYS)))
    if raw_shapes is not None and raw_worker is not None:
        found.add(_Bad(f"{path}.shapes", "cannot be used together with worker: list every size of worker as a "
                                         "shape (a lone worker is one shape)"))
        found.raise_any()
    worker = found.attempt(lambda: WorkerSize(**_section(raw_worker, f"{path}.worker", WORKER_KEYS)))
    shapes = found.attempt(_cloud_shapes, ctype, raw_shapes, f"{path}.shapes")
    raw_images = values.pop("images")
    images = (found.attempt(image_map, raw_images, f"{path}.images") if raw_images is not None
              else MappingProxyType({}))
    found.raise_any()        # the checks below need every value above
    common = {k: values.pop(k) for k in COMMON_CLOUD_KEYS if k not in ("worker", "shapes", "budget", "images")}
    found.attempt(_check_headroom, common, shapes, path)
    settings = found.attempt(_settings, ctype, values, path)
    if settings is not _FAILED:
        try:
            settings.validate_shapes(bool(shapes))
            if images:
                settings.validate_images(images)
        except registry.OptionError as err:       # a key of a mapping option ('images.bio') names its path
            found.add(_Bad(functools.reduce(_join, err.key.split("."), path), err.problem))
    found.raise_any()
    return CloudConfig(worker=worker, options=MappingProxyType(values), settings=settings, shapes=shapes,
                       budget=budget, images=images, **common)


def _cloud_shapes(ctype: str, raw_shapes: Any, path: str) -> tuple[Shape, ...]:
    """A cloud's `shapes:` (none: ()); 'auto': sized from this host."""
    if raw_shapes == "auto":
        if ctype not in AUTO_SHAPE_TYPES:
            raise _Bad(path, f"'auto' sizes workers from this host, so only a "
                             f"{' or '.join(AUTO_SHAPE_TYPES)} cloud may use it; list the shapes "
                             f"of a {ctype} cloud")
        return host_shapes(*host_size())
    options = registry.lookup(ctype).options
    return (_parse_shapes(raw_shapes, path, options.reads_shape_sizes, options.reads_shape_disk)
            if raw_shapes is not None else ())


def _check_headroom(common: dict, shapes: tuple[Shape, ...], path: str) -> None:
    """min_idle within the file's max_workers, and a window only with something to keep."""
    per_shape = sum(s.min_idle for s in shapes)
    keep = max(common["min_idle"], per_shape)
    if keep > common["max_workers"]:
        what = (f"min_idle {common['min_idle']}" if common["min_idle"] >= per_shape
                else f"its shapes' min_idle (together {per_shape})")
        raise _Bad(f"{path}.min_idle" if common["min_idle"] >= per_shape else f"{path}.shapes",
                   f"{what} is more than max_workers ({common['max_workers']}): the headroom could never be kept")
    if common["min_idle_window"] is not None and keep == 0:
        raise _Bad(f"{path}.min_idle_window", "has no effect without min_idle (on the cloud or one of its shapes)")


# clouds whose workers run on the appliance's own host: `shapes: auto` can size them from it
AUTO_SHAPE_TYPES = ("docker", "local")


def host_size() -> tuple[int, int]:
    """(cpus, memory MB) this host gives the appliance: its cpus (or its cgroup's cpu quota)
    and its memory (or its cgroup's limit). Read at each load, so a CLI sees what the
    scheduler sees on the same host."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        if quota != "max":
            cpus = max(min(cpus, int(int(quota) / int(period))), 1)
    except (OSError, ValueError):
        pass
    memory = 1024
    try:
        with open("/proc/meminfo") as f:
            memory = next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemTotal:"))
    except (OSError, ValueError, StopIteration):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            memory = min(memory, int(limit) // (1024 * 1024))
    except (OSError, ValueError):
        pass
    return cpus, memory


UNREAD_DEFAULTS = {"cpus": 1, "memory": 1024, "gpus": 0, "disk": 4096}


def _parse_shapes(raw: Any, path: str, reads_sizes: bool = False, reads_disk: bool = False) -> tuple[Shape, ...]:
    """`shapes:`: a non-empty list of {name, cpus, memory, disk, gpus, attributes, price}, names
    unique. reads_sizes: the cloud can tell a shape's size (ec2), so what is left out is read;
    reads_disk: its disk too (an openstack flavor's)."""
    if not isinstance(raw, list) or not raw:
        raise _Bad(path, f"expected a non-empty list of shapes, each with at least a name (or auto: sized from this host), got {_shown(raw)}")
    out: list[Shape] = []
    found = _Found()
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if not isinstance(item, dict):
            found.add(_Bad(where, f"expected a mapping with at least a name (and cpus, memory, disk, gpus, "
                                  f"attributes, price), got {_shown(item)}"))
            continue
        values = found.attempt(_section, item, where, SHAPE_KEYS)
        if values is _FAILED:
            continue
        left_out = tuple(k for k in ("cpus", "memory", "gpus", *(("disk",) if reads_disk else ()))
                         if values[k] is None)
        if values["disk"] is None and not reads_disk:
            values["disk"] = UNREAD_DEFAULTS["disk"]
        # the cloud is asked only for a shape that gives neither cpus nor memory: one that gives
        # its size keeps working without the permission to ask (ec2:DescribeInstanceTypes)
        to_read = left_out if reads_sizes and values["cpus"] is None and values["memory"] is None else ()
        values.update({k: (0 if to_read else UNREAD_DEFAULTS[k]) for k in left_out})
        shape = Shape(**values, to_read=to_read)
        if any(s.name == shape.name for s in out):
            found.add(_Bad(f"{where}.name", f"duplicate shape name {shape.name!r} (names are unique per cloud)"))
            continue
        out.append(shape)
    found.raise_any()
    return tuple(out)


def _settings(ctype: str, values: dict, path: str) -> Any:
    """Checked option values as the type's options dataclass, cross-checked by its validate()."""
    settings = registry.lookup(ctype).options(**values)
    try:
        settings.validate()
    except registry.OptionError as err:
        raise _Bad(_join(path, err.key), err.problem) from None
    return settings


def cloud_settings(cloud: CloudConfig) -> Any:
    """A cloud's typed options: its own, or (built by hand) its `options` checked now."""
    if cloud.settings is not None:
        return cloud.settings
    path = f"clouds[{cloud.name!r}]"
    try:
        return _settings(cloud.type, _section(dict(cloud.options), path, option_keys(cloud.type)), path)
    except _Bad as bad:
        raise ConfigError("<CloudConfig>", bad.path, bad.problem) from None


def loads(text_: str, source: str = "<string>") -> Config:
    try:
        data = yaml.safe_load(text_)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(YAML)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(source, where, f"not valid YAML: {problem}") from None
    cfg = parse(data, source)
    return replace(cfg, source=source)


def config_path(path: str | None = None) -> str:
    """The file to read: the one given, else $APPLIANCE_CONFIG, else the default."""
    return path or os.environ.get("APPLIANCE_CONFIG") or DEFAULT_PATH


def read_text(path: str | None = None) -> tuple[str, str]:
    """(path, its text): the file as load() reads it, for those that keep the text too (reload)."""
    path = config_path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return path, f.read()
    except OSError as err:
        raise ConfigError(path, "(file)", f"cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "(file)", "is not UTF-8 text") from None


def load(path: str | None = None) -> Config:
    path, content = read_text(path)
    return loads(content, path)


def main(argv: list[str] | None = None) -> int:
    """`python3 -m appliance.config [FILE]`: check a file, print the one-line verdict."""
    import sys
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg = load(args[0] if args else None)
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return 78
    print(f"{cfg.source}: ok ({len(cfg.clouds)} clouds: {', '.join(cfg.cloud_names)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
