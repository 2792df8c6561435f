"""The simulator's model of a cloud: small on purpose, and every part of it an option.

A simulated cloud launches a worker of any shape at once, or refuses the launch
with a capacity error (a rate per launch, per cloud or per shape; a refused shape
refuses every time). A launched worker joins the pool after a boot delay drawn
from the cloud's distribution. On a cloud with spot interruptions each worker is
interrupted after a time drawn from an exponential distribution (a rate per
worker-hour): the notice vacates its jobs at once (they go back to idle and run
again from the start), the worker leaves the pool, and the instance is gone
`notice` seconds later. Prices are the shapes' own (`price` in the configuration).
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config import Config

# Boot delays by cloud type when none is given (seconds, uniform between the two):
# local, docker and swarm from bench/latency.py's "boot" phase (launch to joined,
# ~1.8-2.5 s); ec2 from docs/clouds/ec2.md (a plain Debian instance joins about a
# minute after it starts, most of it installing htcondor, plus the instance's own start).
DEFAULT_BOOT = {"local": (1.5, 2.5), "docker": (2.0, 3.0), "swarm": (2.5, 4.0), "ec2": (60.0, 120.0)}
FALLBACK_BOOT = (60.0, 120.0)
INTERRUPTION_NOTICE = 120.0     # EC2's two-minute spot interruption notice


class OptionError(ValueError):
    """A simulator option that cannot be used: says which and why, in one line."""


@dataclass(frozen=True)
class Delay:
    """Uniform between lo and hi seconds (lo == hi: fixed)."""
    lo: float
    hi: float

    def draw(self, rng: random.Random) -> float:
        return self.lo if self.lo == self.hi else rng.uniform(self.lo, self.hi)

    def __str__(self) -> str:
        return f"{self.lo:g} s" if self.lo == self.hi else f"{self.lo:g}-{self.hi:g} s"

    @classmethod
    def parse(cls, text: str, what: str) -> Delay:
        """'90' (fixed) or '60-120' (uniform)."""
        lo, sep, hi = text.partition("-")
        try:
            a, b = float(lo), float(hi) if sep else float(lo)
        except ValueError:
            raise OptionError(f"{what}: expected seconds like 90 or a range like 60-120, got {text!r}") from None
        if not (math.isfinite(a) and math.isfinite(b)) or a < 0 or b < a:
            raise OptionError(f"{what}: expected 0 <= low <= high seconds, got {text!r}")
        return cls(a, b)


@dataclass(frozen=True)
class CloudModel:
    """How one simulated cloud behaves."""
    boot: Delay
    capacity_errors: Mapping[str, float] = field(default_factory=dict)   # shape name or "*" -> rate per launch
    interruptions: float = 0.0          # spot interruptions per worker-hour

    def capacity_error_rate(self, shape: str) -> float:
        return self.capacity_errors.get(shape, self.capacity_errors.get("*", 0.0))


@dataclass(frozen=True)
class SimOptions:
    seed: int = 0
    clouds: Mapping[str, CloudModel] = field(default_factory=dict)       # by cloud name; default per type
    notice: float = INTERRUPTION_NOTICE
    # a drained worker with no job left exits this long after condor_off -peaceful
    drain_exit: float = 2.0
    # stop after this much simulated time past the last submit, whatever is left
    horizon: float = 30 * 86400.0
    # cycle at every tick of the daemon's grid instead of skipping quiet ones: slow, for
    # the test that shows skipping changes nothing
    every_tick: bool = False

    def model(self, cloud: str, ctype: str) -> CloudModel:
        found = self.clouds.get(cloud)
        return found if found is not None else CloudModel(Delay(*DEFAULT_BOOT.get(ctype, FALLBACK_BOOT)))


def _split(spec: str, what: str) -> tuple[str | None, str]:
    """'[TARGET=]VALUE' -> (target or None, value)."""
    target, sep, value = spec.rpartition("=")
    if sep and not target:
        raise OptionError(f"{what}: nothing before '=' in {spec!r}")
    return (target or None), value


def _rate(text: str, what: str, hi: float | None = None) -> float:
    try:
        value = float(text)
    except ValueError:
        raise OptionError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (hi is not None and value > hi):
        raise OptionError(f"{what}: expected a number from 0{f' to {hi:g}' if hi is not None else ''}, got {text!r}")
    return value


def build_options(cfg: Config, seed: int = 0, boot: list[str] = (), capacity_errors: list[str] = (),
                  refuse: list[str] = (), interruptions: list[str] = (), notice: float = INTERRUPTION_NOTICE,
                  drain_exit: float = 2.0) -> SimOptions:
    """The command line's cloud options, checked against the configuration:

    boot            [CLOUD=]SECONDS|LOW-HIGH         boot delay (every cloud, or one)
    capacity_errors [CLOUD[/SHAPE]=]RATE             share of launches refused for capacity (0-1)
    refuse          CLOUD/SHAPE                      this shape refuses every launch
    interruptions   [CLOUD=]RATE                     spot interruptions per worker-hour; without a
                                                     cloud, every ec2 cloud with market: spot
    """
    for c in cfg.clouds:
        unsized = [s.name for s in c.shapes if not s.sized]
        if unsized:      # the real scheduler asks the cloud (DescribeInstanceTypes); nothing here can
            raise OptionError(f"cloud {c.name!r}: shape {unsized[0]} leaves its size to the cloud; give its cpus "
                              f"and memory in the file for the simulator")
    types = {c.name: c.type for c in cfg.clouds}
    shapes = {c.name: {s.name for s in c.shapes} for c in cfg.clouds}
    boots = {name: Delay(*DEFAULT_BOOT.get(t, FALLBACK_BOOT)) for name, t in types.items()}
    errors: dict[str, dict[str, float]] = {name: {} for name in types}
    rates = {name: 0.0 for name in types}

    def cloud_of(name: str, what: str) -> str:
        if name not in types:
            raise OptionError(f"{what}: no cloud {name!r} in the configuration (clouds: {', '.join(types)})")
        return name

    def shape_of(cloud: str, shape: str, what: str) -> str:
        if shape not in shapes[cloud]:
            raise OptionError(f"{what}: cloud {cloud!r} has no shape {shape!r} "
                              f"(shapes: {', '.join(sorted(shapes[cloud]))})")
        return shape

    for spec in boot:
        target, value = _split(spec, "--boot")
        delay = Delay.parse(value, "--boot")
        for name in [cloud_of(target, "--boot")] if target else list(types):
            boots[name] = delay
    for spec in capacity_errors:
        target, value = _split(spec, "--capacity-errors")
        rate = _rate(value, "--capacity-errors", 1.0)
        if target is None:
            for name in types:
                errors[name]["*"] = rate
            continue
        cloud, _, shape = target.partition("/")
        cloud = cloud_of(cloud, "--capacity-errors")
        errors[cloud][shape_of(cloud, shape, "--capacity-errors") if shape else "*"] = rate
    for spec in refuse:
        cloud, sep, shape = spec.partition("/")
        if not sep or not shape:
            raise OptionError(f"--refuse: expected CLOUD/SHAPE, got {spec!r}")
        cloud = cloud_of(cloud, "--refuse")
        errors[cloud][shape_of(cloud, shape, "--refuse")] = 1.0
    spot = [c.name for c in cfg.clouds if c.type == "ec2" and getattr(c.settings, "market", "") == "spot"]
    for spec in interruptions:
        target, value = _split(spec, "--interruptions")
        rate = _rate(value, "--interruptions")
        if target is None and not spot:
            raise OptionError("--interruptions: no cloud has market: spot; name the cloud: --interruptions CLOUD=RATE")
        for name in [cloud_of(target, "--interruptions")] if target else spot:
            rates[name] = rate
    if not (math.isfinite(notice) and notice >= 0):
        raise OptionError(f"--notice: expected seconds >= 0, got {notice}")
    models = {name: CloudModel(boots[name], errors[name], rates[name]) for name in types}
    return SimOptions(seed=seed, clouds=models, notice=notice, drain_exit=drain_exit)
