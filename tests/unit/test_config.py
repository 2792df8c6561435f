"""Config validation: the good file, and one clear message for each kind of bad file."""
import os

import pytest

from appliance import config
from appliance.config import ConfigError, load, loads

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_shipped_default_file_is_valid_and_has_local_enabled():
    cfg = load(os.path.join(REPO, "config", "appliance.yaml"))
    assert cfg.pool.name == "appliance" and cfg.pool.condor_host == "auto"
    assert cfg.scheduler.interval == 1 and cfg.scheduler.idle_timeout == 300
    local = cfg.cloud("local")
    assert local.type == "local" and local.enabled and local.max_workers == 2
    assert (local.worker.cpus, local.worker.memory, local.worker.disk) == (1, 1024, 4096)


def test_every_example_file_is_valid():
    examples = os.path.join(REPO, "config", "examples")
    for name in sorted(os.listdir(examples)) if os.path.isdir(examples) else []:
        load(os.path.join(examples, name))


def test_empty_file_gives_defaults_with_a_local_cloud():
    cfg = loads("")
    assert cfg.cloud_names == ("local",)
    assert cfg.scheduler.max_booting == 10 and cfg.scheduler.max_workers == 100


def test_all_cloud_types_with_their_options():
    cfg = loads("""
pool: {condor_host: cm.example.org}
clouds:
  - {name: local, type: local}
  - name: docker
    type: docker
    enabled: false
    image: appliance:latest
    max_workers: 10
    worker: {cpus: 2, memory: 2048, attributes: {HasDocker: true, Site: "lab"}}
  - {name: swarm, type: swarm, constraints: ["node.role == worker"]}
  - name: aws
    type: ec2
    region: us-west-2
    ami: ami-0123456789abcdef0
    instance_type: t3.large
    market: spot
    spot_max_price: "0.05"
    security_groups: sg-1, sg-2
""")
    assert cfg.cloud_names == ("local", "docker", "swarm", "aws")
    docker = cfg.cloud("docker")
    assert not docker.enabled and docker.opt("image") == "appliance:latest" and docker.opt("network") == "auto"
    assert dict(docker.worker.attributes) == {"HasDocker": True, "Site": "lab"}
    assert cfg.cloud("swarm").opt("constraints") == ("node.role == worker",)
    aws = cfg.cloud("aws")
    assert aws.opt("security_groups") == ("sg-1", "sg-2") and aws.opt("market") == "spot"
    # the same values, typed: each type's options dataclass
    assert aws.settings.security_groups == ("sg-1", "sg-2") and aws.settings.spot_max_price == "0.05"
    assert cfg.cloud("swarm").settings.constraints == ("node.role == worker",)
    assert type(cfg.cloud("local").settings).__name__ == "LocalOptions"
    for c in cfg.clouds:
        assert dict(c.options) == c.settings.as_dict()


def test_cloud_types_come_from_the_registry():
    from appliance import config
    from appliance.clouds import registry
    assert config.CLOUD_TYPES == registry.types() == ("local", "docker", "swarm", "ec2", "openstack")
    assert list(config.option_keys("docker")) == ["url", "image", "network", "labels", "simulate_gpus"]
    assert not hasattr(config, "CLOUD_OPTION_KEYS")


