"""Federation: a lab's submit node flocks to the appliance, which scales for it; the
appliance flocks out what it cannot run; revoked and unknown schedds are refused.

Real pools on one Docker network (tests/integration/federation_support.py): A, a plain
HTCondor submit node with its own collector and no workers; B, the appliance with
a local and a docker cloud; C, a second appliance that flocks to B. The tests run in
order and share the pools (starting them is most of the time).
"""
from __future__ import annotations

import re
import time

import pytest

from tests.waiting import wait_until

from .conftest import IMAGE, JOB_SCRIPT, job_sub
from .federation_support import (
    Federation,
    Lab,
    build_lab_image,
    copy_out,
    note,
    start_appliance,
    start_lab,
)

pytestmark = [pytest.mark.timeout(900)]

WORKER = "{cpus: 1, memory: 512, attributes: {Site: b}}"
B_CONFIG = f"""
pool: {{name: b-pool}}
scheduler: {{interval: 1, idle_timeout: 5, boot_timeout: 120}}
clouds:
  - {{name: local, type: local, priority: 0, max_workers: 2, worker: {WORKER}}}
  - {{name: docker, type: docker, image: {IMAGE}, priority: 1, max_workers: 2, worker: {WORKER}}}
"""
C_CONFIG = """
pool: {{name: c-pool}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 120}}
clouds:
  - {{name: local, type: local, max_workers: 2, worker: {{cpus: 1, memory: 512}}}}
federation:
  flock_to:
    - {{name: b, collector: "{b}:9618", token_file: /etc/appliance/flock/b.token}}
"""
# what a lab's job looks like: no shared filesystem with the pool it flocks to
LAB_JOB = "should_transfer_files = YES\nwhen_to_transfer_output = ON_EXIT\n"
ONLY_B = 'requirements = (TARGET.Site =?= "b")\n'


@pytest.fixture(scope="module")
def fed(client, image, tmp_path_factory):
    build_lab_image()
    tmp = tmp_path_factory.mktemp("federation")
    f = Federation(client, tmp)
    try:
        b_name, c_name = f.name("b"), f.name("c")
        f.b = start_appliance(client, image, B_CONFIG, b_name, f.network, tmp, docker_socket=True)
        f.containers.append(f.b.tc)
        f.lab = start_lab(client, f.network, f.name("laba"))
        f.labs.append(f.lab)
        f.b.wait_ready()
        # C flocks to B: B allows C's schedd first, C starts with the token B made for it
        out = f.b.sh(f"cloud_admin --allow-schedd c --address {b_name}:9618 -C test")
        token = copy_out(f.b, re.search(r"(/\S+/b-pool\.token)", out).group(1))
        (tmp / "b.token").write_bytes(token)
        f.c = start_appliance(client, image, C_CONFIG.format(b=b_name), c_name, f.network, tmp,
                              mounts={str(tmp / "b.token"): "/etc/appliance/flock/b.token"})
        f.containers.append(f.c.tc)
        f.c.wait_ready()
        # ...and gives B a token to read its queue (an appliance does not allow anonymous READ)
        f.b.c.put_archive("/tmp", _tar("c.read-token", copy_out(f.c, "/var/lib/appliance/federation/flock-to/b.read-token")))
        f.b.sh("cloud_admin --allow-schedd c --read-token /tmp/c.read-token -C test && rm /tmp/c.read-token")
        yield f
    finally:
        f.close()


def _tar(name: str, content: bytes) -> bytes:
    import io
    import tarfile
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(content), 0o600
        tar.addfile(info, io.BytesIO(content))
    return data.getvalue()


def both(app, lab: Lab) -> str:
    """Diagnostics from both sides of a flocking pair."""
    return (f"{app.diagnostics()}\n--- {app.name}: schedd ads ---\n"
            f"{app.sh('condor_status -schedd -af Name AuthenticatedIdentity', check=False)}"
            f"--- {app.name}: CollectorLog ---\n{app.sh('tail -c 2000 /var/log/condor/CollectorLog', check=False)}"
            f"\n--- {lab.name}: SchedLog ---\n{lab.logs()}")


def schedd_row(app, name: str) -> dict | None:
    return next((s for s in app.status("-q")["data"]["schedds"] if s["name"] == name), None)


def live_workers(app) -> list[dict]:
    return app.status("-m")["data"]


def count_in_log(app, pattern: str, log: str = "CollectorLog") -> int:
    out = app.sh(f"grep -c -- {pattern!r} /var/log/condor/{log} || true")
    return int(out.strip() or 0)


