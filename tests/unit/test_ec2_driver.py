"""The ec2 driver against moto's EC2 server over real HTTP (no Docker, no mocks
of boto3): launch parameters, idempotent launches, listing by tag, termination,
error mapping through a fault-injecting proxy, credentials and the user-data."""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import subprocess

import pytest

from appliance.clouds.base import CloudError, ErrorKind
from appliance.clouds.ec2 import (
    TAG_CLOUD,
    TAG_MARKET,
    TAG_POOL,
    TAG_SHAPE,
    TAG_WORKER,
    Ec2Driver,
    classify,
    read_env_file,
    render,
    resource,
    write_files_script,
)
from appliance.config import CloudConfig, WorkerSize, loads
from appliance.model import ResourceState
from appliance.workerconf import WorkerSpec, worker_files

AMI = "ami-12c6146b"     # one of moto's built-in images
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3b3JrZXIifQ.SECRET-TOKEN-SIGNATURE"
KEY = b"SECRET-SIGNING-KEY-0123456789abcdef"


pytestmark = pytest.mark.usefixtures("aws_env")     # tests/unit/conftest.py, with `endpoint`


def make_cloud(endpoint, name="aws", **options) -> CloudConfig:
    opts = {"condor_host": "cm.example.org"}
    yaml = {"name": name, "type": "ec2", "region": endpoint.region, "ami": AMI, "instance_type": "t3.large",
            "endpoint_url": endpoint.url, **options}
    cfg = loads(json.dumps({"pool": opts, "clouds": [yaml]}))
    return cfg.cloud(name)


def driver(endpoint, pool_id="pool1", **options) -> Ec2Driver:
    return Ec2Driver(make_cloud(endpoint, **options), "mypool", pool_id)


def spec(d: Ec2Driver, wid: str) -> WorkerSpec:
    return WorkerSpec(wid, d.cloud, "mypool", "cm.example.org", token=TOKEN, key=KEY)


def user_data_of(endpoint, iid: str) -> str:
    raw = endpoint.client().describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"]
    return base64.b64decode(raw).decode()


def test_launch_sets_image_type_tags_token_and_shutdown_behaviour(endpoint):
    ec2 = endpoint.client()
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="workers", Description="outbound 9618", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="ops")
    d = driver(endpoint, "launch", subnet=subnet, security_groups=[sg], key_name="ops",
               tags={"team": "physics", "Name": "overridden"})
    iid = d.launch(spec(d, "aws-aaaaaa"))

    [inst] = endpoint.instances(instance_id=iid)
    assert inst["ImageId"] == AMI and inst["InstanceType"] == "t3.large"
    assert inst["ClientToken"] == "aws-aaaaaa"
    assert inst["SubnetId"] == subnet and [g["GroupId"] for g in inst["SecurityGroups"]] == [sg]
    assert inst["KeyName"] == "ops" and "InstanceLifecycle" not in inst
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags == {TAG_POOL: "launch", TAG_CLOUD: "aws", TAG_WORKER: "aws-aaaaaa", "Name": "mypool-aws-aaaaaa",
                    "team": "physics", TAG_SHAPE: "t3.large", TAG_MARKET: "on-demand"}
    behaviour = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"

    script = user_data_of(endpoint, iid)
    assert script.startswith("#!/bin/bash") and "WORKER_ID=aws-aaaaaa" in script
    assert "CONDOR_HOST=cm.example.org" in script and "{{" not in script
    # the worker's own files travel in it: its token, its key, its condor config
    assert base64.encodebytes(TOKEN.encode() + b"\n").decode().split("\n")[0] in script
    assert base64.encodebytes(KEY).decode().split("\n")[0] in script