BAD = [
    ("pool: [1, 2", "<string>: line 1, column 12: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("- a\n- b", "<string>: (top level): expected a mapping, got ['a', 'b']"),
    ("budget: {max_per_hour: -1}", "<string>: budget.max_per_hour: must be a number from 0 to 1000000000, got -1"),
    ("budget: {per_day: 5}", "<string>: budget.per_day: unknown key (known keys here: max_per_day, max_per_hour)"),
    ("clouds: [{name: a, type: docker, budget: 5}]", "<string>: clouds[0].budget: expected a mapping, got 5"),
    ("clouds: [{name: a, type: docker, budget: {max_per_day: x}}]",
     "<string>: clouds[0].budget.max_per_day: expected a number from 0 to 1000000000, got 'x'"),
    ("pools: {}", "<string>: pools: unknown key (known keys here: budget, clouds, federation, notifications, pool, retention, scheduler)"),
    ("scheduler: {intervall: 2}", "<string>: scheduler.intervall: unknown key (known keys here: backoff_base, "
                                  "boot_timeout, idle_timeout, interval, lost_timeout, max_booting, max_workers, on_shutdown)"),
    ("scheduler: {interval: fast}", "<string>: scheduler.interval: expected a number from 0.2 to 3600, got 'fast'"),
    ("scheduler: {interval: 0}", "<string>: scheduler.interval: must be a number from 0.2 to 3600, got 0"),
    ("scheduler: {max_booting: 2.5}", "<string>: scheduler.max_booting: expected a whole number from 1 to 10000, got 2.5"),
    ("scheduler: {max_workers: true}", "<string>: scheduler.max_workers: expected a whole number from 0 to 100000, got True"),
    ("scheduler: {on_shutdown: destroy}", "<string>: scheduler.on_shutdown: must be one of keep, remove, got 'destroy'"),
    ("pool: {name: My Pool}", "<string>: pool.name: must be lower-case letters, digits, '.' and '-', got 'My Pool'"),
    ("clouds: {name: local}", "<string>: clouds: expected a list of clouds, got {'name': 'local'}"),
    ("clouds: [local]", "<string>: clouds[0]: expected a mapping with at least name and type, got 'local'"),
    ("clouds: [{name: a}]", "<string>: clouds[0].type: is required (one of local, docker, swarm, ec2, openstack)"),
    ("clouds: [{name: a, type: k8s}]", "<string>: clouds[0].type: unknown cloud type 'k8s' (known: local, docker, swarm, ec2, openstack)"),
    ("clouds: [{type: local}]", "<string>: clouds[0].name: is required"),
    ("clouds: [{name: Local_1, type: local}]",
     "<string>: clouds[0].name: must be 1-31 lower-case letters, digits and '-', got 'Local_1'"),
    ("clouds: [{name: a, type: local}, {name: a, type: local}]", "<string>: clouds[1].name: duplicate cloud name 'a'"),
    ("clouds: [{name: a, type: local, enabled: 'yes'}]", "<string>: clouds[0].enabled: expected true or false, got 'yes'"),
    ("clouds: [{name: a, type: local, max_workers: -1}]",
     "<string>: clouds[0].max_workers: must be a whole number from 0 to 100000, got -1"),
    ("clouds: [{name: a, type: local, worker: {cpus: two}}]",
     "<string>: clouds[0].worker.cpus: expected a whole number from 1 to 1024, got 'two'"),
    ("clouds: [{name: a, type: local, worker: {gpu: 1}}]",
     "<string>: clouds[0].worker.gpu: unknown key (known keys here: attributes, cpus, disk, gpus, memory)"),
    ("clouds: [{name: a, type: local, worker: {attributes: {CloudName: x}}}]",
     "<string>: clouds[0].worker.attributes.CloudName: is set by the appliance and cannot be overridden"),
    ("clouds: [{name: a, type: local, image: x}]",
     "<string>: clouds[0].image: unknown key (known keys here: budget, enabled, images, max_workers, min_idle, "
     "min_idle_window, name, priority, shapes, simulate_gpus, type, vm_type, worker)"),
    ("clouds: [{name: aws, type: ec2, region: us-west-2, instance_type: t3.large}]", "<string>: clouds[0].ami: is required"),
    ("clouds: [{name: aws, type: ec2, region: r, ami: ubuntu, instance_type: t}]",
     "<string>: clouds[0].ami: must be an AMI id like ami-0123456789abcdef0, got 'ubuntu'"),
    ("clouds: [{name: aws, type: ec2, region: r, ami: ami-01234567, instance_type: t, spot_max_price: '1'}]",
     "<string>: clouds[0].spot_max_price: only applies when market is spot"),
    ("clouds: [{name: aws, type: ec2, region: r, ami: ami-01234567, instance_type: t}]",
     "<string>: pool.condor_host: must be the central manager's public address (a host name or IP that instances "
     "reach on port 9618) when an ec2 cloud is configured (clouds[0], 'aws'); 'auto' cannot know it"),
    ("clouds: [{name: d, type: docker, labels: [a]}]", "<string>: clouds[0].labels: expected a mapping of names to strings, got ['a']"),
    # shapes
    ("clouds: [{name: d, type: docker, worker: {cpus: 2}, shapes: [{name: s}]}]",
     "<string>: clouds[0].shapes: cannot be used together with worker: list every size of worker as a shape "
     "(a lone worker is one shape)"),
    ("clouds: [{name: d, type: docker, shapes: []}]",
     "<string>: clouds[0].shapes: expected a non-empty list of shapes, each with at least a name (or auto: sized from this host), got []"),
    ("clouds: [{name: d, type: docker, shapes: {name: s}}]",
     "<string>: clouds[0].shapes: expected a non-empty list of shapes, each with at least a name (or auto: sized from this host), got {'name': 's'}"),
    ("clouds: [{name: d, type: docker, shapes: [small]}]",
     "<string>: clouds[0].shapes[0]: expected a mapping with at least a name (and cpus, memory, disk, gpus, "
     "attributes, price), got 'small'"),
    ("clouds: [{name: d, type: docker, shapes: [{cpus: 2}]}]", "<string>: clouds[0].shapes[0].name: is required"),
    ("clouds: [{name: d, type: docker, shapes: [{name: 'a b'}]}]",
     "<string>: clouds[0].shapes[0].name: must be 1-64 letters, digits, '.', '_' and '-' (for ec2: the instance "
     "type), got 'a b'"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, cpus: 1}, {name: s, cpus: 2}]}]",
     "<string>: clouds[0].shapes[1].name: duplicate shape name 's' (names are unique per cloud)"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, price: -1}]}]",
     "<string>: clouds[0].shapes[0].price: must be a number from 0 to 1000000, got -1"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, price: cheap}]}]",
     "<string>: clouds[0].shapes[0].price: expected a number from 0 to 1000000, got 'cheap'"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, gpus: -1}]}]",
     "<string>: clouds[0].shapes[0].gpus: must be a whole number from 0 to 64, got -1"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, size: big}]}]",
     "<string>: clouds[0].shapes[0].size: unknown key (known keys here: attributes, cpus, disk, gpus, memory, "
     "min_idle, name, price)"),
    ("clouds: [{name: d, type: docker, shapes: [{name: s, attributes: {WorkerShape: x}}]}]",
     "<string>: clouds[0].shapes[0].attributes.WorkerShape: is set by the appliance and cannot be overridden"),
    ("clouds: [{name: d, type: docker, worker: {price: 1}}]",
     "<string>: clouds[0].worker.price: unknown key (known keys here: attributes, cpus, disk, gpus, memory)"),
    # warm headroom
    ("clouds: [{name: a, type: local, min_idle: -1}]",
     "<string>: clouds[0].min_idle: must be a whole number from 0 to 100000, got -1"),
    ("clouds: [{name: a, type: local, max_workers: 2, min_idle: 3}]",
     "<string>: clouds[0].min_idle: min_idle 3 is more than max_workers (2): the headroom could never be kept"),
    ("clouds: [{name: a, type: local, max_workers: 2, shapes: [{name: s, min_idle: 2}, {name: t, min_idle: 1}]}]",
     "<string>: clouds[0].shapes: its shapes' min_idle (together 3) is more than max_workers (2): the headroom "
     "could never be kept"),
    ("clouds: [{name: a, type: local, min_idle_window: '08:00-18:00'}]",
     "<string>: clouds[0].min_idle_window: has no effect without min_idle (on the cloud or one of its shapes)"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: 8}]",
     "<string>: clouds[0].min_idle_window: expected a daily window such as \"08:00-18:00\" (UTC) or "
     "\"08:00-18:00 Europe/Berlin\", got 8"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: '8-18'}]",
     "<string>: clouds[0].min_idle_window: expected a daily window such as"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: '08:00-25:00'}]",
     "<string>: clouds[0].min_idle_window: the end of '08:00-25:00' is not a time of day (HH:MM, 00:00 to 24:00)"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: '24:00-06:00'}]",
     "<string>: clouds[0].min_idle_window: the start of '24:00-06:00' is not a time of day (HH:MM, 00:00 to 23:59)"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: '08:00-08:00'}]",
     "<string>: clouds[0].min_idle_window: the window '08:00-08:00' starts when it ends; leave min_idle_window out "
     "to keep min_idle all day"),
    ("clouds: [{name: a, type: local, min_idle: 1, min_idle_window: '08:00-18:00 Mars/Olympus'}]",
     "<string>: clouds[0].min_idle_window: unknown time zone 'Mars/Olympus' in '08:00-18:00 Mars/Olympus': give an "
     "IANA name such as Europe/Berlin or America/Chicago, or none for UTC"),
    ("clouds: [{name: a, type: local, shapes: [{name: s, min_idle: two}]}]",
     "<string>: clouds[0].shapes[0].min_idle: expected a whole number from 0 to 100000, got 'two'"),
    ("pool: {condor_host: cm}\nclouds: [{name: aws, type: ec2, region: r, ami: ami-01234567}]",
     "<string>: clouds[0].instance_type: is required (or list shapes, each named by its instance type)"),
    ("pool: {condor_host: cm}\nclouds: [{name: aws, type: ec2, region: r, ami: ami-01234567, instance_type: t3.large, "
     "shapes: [{name: t3.medium}]}]",
     "<string>: clouds[0].instance_type: cannot be used with shapes: each shape's name is its instance type"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[f"{i}:{m.split(': ')[1]}" for i, (_, m) in enumerate(BAD)])