def test_a_lab_schedd_flocks_to_b_and_b_scales_for_it(fed):
    b, lab = fed.b, fed.lab
    out = b.sh(f"cloud_admin --allow-schedd laba --address {b.name}:9618 -C test")
    conf_path = re.search(r"(/\S+/flock-to-b-pool\.conf)", out).group(1)
    conf = copy_out(b, conf_path)
    token = copy_out(b, re.search(r"(/\S+/b-pool\.token)", out).group(1))
    settings = [line for line in conf.decode().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    note("lab side: config lines changed", len(settings))
    note("lab side: files added", 2)      # the config file and the token
    assert len(settings) == 2 and settings[0].startswith("FLOCK_TO ="), settings

    # the lab's admin applies exactly what was written, as its header says
    lab.put("/etc/condor/tokens.d/b-pool", token, 0o600)
    lab.put("/etc/condor/config.d/flock-to-b-pool.conf", conf)
    lab.sh("condor_reconfig")
    # (the schedd tells the pools it flocks to about itself at its next update: a submission
    # makes one at once, otherwise within its SCHEDD_INTERVAL)
    t0 = time.monotonic()
    cluster = lab.submit(job_sub(10, seconds=3, extra=LAB_JOB), {"job.sh": JOB_SCRIPT})
    # B counts A's idle jobs as demand, by schedd and owner, and launches for them
    demand = wait_until("B to count A's jobs as demand", lambda: [
        g for g in b.status("-q")["data"]["groups"] if g.get("schedd") == "laba"], timeout=60, every=0.2,
        retry_on=(AssertionError, ValueError), context=lambda: both(b, lab))
    assert demand[0]["owner"] == f"alice@{lab.name}", demand
    assert schedd_row(b, "laba")["state"] in ("flocking", "quiet"), schedd_row(b, "laba")
    wait_until("a job of A to run on a worker of B", lambda: lab.sh(
        f"condor_q {cluster} -allusers -run -af RemoteHost", check=False).strip(), timeout=120, every=0.2,
        context=lambda: both(b, lab))
    note("seconds from submit on A to running on a new B worker", round(time.monotonic() - t0, 1))

    wait_until("A's 10 jobs to complete", lambda: not lab.jobs(cluster) and lab.history(cluster) == 10,
               timeout=240, context=b.diagnostics)
    note("seconds from submit on A to all 10 done", round(time.monotonic() - t0, 1))
    workers = set()
    for i in range(10):     # the output came back to A, from B's workers
        text = lab.sh(f"cat /home/alice/job/out.{i}")
        m = re.search(r'^WorkerId = "((local|docker)-[0-9a-f]{6})"$', text, re.M)
        assert m and "done" in text, text
        workers.add(m.group(1))
    launches = [e for e in b.events() if e["to_state"] == "requested"]
    assert launches and all("of schedd laba" in e["reason"] for e in launches), launches
    assert workers <= {e["worker_id"] for e in launches}, (workers, launches)
    assert any(w.startswith("docker-") for w in workers) and any(w.startswith("local-") for w in workers), workers
    note("B workers started for A's 10 jobs", len(launches))

    # no demand left: B's workers retire after idle_timeout
    b.wait("B's workers to retire", lambda: live_workers(b) == [], timeout=120)
    ended = {e["worker_id"]: e["reason"] for e in b.events() if e["to_state"] == "draining"}
    assert all("idle for" in ended.get(w, "") for w in workers), ended


def test_after_revoke_a_jobs_stay_idle_at_a(fed):
    b, lab = fed.b, fed.lab
    before = b.status("-e", "-n", "1000")["data"][-1]["id"]
    refused = count_in_log(b, "to schedd-laba@b-pool") + count_in_log(b, "authentication of")
    out = b.sh("cloud_admin --revoke-schedd laba -C test")
    assert "revoked" in out, out
    assert not b.sh("ls /var/lib/appliance/keys").count("schedd-laba")

    cluster = lab.submit(job_sub(3, seconds=1, extra=LAB_JOB), {"job.sh": JOB_SCRIPT}, directory="after")
    # A tries (its submit makes it update the pools it flocks to) and B refuses it
    b.wait("B to refuse A's schedd",
           lambda: count_in_log(b, "to schedd-laba@b-pool") + count_in_log(b, "authentication of") > refused,
           timeout=120)
    b.wait_cycles(8)
    assert [s for _, s in lab.jobs(cluster)] == [1, 1, 1], lab.jobs(cluster)     # idle, and all still there
    assert schedd_row(b, "laba") is None
    assert "schedd-laba" not in b.sh("condor_status -schedd -af AuthenticatedIdentity")
    assert [e for e in b.events() if e["id"] > before and e["to_state"] == "requested"] == []
    assert live_workers(b) == []
    lab.sh(f"condor_rm {cluster}", user="alice")


def test_an_unknown_schedd_cannot_flock(fed, client):
    b = fed.b
    x = start_lab(client, fed.network, fed.name("labx"))
    fed.labs.append(x)
    ip = client.containers.get(x.name).attrs["NetworkSettings"]["Networks"][fed.network]["IPAddress"]
    # its own key, a token that claims a schedd identity of B's pool: B has no such key
    x.sh("head -c 48 /dev/urandom | od -An -tx1 | tr -d ' \\n' > /etc/condor/passwords.d/schedd-labx && "
         "chmod 600 /etc/condor/passwords.d/schedd-labx && mkdir -p /etc/condor/tokens.d && "
         "_CONDOR_TRUST_DOMAIN=b-pool condor_token_create -identity schedd-labx@b-pool -key schedd-labx "
         "-authz ADVERTISE_SCHEDD -authz READ > /etc/condor/tokens.d/b-pool && chmod 600 /etc/condor/tokens.d/b-pool")
    x.put("/etc/condor/config.d/flock.conf", f"FLOCK_TO = {b.name}:9618\nMIN_FLOCK_LEVEL = 1\n".encode())
    x.sh("condor_reconfig")
    failed = count_in_log(b, f"authentication of {ip} failed")
    cluster = x.submit(job_sub(2, seconds=1, extra=LAB_JOB), {"job.sh": JOB_SCRIPT})
    b.wait("B to refuse the unknown schedd", lambda: count_in_log(b, f"authentication of {ip} failed") > failed,
           timeout=120)
    b.wait_cycles(5)
    assert x.name not in b.sh("condor_status -schedd -af Name") and x.name not in b.sh("condor_status -submitters -af ScheddName")
    assert [s for _, s in x.jobs(cluster)] == [1, 1]
    assert live_workers(b) == []


def test_jobs_only_b_can_run_flock_out_from_c(fed):
    b, c = fed.b, fed.c
    before_c = c.status("-e", "-n", "1000")["data"]
    before_c = before_c[-1]["id"] if before_c else 0
    cluster = c.submit(job_sub(2, seconds=2, extra=ONLY_B), {"job.sh": JOB_SCRIPT}, directory="/home/submit/out")
    # C sends them away and launches nothing for them, and says so
    c.wait("C to send the jobs to b", lambda: any(g["status"] in ("sending away", "sent away") and "b" in g["reason"]
                                                   for g in c.status("-q")["data"]["groups"]), timeout=60)
    b.wait("B to count C's jobs", lambda: (schedd_row(b, "c") or {}).get("state") == "flocking", timeout=90)
    c.wait("the 2 jobs to complete on B", lambda: not c.sh(f"condor_q {cluster} -af ProcId").strip() and
           c.sh(f"condor_history {cluster} -af JobStatus").split().count("4") == 2, timeout=240)
    for i in range(2):
        text = c.sh(f"cat /home/submit/out/out.{i}")
        assert f"host={c.name}" not in text and "done" in text, text
        assert f"host={b.name}" in text or re.search(r"^host=docker-[0-9a-f]{6}$", text, re.M), text
    assert [e for e in c.events() if e["id"] > before_c and e["to_state"] == "requested"] == []
    assert any(e["kind"] == "federation" and "sent 2 job(s) away" in e["reason"] for e in c.events())
    assert any("of schedd c" in e["reason"] for e in b.events() if e["to_state"] == "requested")


def test_a_dag_spans_both_pools(fed):
    c = fed.c
    d = "/home/submit/dag"
    files = {"job.sh": JOB_SCRIPT,
             "here.sub": job_sub(1, seconds=1).replace("out.$(Process)", "out.$(node)")
                                               .replace("err.$(Process)", "err.$(node)"),
             "there.sub": job_sub(1, seconds=1, extra=ONLY_B).replace("out.$(Process)", "out.$(node)")
                                                             .replace("err.$(Process)", "err.$(node)"),
             "wf.dag": "JOB first here.sub\nVARS first node=\"first\"\n"
                       "JOB remote there.sub\nVARS remote node=\"remote\"\n"
                       "JOB last here.sub\nVARS last node=\"last\"\n"
                       "PARENT first remote CHILD last\n"}
    c.sh(f"mkdir -p {d}", user="submit")
    for name, content in files.items():
        c.sh(f"cat > {d}/{name} <<'EOF'\n{content}\nEOF\nchmod +x {d}/{name}", user="submit")
    c.sh(f"cd {d} && condor_submit_dag -f wf.dag", user="submit")
    c.wait("the DAG to complete", lambda: "EXITING WITH STATUS 0" in c.sh(f"cat {d}/wf.dag.dagman.out",
                                                                           check=False), timeout=300)
    here = {n: c.sh(f"cat {d}/out.{n}") for n in ("first", "remote", "last")}
    assert f"host={fed.b.name}" not in here["first"] + here["last"], here
    assert 'CloudName = "local"' in here["first"] and 'CloudName = "local"' in here["last"], here
    assert f"host={c.name}" not in here["remote"] and "done" in here["remote"], here


def test_lab_is_plain_htcondor(fed):
    """A is Debian's HTCondor as packaged, with its default security: nothing of the appliance."""
    lab: Lab = fed.lab
    assert lab.sh("condor_config_val SEC_READ_AUTHENTICATION ALLOW_READ").split() == ["OPTIONAL", "*"]
    assert "appliance" not in lab.sh("ls /etc/condor/config.d /usr/lib/python3/dist-packages", check=False)