def test_each_shape_is_its_instance_type(endpoint):
    d = driver(endpoint, "shapes", instance_type=None,
               shapes=[{"name": "t3.medium", "cpus": 2, "memory": 3584, "price": 0.0416},
                       {"name": "c5.xlarge", "cpus": 4, "memory": 7168, "price": 0.17}])
    assert [s.name for s in d.cloud.shapes] == ["t3.medium", "c5.xlarge"]
    big = WorkerSpec("aws-c5c5c5", d.cloud, "mypool", "cm.example.org", token=TOKEN, key=KEY,
                     shape=d.cloud.shape("c5.xlarge"))
    [inst] = endpoint.instances(instance_id=d.launch(big))
    assert inst["InstanceType"] == "c5.xlarge"
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}[TAG_SHAPE] == "c5.xlarge"
    # the instance's worker advertises the shape's size and name
    config = worker_files(big, "/w")["condor_config"][0].decode().splitlines()
    assert {"NUM_CPUS = 4", "MEMORY = 7168", 'WorkerShape = "c5.xlarge"'} <= set(config)
    # without a shape: the cloud's first
    [inst] = endpoint.instances(instance_id=d.launch(spec(d, "aws-t3t3t3")))
    assert inst["InstanceType"] == "t3.medium"


def test_shapes_named_by_instance_type_only_are_sized_by_describe_instance_types(endpoint):
    d = driver(endpoint, "sized", instance_type=None,
               shapes=[{"name": "t3.medium", "price": 0.0416}, {"name": "c5.2xlarge", "gpus": 0, "price": 0.34}])
    medium, big = d.cloud.shapes
    assert (medium.sized, medium.to_read, medium.cpus, medium.memory) == (False, ("cpus", "memory", "gpus"), 0, 0)
    assert big.to_read == ("cpus", "memory") and big.gpus == 0        # what the file gives stays
    sizes = d.shape_sizes(["t3.medium", "c5.2xlarge"])
    assert sizes == {"t3.medium": (2, 4096, 0), "c5.2xlarge": (8, 16384, 0)}
    # less an eighth (at least 512 MB) for the OS and HTCondor's daemons
    assert medium.read(*sizes["t3.medium"]) == dataclasses.replace(medium, cpus=2, memory=3584, to_read=())
    assert big.read(*sizes["c5.2xlarge"]) == dataclasses.replace(big, cpus=8, memory=14336, to_read=())
    with pytest.raises(CloudError) as err:
        d.shape_sizes(["t3.medium", "x9.nonesuch"])
    assert err.value.kind is ErrorKind.CONFIG and "x9.nonesuch" in str(err.value)


def test_repeated_launch_of_one_worker_makes_one_instance(endpoint):
    d = driver(endpoint, "repeat")
    first = d.launch(spec(d, "aws-bbbbbb"))
    again = d.launch(spec(d, "aws-bbbbbb"))
    assert first == again
    assert [i["InstanceId"] for i in endpoint.instances(**{"tag:appliance:pool": "repeat"})] == [first]


def test_spot_market_with_max_price(endpoint):
    d = driver(endpoint, "spot", market="spot", spot_max_price="0.05")
    assert d.run_params("aws-x", "#!")["InstanceMarketOptions"] == {
        "MarketType": "spot", "SpotOptions": {"SpotInstanceType": "one-time",
                                              "InstanceInterruptionBehavior": "terminate", "MaxPrice": "0.05"}}
    iid = d.launch(spec(d, "aws-cccccc"))
    assert endpoint.instances(instance_id=iid)[0]["InstanceLifecycle"] == "spot"


def test_instance_profile_by_name_or_arn(endpoint):
    by_name = driver(endpoint, iam_instance_profile="appliance-worker").run_params("w", "#!")
    by_arn = driver(endpoint, iam_instance_profile="arn:aws:iam::123456789012:instance-profile/w").run_params("w", "#!")
    assert by_name["IamInstanceProfile"] == {"Name": "appliance-worker"}
    assert by_arn["IamInstanceProfile"] == {"Arn": "arn:aws:iam::123456789012:instance-profile/w"}
    assert by_name["MetadataOptions"]["HttpTokens"] == "required"


