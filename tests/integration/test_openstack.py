"""The openstack cloud against a real OpenStack: Keystone, Nova (api, conductor, scheduler,
compute with Nova's fake virt driver), Placement, Glance and Neutron from Debian's
packages, started by tests/openstack/up on the test's own network. Every call the driver
makes is real HTTP to the real services; only no VM boots (the fake driver reports the
server ACTIVE). Where a test needs a machine, a debian:trixie-slim container with HTCondor
baked in (openstack_support.VM_IMAGE) runs the user-data read back from Nova, as cloud-init
would; the EC2 boot test runs the same script on a bare Debian, install included.

Two appliances share the control plane: one with a short boot_timeout for the launch,
failure and clean-up cases (no server of it ever joins), and one whose worker does join.
"""
from __future__ import annotations

import re
import time

import pytest

from .conftest import JOB_SCRIPT, job_sub
from .openstack_support import (
    admin,
    build_vm_image,
    cloud,
    openstack_network,
    pool_id,
    servers,
    start_appliance,
    user_data,
    workers,
)
from .test_appliance import completed
from .test_ec2_boot import script_tar

pytestmark = pytest.mark.timeout(900)

CLOUD = """
  - name: {name}
    type: openstack
    cloud: {entry}
    clouds_yaml: /etc/appliance/clouds.yaml
    image: debian-13
    network: lab-net
    security_groups: [{groups}]
    max_workers: {max_workers}
    max_lifetime: 3600
    priority: {priority}
    shapes: [{shapes}]
"""


def os_cloud(name, entry="appliance", max_workers=3, priority=0, shapes="{name: w1.small}, {name: w2.medium}",
             groups="appliance-workers"):
    return CLOUD.format(name=name, entry=entry, max_workers=max_workers, priority=priority, shapes=shapes,
                        groups=groups)


# launches, failures and clean-up: nothing ever joins, so boot_timeout is short
FAST = ("""
pool: {{condor_host: {name}}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 45, lost_timeout: 30}}
clouds:
""" + os_cloud("os").replace("{", "{{").replace("}", "}}")
        + os_cloud("big", shapes="{name: too.big}", max_workers=1).replace("{", "{{").replace("}", "}}")
        + os_cloud("tight", entry="appliance-tight", groups="default").replace("{", "{{").replace("}", "}}")
        + """
  - name: local
    type: local
    priority: 10
    max_workers: 2
""")

# a worker that joins: its boot script installs htcondor from Debian first
BOOT = ("""
pool: {{condor_host: {name}}}
scheduler: {{interval: 1, idle_timeout: 10, boot_timeout: 420, lost_timeout: 60}}
clouds:
""" + os_cloud("os", max_workers=1, shapes="{name: w1.small}").replace("{", "{{").replace("}", "}}"))


