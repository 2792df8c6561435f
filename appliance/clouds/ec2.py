"""The `ec2` cloud: each worker is one EC2 instance (or one instance of an
EC2-compatible cloud, through `endpoint_url`), started by boto3.

The instance is made a worker by its user-data: a boot script rendered from a
template (config/ec2-user-data.sh, or the cloud's `user_data` file) that
installs HTCondor (or runs the appliance image in its worker role), writes the
worker's files and starts it, and powers the instance off when the worker
ends, so an instance whose scheduler is gone stops billing by itself
(InstanceInitiatedShutdownBehavior = terminate).

Instances carry tags for pool, cloud and worker id; listing by tag each cycle
is how orphans are found and vanished workers noticed. ClientToken is the
worker id, so a retried launch never makes a second instance; a lookup by tag
before launching gives the same guarantee on EC2-compatible clouds that
ignore ClientToken.

Secrets: the worker's token and key travel only in the user-data. Nothing
here logs it, and error messages are built from the cloud's error code and
message only, with any secret of the launch scrubbed out.
"""
from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.parsers
import botocore.session

from ..model import Resource, ResourceState
from ..workerconf import WorkerSpec
from . import bootscript
from .base import CloudError, Driver, ErrorKind, env_file_lines, scrub, shorten
from .bootscript import REPO_TEMPLATE, render, strip_comments, write_files_script  # noqa: F401  (tests)
from .ec2_market import ON_DEMAND, SPOT_TERMINATION, SpotHistory, choose_market, prune, refusal_fallback
from .ec2_options import Ec2Options

log = logging.getLogger(__name__)

# botocore's debug log would show request bodies, and so the user-data with the
# worker's token: whatever APPLIANCE_LOG_LEVEL says, it stays quiet
for _name in ("botocore", "boto3", "urllib3"):
    logging.getLogger(_name).setLevel(logging.WARNING)

TAG_POOL = "appliance:pool"
TAG_CLOUD = "appliance:cloud"
TAG_WORKER = "appliance:worker"
TAG_SHAPE = "appliance:shape"       # for operators and billing reports; nothing reads it back
TAG_MARKET = "appliance:market"     # spot | on-demand, as launched (ditto)

# pending/running are live; the others exist but are ending (or ended)
ALIVE = ("pending", "running")
ENDING = ("shutting-down", "stopping", "stopped")
USER_DATA_LIMIT = 16 * 1024          # EC2's limit on user-data, before base64
ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")

# EC2 error codes -> CloudError kinds (what the daemon does about them)
CAPACITY = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity",
            "InsufficientReservedInstanceCapacity", "InsufficientFreeAddressesInSubnet",
            "SpotMaxPriceTooLow", "InsufficientCapacityOnHost", "Unsupported"}
LIMIT = {"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded",
         "ResourceLimitExceeded", "VolumeLimitExceeded", "PendingVerification"}
THROTTLE = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled",
            "TooManyRequestsException", "SlowDown"}
AUTH = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
        "ExpiredToken", "RequestExpired", "OptInRequired", "Blocked", "IncompleteSignature",
        "MissingAuthenticationToken", "AccessDenied", "AccessDeniedException", "InvalidToken",
        "UnrecognizedClientException", "AuthFailure.ServiceLinkedRoleCreationNotPermitted"}
UNAVAILABLE = {"ServiceUnavailable", "Unavailable", "InternalError", "InternalFailure", "ServerInternal"}
NOT_FOUND = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