def test_list_is_by_tag_paginated_and_terminate_is_idempotent(endpoint):
    d = driver(endpoint, "listing")
    other_cloud = driver(endpoint, "listing", name="aws2")
    other_pool = driver(endpoint, "someone-else")
    d.PAGE_SIZE = 5
    ids = {f"aws-{n:06d}": d.launch(spec(d, f"aws-{n:06d}")) for n in range(7)}
    other_cloud.launch(spec(other_cloud, "aws2-000000"))
    other_pool.launch(spec(other_pool, "aws-999999"))

    listed = d.list()
    assert {w: r.resource_id for w, r in listed.items()} == ids
    assert all(r.alive for r in listed.values())

    d.terminate("aws-000000", ids["aws-000000"])
    d.terminate("aws-000000", ids["aws-000000"])           # again: still fine
    d.terminate("aws-000001", "")                          # by worker id alone
    d.terminate("aws-404404", "i-0123456789abcdef0")       # never existed: fine
    endpoint.client().stop_instances(InstanceIds=[ids["aws-000002"]])
    listed = d.list()
    for wid in ("aws-000000", "aws-000001"):
        assert listed[wid].gone and not listed[wid].alive and "terminated" in listed[wid].detail
        assert listed[wid].state is ResourceState.GONE
    assert not listed["aws-000002"].alive and not listed["aws-000002"].gone
    assert listed["aws-000002"].state is ResourceState.EXITED
    assert "stopp" in listed["aws-000002"].detail
    assert listed["aws-000003"].alive
    assert "aws2-000000" not in listed and "aws-999999" not in listed


