"""Who may use the web page and the API, and the protections around it.

- One account, `admin`, whose password is APPLIANCE_ADMIN_PASSWORD or else the
  one bootstrap generated into /var/lib/appliance/admin-password.
- The page logs in with a form and keeps a signed, HttpOnly, SameSite session
  cookie; scripts use HTTP Basic with the same credentials.
- Every state-changing request made with the session cookie carries a CSRF
  token (a form field or the X-CSRF-Token header); Basic-auth requests need
  none, since a browser never adds those credentials on its own (no Basic
  challenge is ever sent).
- Wrong passwords are counted per client address in the store, which all
  gunicorn workers share: 5 failures within a minute answer 429 until the
  minute has passed.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass

from flask import current_app, request, session

from ..store import Store

log = logging.getLogger("appliance.web")

USER = "admin"
MAX_FAILURES = 5
WINDOW = 60.0
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def state_dir() -> str:
    return current_app.config.get("STATE_DIR") or os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")


def admin_password() -> str | None:
    """The current admin password, read on each use so a change takes effect at once."""
    configured = current_app.config.get("ADMIN_PASSWORD") or os.environ.get("APPLIANCE_ADMIN_PASSWORD")
    if configured:
        return configured
    path = os.path.join(state_dir(), "admin-password")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as err:
        log.error("cannot read the admin password file %s: %s", path, err.strerror)
        return None
    return value or None


def session_key(directory: str) -> bytes:
    """A random key that signs session cookies, made once and shared by all workers."""
    path = os.path.join(directory, "web-session-key")
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(48))
    try:
        os.link(tmp, path)      # atomic: the first worker wins, the others read its key
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path, "rb") as f:
        return f.read()


def check_password(user: str, password: str) -> bool:
    expected = admin_password()
    if not expected:
        return False
    ok_user = hmac.compare_digest(user.encode(), USER.encode())
    ok_pw = hmac.compare_digest(password.encode(), expected.encode())
    return ok_user and ok_pw


# ------------------------------------------------------------------ login rate limit

def client() -> str:
    return request.remote_addr or "unknown"


def _key(who: str) -> str:
    return f"login-failures:{who}"


def retry_after(store: Store, who: str, now: float | None = None) -> int:
    """Seconds until this client may try again; 0 if it may try now."""
    now = time.time() if now is None else now
    fails, _ = store.get(_key(who), [])
    recent = [t for t in fails if t > now - WINDOW]
    if len(recent) < MAX_FAILURES:
        return 0
    return max(int(recent[-MAX_FAILURES] + WINDOW - now) + 1, 1)


def note_failure(store: Store, who: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    with store.tx() as db:
        row = db.execute("SELECT value FROM kv WHERE key = ?", (_key(who),)).fetchone()
        fails = [t for t in (json.loads(row["value"]) if row else []) if t > now - WINDOW]
        fails = (fails + [now])[-MAX_FAILURES * 2:]
        db.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) DO UPDATE "
                   "SET value = excluded.value, updated_at = excluded.updated_at", (_key(who), json.dumps(fails), now))
    log.warning("login failed from %s (%d in the last minute)", who, len(fails))


def clear_failures(store: Store, who: str) -> None:
    with store.tx() as db:
        db.execute("DELETE FROM kv WHERE key = ?", (_key(who),))


# ------------------------------------------------------------------ who is asking

@dataclass(frozen=True)
class Auth:
    ok: bool
    via: str = ""            # "session" or "basic"
    status: int = 401        # when not ok: 401, or 429 while rate-limited
    message: str = "authentication required: log in, or use HTTP Basic as admin"
    retry_after: int = 0


def authenticate(store: Store) -> Auth:
    if session.get("user") == USER:
        return Auth(True, "session")
    header = request.headers.get("Authorization", "")
    if not header:
        return Auth(False)
    who = client()
    wait = retry_after(store, who)
    if wait:
        return Auth(False, status=429, message=f"too many failed logins: try again in {wait}s", retry_after=wait)
    scheme, _, value = header.partition(" ")
    user = password = ""
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            user = password = ""
    if user and check_password(user, password):
        return Auth(True, "basic")
    note_failure(store, who)
    return Auth(False, message="wrong credentials")


# ------------------------------------------------------------------ CSRF

def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    expected = session.get("csrf")
    given = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())
