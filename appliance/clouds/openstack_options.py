"""Options of the `openstack` cloud (appliance/clouds/openstack.py).

Kept apart from the driver so that loading the config never imports openstacksdk.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import number, text, text_list, text_map
from .registry import CloudOptions, OptionError, option, register

DEFAULT_MAX_LIFETIME = 86400.0


@dataclass(frozen=True, kw_only=True)
class OpenStackOptions(CloudOptions):
    cloud: str | None = option(text(), None, "the entry of `clouds.yaml` to use (the OpenStack convention; "
                                             "password or application credential)",
                               shown="required unless env_file is given")
    clouds_yaml: str | None = option(text(), None, "the `clouds.yaml` file to read `cloud` from",
                                     shown="openstacksdk's search: `OS_CLIENT_CONFIG_FILE`, "
                                           "`~/.config/openstack/clouds.yaml`, `/etc/openstack/clouds.yaml`")
    env_file: str | None = option(text(), None, "instead of `cloud`: a file of `OS_*=value` lines (an openrc "
                                                "without its shell: `OS_AUTH_URL`, `OS_USERNAME`, ... or "
                                                "`OS_APPLICATION_CREDENTIAL_ID`/`_SECRET`)")
    region: str | None = option(text(), None, "the region", shown="the cloud entry's, else the only one")
    image: str = option(text(), doc="the image (name or id) workers boot: Debian 13 for the default boot script")
    flavor: str | None = option(text(), None, "the one flavor of a cloud without `shapes`; with `shapes`, each "
                                              "shape's name is its flavor", shown="required without `shapes`")
    network: tuple[str, ...] = option(text_list(text()), (), "the network(s) (names or ids) servers attach to",
                                      shown="the project's only network")
    security_groups: tuple[str, ...] = option(text_list(text()), (), "names or ids; they must let workers "
                                                                     "reach the central manager on port 9618",
                                              shown="the project's `default`")
    key_name: str | None = option(text(), None, "a key pair, to log in and debug")
    availability_zone: str | None = option(text(), None, "where servers go", shown="the cloud's choice")
    metadata: Mapping[str, str] = option(text_map, {}, "extra server metadata")
    user_data: str | None = option(text(), None, "your own boot script template (as for ec2)",
                                   shown="the image's `/etc/appliance/ec2-user-data.sh`")
    worker_image: str | None = option(text(), None,
                                      "run this image's `worker` role with Docker instead of installing htcondor")
    max_lifetime: float = option(number(60, 365 * 86400), DEFAULT_MAX_LIFETIME,
                                 "seconds, at least 60; the server powers itself off after this")

    # servers are outside the appliance's networks: 'auto' cannot find the address they reach
    needs_condor_host = True
    # a shape named by its flavor may leave its size out: Nova has it
    reads_shape_sizes = True
    reads_shape_disk = True

    def validate(self) -> None:
        if bool(self.cloud) == bool(self.env_file):
            raise OptionError("cloud", "give either cloud (an entry of clouds.yaml) or env_file (OS_* variables)")
        if self.clouds_yaml and not self.cloud:
            raise OptionError("clouds_yaml", "only applies with cloud")
        for key in self.metadata:
            if key.startswith("appliance:"):
                raise OptionError(f"metadata.{key}", "appliance:* keys are the appliance's own")

    def validate_shapes(self, listed: bool) -> None:
        if listed and self.flavor:
            raise OptionError("flavor", "cannot be used with shapes: each shape's name is its flavor")
        if not listed and not self.flavor:
            raise OptionError("flavor", "is required (or list shapes, each named by its flavor)")

    def lone_shape_name(self) -> str | None:
        return self.flavor

    def own_image(self) -> str:
        return self.worker_image or self.image

    def validate_images(self, images: Mapping[str, str]) -> None:
        """Glance images (names or ids); with worker_image, the images the servers run with Docker."""


register("openstack", "appliance.clouds.openstack:OpenStackDriver", OpenStackOptions)