class Ec2Driver(Driver):
    PAGE_SIZE = 500       # DescribeInstances page size (EC2 allows 5..1000)
    settings: Ec2Options

    def __init__(self, cloud, pool, pool_id, template: str | None = None):
        super().__init__(cloud, pool, pool_id)
        self._template = template        # tests may pass one; else user_data or the default
        self._client = None
        self._lock = threading.Lock()    # guards _client: the act threads share it
        self._secrets: set[str] = set()  # values to scrub from any error text
        # what this driver saw of spot, the input of ec2_market.choose_market (guarded by _lock)
        self._spot = SpotHistory()

    # ------------------------------------------------------------ client
    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self):
        o = self.settings
        creds = read_env_file(o.env_file) if o.env_file else {}
        self._secrets.update(v for k, v in creds.items() if k != "AWS_PROFILE" and v)
        core = botocore.session.get_session()
        core.register_component("data_loader", _loader())   # parse EC2's API model once per process
        session = boto3.session.Session(
            botocore_session=core,
            aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=creds.get("AWS_SESSION_TOKEN"),
            profile_name=creds.get("AWS_PROFILE"),
            region_name=o.region)
        # No retries inside botocore: a retried RunInstances is only safe where
        # ClientToken is honoured, and the daemon's backoff is the retry policy.
        cfg = botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1},
                                     connect_timeout=10, read_timeout=30,
                                     user_agent_extra="htcondor-appliance")
        try:
            return session.client("ec2", endpoint_url=o.endpoint_url, config=cfg)
        except botocore.exceptions.BotoCoreError as err:
            raise CloudError(ErrorKind.CONFIG,
                             f"cannot make an EC2 client: {scrub(str(err), self._secrets)}") from None

    def _call(self, operation: str, secrets: Iterable[str] = (), **params):
        try:
            return getattr(self.client, _snake(operation))(**params)
        except Exception as err:
            raise self._translate(err, operation, secrets) from None

    def _translate(self, err: Exception, operation: str, secrets: Iterable[str] = ()) -> CloudError:
        kind, text = classify(err)
        if kind is ErrorKind.AUTH:
            with self._lock:        # credentials may have been rotated: re-read them next call
                self._client = None
        return CloudError(kind, f"{operation}: {shorten(scrub(text, {*self._secrets, *secrets}))}")

    # ------------------------------------------------------------ Driver
    def condor_host(self) -> str:
        # the daemon uses pool.condor_host when it is set, which config.py insists on for ec2
        raise CloudError(ErrorKind.CONFIG, "pool.condor_host is auto, but EC2 instances need the central "
                                           "manager's public address: set pool.condor_host")

    def tags(self, worker_id: str, shape: str = "", market: str = "") -> dict[str, str]:
        out = {**dict(self.settings.tags), "Name": f"{self.pool}-{worker_id}",
               TAG_POOL: self.pool_id, TAG_CLOUD: self.cloud.name, TAG_WORKER: worker_id}
        if shape:
            out[TAG_SHAPE] = shape
        if market:
            out[TAG_MARKET] = market
        return out

    def instance_type(self, spec: WorkerSpec) -> str:
        """The worker's shape is its instance type; a cloud with one `worker:` names it in instance_type."""
        return self.settings.instance_type or spec.size.name

    def client_token(self, worker_id: str) -> str:
        return worker_id[:64]

    def launch(self, spec: WorkerSpec) -> str:
        existing = self._find(spec.worker_id)
        if existing:          # a retried launch: the instance is already there
            return existing
        user_data = self.user_data(spec)
        secrets = {spec.token, spec.key.decode(errors="replace"),
                   base64.b64encode(user_data.encode()).decode()} - {""}
        o = self.settings
        with self._lock:
            choice = choose_market(o, self._spot, time.time())
        if choice.fallback:
            log.info("cloud %s: worker %s goes on-demand: %s", self.cloud.name, spec.worker_id, choice.reason)
        market = choice.market
        client = self.client          # a CloudError of its own if it cannot be made
        try:
            reply = client.run_instances(**self.run_params(spec.worker_id, user_data, self.instance_type(spec),
                                                           market, **self.image_and_price(spec)))
        except Exception as err:
            code = error_code(err)
            if not refusal_fallback(o, market, code):
                raise self._translate(err, "RunInstances", secrets) from None
            with self._lock:
                self._spot = SpotHistory(self._spot.interrupted, time.time(), code)
            log.info("cloud %s: worker %s goes on-demand: spot capacity refused (%s)",
                     self.cloud.name, spec.worker_id, code)
            params = self.run_params(spec.worker_id, user_data, self.instance_type(spec), ON_DEMAND,
                                          **self.image_and_price(spec))
            # a token of its own: EC2 refuses a token reused with other parameters, and whether a
            # refused request's token counts as used is not documented
            params["ClientToken"] = self.client_token(f"{spec.worker_id}-od")
            reply = self._call("RunInstances", secrets, **params)
        return reply["Instances"][0]["InstanceId"]

    def image_and_price(self, spec: WorkerSpec) -> dict:
        """The AMI of the worker's image (with worker_image, every worker boots `ami` and runs
        its image with Docker) and the most a job let its worker cost (+VMMaximumPrice)."""
        return {"image_id": self.settings.ami if self.settings.worker_image else spec.image_ref,
                "max_price": spec.max_price}

    def run_params(self, worker_id: str, user_data: str, instance_type: str | None = None,
                   market: str | None = None, image_id: str | None = None, max_price: float | None = None) -> dict:
        o = self.settings
        instance_type = instance_type or o.instance_type
        market = market or o.market
        tags = [{"Key": k, "Value": v} for k, v in self.tags(worker_id, instance_type or "", market).items()]
        params: dict = {
            "ImageId": image_id or o.ami, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1,
            "ClientToken": self.client_token(worker_id), "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
            # IMDSv2 only: the user-data (which holds the worker's token) is not served to a plain GET
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        }
        if o.subnet:
            params["SubnetId"] = o.subnet
        groups = list(o.security_groups or ())
        ids = [g for g in groups if g.startswith("sg-")]
        names = [g for g in groups if not g.startswith("sg-")]
        if ids:
            params["SecurityGroupIds"] = ids
        if names:
            params["SecurityGroups"] = names
        if o.key_name:
            params["KeyName"] = o.key_name
        profile = o.iam_instance_profile
        if profile:
            params["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        if market == "spot":
            spot = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
            bid = spot_bid(o.spot_max_price, max_price)
            if bid:
                spot["MaxPrice"] = bid
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    def _describe(self, filters: list[dict]) -> Iterable[dict]:
        try:
            pages = self.client.get_paginator("describe_instances").paginate(
                Filters=filters, PaginationConfig={"PageSize": self.PAGE_SIZE})
            for page in pages:
                for reservation in page.get("Reservations", []):
                    yield from reservation.get("Instances", [])
        except CloudError:
            raise
        except Exception as err:
            raise self._translate(err, "DescribeInstances") from None

    def _ours(self, *extra: dict) -> list[dict]:
        return [{"Name": f"tag:{TAG_POOL}", "Values": [self.pool_id]},
                {"Name": f"tag:{TAG_CLOUD}", "Values": [self.cloud.name]}, *extra]

    def _find(self, worker_id: str) -> str | None:
        """The live instance of this worker, if one exists already."""
        for inst in self._describe(self._ours({"Name": f"tag:{TAG_WORKER}", "Values": [worker_id]},
                                              {"Name": "instance-state-name", "Values": list(ALIVE)})):
            return inst["InstanceId"]
        return None

    def list(self) -> Mapping[str, Resource]:
        out: dict[str, Resource] = {}
        for inst in self._describe(self._ours()):
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            wid = tags.get(TAG_WORKER)
            if not wid:
                continue
            res = resource(wid, inst)
            if res.interruption:
                self._saw_interruption(res.resource_id)
            old = out.get(wid)
            # one worker, several instances (should not happen): the live one speaks for it,
            # else one that still needs cleanup (running > exited > gone)
            if old is None or _RANK[res.state] > _RANK[old.state]:
                out[wid] = res
        return out

    def _saw_interruption(self, instance_id: str) -> None:
        now = time.time()
        with self._lock:
            h = self._spot
            if instance_id not in h.interrupted:
                seen = prune({**h.interrupted, instance_id: now}, self.settings.spot_window, now)
                self._spot = SpotHistory(seen, h.refused_at, h.refused_why)

    def terminate(self, worker_id: str, resource_id: str) -> None:
        ids = [resource_id] if resource_id.startswith("i-") else [
            i["InstanceId"] for i in self._describe(self._ours({"Name": f"tag:{TAG_WORKER}", "Values": [worker_id]}))
            if i.get("State", {}).get("Name") != "terminated"]
        if not ids:
            return
        try:
            self._call("TerminateInstances", InstanceIds=ids)
        except CloudError as err:
            if any(code in str(err) for code in NOT_FOUND):
                return           # already gone: termination is idempotent
            raise

    def shape_sizes(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """(vCPUs, memory MiB, GPUs) of each instance type, from DescribeInstanceTypes. An
        unknown type is a config error naming it."""
        answer = self._call("DescribeInstanceTypes", InstanceTypes=list(names))
        sizes = {}
        for t in answer.get("InstanceTypes", []):
            gpus = sum(g.get("Count", 0) for g in (t.get("GpuInfo") or {}).get("Gpus", []))
            sizes[t["InstanceType"]] = (t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"], gpus)
        missing = [n for n in names if n not in sizes]
        if missing:
            raise CloudError(ErrorKind.CONFIG, f"DescribeInstanceTypes: no instance type {', '.join(missing)} "
                                               f"in {self.settings.region}")
        return sizes

    def close(self) -> None:
        with self._lock:
            self._client = None

    # ------------------------------------------------------------ user-data
    def user_data(self, spec: WorkerSpec) -> str:
        """The boot script that makes a fresh instance this worker (holds its secrets)."""
        return bootscript.user_data(spec, self.settings, self._template, USER_DATA_LIMIT, "EC2")


# ---------------------------------------------------------------- helpers

_LOADER = None
_LOADER_LOCK = threading.Lock()


def _loader():
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
        return _LOADER


_RANK = {ResourceState.GONE: 0, ResourceState.EXITED: 1, ResourceState.RUNNING: 2}


def resource(worker_id: str, inst: Mapping) -> Resource:
    state = inst.get("State", {}).get("Name", "unknown")
    iid = inst.get("InstanceId", "")
    reason = inst.get("StateReason") or {}
    why = reason.get("Message") or inst.get("StateTransitionReason") or ""
    detail = f"its instance {iid} is {state}" + (f" ({why})" if why else "")
    if state in ALIVE:
        return Resource(worker_id, iid, ResourceState.RUNNING)
    if reason.get("Code") == SPOT_TERMINATION:
        # EC2 took the spot instance back: reconcile records the worker as a spot interruption
        st = ResourceState.GONE if state == "terminated" else ResourceState.EXITED
        return Resource(worker_id, iid, st, f"its spot instance {iid} is {state} ({SPOT_TERMINATION})",
                        interruption="spot")
    # terminated: only a record is left; any other state still needs a TerminateInstances
    return Resource(worker_id, iid, ResourceState.GONE if state == "terminated" else ResourceState.EXITED, detail)


def error_code(err: Exception) -> str:
    """EC2's error code of a failed call ("" if it is not an answer from EC2)."""
    if isinstance(err, botocore.exceptions.ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return ""


def classify(err: Exception) -> tuple[ErrorKind, str]:
    """(CloudError kind, short text) for a boto3/botocore exception."""
    if isinstance(err, botocore.exceptions.ClientError):
        e = err.response.get("Error", {})
        code, message = str(e.get("Code", "")), str(e.get("Message", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = f"{code}: {message}" if message else code
        if code in CAPACITY:
            return ErrorKind.CAPACITY, text
        if code in LIMIT:
            return ErrorKind.LIMIT, text
        if code in THROTTLE:
            return ErrorKind.THROTTLE, text
        if code in AUTH or status in (401, 403):
            return ErrorKind.AUTH, text
        if code.startswith("InvalidAMIID"):
            return ErrorKind.IMAGE, text
        if code in UNAVAILABLE or status >= 500:
            return ErrorKind.UNAVAILABLE, text
        if code.startswith(("Invalid", "Missing", "Unknown")) or code in ("UnsupportedOperation",):
            return ErrorKind.CONFIG, text
        return ErrorKind.OTHER, text
    if isinstance(err, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError,
                        botocore.exceptions.ProfileNotFound)):
        return ErrorKind.AUTH, (f"no usable AWS credentials ({type(err).__name__}): "
                                "set them for the appliance or use env_file")
    if isinstance(err, (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                        botocore.exceptions.ConnectTimeoutError, botocore.exceptions.ReadTimeoutError,
                        botocore.exceptions.ProxyConnectionError)):
        return ErrorKind.UNAVAILABLE, f"the EC2 endpoint is not reachable ({type(err).__name__})"
    # it lives in botocore.parsers: botocore.exceptions has no such name, and asking it
    # for one raised AttributeError here for every error not matched above
    if isinstance(err, botocore.parsers.ResponseParserError):
        return ErrorKind.UNAVAILABLE, "the EC2 endpoint sent an answer that is not EC2's"
    if isinstance(err, botocore.exceptions.ParamValidationError):
        return ErrorKind.CONFIG, str(err).split("\n")[0]
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return ErrorKind.OTHER, f"{type(err).__name__}"
    return ErrorKind.OTHER, f"{type(err).__name__}: {err}"


def read_env_file(path: str) -> dict[str, str]:
    """AWS credentials from a file of KEY=VALUE lines (`export`, quotes and comments allowed).

    Errors name the file and line, never a value."""
    out: dict[str, str] = {}
    for n, key, value in env_file_lines(path):
        if key in ENV_KEYS:
            out[key] = value
        elif key not in ("AWS_REGION", "AWS_DEFAULT_REGION"):   # the region comes from the cloud's config
            raise CloudError(ErrorKind.CONFIG,
                             f"env_file {path}, line {n}: unknown key {key} (known: {', '.join(ENV_KEYS)})")
    if bool(out.get("AWS_ACCESS_KEY_ID")) != bool(out.get("AWS_SECRET_ACCESS_KEY")):
        raise CloudError(ErrorKind.AUTH, f"env_file {path}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY go together")
    return out


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def spot_bid(cloud_max: str | None, job_max: float | None) -> str | None:
    """The spot MaxPrice: the lower of the cloud's spot_max_price and a job's +VMMaximumPrice;
    None: neither is set (EC2 then caps at the on-demand price)."""
    prices = [float(p) for p in (cloud_max, job_max) if p is not None]
    if not prices:
        return None
    low = min(prices)
    return cloud_max if cloud_max is not None and float(cloud_max) == low else f"{low:.6f}".rstrip("0").rstrip(".")
