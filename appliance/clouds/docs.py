"""Each cloud type's option table in its docs page, generated from the registry.

    python3 -m appliance.clouds.docs            # rewrite the tables in docs/clouds/TYPE.md
    python3 -m appliance.clouds.docs --check    # exit 1 if a page is missing or out of date

A page holds its table between two marker lines, and only that part is written:

    <!-- BEGIN options:docker -->
    | key | type | default | description |
    ...
    <!-- END options:docker -->

The options dataclasses (appliance/clouds/*_options.py) are the one source: a key's
check gives its type, its field its default and description.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import registry

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "clouds"
HEADER = ("| key | type | default | description |", "| --- | --- | --- | --- |")


def begin_marker(type_name: str) -> str:
    return f"<!-- BEGIN options:{type_name} -->"


def end_marker(type_name: str) -> str:
    return f"<!-- END options:{type_name} -->"


def render_table(type_name: str) -> str:
    """The Markdown for a type's options (no markers), ending in a newline."""
    fields = registry.lookup(type_name).fields
    if not fields:
        return f"The `{type_name}` type has no type-specific options.\n"
    rows = [*HEADER]
    for f in fields:
        kind = getattr(f.check, "type_name", "") or "value"
        rows.append(f"| `{f.key}` | {_cell(kind)} | {_cell(_default(f))} | {_cell(f.doc)} |")
    return "\n".join(rows) + "\n"


def _default(f: registry.OptionField) -> str:
    if f.required:
        return "required"
    literal = _literal(f.default)
    return f"{literal} ({f.shown})" if f.shown else literal


def _literal(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, float) and v.is_integer():
        return f"`{int(v)}`"
    if isinstance(v, Mapping):
        return "`{" + ", ".join(f"{k}: {x}" for k, x in v.items()) + "}`"
    if isinstance(v, (tuple, list)):
        return "`[" + ", ".join(str(x) for x in v) + "]`"
    return f"`{v}`"


def _cell(text: str) -> str:
    # one line, and a '|' inside a cell must not end it
    return " ".join(str(text).split()).replace("|", "\\|")


def replace_between(text: str, type_name: str, body: str) -> str:
    """`text` with the lines between the type's marker lines replaced by `body`.

    The markers must each be on a line of their own, once, BEGIN before END;
    anything else is a ValueError naming what is wrong."""
    begin, end = begin_marker(type_name), end_marker(type_name)
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) != 1 or len(ends) != 1:
        raise ValueError(f"expected one line {begin!r} and one line {end!r}, "
                         f"found {len(starts)} and {len(ends)}")
    if ends[0] < starts[0]:
        raise ValueError(f"{end!r} comes before {begin!r}")
    newline = "\r\n" if lines[starts[0]].endswith("\r\n") else "\n"
    if not body.endswith("\n"):
        body += "\n"
    body = body.replace("\r\n", "\n").replace("\n", newline)
    return "".join(lines[:starts[0] + 1]) + body + "".join(lines[ends[0]:])


def update_page(text: str, type_name: str) -> str:
    """A page's text with its option table as the registry says it is now."""
    return replace_between(text, type_name, render_table(type_name))


def page_path(type_name: str, docs_dir: str | os.PathLike = DOCS_DIR) -> Path:
    return Path(docs_dir) / f"{type_name}.md"


def sync(docs_dir: str | os.PathLike = DOCS_DIR, type_names: Iterable[str] | None = None,
         write: bool = True) -> tuple[list[str], list[str]]:
    """Bring (or, write=False, compare) each type's page up to date.

    Returns (changed, problems): pages that were (or would be) rewritten, and
    pages that cannot be: missing, or without their markers."""
    changed, problems = [], []
    for name in type_names or registry.types():
        path = page_path(name, docs_dir)
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"{path}: missing (it needs the lines {begin_marker(name)} and {end_marker(name)})")
            continue
        try:
            new = update_page(old, name)
        except ValueError as err:
            problems.append(f"{path}: {err}")
            continue
        if new != old:
            changed.append(str(path))
            if write:
                path.write_text(new, encoding="utf-8")
    return changed, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m appliance.clouds.docs", description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    ap.add_argument("--docs", default=str(DOCS_DIR), help="the directory of the TYPE.md pages (default: %(default)s)")
    ap.add_argument("types", nargs="*", metavar="TYPE", help="only these cloud types (default: all)")
    args = ap.parse_args(argv)
    unknown = [t for t in args.types if t not in registry.types()]
    if unknown:
        ap.error(f"unknown cloud type {', '.join(unknown)} (known: {', '.join(registry.types())})")
    changed, problems = sync(args.docs, args.types or None, write=not args.check)
    for p in problems:
        print(p, file=sys.stderr)
    for path in changed:
        print(f"{path}: {'out of date' if args.check else 'updated'}", file=sys.stderr if args.check else sys.stdout)
    if args.check and changed:
        print("run `python3 -m appliance.clouds.docs` to update", file=sys.stderr)
    return 1 if problems or (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
