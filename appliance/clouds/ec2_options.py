"""Options of the `ec2` cloud (appliance/clouds/ec2.py).

Kept apart from the driver so that loading the config never imports boto3.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ..config import integer, number, text, text_list, text_map
from .registry import CloudOptions, OptionError, option, register

DEFAULT_MAX_LIFETIME = 86400.0
AMI_RE = re.compile(r"^ami-[0-9a-f]{8,17}$")
SPOT_KEYS = ("spot_max_price", "spot_fallback", "spot_fallback_after", "spot_window", "spot_retry")


@dataclass(frozen=True, kw_only=True)
class Ec2Options(CloudOptions):
    region: str = option(text(), doc="the AWS region")
    ami: str = option(text(AMI_RE, "an AMI id like ami-0123456789abcdef0"),
                      doc="the image (`ami-` and 8-17 hex digits): Debian 13 for the default boot script")
    instance_type: str | None = option(text(), None, "e.g. `t3.large`: the one instance type of a cloud without "
                                                     "`shapes`; with `shapes`, each shape's name is its instance type",
                                       shown="required without `shapes`")
    subnet: str | None = option(text(), None, "`SubnetId`", shown="the default VPC")
    security_groups: tuple[str, ...] = option(text_list(text()), (),
                                              "ids (`sg-...`) or, in the default VPC, names",
                                              shown="the VPC's default group")
    key_name: str | None = option(text(), None, "an EC2 key pair, to log in and debug")
    iam_instance_profile: str | None = option(text(), None, "a name or ARN; only if jobs need AWS access")
    endpoint_url: str | None = option(text(re.compile(r"^https?://"), "an http(s):// URL"), None,
                                      "an EC2-compatible endpoint (`http(s)://...`)", shown="AWS")
    env_file: str | None = option(text(), None, "credentials file of `KEY=VALUE` lines; else the standard AWS chain")
    market: str = option(text(choices=("on-demand", "spot")), "on-demand",
                         "or `spot` (one-time, terminated on interruption)")
    spot_max_price: str | None = option(text(re.compile(r"^[0-9]+(\.[0-9]+)?$"), "a price like '0.05'"), None,
                                        "spot only, e.g. `\"0.05\"`", shown="the on-demand price")
    spot_fallback: str = option(text(choices=("none", "on-demand")), "none",
                                "spot only: `on-demand` launches on-demand when spot capacity is refused, and "
                                "after `spot_fallback_after` interruptions within `spot_window`")
    spot_fallback_after: int = option(integer(1, 1000), 3,
                                      "spot only: interruptions within `spot_window` that switch launches to "
                                      "on-demand (with `spot_fallback: on-demand`)")
    spot_window: float = option(number(60, 7 * 86400), 3600.0,
                                "spot only: seconds; interruptions older than this no longer count")
    spot_retry: float = option(number(0, 86400), 600.0,
                               "spot only: seconds after spot capacity was refused before spot is tried again")
    tags: Mapping[str, str] = option(text_map, {}, "extra tags on instances and volumes")
    user_data: str | None = option(text(), None, "your own boot script template",
                                   shown="the image's `/etc/appliance/ec2-user-data.sh`")
    worker_image: str | None = option(text(), None,
                                      "run this image's `worker` role with Docker instead of installing htcondor")
    max_lifetime: float = option(number(60, 365 * 86400), DEFAULT_MAX_LIFETIME,
                                 "seconds, at least 60; the instance powers itself off after this")

    # instances are outside the appliance's networks: 'auto' cannot find the address they reach
    needs_condor_host = True
    # a shape named by its instance type may leave its size out: DescribeInstanceTypes has it
    reads_shape_sizes = True

    def validate(self) -> None:
        if self.market == "on-demand":
            defaults = {f.name: f.default for f in fields(self)}
            for key in SPOT_KEYS:
                if getattr(self, key) != defaults[key]:
                    raise OptionError(key, "only applies when market is spot")

    def validate_shapes(self, listed: bool) -> None:
        if listed and self.instance_type:
            raise OptionError("instance_type", "cannot be used with shapes: each shape's name is its instance type")
        if not listed and not self.instance_type:
            raise OptionError("instance_type", "is required (or list shapes, each named by its instance type)")

    def lone_shape_name(self) -> str | None:
        return self.instance_type

    def own_image(self) -> str:
        return self.worker_image or self.ami

    def validate_images(self, images: Mapping[str, str]) -> None:
        """AMIs; with worker_image, the images the instances run with Docker."""
        if self.worker_image:
            return
        for name, ami in images.items():
            if not AMI_RE.match(ami):
                raise OptionError(f"images.{name}", f"{ami!r} is not an AMI id like ami-0123456789abcdef0 "
                                                    "(or set worker_image to map names to container images)")


register("ec2", "appliance.clouds.ec2:Ec2Driver", Ec2Options)
