"""Cloud types by name: each one's driver class and its options dataclass.

A cloud type is three things: a name (the `type:` of a cloud in appliance.yaml),
a Driver subclass, and a frozen dataclass of its options whose fields say how
each key is checked, its default (or that it is required) and what it means.
The config loader validates from here, `make_driver` builds from here and the
docs tables are generated from here, so the three cannot drift apart.

    @dataclass(frozen=True, kw_only=True)
    class K8sOptions(CloudOptions):
        namespace: str = option(text(), "default", "the namespace workers run in")
    register("k8s", "appliance.clouds.k8s:K8sDriver", K8sOptions)

in appliance/clouds/k8s_options.py, listed in BUILTIN_MODULES (a module elsewhere
registers when imported, which must happen before the config is loaded).

This module imports nothing of the appliance and no cloud SDK: config loading
goes through it, and must not pay for docker or boto3 (drivers named by a
"module:Class" string are imported only when a driver is made).
"""
from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# the modules of the built-in types, in the order messages list the types (whatever
# order the modules happen to be imported in); each registers its type
BUILTIN_MODULES = ("local_options", "docker_options", "swarm_options", "ec2_options", "openstack_options")
# keys every cloud has (config.COMMON_CLOUD_KEYS): an option may not reuse one
RESERVED_KEYS = frozenset({"name", "type", "enabled", "priority", "max_workers", "worker", "shapes", "budget",
                           "vm_type", "images", "min_idle", "min_idle_window"})


class OptionError(ValueError):
    """An options dataclass's validate() found a bad combination: `key` is the one to blame."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


class CloudOptions:
    """Base of every options dataclass (a plain class, so subclasses may be frozen)."""

    # the pool's condor_host cannot be 'auto' for this type: its workers run outside the
    # appliance's networks and only an operator knows the address they reach it at
    needs_condor_host = False
    # the cloud can say how big its shapes are (ec2: DescribeInstanceTypes), so a shape may
    # leave out cpus, memory and gpus; the driver's shape_sizes() reads them
    reads_shape_sizes = False
    # ...and their disk (openstack: a flavor's root disk)
    reads_shape_disk = False

    def validate(self) -> None:
        """Cross-checks between keys; raise OptionError(key, problem). Single keys are
        checked by their field's check before the dataclass is made."""

    def validate_shapes(self, listed: bool) -> None:
        """Cross-checks with the cloud's sizes: `listed` is True when it has `shapes:`,
        False when it has one `worker:` (or the default). Raise OptionError(key, problem)."""

    def lone_shape_name(self) -> str | None:
        """The name of the one shape of a cloud without `shapes:` (None: 'default')."""
        return None

    def own_image(self) -> str:
        """The image workers run when the cloud has no `images:` (what its `image` option names)."""
        return ""

    def validate_images(self, images: Mapping[str, str]) -> None:
        """Checks the cloud's `images:` (name -> what this type launches). Raise
        OptionError('images', problem) if this type cannot run them."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


_REQUIRED = dataclasses.MISSING

# the option of the clouds whose workers could be given GPUs by the engine or the host
SIMULATE_GPUS_DOC = ("demos and tests: workers of a shape with `gpus` advertise that many simulated devices "
                     "(HTCondor's `condor_gpu_discovery -simulate`) and get no real one")


def option(check: Callable, default: Any = _REQUIRED, doc: str = "", shown: str = "") -> Any:
    """A field of an options dataclass: `check(value, path)` cleans or rejects a value
    (config.py's checks); no default means required; `doc` is its one-line description;
    `shown` says what an unset optional key means, for the docs (e.g. "the default VPC")."""
    meta = {"check": check, "doc": doc, "shown": shown}
    if default is _REQUIRED:
        return dataclasses.field(metadata=meta)
    if isinstance(default, Mapping):
        # a mapping is not a valid dataclass default (unhashable); the value is read-only anyway
        frozen = MappingProxyType(dict(default))
        return dataclasses.field(default_factory=lambda: frozen, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class OptionField:
    """One option key as the loader and the docs see it."""
    key: str
    check: Callable
    default: Any
    required: bool
    doc: str
    shown: str


@dataclass(frozen=True)
class CloudType:
    name: str
    driver: Any            # a Driver subclass, or "module:Class" imported on first use
    options: type          # a frozen dataclass subclassing CloudOptions
    fields: tuple[OptionField, ...]

    def driver_class(self) -> type:
        if isinstance(self.driver, str):
            module, _, cls = self.driver.partition(":")
            return getattr(importlib.import_module(module), cls)
        return self.driver

    def keys(self) -> dict[str, OptionField]:
        return {f.key: f for f in self.fields}


_TYPES: dict[str, CloudType] = {}
_LOCK = threading.RLock()      # RLock: loading the built-ins registers them
_loaded = False


def register(type_name: str, driver_class: Any, options_class: type) -> CloudType:
    """Make a cloud type known. Registering the same thing twice is harmless; a second,
    different registration under one name is a mistake and raises ValueError."""
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"a cloud type name must be a non-empty string, got {type_name!r}")
    ct = CloudType(type_name, driver_class, options_class, _fields_of(options_class))
    with _LOCK:
        old = _TYPES.get(type_name)
        if old is not None and (old.driver, old.options) != (driver_class, options_class):
            raise ValueError(f"cloud type {type_name!r} is already registered ({old.driver})")
        _TYPES.setdefault(type_name, ct)
        return _TYPES[type_name]


def lookup(type_name: str) -> CloudType:
    """The registered type of this name; KeyError names the known ones."""
    _load_builtins()
    try:
        return _TYPES[type_name]
    except (KeyError, TypeError):
        raise KeyError(f"no cloud type {type_name!r} (known: {', '.join(types())})") from None


def types() -> tuple[str, ...]:
    """Every registered type name: the built-ins first, in their order, then others as registered."""
    _load_builtins()
    with _LOCK:
        # sorted() is stable: types that are not built in keep their registration order
        return tuple(sorted(_TYPES, key=lambda n: _rank(_TYPES[n])))


def _rank(ct: CloudType) -> int:
    package, _, module = ct.options.__module__.rpartition(".")
    if package == __package__ and module in BUILTIN_MODULES:
        return BUILTIN_MODULES.index(module)
    return len(BUILTIN_MODULES)


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    with _LOCK:
        if not _loaded:
            for module in BUILTIN_MODULES:
                importlib.import_module(f"{__package__}.{module}")
            _loaded = True


def _fields_of(options_class: type) -> tuple[OptionField, ...]:
    # checked here, once, so a new type's mistake shows at import, not in a user's config
    if not (isinstance(options_class, type) and issubclass(options_class, CloudOptions)
            and dataclasses.is_dataclass(options_class)):
        raise TypeError(f"{options_class!r} must be a dataclass subclassing CloudOptions")
    if not options_class.__dataclass_params__.frozen:
        raise TypeError(f"{options_class.__name__} must be frozen")
    out = []
    for f in dataclasses.fields(options_class):
        if "check" not in f.metadata:
            raise TypeError(f"{options_class.__name__}.{f.name} must be declared with option()")
        if f.name in RESERVED_KEYS:
            raise TypeError(f"{options_class.__name__}.{f.name} would shadow a key every cloud has")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (
            f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
        out.append(OptionField(f.name, f.metadata["check"], default, required,
                               f.metadata.get("doc", ""), f.metadata.get("shown", "")))
    return tuple(out)