@pytest.fixture(scope="module")
def world(client, image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openstack")
    with openstack_network(client, tmp) as (network, clouds, plane):
        yield client, image, tmp, network, clouds, plane


@pytest.fixture(scope="module")
def fast(world):
    client, image, tmp, network, clouds, _ = world
    return start_appliance(client, image, tmp, network, clouds, FAST, "fast")


def booting(app, cloud_name, exclude=()):
    for w in workers(app, ended=False):
        if w["cloud"] == cloud_name and w["state"] == "booting" and w["resource_id"] and w["id"] not in exclude:
            return w
    return None


def ended(app, wid):
    w = next((w for w in workers(app) if w["id"] == wid), None)
    return w if w and w["state"] in ("failed", "retired") else None


def test_a_job_for_the_cloud_creates_the_server_it_should_and_boot_timeout_deletes_it(fast):
    app = fast
    pid = pool_id(app)
    cluster = app.submit(job_sub(1, extra='+TargetClouds = "os"'), {"job.sh": JOB_SCRIPT}, directory="/home/submit/a")
    w = app.wait("an os worker booting", lambda: booting(app, "os"), timeout=60)
    wid, sid = w["id"], w["resource_id"]
    (srv,) = [s for s in servers(app, pid) if s["id"] == sid]
    assert srv["name"] == f"{app.name}-{wid}" or srv["name"].endswith(f"-{wid}"), srv
    assert srv["metadata"] == {"appliance:pool": pid, "appliance:cloud": "os", "appliance:worker": wid,
                               "appliance:shape": "w1.small"}, srv["metadata"]
    assert srv["flavor"] == "w1.small", srv
    image_id = admin(app, 'print(json.dumps(conn.image.find_image("debian-13").id))')
    assert srv["image"] == image_id
    app.wait("the server to be ACTIVE on lab-net",
             lambda: next(s for s in servers(app, pid) if s["id"] == sid)["addresses"].get("lab-net"), timeout=60)
    script = user_data(app, sid)
    assert script.startswith("#!") and f"WORKER_ID={wid}" in script and f"CONDOR_HOST={app.name}" in script

    # it never joins (no VM boots): boot_timeout fails it and the server is deleted
    gone = app.wait("boot_timeout to fail the worker", lambda: ended(app, wid), timeout=90)
    assert gone["state"] == "failed" and "did not join the pool within boot_timeout" in gone["reason"], gone
    app.wait("its server to be deleted", lambda: all(s["id"] != sid for s in servers(app, pid)), timeout=30)
    app.sh(f"condor_rm {cluster}", user="submit")


def test_a_repeated_launch_makes_no_second_server(fast):
    """The driver's own launch, twice for one worker (a launch retried after a lost answer)."""
    app = fast
    out = app.sh("""python3 - <<'PYEOF'
from appliance.config import load
from appliance.clouds.base import make_driver
from appliance.workerconf import WorkerSpec
cfg = load()
c = cfg.with_shape_sizes({"os": {"w1.small": {"cpus": 1, "memory_mib": 1024, "gpus": 0}}}).cloud("os")
d = make_driver(c, cfg.pool.name, "repeat-pool")
spec = WorkerSpec("os-feed01", c, cfg.pool.name, "cm.invalid", token="t" * 40, key=b"k" * 32, shape=c.shape("w1.small"))
first, again = d.launch(spec), d.launch(spec)
listed = d.list()
d.terminate("os-feed01", first)
print(first == again, list(listed), listed["os-feed01"].resource_id == first)
PYEOF""")
    assert out.split()[-3:] == ["True", "['os-feed01']", "True"], out


def test_an_orphan_server_is_deleted(fast):
    app = fast
    pid = pool_id(app)
    sid = admin(app, f"""
c = connect("appliance")
s = c.compute.create_server(name="orphan", flavor_id=c.compute.find_flavor("w1.small").id,
                            image_id=c.image.find_image("debian-13").id,
                            networks=[{{"uuid": c.network.find_network("lab-net").id}}],
                            metadata={{"appliance:pool": {pid!r}, "appliance:cloud": "os",
                                      "appliance:worker": "os-0dead0"}})
print(json.dumps(s.id))
""")
    app.wait("the orphan server to be deleted", lambda: all(s["id"] != sid for s in servers(app, pid)), timeout=60)
    assert any("os-0dead0" in (e.get("worker_id") or "") + e["reason"] for e in app.events()), \
        "no event names the orphan"


def test_a_server_deleted_behind_the_appliances_back_fails_its_worker(fast):
    app = fast
    pid = pool_id(app)
    before = {w["id"] for w in workers(app)}
    cluster = app.submit(job_sub(1, extra='+TargetClouds = "os"'), {"job.sh": JOB_SCRIPT}, directory="/home/submit/d")
    w = app.wait("an os worker booting", lambda: booting(app, "os", exclude=before), timeout=60)
    admin(app, f'conn.compute.delete_server({w["resource_id"]!r}); print(json.dumps(True))')
    gone = app.wait("the worker to fail", lambda: ended(app, w["id"]), timeout=60)
    assert gone["state"] == "failed" and gone["reason"].startswith("vanished: "), gone
    app.sh(f"condor_rm {cluster}", user="submit")
    app.wait("no os server left", lambda: [s for s in servers(app, pid) if s["metadata"]["appliance:cloud"] == "os"]
             == [], timeout=60)


def test_no_valid_host_fails_the_worker_with_novas_fault_backs_off_and_local_runs_the_job(fast):
    app = fast
    cluster = app.submit(job_sub(1, extra='+TargetClouds = "big,local"'), {"job.sh": JOB_SCRIPT},
                         directory="/home/submit/big")
    failed = app.wait("the big worker to fail", lambda: next(
        (w for w in workers(app) if w["cloud"] == "big" and w["state"] == "failed"), None), timeout=90)
    assert "is ERROR (No valid host was found" in failed["reason"], failed
    big = cloud(app, "big")
    assert big["health"] in ("backoff", "stopped") and "No valid host was found" in big["last_error"], big
    app.wait("the job to run on local instead", lambda: len(completed(app, cluster)) == 1, timeout=120)
    assert 'CloudName = "local"' in app.sh("cat /home/submit/big/out.0")


def test_quota_exceeded_backs_off_with_novas_reason_and_local_takes_the_job(fast):
    app = fast
    # the tight project (1 instance) is already full, of a server that is not ours: two launches at
    # once could both pass Nova's quota count, one after another always meets it
    theirs = admin(app, """
tight = connect("appliance-tight")
s = tight.compute.create_server(name="someone-elses", flavor_id=tight.compute.find_flavor("w1.small").id,
                                image_id=tight.image.find_image("debian-13").id,
                                networks=[{"uuid": tight.network.find_network("lab-net").id}])
print(json.dumps(tight.compute.wait_for_server(s, status="ACTIVE", interval=1, wait=120).id))
""")
    # an idle local worker left by the test before would take the jobs before tight is tried
    app.sh("cloud_admin -k -c local -a --now -C test", check=False)
    app.wait("no local worker left", lambda: not [w for w in workers(app, ended=False) if w["cloud"] == "local"],
             timeout=60)
    cluster = app.submit(job_sub(2, seconds=2, extra='+TargetClouds = "tight,local"'), {"job.sh": JOB_SCRIPT},
                         directory="/home/submit/tight")
    tight = app.wait("the tight project's quota to stop its launches", lambda: (
        lambda c: c if c["health"] == "backoff" and "Quota exceeded" in c["last_error"] else None)(
        cloud(app, "tight")), timeout=90)
    assert tight["last_error"].startswith("limit: "), tight
    app.wait("the jobs to run, on local", lambda: len(completed(app, cluster)) == 2, timeout=180)
    for n in (0, 1):
        assert 'CloudName = "local"' in app.sh(f"cat /home/submit/tight/out.{n}")
    # the other server is not the appliance's: it is still there, untouched
    assert admin(app, f"print(json.dumps(connect('appliance-tight').compute.get_server({theirs!r}).status))") == "ACTIVE"
    admin(app, f"connect('appliance-tight').compute.delete_server({theirs!r}); print(json.dumps(True))")


def test_no_secret_in_the_logs_or_the_output(fast, world):
    app = fast
    clouds = world[4].read_text()
    secrets = re.findall(r"(?:application_credential_secret|password): (\S+)", clouds)
    assert secrets
    shown = app.logs() + app.sh("cloud_status; cloud_status -m -a; cloud_status -e -n 1000; cloud_status -q")
    for s in secrets:
        assert s not in shown


def test_the_user_data_from_nova_makes_a_debian_server_a_worker_and_scale_down_deletes_its_server(world):
    client, image, tmp, network, clouds, _ = world
    vm_image = build_vm_image()
    app = start_appliance(client, image, tmp, network, clouds, BOOT, "boot")
    pid = pool_id(app)
    cluster = app.submit(job_sub(1, seconds=2, extra='+TargetClouds = "os"'), {"job.sh": JOB_SCRIPT},
                         directory="/home/submit/boot")
    w = app.wait("an os worker booting", lambda: booting(app, "os"), timeout=60)
    wid, sid = w["id"], w["resource_id"]
    script = user_data(app, sid)
    machine = client.containers.create(vm_image, ["/root/user-data"], name=f"apptest-os-vm-{wid}",
                                       hostname=wid, network=network, detach=True)
    machine.put_archive("/root", script_tar(script))
    started = time.monotonic()
    machine.start()

    def done():
        machine.reload()
        out = app.sh(f"condor_history {cluster} -af JobStatus ExitCode", check=False)
        assert machine.status == "running" or "4 0" in out, machine.logs().decode(errors="replace")[-3000:]
        return "4 0" in out
    app.wait("the job to run on the server's worker", done, timeout=360, every=3)
    ran = app.sh("cat /home/submit/boot/out.0")
    assert f'WorkerId = "{wid}"' in ran and 'CloudName = "os"' in ran, ran
    print(f"openstack boot script: joined and ran the job {time.monotonic() - started:.0f}s after start")

    # idle -> drained -> the worker ends and "powers off"; the scheduler retires it and deletes the server
    app.wait("the worker to retire", lambda: (ended(app, wid) or {}).get("state") == "retired", timeout=120)
    app.wait("its server to be deleted", lambda: all(s["id"] != sid for s in servers(app, pid)), timeout=30)
    token_line = re.search(r"<<'APPLIANCE_TOKENS_D_POOL'\n(.*?)\n", script).group(1)
    assert token_line not in app.logs()
