"""The openstack driver's own decisions, without a cloud: its configuration, what a server's
status means for its worker, how OpenStack's refusals are classified, flavors' GPUs and the
openrc-style env_file. Everything it says to Nova is tested against the real services in
tests/integration/test_openstack.py."""
from __future__ import annotations

import warnings

import pytest
from keystoneauth1 import exceptions as ks
from openstack import exceptions as os_exc
from openstack.compute.v2.server import Server

from appliance.clouds.base import CloudError, ErrorKind
from appliance.clouds.openstack import OpenStackDriver, classify, flavor_gpus, read_env_file, resource
from appliance.config import ConfigError, loads
from appliance.model import ResourceState
from appliance.workerconf import WorkerSpec

BASE = """
pool: {{condor_host: "cm.example.org"}}
clouds:
  - name: arbutus
    type: openstack
{extra}
"""


def cloud(extra: str):
    return loads(BASE.format(extra="\n".join("    " + line for line in extra.strip().splitlines()))).cloud("arbutus")


def test_a_cloud_from_a_clouds_yaml_entry_with_flavors_as_shapes():
    c = cloud("""
cloud: arbutus
image: debian-13
network: lab-net
shapes: [{name: p2-3gb}, {name: c8-30gb, cpus: 8, memory: 28000}]
images: {default: debian-13, bio: bio-image}
""")
    assert [s.name for s in c.shapes] == ["p2-3gb", "c8-30gb"]
    assert not c.shapes[0].sized and c.shapes[1].sized            # Nova tells the first one's size
    assert c.settings.network == ("lab-net",) and c.default_image == "default" and c.image_ref("bio") == "bio-image"


