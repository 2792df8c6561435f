"""The pool over time: idle and running jobs, workers per state and per cloud, spend rate.

Pure: the daemon turns a cycle's figures into a `sample` (series name -> value), the
store keeps it in the current bucket (Store.record_history: one upsert per cycle), and
`series` (GET /api/history) and `charts` (the page's SVG) read the stored rows back.

Bounded: one bucket per BUCKET seconds, kept for WINDOW (6 hours: 360 buckets of a
dozen numbers or so, one per series); older buckets are deleted when a new one starts.
Downsampled by keeping each series' largest value in its bucket, not its last: a burst
of jobs that came and went within a minute still shows, and a bucket's figure does not
depend on which of its cycles happened to come last.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

BUCKET = 60                  # seconds per bucket
WINDOW = 6 * 3600            # seconds of history kept
MIN_SPAN = 15 * 60           # the charts' time axis spans at least this, so a young pool's first minutes read as such
# workers per state, as the page's tiles count them: requested ones are booting
STATES = ("booting", "idle", "busy", "draining")
_STATE_OF = {"requested": "booting", "booting": "booting", "idle": "idle", "busy": "busy", "draining": "draining"}

# series names in the store: these three, and state:<state>, cloud:<cloud>
IDLE_JOBS, RUNNING_JOBS, SPEND = "idle_jobs", "running_jobs", "spend_per_hour"


def bucket_of(t: float) -> int:
    """The start of the bucket holding time t."""
    return int(t // BUCKET) * BUCKET


def sample(idle_jobs: int, running_jobs: int, live: Iterable[tuple[str, str, str, int]],
           clouds: Iterable[str], price_of: Callable[[str, str], tuple[str, float | None]] | None = None
           ) -> dict[str, float]:
    """One cycle's figures as series -> value. live: (cloud, shape, state, count) of the live
    workers; clouds: the configured ones (a cloud without workers is a 0, not a gap);
    price_of: Config.priced_shape when some shape has a price, else None (no spend series)."""
    out: dict[str, float] = {IDLE_JOBS: idle_jobs, RUNNING_JOBS: running_jobs}
    out.update({f"state:{s}": 0 for s in STATES})
    out.update({f"cloud:{c}": 0 for c in clouds})
    spend = 0.0
    for cloud, shape, state, n in live:
        if state not in _STATE_OF:
            continue
        out[f"state:{_STATE_OF[state]}"] += n
        out[f"cloud:{cloud}"] = out.get(f"cloud:{cloud}", 0) + n
        if price_of is not None:
            spend += n * (price_of(cloud, shape)[1] or 0.0)
    if price_of is not None:
        out[SPEND] = round(spend, 6)
    return out


def series(rows: Iterable[tuple[int, str, float]]) -> dict[str, Any]:
    """Stored rows (bucket, series, value) as GET /api/history answers: the buckets' start
    times, and per series one value per bucket (null where a series has none)."""
    buckets: dict[int, dict[str, float]] = {}
    for bucket, name, value in rows:
        buckets.setdefault(int(bucket), {})[name] = value
    times = sorted(buckets)
    names = sorted({n for b in buckets.values() for n in b})

    def column(name: str) -> list[float | None]:
        return [buckets[t].get(name) for t in times]

    return {
        "bucket_seconds": BUCKET, "window_seconds": WINDOW, "coalesce": "max",
        "times": times,
        "idle_jobs": column(IDLE_JOBS),
        "running_jobs": column(RUNNING_JOBS),
        "workers_by_state": {s: column(f"state:{s}") for s in STATES if f"state:{s}" in names},
        "workers_by_cloud": {n[6:]: column(n) for n in names if n.startswith("cloud:")},
        "spend_per_hour": column(SPEND) if SPEND in names else None,
    }


# ------------------------------------------------------------------ the page's charts (plain SVG)

WIDTH, HEIGHT = 360, 150                       # the SVG's viewBox; CSS scales it to the card
LEFT, RIGHT, TOP, BOTTOM = 36, 10, 8, 20       # the plot area's margins, room for the axes' labels
CLOUD_COLOURS = 8                              # app.css's .k0 ... .k7


def nice_max(value: float, whole: bool = True) -> float:
    """The top of a y axis: 1, 2 or 5 times a power of ten at or above value (at least 1
    for counts, which are whole numbers; an empty money chart tops at 1 too)."""
    if value <= 0:
        return 1.0
    if whole and value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value - 1e-9:
            return float(step * power)
    return float(10 * power)     # pragma: no cover - the loop always returns


def time_ticks(start: float, end: float, most: int = 6) -> list[float]:
    """Round times (a whole number of minutes) between start and end, at most `most` of them."""
    span = max(end - start, 1.0)
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360):
        step = minutes * 60
        if span / step <= most:
            break
    first = math.ceil(start / step) * step
    return [float(t) for t in range(int(first), int(end) + 1, step)]


def _steps(times: list[int], values: list[float | None], x: Callable[[float], float],
           y: Callable[[float], float], now: float) -> list[str]:
    """A series as steps (a bucket's value held across its minute), one polyline's points per
    run of consecutive buckets: a missing bucket (the scheduler was down) is a gap, not a slope."""
    runs: list[list[tuple[float, float]]] = []
    last_end = None
    for t, v in zip(times, values):
        if v is None:
            last_end = None
            continue
        end = min(t + BUCKET, now)
        if last_end is None or t != last_end:
            runs.append([])
        run = runs[-1]
        run.append((x(t), y(v)))
        run.append((x(max(end, t)), y(v)))
        last_end = t + BUCKET
    return [" ".join(f"{px:.1f},{py:.1f}" for px, py in run) for run in runs]


def _fmt(value: float, whole: bool) -> str:
    if whole:
        return str(int(round(value)))
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def _chart(key: str, title: str, lines: list[tuple[str, str, list[float | None]]], times: list[int],
           start: float, now: float, ticks: list[float], clock: Callable[[float], str], whole: bool = True
           ) -> dict[str, Any]:
    top = nice_max(max((v for _, _, vs in lines for v in vs if v is not None), default=0.0), whole)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = max(now - start, 1.0)

    def x(t: float) -> float:
        return LEFT + (min(max(t, start), now) - start) / span * plot_w

    def y(v: float) -> float:
        return TOP + plot_h - v / top * plot_h

    return {
        "key": key, "title": title,
        "lines": [{"label": label, "cls": cls, "runs": _steps(times, values, x, y, now),
                   # the legend's figure: the line's highest point. Not "now": a bucket's value is its
                   # minute's peak, which the page's tiles (the present) would seem to contradict
                   "peak": _fmt(max((v for v in values if v is not None), default=0.0), whole)}
                  for label, cls, values in lines],
        # counts are whole: no "2.5 workers" half way up a chart topped at 5
        "y_ticks": [{"y": round(y(v), 1), "label": _fmt(v, whole)} for v in (0.0, top / 2, top)
                    if not whole or v == int(v)],
        "x_ticks": [{"x": round(x(t), 1), "label": clock(t)} for t in ticks],
        "plot": {"left": LEFT, "right": WIDTH - RIGHT, "top": TOP, "bottom": HEIGHT - BOTTOM},
    }


def charts(data: Mapping[str, Any], now: float,
           clock: Callable[[float], str] = lambda t: time.strftime("%H:%M", time.localtime(t))) -> dict[str, Any]:
    """What the page draws from `series`' answer: per chart its lines (points of polylines in
    the viewBox), axes' ticks and legend; the spend chart only when a price is configured."""
    times: list[int] = list(data["times"])
    start = max(now - WINDOW, min(times[0] if times else now, now - MIN_SPAN))
    ticks = time_ticks(start, now)
    out = [
        _chart("jobs", "Jobs", [("idle jobs", "c-idle-jobs", data["idle_jobs"]),
                                ("running jobs", "c-running-jobs", data["running_jobs"])],
               times, start, now, ticks, clock),
        _chart("states", "Workers by state",
               [(s, f"c-{s}", data["workers_by_state"].get(s, [None] * len(times))) for s in STATES],
               times, start, now, ticks, clock),
        _chart("clouds", "Workers by cloud",
               [(name, f"k{i % CLOUD_COLOURS}", values) for i, (name, values) in
                enumerate(sorted(data["workers_by_cloud"].items()))],
               times, start, now, ticks, clock),
    ]
    if data.get("spend_per_hour") is not None:
        out.append(_chart("spend", "Spend per hour", [("per hour", "c-spend", data["spend_per_hour"])],
                          times, start, now, ticks, clock, whole=False))
    minutes = round((now - start) / 60)
    return {"charts": out, "samples": len(times), "width": WIDTH, "height": HEIGHT, "minutes": minutes,
            "span": f"{minutes} min" if minutes < 120 else f"{minutes / 60:.3g} h"}
