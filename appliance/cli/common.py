"""What cloud_status and cloud_admin share: opening the state, tables, JSON, exit codes.

Exit codes scripts can rely on:
  0  done
  1  bad input (unknown cloud or worker, bad number)
  2  usage error (unknown flag, missing argument)
  3  the scheduler is not running (the output is still printed; changes are saved)
  4  the configuration file is invalid, or the state cannot be opened or written (e.g. its volume is full)
"""
from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from ..config import Config, ConfigError
from ..reload import active_config
from ..store import Store

OK, BAD_INPUT, USAGE, NOT_RUNNING, BROKEN = 0, 1, 2, 3, 4


class Exit(Exception):
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code


def open_state() -> tuple[Config, Store]:
    """The configuration the scheduler runs (the file's only until it has recorded one: an
    edited file counts once it is reloaded) and the state."""
    try:
        store = Store()
        cfg = active_config(store)
        # with the sizes the scheduler read from the clouds for shapes that left theirs out
        return cfg.with_shape_sizes(store.get("shape_sizes", {})[0]), store
    except ConfigError as err:
        raise Exit(BROKEN, f"configuration error: {err}") from None
    except (sqlite3.Error, OSError) as err:
        raise Exit(BROKEN, f"cannot open the appliance state: {err}") from None


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None or v == "" else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def run(main, argv) -> int:
    try:
        return main(argv)
    except Exit as e:
        if e.args and e.args[0]:
            print(f"{os.path.basename(sys.argv[0])}: {e.args[0]}", file=sys.stderr)
        return e.code
    except BrokenPipeError:
        return OK
    except (sqlite3.Error, OSError) as err:
        # a full or read-only state volume, mid-command: nothing was half-saved (each change is
        # one transaction), so say what failed in one line, not a traceback
        hint = " (the state volume is full: free space there and try again)" if _is_full(err) else ""
        print(f"{os.path.basename(sys.argv[0])}: the appliance state could not be used, nothing was changed: "
              f"{err}{hint}", file=sys.stderr)
        return BROKEN


def _is_full(err: BaseException) -> bool:
    text = str(err).lower()
    return "disk is full" in text or "no space" in text