BAD = [
    ("image: x\nflavor: f", "cloud: give either cloud (an entry of clouds.yaml) or env_file"),
    ("cloud: a\nenv_file: /e\nimage: x\nflavor: f", "cloud: give either cloud"),
    ("cloud: a\nimage: x", "flavor: is required (or list shapes, each named by its flavor)"),
    ("cloud: a\nimage: x\nflavor: f\nshapes: [{name: g}]", "flavor: cannot be used with shapes"),
    ("cloud: a\nflavor: f", "image: is required"),
    ("env_file: /e\nclouds_yaml: /c\nimage: x\nflavor: f", "clouds_yaml: only applies with cloud"),
    ("cloud: a\nimage: x\nflavor: f\nmetadata: {'appliance:pool': x}", "appliance:* keys are the appliance's own"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_configuration_is_refused_naming_the_key(extra, message):
    with pytest.raises(ConfigError, match=None) as err:
        cloud(extra)
    assert message in str(err.value), err.value


def test_condor_host_auto_is_refused_for_openstack():
    with pytest.raises(ConfigError, match="condor_host"):
        loads("clouds: [{name: os, type: openstack, cloud: a, image: x, flavor: f}]")


def server(status, fault=None, task=None):
    return Server(id="srv-1", status=status, fault=fault, task_state=task, metadata={})


STATES = [
    (server("BUILD"), ResourceState.RUNNING, ""),
    (server("ACTIVE"), ResourceState.RUNNING, ""),
    (server("SHUTOFF"), ResourceState.EXITED, "its server srv-1 is SHUTOFF"),
    (server("ERROR", {"message": "No valid host was found. There are not enough hosts available.", "code": 500}),
     ResourceState.EXITED, "its server srv-1 is ERROR (No valid host was found. There are not enough hosts "
                           "available.)"),
    (server("ACTIVE", task="deleting"), ResourceState.GONE, "being deleted"),
    (server("DELETED"), ResourceState.GONE, "being deleted"),
]


@pytest.mark.parametrize("srv,state,detail", STATES)
def test_a_servers_status_says_what_became_of_its_worker(srv, state, detail):
    res = resource("os-abc123", srv)
    assert (res.state, res.resource_id) == (state, "srv-1") and detail in res.detail


def http(status, message, details=None):
    """An error as openstacksdk makes it from an answer (which passes the status as here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The 'http_status' parameter is unnecessary")
        return os_exc.HttpException(message=message, details=details or message, http_status=status)


KINDS = [
    (http(403, "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances"), ErrorKind.LIMIT),
    (http(413, "Maximum number of ports exceeded"), ErrorKind.LIMIT),
    (http(500, "No valid host was found. There are not enough hosts available."), ErrorKind.CAPACITY),
    (http(400, "Image 5c8e9a2b could not be found."), ErrorKind.IMAGE),
    (http(400, "Flavor w9.huge could not be found."), ErrorKind.CONFIG),
    (http(400, "Network lab-nett could not be found."), ErrorKind.CONFIG),
    (http(401, "The request you have made requires authentication."), ErrorKind.AUTH),
    (http(403, "Policy doesn't allow os_compute_api:servers:create to be performed."), ErrorKind.AUTH),
    (http(429, "Rate limit exceeded"), ErrorKind.THROTTLE),
    (http(503, "Service Unavailable"), ErrorKind.UNAVAILABLE),
    (ks.ConnectFailure("Unable to establish connection to http://keystone:5000/v3/auth/tokens"),
     ErrorKind.UNAVAILABLE),
    (ks.Unauthorized("The request you have made requires authentication."), ErrorKind.AUTH),
]


@pytest.mark.parametrize("err,kind", KINDS)
def test_openstacks_refusals_are_classified(err, kind):
    assert classify(err)[0] is kind


def test_flavor_gpus_from_vgpus_or_passed_through_devices():
    assert flavor_gpus({}) == 0
    assert flavor_gpus({"resources:VGPU": "1"}) == 1
    assert flavor_gpus({"pci_passthrough:alias": "a100:2,t4:1"}) == 3
    assert flavor_gpus({"pci_passthrough:alias": "nonsense", "resources:VGPU": "x"}) == 0


def test_an_openrc_env_file_is_read_and_its_errors_name_no_value(tmp_path):
    f = tmp_path / "openrc"
    f.write_text("# from the dashboard\nexport OS_AUTH_URL=https://keystone.example.org:5000/v3\n"
                 "export OS_APPLICATION_CREDENTIAL_ID='abc'\nOS_APPLICATION_CREDENTIAL_SECRET=\"s3cr3t-value\"\n"
                 "OS_REGION_NAME=RegionOne\n")
    assert read_env_file(str(f)) == {"auth_url": "https://keystone.example.org:5000/v3",
                                     "application_credential_id": "abc",
                                     "application_credential_secret": "s3cr3t-value", "region_name": "RegionOne"}
    f.write_text("OS_AUTH_URL=x\nOS_PASSWORD s3cr3t-value\n")
    with pytest.raises(CloudError) as err:
        read_env_file(str(f))
    assert "line 2: expected OS_NAME=value" in str(err.value) and "s3cr3t" not in str(err.value)
    f.write_text("OS_USERNAME=me\n")
    with pytest.raises(CloudError, match="OS_AUTH_URL is required"):
        read_env_file(str(f))


def test_the_user_data_is_the_ec2_boot_script_with_the_workers_files():
    c = cloud("cloud: a\nimage: debian-13\nflavor: w1.small")
    d = OpenStackDriver(c, "mypool", "pool1")
    text = d.user_data(WorkerSpec("arbutus-abc123", c, "mypool", "cm.example.org", token="TOKEN-VALUE", key=b"K"))
    assert text.startswith("#!") and "WORKER_ID=arbutus-abc123" in text and "CONDOR_HOST=cm.example.org" in text
    assert d.server_name("arbutus-abc123") == "mypool-arbutus-abc123"


def test_a_flavor_shape_has_its_cpus_memory_gpus_and_disk_read_from_nova():
    from appliance.daemon import size_record
    c = cloud("cloud: a\nimage: x\nshapes: [{name: w2.medium}, {name: given, cpus: 2, memory: 2048}]")
    flavor, given = c.shapes
    assert flavor.to_read == ("cpus", "memory", "gpus", "disk") and given.disk == 4096 and given.sized
    record = size_record((2, 2048, 0, 20480))
    assert record == {"cpus": 2, "memory_mib": 2048, "gpus": 0, "disk_mb": 20480}
    read = flavor.read(**record)
    assert (read.cpus, read.memory, read.gpus, read.disk, read.sized) == (2, 1536, 0, 20480, True)
    assert flavor.read(**size_record((1, 1024, 0, 0))).disk == 4096      # a flavor without a root disk
