"""The boot script that makes a fresh cloud machine (an EC2 instance, and any cloud of machines like it)
a worker: a template (config/ec2-user-data.sh, or the cloud's `user_data` file) with the
worker's values and files filled in. It installs Debian's htcondor (or runs the appliance
image in its worker role), writes the worker's files, starts it, and powers the machine
off when the worker ends. It holds the worker's secrets: never log it.
"""
from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..worker_role import HOME as WORKER_HOME
from ..worker_role import bundle
from ..workerconf import WorkerSpec, worker_files
from .base import CloudError, ErrorKind

DEFAULT_TEMPLATE = "/etc/appliance/ec2-user-data.sh"
REPO_TEMPLATE = Path(__file__).resolve().parents[2] / "config" / "ec2-user-data.sh"
DEFAULT_MAX_LIFETIME = 86400.0


def template_text(given: str | None, path: str | None) -> tuple[str, str]:
    """(where it came from, the template): one given (tests), the cloud's `user_data`
    file, APPLIANCE_EC2_USER_DATA, else the shipped one."""
    if given is not None:
        return "<given>", given
    path = path or os.environ.get("APPLIANCE_EC2_USER_DATA") or (
        DEFAULT_TEMPLATE if os.path.exists(DEFAULT_TEMPLATE) else str(REPO_TEMPLATE))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise CloudError(ErrorKind.CONFIG, f"cannot read the user-data template {path}: "
                                           f"{getattr(err, 'strerror', None) or err}") from None
    # the shipped script's comments are for its readers, not worth EC2's 16 KB; yours are sent as written
    return path, (strip_comments(text) if path in (DEFAULT_TEMPLATE, str(REPO_TEMPLATE)) else text)


def user_data(spec: WorkerSpec, settings: Any, given: str | None, limit: int, cloud_kind: str) -> str:
    """The boot script of this worker, at most `limit` bytes. `settings` are the cloud's
    options: its user_data, worker_image and max_lifetime."""
    source, template = template_text(given, settings.user_data)
    image = spec.image_ref if settings.worker_image else ""
    values = {
        "worker_id": spec.worker_id, "cloud": spec.cloud.name, "pool": spec.pool,
        "condor_host": spec.condor_host, "worker_image": image, "worker_home": WORKER_HOME,
        "max_lifetime": str(int(settings.max_lifetime or DEFAULT_MAX_LIFETIME)),
        "noclaim_shutdown": str(spec.noclaim_shutdown), "gpus": str(spec.size.gpus),
    }
    files = worker_files(spec, WORKER_HOME)
    if image:   # the appliance image in its worker role reads one bundle
        files = {"bundle.json": (bundle(spec.worker_id, files), 0o600)}
    text = render(template, values, write_files_script(files), source)
    size = len(text.encode())
    if size > limit:
        raise CloudError(ErrorKind.CONFIG, f"the user-data from {source} is {size} bytes; {cloud_kind} allows {limit}")
    return text


def strip_comments(script: str) -> str:
    """The script without its comment-only lines (its first line, the #! line, stays).
    Only for the shipped template: it has no here-document with a line starting with #."""
    first, _, rest = script.partition("\n")
    return "\n".join([first, *(line for line in rest.split("\n") if not line.lstrip().startswith("#"))])


_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render(template: str, values: Mapping[str, str], files_script: str, source: str = "<template>") -> str:
    """Fill `{{ name }}` placeholders: values shell-quoted, `write_worker_files` as code."""
    known = sorted([*values, "write_worker_files"])

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name == "write_worker_files":
            return files_script
        if name not in values:
            raise CloudError(ErrorKind.CONFIG, f"user-data template {source}: unknown placeholder "
                                               f"{{{{ {name} }}}} (known: {', '.join(known)})")
        return shlex.quote(values[name])
    return _PLACEHOLDER.sub(sub, template)


def write_files_script(files: Mapping[str, tuple[bytes, int]]) -> str:
    """Shell that writes each file under "$WORKER_HOME" with its mode (contents base64)."""
    lines = ["umask 077"]
    for rel, (content, mode) in files.items():
        tag = "APPLIANCE_" + re.sub(r"[^A-Za-z0-9]", "_", rel).upper()
        encoded = base64.encodebytes(content).decode().rstrip("\n")
        path = f'"$WORKER_HOME"/{shlex.quote(rel)}'
        lines += [f'mkdir -p "$(dirname {path})"',
                  f"base64 -d > {path} <<'{tag}'", encoded, tag, f"chmod {mode:o} {path}"]
    return "\n".join(lines)



