"""The driver contract: cloud types come from the registry (options dataclasses with
their checks, defaults and descriptions), error kinds and resource states are enums,
and the docs tables are generated from the same declarations."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from appliance import backoff
from appliance.clouds import docs, registry
from appliance.clouds.base import CloudError, Driver, ErrorKind, make_driver
from appliance.clouds.docker_options import DockerOptions
from appliance.clouds.ec2_options import Ec2Options
from appliance.clouds.local_options import LocalOptions
from appliance.clouds.openstack_options import OpenStackOptions
from appliance.clouds.registry import CloudOptions, OptionError, option, register
from appliance.clouds.swarm_options import SwarmOptions
from appliance.config import CloudConfig, ConfigError, cloud_settings, integer, loads, text, text_list
from appliance.model import Resource, ResourceState

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# what config.py's CLOUD_OPTION_KEYS said before the registry: key -> (default, required);
# since shapes, ec2's instance_type is required only without them (Ec2Options.validate_shapes)
BEFORE = {
    "local": {"simulate_gpus": (False, False)},
    "docker": {"url": ("unix:///var/run/docker.sock", False), "image": ("appliance:latest", False),
               "network": ("auto", False), "labels": ({}, False), "simulate_gpus": (False, False)},
    "swarm": {"url": ("unix:///var/run/docker.sock", False), "image": ("appliance:latest", False),
              "network": ("auto", False), "labels": ({}, False), "constraints": ((), False),
              "simulate_gpus": (False, False)},
    "ec2": {"region": (None, True), "ami": (None, True), "instance_type": (None, False), "subnet": (None, False),
            "security_groups": ((), False), "key_name": (None, False), "iam_instance_profile": (None, False),
            "endpoint_url": (None, False), "env_file": (None, False), "market": ("on-demand", False),
            "spot_max_price": (None, False), "spot_fallback": ("none", False), "spot_fallback_after": (3, False),
            "spot_window": (3600.0, False), "spot_retry": (600.0, False), "tags": ({}, False), "user_data": (None, False),
            "worker_image": (None, False), "max_lifetime": (86400.0, False)},
}


# ---------------------------------------------------------------- the registry

def test_built_in_types_in_order_with_their_options_classes():
    assert registry.types() == ("local", "docker", "swarm", "ec2", "openstack")
    assert [registry.lookup(t).options for t in registry.types()] == [LocalOptions, DockerOptions,
                                                                     SwarmOptions, Ec2Options, OpenStackOptions]
    with pytest.raises(KeyError, match=r"no cloud type 'k8s' \(known: local, docker, swarm, ec2, openstack\)"):
        registry.lookup("k8s")
    with pytest.raises(KeyError):
        registry.lookup(["unhashable"])


def test_type_order_does_not_depend_on_import_order():
    code = ("import appliance.clouds.ec2_options, appliance.clouds.swarm_options\n"
            "from appliance.clouds import registry\nprint(registry.types())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "('local', 'docker', 'swarm', 'ec2', 'openstack')"


@pytest.mark.parametrize("ctype", list(BEFORE))
def test_option_keys_defaults_and_required_flags_are_unchanged(ctype):
    fields = registry.lookup(ctype).fields
    got = {f.key: (dict(f.default) if isinstance(f.default, Mapping) else f.default, f.required) for f in fields}
    assert got == BEFORE[ctype]
    assert list(got) == list(BEFORE[ctype])          # the order keys are checked in: the first error wins
    for f in fields:
        assert f.doc and "\n" not in f.doc, f.key     # every key says what it is, in one line
        assert getattr(f.check, "type_name", ""), f.key
    assert dataclasses.is_dataclass(registry.lookup(ctype).options)
    assert registry.lookup(ctype).options.__dataclass_params__.frozen


def test_options_classes_are_immutable_and_typed():
    cfg = loads("clouds: [{name: d, type: docker, labels: {team: x}}]")
    s = cfg.cloud("d").settings
    assert isinstance(s, DockerOptions) and s.url == "unix:///var/run/docker.sock" and dict(s.labels) == {"team": "x"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.image = "other"
    with pytest.raises(TypeError):
        s.labels["team"] = "y"


def test_reserved_keys_are_the_common_cloud_keys():
    from appliance.config import COMMON_CLOUD_KEYS
    assert registry.RESERVED_KEYS == set(COMMON_CLOUD_KEYS)


def test_registering_the_same_type_twice_is_harmless_but_a_different_one_is_refused():
    ct = registry.lookup("docker")
    assert register("docker", ct.driver, DockerOptions) is ct
    with pytest.raises(ValueError, match="already registered"):
        register("docker", "somewhere:Else", DockerOptions)
    with pytest.raises(ValueError):
        register("", ct.driver, DockerOptions)


def test_a_broken_options_class_is_refused_at_registration():
    @dataclass(frozen=True)
    class NoBase:
        x: str = option(text(), "a")

    @dataclass
    class NotFrozen(CloudOptions):
        x: str = option(text(), "a")

    @dataclass(frozen=True)
    class PlainField(CloudOptions):
        x: str = "a"

    @dataclass(frozen=True)
    class Shadows(CloudOptions):
        priority: int = option(integer(), 0)

    for cls, why in ((NoBase, "subclassing CloudOptions"), (NotFrozen, "frozen"),
                     (PlainField, "option()"), (Shadows, "shadow")):
        with pytest.raises(TypeError, match=why):
            register("broken", "x:Y", cls)
    assert "broken" not in registry.types()


# ---------------------------------------------------------------- a new cloud type, end to end

class FakeDriver(Driver):
    def condor_host(self):
        return "cm"

    def launch(self, spec):
        return "r-1"

    def list(self):
        return {}

    def terminate(self, worker_id, resource_id):
        pass


@dataclass(frozen=True, kw_only=True)
class FakeOptions(CloudOptions):
    zone: str = option(text(), doc="where workers go")
    size: int = option(integer(1, 8), 2, "how big")
    extras: tuple[str, ...] = option(text_list(text()), (), "more")

    def validate(self):
        if self.zone == "nowhere" and self.size > 1:
            raise OptionError("size", "must be 1 in zone nowhere")


@pytest.fixture
def fake_type():
    register("fake", FakeDriver, FakeOptions)
    yield registry.lookup("fake")
    with registry._LOCK:
        del registry._TYPES["fake"]


def test_a_registered_type_is_validated_built_and_documented(fake_type):
    assert registry.types() == ("local", "docker", "swarm", "ec2", "openstack", "fake")
    cfg = loads("clouds: [{name: f, type: fake, zone: z1, extras: 'a, b'}]")
    f = cfg.cloud("f")
    assert f.settings == FakeOptions(zone="z1", size=2, extras=("a", "b"))
    assert f.opt("size") == 2 and f.opt("extras") == ("a", "b")
    d = make_driver(f, "appliance", "p00l")
    assert isinstance(d, FakeDriver) and d.settings is f.settings

    for text_, message in [
        ("clouds: [{name: f, type: fake}]", "clouds[0].zone: is required"),
        ("clouds: [{name: f, type: fake, zone: z, size: 9}]", "clouds[0].size: must be a whole number from 1 to 8"),
        ("clouds: [{name: f, type: fake, zone: nowhere}]", "clouds[0].size: must be 1 in zone nowhere"),
        ("clouds: [{name: f, type: fake, zone: z, image: x}]",
         "clouds[0].image: unknown key (known keys here: budget, enabled, extras, images, max_workers, min_idle, "
         "min_idle_window, name, priority, "
         "shapes, size, type, vm_type, worker, zone)"),
        ("clouds: [{name: f, type: k8s}]", "unknown cloud type 'k8s' (known: local, docker, swarm, ec2, openstack, fake)"),
    ]:
        with pytest.raises(ConfigError) as err:
            loads(text_)
        assert message in str(err.value), str(err.value)

    table = docs.render_table("fake")
    assert "| `zone` | str | required | where workers go |" in table
    assert "| `size` | int | `2` | how big |" in table
    assert "| `extras` | list[str] | `[]` | more |" in table


def test_make_driver_by_type_and_unknown_type():
    cfg = loads("clouds: [{name: l, type: local}, {name: d, type: docker}, {name: s, type: swarm}]")
    built = {c.name: make_driver(c, "appliance", "p00l") for c in cfg.clouds}
    assert [type(d).__name__ for d in built.values()] == ["LocalDriver", "DockerDriver", "SwarmDriver"]
    with pytest.raises(ValueError, match="no driver for cloud type 'k8s'"):
        make_driver(CloudConfig("x", "k8s"), "appliance", "p00l")


def test_a_hand_built_cloud_config_gets_checked_settings():
    cloud = CloudConfig("d", "docker", options=MappingProxyType({"image": "mine:1"}))
    assert cloud_settings(cloud) == DockerOptions(image="mine:1")
    assert make_driver(cloud, "appliance", "p00l").settings.network == "auto"
    assert cloud_settings(CloudConfig("l", "local")) == LocalOptions()
    with pytest.raises(ConfigError, match=r"clouds\['a'\].region: is required"):
        cloud_settings(CloudConfig("a", "ec2"))
    # built from settings alone, the options mapping follows
    assert CloudConfig("d", "docker", settings=DockerOptions(url="tcp://h:2375")).opt("url") == "tcp://h:2375"


def test_driver_has_no_shutdown_method():
    assert not hasattr(Driver, "shutdown")


def test_loading_the_config_imports_no_cloud_sdk():
    code = ("import sys, appliance.config as c\n"
            "c.loads('pool: {condor_host: cm.example.org}\\nclouds: [{name: l, type: local}, {name: d, type: docker},"
            " {name: s, type: swarm}, {name: e, type: ec2, region: r, ami: ami-01234567, instance_type: t}]')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'boto3', 'botocore', 'requests')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------- error kinds

def test_cloud_error_kinds_are_an_enum_that_reads_as_strings():
    err = CloudError(ErrorKind.CAPACITY, "no room")
    assert err.kind is ErrorKind.CAPACITY and err.kind == "capacity" and CloudError.Kind is ErrorKind
    assert f"{err.kind}: {err}" == "capacity: no room" and str(err.kind) == "capacity"  # logging's %s and daemon's str(kind)
    assert CloudError("auth", "bad key").kind is ErrorKind.AUTH          # a string naming a kind still works
    assert backoff.SLOW_KINDS.get(CloudError("auth", "x").kind) == backoff.SLOW_KINDS["auth"]
    assert set(CloudError.KINDS) == {"capacity", "limit", "throttle", "auth", "config", "image", "unavailable",
                                     "other"}
    assert CloudError("other", "x", retry_after=5).retry_after == 5


@pytest.mark.parametrize("bad", ["capacty", "", None, "CAPACITY"])
def test_a_misspelt_kind_is_an_error_not_other(bad):
    with pytest.raises(ValueError, match="unknown CloudError kind"):
        CloudError(bad, "x")


# ---------------------------------------------------------------- resource states

def test_resource_state_and_its_read_only_views():
    running, exited, gone = (Resource("w", "r"), Resource("w", "r", ResourceState.EXITED, "stopped"),
                             Resource("w", "r", "gone"))
    assert (running.state, running.alive, running.gone) == (ResourceState.RUNNING, True, False)
    assert (exited.alive, exited.gone, exited.detail) == (False, False, "stopped")
    assert (gone.state, gone.alive, gone.gone) == (ResourceState.GONE, False, True)
    with pytest.raises(AttributeError):
        running.alive = False
    with pytest.raises(dataclasses.FrozenInstanceError):
        running.state = ResourceState.GONE
    with pytest.raises(ValueError):
        Resource("w", "r", "stopped")
    assert dataclasses.replace(exited, detail="x") == Resource("w", "r", ResourceState.EXITED, "x")


def test_resource_still_accepts_the_old_alive_and_gone_keywords():
    assert Resource("w", "r", alive=True).state is ResourceState.RUNNING
    assert Resource("w", "r", alive=False, detail="d") == Resource("w", "r", ResourceState.EXITED, "d")
    assert Resource("w", "r", alive=False, gone=True).state is ResourceState.GONE
    assert Resource("w", "r", ResourceState.EXITED, alive=False).state is ResourceState.EXITED
    for kw in ({"alive": True, "gone": True}, {"state": ResourceState.GONE, "alive": False, "gone": False}):
        with pytest.raises(ValueError, match="contradictory"):
            Resource("w", "r", **kw)


# ---------------------------------------------------------------- docs

PAGE = """# docker

