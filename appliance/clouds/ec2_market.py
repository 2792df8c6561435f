"""Which market an ec2 cloud's next launch uses: spot or on-demand. Pure.

With `market: spot` and `spot_fallback: on-demand`, a launch goes on-demand
when spot has recently let this cloud down, and says why in one line:
- `spot_fallback_after` spot interruptions seen within `spot_window` seconds
  (instances whose StateReason is Server.SpotInstanceTermination, as the
  cloud's own listing showed them; EC2 keeps terminated instances listed for
  about an hour, so this survives a restart of the appliance), until enough of
  them are older than the window;
- spot capacity refused (SPOT_REFUSED) within the last `spot_retry` seconds.
A launch refused for spot capacity is retried on-demand at once (`refusal_fallback`).

The inputs are what the ec2 driver saw of its own cloud, so the driver calls
this at launch (see docs/architecture.md, "Spot markets").
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SPOT, ON_DEMAND = "spot", "on-demand"
SPOT_TERMINATION = "Server.SpotInstanceTermination"   # StateReason.Code of an instance spot took back

# EC2's answers to a spot RunInstances that mean "no spot for you now", not "you asked wrong"
SPOT_REFUSED = frozenset({"InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
                          "SpotMaxPriceTooLow", "MaxSpotInstanceCountExceeded", "Unsupported"})


@dataclass(frozen=True)
class SpotHistory:
    """What the driver saw of spot on its cloud."""
    interrupted: Mapping[str, float] = field(default_factory=dict)   # instance id -> when first seen interrupted
    refused_at: float | None = None        # the last refusal of spot capacity
    refused_why: str = ""                  # its error code


@dataclass(frozen=True)
class MarketChoice:
    market: str                            # spot | on-demand
    reason: str                            # one line for the log
    fallback: bool = False                 # on-demand although the cloud asks for spot


def choose_market(options, history: SpotHistory, now: float) -> MarketChoice:
    """The market of the next launch, for a cloud's Ec2Options."""
    if options.market != SPOT:
        return MarketChoice(ON_DEMAND, "market: on-demand")
    if options.spot_fallback != ON_DEMAND:
        return MarketChoice(SPOT, "market: spot")
    recent = sorted(t for t in history.interrupted.values() if now - t <= options.spot_window)
    if len(recent) >= options.spot_fallback_after:
        # spot again once the oldest of the last N interruptions leaves the window
        until = recent[-options.spot_fallback_after] + options.spot_window - now
        return MarketChoice(ON_DEMAND, f"{len(recent)} spot interruption(s) in the last {options.spot_window:.0f}s "
                                       f"(spot_fallback_after: {options.spot_fallback_after}); spot again in "
                                       f"{max(until, 0):.0f}s", True)
    if history.refused_at is not None and now - history.refused_at < options.spot_retry:
        return MarketChoice(ON_DEMAND, f"spot capacity refused {now - history.refused_at:.0f}s ago "
                                       f"({history.refused_why}); spot again after spot_retry "
                                       f"({options.spot_retry:.0f}s)", True)
    return MarketChoice(SPOT, "market: spot")


def refusal_fallback(options, market: str, code: str) -> bool:
    """Does a refusal with this EC2 error code send this launch to on-demand at once?"""
    return market == SPOT and options.spot_fallback == ON_DEMAND and code in SPOT_REFUSED


def prune(interrupted: Mapping[str, float], window: float, now: float) -> dict[str, float]:
    """Forget interruptions older than the window."""
    return {iid: t for iid, t in interrupted.items() if now - t <= window}
