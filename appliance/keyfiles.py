"""Files that hold secrets or shared state: written whole or not at all, with their mode
from the first byte. One place for the signing keys (the pool's workers', lab users',
allowed schedds') and the small JSON registries beside them."""
from __future__ import annotations

import contextlib
import grp
import os
import tempfile

KEY_BYTES = 48          # random bytes of a signing key, stored as hex (what condor_token_create reads)


def write_atomic(path: str, content: str | bytes, mode: int, group: str | None = None, sync: bool = False) -> None:
    """Replace `path` with `content`: readers see the old file or the new one, never a part.
    group: the file's group (for a file the web app, group appliance, must read), where it exists."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        if group is not None:
            with contextlib.suppress(KeyError, PermissionError):
                os.fchown(fd, -1, grp.getgrnam(group).gr_gid)
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def new_signing_key(path: str, keep_existing: bool = False) -> bytes | None:
    """A fresh signing key at `path` (mode 0600), returned. keep_existing: leave a key that is
    already there (and return None), so a second call never revokes the tokens of the first."""
    key = os.urandom(KEY_BYTES).hex().encode()
    if keep_existing:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key
    write_atomic(path, key, 0o600)
    return key