def test_a_file_with_one_problem_gives_one_clear_line(text, message):
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


# A file with several problems: every one is reported, in file order, each as its own line.
SEVERAL = [
    ("one in each section", """
pool: {name: My Pool}
scheduler: {interval: fast}
clouds: [{name: a, type: local, worker: {cpus: two}}]
""", [
        ("pool.name", "must be lower-case letters, digits, '.' and '-', got 'My Pool'"),
        ("scheduler.interval", "expected a number from 0.2 to 3600, got 'fast'"),
        ("clouds[0].worker.cpus", "expected a whole number from 1 to 1024, got 'two'"),
    ]),
    ("three in one cloud", """
clouds:
  - {name: a, type: local, max_workers: -1, colour: red, shapes: [{name: s, price: cheap}]}
""", [
        ("clouds[0].colour", "unknown key (known keys here: budget, enabled, images, max_workers, min_idle, "
                             "min_idle_window, name, priority, shapes, simulate_gpus, type, vm_type, worker)"),
        ("clouds[0].max_workers", "must be a whole number from 0 to 100000, got -1"),
        ("clouds[0].shapes[0].price", "expected a number from 0 to 1000000, got 'cheap'"),
    ]),
    ("across clouds, and after them", """
clouds:
  - {name: a, type: local}
  - {name: a, type: local}
  - {name: b, type: k8s}
budget: {max_per_hour: -1}
""", [
        ("clouds[1].name", "duplicate cloud name 'a'"),
        ("clouds[2].type", "unknown cloud type 'k8s' (known: local, docker, swarm, ec2, openstack)"),
        ("budget.max_per_hour", "must be a number from 0 to 1000000000, got -1"),
    ]),
    ("an unknown section, shapes and federation", """
pools: {}
clouds: [{name: d, type: docker, shapes: [{cpus: 2}, {name: s, gpus: -1}]}]
federation: {flock_to: [{name: x, collector: cm.example.org}]}
""", [
        ("pools", "unknown key (known keys here: budget, clouds, federation, notifications, pool, retention, scheduler)"),
        ("clouds[0].shapes[0].name", "is required"),
        ("clouds[0].shapes[1].gpus", "must be a whole number from 0 to 64, got -1"),
        ("federation.flock_to[0].token_file", "is required"),
    ]),
    # as in docs/configuration.md: a cloud with a problem still has its name
    ("a duplicate of a cloud with a problem", """
scheduler: {interval: fast}
clouds:
  - {name: local, type: local, worker: {cpus: two}}
  - {name: local, type: local}
""", [
        ("scheduler.interval", "expected a number from 0.2 to 3600, got 'fast'"),
        ("clouds[0].worker.cpus", "expected a whole number from 1 to 1024, got 'two'"),
        ("clouds[1].name", "duplicate cloud name 'local'"),
    ]),
    # a cloud's cross-checks need its values: max_workers -1 does not also make min_idle 1 "too many"
    ("no problem that follows from another", """
pool: {condor_host: cm.example.org}
clouds:
  - {name: a, type: local, max_workers: -1, min_idle: 1}
  - {name: aws, type: ec2, region: r, ami: ubuntu, instance_type: t3.large, spot_max_price: '1'}
""", [
        ("clouds[0].max_workers", "must be a whole number from 0 to 100000, got -1"),
        ("clouds[1].ami", "must be an AMI id like ami-0123456789abcdef0, got 'ubuntu'"),
    ]),
]