Intro.

<!-- BEGIN options:docker -->
stale table
<!-- END options:docker -->

Tail.
"""


def test_docker_table_renders_from_the_options():
    table = docs.render_table("docker")
    assert table.splitlines()[:3] == [
        "| key | type | default | description |", "| --- | --- | --- | --- |",
        "| `url` | str | `unix:///var/run/docker.sock` | the Docker engine to start workers on |"]
    assert "| `labels` | dict[str, str] | `{}` | extra labels on every worker container |" in table
    assert "| `simulate_gpus` | bool | `false` | demos and tests:" in docs.render_table("local")
    ec2 = docs.render_table("ec2")
    assert "| `region` | str | required |" in ec2 and "| `subnet` | str | none (the default VPC) |" in ec2
    assert "| `max_lifetime` | float | `86400` |" in ec2


def test_replace_between_markers_touches_only_the_table():
    new = docs.update_page(PAGE, "docker")
    assert new.startswith("# docker\n\nIntro.\n\n<!-- BEGIN options:docker -->\n| key |")
    assert new.endswith("|\n<!-- END options:docker -->\n\nTail.\n") and "stale" not in new
    assert docs.update_page(new, "docker") == new                          # idempotent
    assert docs.replace_between("a\n<!-- BEGIN options:x -->\n<!-- END options:x -->\n", "x", "T") == \
        "a\n<!-- BEGIN options:x -->\nT\n<!-- END options:x -->\n"
    assert docs.replace_between("<!-- BEGIN options:x -->\r\nold\r\n<!-- END options:x -->\r\n", "x", "A\nB\n") == \
        "<!-- BEGIN options:x -->\r\nA\r\nB\r\n<!-- END options:x -->\r\n"
    assert "a \\| b" in docs._cell("a | b")


@pytest.mark.parametrize("text_", [
    "no markers\n",
    "<!-- BEGIN options:docker -->\n",
    "<!-- END options:docker -->\n<!-- BEGIN options:docker -->\n",
    PAGE + PAGE,
    "<!-- BEGIN options:docker -->\n<!-- END options:swarm -->\n",
])
def test_bad_markers_are_refused(text_):
    with pytest.raises(ValueError):
        docs.update_page(text_, "docker")


def test_generator_writes_and_checks_pages(tmp_path, capsys):
    for t in registry.types():
        (tmp_path / f"{t}.md").write_text(PAGE.replace("docker", t))
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 1
    assert "docker.md: out of date" in capsys.readouterr().err
    assert (tmp_path / "docker.md").read_text() == PAGE                   # --check writes nothing
    assert docs.main(["--docs", str(tmp_path)]) == 0
    assert docs.main(["--check", "--docs", str(tmp_path)]) == 0
    assert docs.main(["--check", "--docs", str(tmp_path), "docker"]) == 0
    (tmp_path / "ec2.md").unlink()
    assert docs.main(["--docs", str(tmp_path)]) == 1
    assert "ec2.md: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        docs.main(["--docs", str(tmp_path), "k8s"])


def test_the_repository_docs_are_in_sync():
    """docs/clouds/TYPE.md tables match the options; fix with `python3 -m appliance.clouds.docs`."""
    docs_dir = os.path.join(REPO, "docs", "clouds")
    if not os.path.isdir(docs_dir):
        pytest.skip("no docs/clouds in this tree")
    changed, problems = docs.sync(docs_dir, write=False)
    assert not problems and not changed, (problems, changed)


def test_the_generator_runs_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "appliance.clouds.docs", "--check", "--docs", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and "local.md: missing" in proc.stderr


# ---------------------------------------------------------------- the registry under threads

def test_concurrent_first_lookups_load_the_built_ins_once(monkeypatch):
    monkeypatch.setattr(registry, "_loaded", False)
    results = []
    threads = [threading.Thread(target=lambda: results.append(registry.types())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [("local", "docker", "swarm", "ec2", "openstack")] * 8
