"""Reloading appliance.yaml without a restart, in one running appliance: a cloud added, a
resize, an invalid file refused, an override kept, a removed cloud whose busy worker
drains (its job completes; it is never killed), and the overrides reset on request.

The configuration is a mounted directory, as the docs advise: the file is replaced the way
editors save it (a new file renamed over the old one), which a single-file bind mount would
not show inside the container."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from . import ops_support
from .ops_support import job

pytestmark = pytest.mark.timeout(300)

BASE = """
scheduler: {interval: 1, idle_timeout: 5, boot_timeout: 120}
clouds:
  - {name: local, type: local, max_workers: 2, worker: {cpus: 1, memory: 1024}}
"""
WITH_BURST = BASE + "  - {name: burst, type: local, priority: 1, max_workers: 1, worker: {cpus: 1, memory: 1024}}\n"
RESIZED = WITH_BURST.replace("max_workers: 2,", "max_workers: 3,")
INVALID = RESIZED.replace("max_workers: 3,", "max_workers: lots,")
WITHOUT_BURST = BASE.replace("max_workers: 2,", "max_workers: 3,")


def version(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save(directory, text: str) -> None:
    """As an editor saves: write a new file, rename it over the old one (a new inode)."""
    tmp = directory / ".appliance.yaml.tmp"
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, directory / "appliance.yaml")


def run(app, cmd: str) -> tuple[int, str, str]:
    rc, out = app.c.exec_run(["bash", "-c", cmd], demux=True)
    return rc, (out[0] or b"").decode(), (out[1] or b"").decode()


def test_reload_adds_resizes_refuses_keeps_overrides_and_drains_a_removed_cloud(client, image, tmp_path):
    started = time.monotonic()
    conf = tmp_path / "conf"
    conf.mkdir()
    conf.chmod(0o755)                # the web app (user appliance) reads it too
    save(conf, BASE)
    a = ops_support.start(client, image, tmp_path, "reload", mounts={str(conf): "/etc/appliance/config:ro"},
                          env={"APPLIANCE_CONFIG": "/etc/appliance/config/appliance.yaml"}, web=False)
    try:
        status = a.status()
        assert status["config"]["source"] == "/etc/appliance/config/appliance.yaml"
        assert status["config"]["version"] == version(BASE)

        # added: the edited file counts only once reloaded
        save(conf, WITH_BURST)
        assert [c["name"] for c in a.status()["data"]] == ["local"]
        rc, out, err = run(a, "cloud_admin --reload -C test")
        assert rc == 0 and out.strip() == (f"reloaded /etc/appliance/config/appliance.yaml version "
                                           f"{version(WITH_BURST)}: clouds added: burst"), (out, err)
        assert [c["name"] for c in a.status()["data"]] == ["local", "burst"]

        # a job only burst may run: its worker boots while the rest goes on
        cluster = a.submit(job(1, 12, extra='requirements = TARGET.CloudName == "burst"'))

        # an override (disable local) kept across a reload that resizes local
        assert run(a, "cloud_admin -d local -C maintenance")[0] == 0
        save(conf, RESIZED)
        rc, out, _ = run(a, "cloud_admin --reload --json -C test")
        answer = json.loads(out)["reload"]
        assert rc == 0 and answer["changed"] == {"local": ["max_workers 2 -> 3"]}
        local = a.cloud("local")
        assert (local["max_workers"], local["enabled"]) == (3, False)
        assert a.status()["config"]["version"] == version(RESIZED)

        # an invalid file: one line, exit 4, nothing changes
        save(conf, INVALID)
        rc, out, err = run(a, "cloud_admin --reload -C test")
        assert rc == 4 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
        assert err.startswith("cloud_admin: configuration error: /etc/appliance/config/appliance.yaml: "
                              "clouds[0].max_workers"), err
        assert a.status()["config"]["version"] == version(RESIZED)
        assert a.cloud("local")["max_workers"] == 3

        # removed while its worker runs the job: it drains, the job completes
        a.wait("burst's worker to run the job", lambda: a.cloud("burst")["busy"] == 1, timeout=90, every=0.5)
        (wid,) = [w["id"] for w in a.status("-m")["data"] if w["cloud"] == "burst"]
        save(conf, WITHOUT_BURST)
        rc, out, err = run(a, "cloud_admin --reload -C test")
        assert rc == 0 and "removed: burst (its 1 worker drains)" in out, (out, err)
        assert [c["name"] for c in a.status()["data"]] == ["local"]
        a.wait("the drained worker to retire", lambda: next(
            w for w in a.status("-m", "-a")["data"] if w["id"] == wid)["state"] == "retired", timeout=90, every=0.5)
        worker = next(w for w in a.status("-m", "-a")["data"] if w["id"] == wid)
        assert worker["reason"].startswith("drained"), worker
        history = a.sh(f"condor_history {cluster} -af ExitCode NumJobStarts JobStatus").split()
        assert history == ["0", "1", "4"], history         # exited 0, started once, completed
        reasons = [e["reason"] for e in a.events()]
        assert "reload: cloud burst removed, its 1 worker drains" in reasons
        a.wait("the removed cloud to be forgotten",
               lambda: "reload: cloud burst removed: its last worker is gone" in [e["reason"] for e in a.events()],
               timeout=30, every=0.5)
        assert not any("without draining" in r for r in reasons)

        # --reset-overrides: the file's values apply again (local was disabled at runtime)
        rc, out, err = run(a, "cloud_admin --reload --reset-overrides -C 'back to the file'")
        assert rc == 0 and out.strip().endswith("runtime overrides reset to the file's values"), (out, err)
        local = a.cloud("local")
        assert (local["max_workers"], local["enabled"]) == (3, True)
        assert any(r.startswith('configuration reloaded by cloud_admin: "back to the file": ')
                   for r in [e["reason"] for e in a.events()])
    finally:
        print(f"test_reload: {time.monotonic() - started:.1f} s")
        ops_support.stop(a)