def test_credentials_from_env_file(endpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = tmp_path / "aws.env"
    env.write_text("# keys of a test account\nexport AWS_ACCESS_KEY_ID=AKIAFROMFILEFROMFILE\n"
                   "AWS_SECRET_ACCESS_KEY='file-secret-value-123'\nAWS_DEFAULT_REGION=eu-west-1\n")
    assert read_env_file(str(env)) == {"AWS_ACCESS_KEY_ID": "AKIAFROMFILEFROMFILE",
                                       "AWS_SECRET_ACCESS_KEY": "file-secret-value-123"}
    d = driver(endpoint, "envfile", env_file=str(env))
    assert d.list() == {}
    creds = d.client._request_signer._credentials
    assert creds.access_key == "AKIAFROMFILEFROMFILE"

    env.write_text("AWS_ACCESS_KEY_ID=AKIAFROMFILEFROMFILE\nAWS_SECRET_ACCESS_KEY file-secret-value-123\n")
    with pytest.raises(CloudError) as bad:
        driver(endpoint, "envfile", env_file=str(env)).list()
    assert bad.value.kind == "config" and "line 2: expected KEY=VALUE" in str(bad.value)
    assert "file-secret" not in str(bad.value)
    with pytest.raises(CloudError) as missing:
        driver(endpoint, "envfile", env_file=str(tmp_path / "nope.env")).list()
    assert missing.value.kind == "auth" and "cannot read env_file" in str(missing.value)


def test_no_credentials_is_an_auth_error(endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(CloudError) as err:
        driver(endpoint, "nocreds").list()
    assert err.value.kind == "auth" and "no usable AWS credentials" in str(err.value)


FAULTS = [
    ("InsufficientInstanceCapacity", "capacity"),
    ("InstanceLimitExceeded", "limit"),
    ("VcpuLimitExceeded", "limit"),
    ("RequestLimitExceeded", "throttle"),
    ("AuthFailure", "auth"),
    ("UnauthorizedOperation", "auth"),
    ("InvalidAMIID.NotFound", "image"),
    ("InvalidSubnetID.NotFound", "config"),
    ("InternalError", "unavailable"),
]


@pytest.mark.parametrize("code,kind", FAULTS)
def test_launch_errors_map_to_kinds_and_launch_nothing(endpoint, code, kind):
    d = driver(endpoint, f"fault-{code.lower().replace('.', '-')}")
    endpoint.fail("RunInstances", code, "the endpoint says no", echo="UserData")
    try:
        with pytest.raises(CloudError) as err:
            d.launch(spec(d, "aws-fault0"))
    finally:
        endpoint.clear()
    assert err.value.kind == kind, err.value
    assert err.value.kind is ErrorKind(kind)
    assert str(err.value).startswith(f"RunInstances: {code}: the endpoint says no")
    # the endpoint echoed the user-data back: the error must not carry it, nor any secret
    assert "[redacted]" in str(err.value)
    for secret in (TOKEN, KEY.decode(), "IyEvYmluL2Jhc2g"):
        assert secret not in str(err.value)
    assert endpoint.instances(**{"tag:appliance:pool": d.pool_id}) == []


@pytest.mark.parametrize("state,expected", [("pending", ResourceState.RUNNING), ("running", ResourceState.RUNNING),
                                            ("stopping", ResourceState.EXITED), ("stopped", ResourceState.EXITED),
                                            ("shutting-down", ResourceState.EXITED),
                                            ("terminated", ResourceState.GONE)])
def test_instance_states_map_to_resource_states(state, expected):
    res = resource("aws-1", {"InstanceId": "i-1", "State": {"Name": state}})
    assert res.state is expected and res.resource_id == "i-1"
    assert res.detail == ("" if expected is ResourceState.RUNNING else f"its instance i-1 is {state}")


def test_several_instances_of_one_worker_the_liveliest_speaks(endpoint, monkeypatch):
    d = driver(endpoint, "dupes")
    tags = [{"Key": TAG_WORKER, "Value": "aws-1"}]
    for order in (["terminated", "stopped", "running"], ["running", "terminated", "stopped"],
                  ["terminated", "stopped"], ["stopped", "terminated"]):
        insts = [{"InstanceId": f"i-{s}", "State": {"Name": s}, "Tags": tags} for s in order]
        monkeypatch.setattr(d, "_describe", lambda filters, insts=insts: iter(insts))
        best = "i-running" if "running" in order else "i-stopped"
        assert d.list()["aws-1"].resource_id == best, order


def test_classify_gives_error_kinds():
    import botocore.parsers
    assert classify(ValueError("boom")) == (ErrorKind.OTHER, "ValueError: boom")
    assert classify(botocore.parsers.ResponseParserError("<html>")) == \
        (ErrorKind.UNAVAILABLE, "the EC2 endpoint sent an answer that is not EC2's")


def test_a_lost_answer_does_not_make_a_second_instance(endpoint):
    """RunInstances reached EC2 but its answer was lost: retrying the same worker finds it."""
    d = driver(endpoint, "lost")
    endpoint.fail("RunInstances", "RequestLimitExceeded", times=1, after_forward=True)
    with pytest.raises(CloudError) as err:
        d.launch(spec(d, "aws-lost00"))
    assert err.value.kind == "throttle"
    iid = d.launch(spec(d, "aws-lost00"))
    assert [i["InstanceId"] for i in endpoint.instances(**{"tag:appliance:pool": "lost"})] == [iid]
    assert endpoint.count("RunInstances") >= 1


def test_endpoint_down(endpoint):
    d = driver(endpoint, "down")
    endpoint.down = True
    try:
        with pytest.raises(CloudError) as closed:
            d.list()
    finally:
        endpoint.clear()
    assert closed.value.kind == "unavailable"
    with socket.socket() as s:              # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Ec2Driver(make_cloud(endpoint, endpoint_url=f"http://127.0.0.1:{port}"), "mypool", "down")
    with pytest.raises(CloudError) as refused:
        dead.launch(spec(dead, "aws-down00"))
    assert refused.value.kind == "unavailable" and "not reachable" in str(refused.value)


# ---------------------------------------------------------------- user-data

def test_user_data_template_placeholders():
    values = {"worker_id": "aws-1", "pool": "it's"}
    assert render("A={{ worker_id }} B={{pool}}\n{{ write_worker_files }}", values, "CODE") == \
        "A=aws-1 B='it'\"'\"'s'\nCODE"
    with pytest.raises(CloudError) as err:
        render("{{ nope }}", values, "", "my.sh")
    assert err.value.kind == "config" and "my.sh: unknown placeholder {{ nope }}" in str(err.value)


def test_written_files_decode_to_the_worker_files(tmp_path):
    cloud = CloudConfig("aws", "ec2", worker=WorkerSize(cpus=2, memory=2048))
    s = WorkerSpec("aws-abcdef", cloud, "mypool", "cm.example.org", token=TOKEN, key=KEY)
    files = worker_files(s, "/var/lib/condor-worker")
    subprocess.run(["bash", "-euc", write_files_script(files)], check=True,
                   env={**os.environ, "WORKER_HOME": str(tmp_path)})
    for rel, (content, mode) in files.items():
        assert (tmp_path / rel).read_bytes() == content
        assert (tmp_path / rel).stat().st_mode & 0o777 == mode


def test_default_template_renders_for_both_modes(endpoint):
    d = driver(endpoint)
    text = d.user_data(spec(d, "aws-dddddd"))
    assert "{{" not in text and "apt_get install" in text and "WORKER_IMAGE=''" in text
    assert "$WORKER_HOME\"/condor_config" in text
    subprocess.run(["bash", "-n"], input=text.encode(), check=True)     # valid shell
    img = driver(endpoint, worker_image="registry.example.org/appliance:1.0")
    text = img.user_data(spec(img, "aws-eeeeee"))
    assert "WORKER_IMAGE=registry.example.org/appliance:1.0" in text and "$WORKER_HOME\"/bundle.json" in text
    assert len(text.encode()) < 16 * 1024


def test_a_template_too_big_for_ec2_is_a_config_error(endpoint, tmp_path):
    big = tmp_path / "big.sh"
    big.write_text("#!/bin/sh\n" + "#" * 17000 + "\n")
    d = driver(endpoint, user_data=str(big))
    with pytest.raises(CloudError) as err:
        d.launch(spec(d, "aws-ffffff"))
    assert err.value.kind == "config" and "EC2 allows 16384" in str(err.value)


def test_a_worker_boots_the_ami_of_its_image_and_a_jobs_price_cap_is_its_spot_bid(endpoint):
    other = next(i["ImageId"] for i in endpoint.client().describe_images()["Images"] if i["ImageId"] != AMI)
    d = driver(endpoint, "images", market="spot", spot_max_price="0.05", images={"default": AMI, "lab": other})
    lab = WorkerSpec("aws-1ab1ab", d.cloud, "mypool", "cm.example.org", token=TOKEN, key=KEY, image="lab",
                     max_price=0.02)
    [inst] = endpoint.instances(instance_id=d.launch(lab))
    assert inst["ImageId"] == other and inst["InstanceLifecycle"] == "spot"
    params = d.run_params("w", "#!", market="spot", **d.image_and_price(lab))
    assert params["ImageId"] == other and params["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "0.02"
    plain = d.run_params("w", "#!", market="spot", **d.image_and_price(spec(d, "aws-2ab2ab")))
    assert plain["ImageId"] == AMI and plain["InstanceMarketOptions"]["SpotOptions"]["MaxPrice"] == "0.05"


def test_with_worker_image_every_instance_boots_the_ami_and_runs_its_image_with_docker(endpoint):
    d = driver(endpoint, "wimg", worker_image="appliance:latest",
               images={"default": "appliance:latest", "bio": "registry.lab.org/bio:1"})
    bio = WorkerSpec("aws-3ab3ab", d.cloud, "mypool", "cm.example.org", token=TOKEN, key=KEY, image="bio")
    assert d.image_and_price(bio) == {"image_id": AMI, "max_price": None}
    assert "registry.lab.org/bio:1" in d.user_data(bio)


@pytest.mark.parametrize("cloud_max,job_max,bid", [
    (None, None, None), ("0.05", None, "0.05"), (None, 0.02, "0.02"), ("0.05", 0.02, "0.02"),
    ("0.05", 0.1, "0.05"), (None, 0.123456789, "0.123457")])
def test_the_spot_bid_is_the_lower_cap(cloud_max, job_max, bid):
    from appliance.clouds.ec2 import spot_bid
    assert spot_bid(cloud_max, job_max) == bid


def test_images_of_an_ec2_cloud_must_be_amis_unless_it_runs_worker_images(endpoint):
    from appliance.config import ConfigError
    with pytest.raises(ConfigError, match=r"images.bio: 'lab/bio:1' is not an AMI id"):
        make_cloud(endpoint, images={"default": AMI, "bio": "lab/bio:1"})