@pytest.mark.parametrize("text,errors", [case[1:] for case in SEVERAL], ids=[case[0] for case in SEVERAL])
def test_a_file_with_several_problems_reports_every_one(text, errors):
    with pytest.raises(ConfigError) as err:
        loads(text)
    assert list(err.value.errors) == errors
    assert (err.value.path, err.value.problem) == errors[0]
    assert str(err.value).splitlines() == [f"<string>: {len(errors)} errors:",
                                           *(f"  {path}: {problem}" for path, problem in errors)]


def test_a_file_with_very_many_problems_lists_the_first_and_counts_the_rest():
    from appliance.config import ERRORS_SHOWN
    clouds = "".join(f"  - {{name: c{i}, type: local, max_workers: -1}}\n" for i in range(ERRORS_SHOWN + 5))
    with pytest.raises(ConfigError) as err:
        loads("clouds:\n" + clouds)
    lines = str(err.value).splitlines()
    assert lines[0] == f"<string>: {ERRORS_SHOWN + 5} errors:" and len(err.value.errors) == ERRORS_SHOWN + 5
    assert lines[1] == "  clouds[0].max_workers: must be a whole number from 0 to 100000, got -1"
    assert len(lines) == ERRORS_SHOWN + 2 and lines[-1] == "  ... and 5 more"


