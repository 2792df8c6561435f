"""The admin password's log line (appliance.bootstrap.admin_password): at every start it
says where the password is and how to read it again, and never the password itself."""
from __future__ import annotations

import os
import stat

import pytest

from appliance import bootstrap

CASES = [
    # (APPLIANCE_ADMIN_PASSWORD, a password kept from an earlier start, the line, a file after)
    ("", None, "appliance: web page: user admin, password generated now and kept in {state}/admin-password; "
               "read it with `docker exec <container> cat {state}/admin-password`", True),
    ("", "kept-before", "appliance: web page: user admin, password generated at first start and kept in "
                        "{state}/admin-password; read it with `docker exec <container> cat {state}/admin-password`",
     True),
    ("chosen-pw", None, "appliance: web page: user admin, password APPLIANCE_ADMIN_PASSWORD (set for the container)",
     False),
]


@pytest.mark.parametrize("env,kept,line,file_after", CASES, ids=["first start", "a later start", "set by env"])
def test_the_log_says_where_the_password_is_at_every_start_never_what_it_is(tmp_path, monkeypatch, env, kept,
                                                                           line, file_after):
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", env)
    path = tmp_path / "admin-password"
    if kept:
        path.write_text(kept + "\n")
    said = bootstrap.admin_password(str(tmp_path), (os.getuid(), os.getgid()))
    assert said == line.format(state=tmp_path)
    assert path.exists() == file_after
    if file_after:
        password = path.read_text().strip()
        assert password == kept if kept else len(password) >= 20       # a kept one is never replaced
        assert password not in said and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert "chosen-pw" not in said


def test_the_password_made_at_first_start_is_kept_at_the_next(tmp_path, monkeypatch):
    monkeypatch.delenv("APPLIANCE_ADMIN_PASSWORD", raising=False)
    owner = (os.getuid(), os.getgid())
    bootstrap.admin_password(str(tmp_path), owner)
    first = (tmp_path / "admin-password").read_text()
    assert "generated at first start" in bootstrap.admin_password(str(tmp_path), owner)
    assert (tmp_path / "admin-password").read_text() == first