def test_the_check_command_prints_every_problem(tmp_path, capsys):
    from appliance.config import main
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler: {interval: 0, idle_timeout: -5}\nclouds: [{name: local, type: nope}]\n")
    assert main([str(bad)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert err == [f"configuration error: {bad}: 3 errors:",
                   "  scheduler.interval: must be a number from 0.2 to 3600, got 0",
                   "  scheduler.idle_timeout: must be a number from 0 to 604800, got -5",
                   "  clouds[0].type: unknown cloud type 'nope' (known: local, docker, swarm, ec2, openstack)"]


def test_shapes_are_parsed_in_the_order_given():
    cfg = loads("""
pool: {condor_host: cm.example.org}
clouds:
  - name: docker
    type: docker
    shapes:
      - {name: small, cpus: 1, memory: 512}
      - {name: big, cpus: 4, memory: 4096, disk: 20480, gpus: 1, price: 0.5, attributes: {HasGPU: true}}
  - name: aws
    type: ec2
    region: us-west-2
    ami: ami-0123456789abcdef0
    shapes:
      - {name: t3.medium, cpus: 2, memory: 3584, price: 0.0416}
      - {name: g5.xlarge, cpus: 4, memory: 15360, gpus: 1, price: 1.006}
""")
    docker = cfg.cloud("docker")
    assert [(s.name, s.cpus, s.memory, s.disk, s.gpus, s.price) for s in docker.shapes] == [
        ("small", 1, 512, 4096, 0, None), ("big", 4, 4096, 20480, 1, 0.5)]
    assert dict(docker.shapes[1].attributes) == {"HasGPU": True} and dict(docker.shapes[0].attributes) == {}
    assert docker.shape("big") is docker.shapes[1] and docker.shape("nope") is None
    aws = cfg.cloud("aws")
    assert [s.name for s in aws.shapes] == ["t3.medium", "g5.xlarge"] and aws.settings.instance_type is None
    assert aws.shapes[0].price == 0.0416 and isinstance(aws.shapes[0].price, float)


def test_a_lone_worker_is_one_unpriced_shape():
    cfg = loads("""
pool: {condor_host: cm.example.org}
clouds:
  - {name: local, type: local}
  - {name: docker, type: docker, worker: {cpus: 2, memory: 2048, attributes: {Site: lab}}}
  - {name: aws, type: ec2, region: r, ami: ami-01234567, instance_type: t3.large, worker: {cpus: 2}}
""")
    [local] = cfg.cloud("local").shapes
    assert (local.name, local.cpus, local.memory, local.disk, local.gpus, local.price) == (
        "default", 1, 1024, 4096, 0, None)
    [docker] = cfg.cloud("docker").shapes
    assert (docker.name, docker.cpus, docker.memory, dict(docker.attributes)) == ("default", 2, 2048, {"Site": "lab"})
    # an ec2 cloud's one shape is named by its instance type: workers advertise WorkerShape = "t3.large"
    [aws] = cfg.cloud("aws").shapes
    assert (aws.name, aws.cpus, aws.price) == ("t3.large", 2, None)


def test_a_cloud_built_by_hand_has_its_worker_as_its_one_shape():
    from appliance.config import CloudConfig, WorkerSize
    from appliance.shapes import Shape
    c = CloudConfig("d", "docker", worker=WorkerSize(cpus=3))
    assert [(s.name, s.cpus) for s in c.shapes] == [("default", 3)]
    small, big = Shape("small", 1, 512, 1024), Shape("big", 4, 4096, 1024)
    c = CloudConfig("d", "docker", shapes=[big, small])
    assert c.shapes == (big, small)
    # a worker's recorded shape; an unknown or missing one (from before shapes) counts as the smallest
    assert c.shape_of("big") is big and c.shape_of("") is small and c.shape_of("gone") is small
    with pytest.raises(ValueError, match="shapes or worker, not both"):
        CloudConfig("d", "docker", worker=WorkerSize(cpus=2), shapes=(small,))
    # dataclasses.replace() passes the shapes made from `worker` back in: they follow the worker
    from dataclasses import replace
    lone = CloudConfig("d", "docker", worker=WorkerSize(cpus=3))
    assert replace(lone, max_workers=5).shapes == lone.shapes
    assert [s.cpus for s in replace(lone, worker=WorkerSize(cpus=8)).shapes] == [8]
    assert replace(c, max_workers=5).shapes == (big, small)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(str(tmp_path / "nope.yaml"))
    assert str(err.value) == f"{tmp_path}/nope.yaml: (file): cannot read: No such file or directory"


def test_not_utf8(tmp_path):
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as err:
        load(str(p))
    assert str(err.value) == f"{p}: (file): is not UTF-8 text"


def test_error_names_the_real_file(tmp_path):
    p = tmp_path / "appliance.yaml"
    p.write_text("scheduler:\n  idle_timeout: -5\n")
    with pytest.raises(ConfigError) as err:
        load(str(p))
    assert err.value.file == str(p) and err.value.path == "scheduler.idle_timeout"
    assert str(err.value) == f"{p}: scheduler.idle_timeout: must be a number from 0 to 604800, got -5"


def test_check_command_exit_codes(tmp_path, capsys):
    from appliance.config import main
    good = tmp_path / "good.yaml"
    good.write_text("clouds: [{name: local, type: local}]\n")
    assert main([str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("clouds: [{name: local, type: nope}]\n")
    assert main([str(bad)]) == 78
    assert "clouds[0].type: unknown cloud type 'nope'" in capsys.readouterr().err


HOSTS = [
    # (cpus, memory MB) -> the shapes of `shapes: auto`: (name, cpus, memory)
    ((1, 2048), [("1cpu", 1, 1024)]),
    ((2, 24576), [("1cpu", 1, 11776), ("2cpu", 2, 23552)]),
    ((6, 16000), [("1cpu", 1, 2432), ("2cpu", 2, 4864), ("4cpu", 4, 9728), ("6cpu", 6, 14592)]),
    ((16, 65536), [("1cpu", 1, 3968), ("2cpu", 2, 7936), ("4cpu", 4, 15872), ("8cpu", 8, 31744), ("16cpu", 16, 63488)]),
    ((4, 1024), [("1cpu", 1, 128), ("2cpu", 2, 256), ("4cpu", 4, 512)]),    # tiny host: never below 128 MB a cpu
]


@pytest.mark.parametrize("host,expected", HOSTS, ids=[f"{c}cpu-{m}MB" for (c, m), _ in HOSTS])
def test_auto_shapes_go_up_to_the_host_with_its_memory_shared_per_cpu(monkeypatch, host, expected):
    monkeypatch.setattr(config, "host_size", lambda: host)
    cfg = config.loads("clouds: [{name: d, type: docker, shapes: auto}, {name: l, type: local, shapes: auto}]")
    for cloud in cfg.clouds:
        assert [(s.name, s.cpus, s.memory) for s in cloud.shapes] == expected
        assert all(s.price is None and s.disk == 4096 for s in cloud.shapes)


def test_auto_shapes_only_where_workers_share_the_host():
    for ctype, options in (("swarm", ""), ("ec2", ", ami: ami-0123456789abcdef0, region: us-east-1")):
        with pytest.raises(config.ConfigError, match=r"clouds\[0\]\.shapes: 'auto' sizes workers from this host"):
            config.loads(f"pool: {{condor_host: cm.example.org}}\nclouds: [{{name: x, type: {ctype}, shapes: auto"
                         f"{options}}}]")


def test_the_host_size_is_read_from_this_machine():
    cpus, memory = config.host_size()
    assert cpus >= 1 and memory >= 128


def test_an_ec2_shape_may_leave_its_size_to_the_cloud_and_others_get_the_defaults():
    cfg = loads("pool: {condor_host: cm.example.org}\nclouds:\n"
                "  - {name: aws, type: ec2, region: us-east-1, ami: ami-0123456789abcdef0,\n"
                "     shapes: [{name: m5.large, price: 0.096}, {name: c5.xlarge, cpus: 4, memory: 7000},\n"
                "              {name: g5.xlarge, gpus: 1}]}\n"
                "  - {name: d, type: docker, shapes: [{name: s}]}\n")
    m5, c5, g5 = cfg.cloud("aws").shapes
    assert (m5.to_read, m5.cpus, m5.memory, m5.gpus) == (("cpus", "memory", "gpus"), 0, 0, 0) and not m5.sized
    assert (c5.to_read, c5.cpus, c5.memory, c5.gpus) == ((), 4, 7000, 0)     # sized in the file: nothing to ask
    assert (g5.to_read, g5.gpus) == (("cpus", "memory"), 1)
    (s,) = cfg.cloud("d").shapes
    assert (s.sized, s.cpus, s.memory, s.gpus) == (True, 1, 1024, 0)
    sized = cfg.with_shape_sizes({"aws": {"m5.large": {"cpus": 2, "memory_mib": 8192, "gpus": 0},
                                          "g5.xlarge": {"cpus": 4, "memory_mib": 16384, "gpus": 4}}})
    m5, c5, g5 = sized.cloud("aws").shapes
    assert (m5.sized, m5.cpus, m5.memory, m5.price) == (True, 2, 7168, 0.096)
    assert (g5.sized, g5.cpus, g5.memory, g5.gpus) == (True, 4, 14336, 1)      # the file's number wins
