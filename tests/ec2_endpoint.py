"""A real EC2 endpoint for tests: moto's server over HTTP, behind a small proxy
that can inject the errors EC2 returns (capacity, limits, throttling, auth) or
act as an endpoint that is down.

    with Ec2Endpoint(bind="127.0.0.1") as ep:
        ep.url                       # what boto3 (or the appliance) talks to
        ep.fail("RunInstances", "InsufficientInstanceCapacity")
        ep.down = True               # close every connection without an answer
        ep.clear()
        ep.interrupt_spot("i-...")   # EC2 takes a spot instance back (see below)

moto cannot interrupt a spot instance: `interrupt_spot` terminates it in moto,
and from then on the proxy rewrites DescribeInstances' answers so that the
instance's StateReason is Server.SpotInstanceTermination, as EC2 reports it.

moto listens on 127.0.0.1 only; the proxy listens on `bind` (loopback, or
the gateway address of a Docker network the test created, so an appliance
container can reach it). Nothing else is touched.
"""
from __future__ import annotations

import http.client
import http.server
import logging
import re
import threading
import urllib.parse
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

# HTTP status EC2 uses with each error code
STATUS = {"InsufficientInstanceCapacity": 500, "RequestLimitExceeded": 503, "AuthFailure": 401,
          "UnauthorizedOperation": 403, "InternalError": 500, "ServiceUnavailable": 503}

FAKE_KEYS = {"aws_access_key_id": "AKIATESTTESTTESTTEST", "aws_secret_access_key": "test-secret-not-real"}


@dataclass
class Fault:
    action: str          # EC2 Action, e.g. RunInstances, or "*"
    code: str
    message: str
    times: int | None    # None: until cleared
    after_forward: bool  # forward to moto first, then answer with the error (a lost answer)
    echo: str = ""       # a request parameter to echo in the message (a careless endpoint)
    when: tuple[tuple[str, str], ...] = ()   # only requests with these parameters (e.g. InstanceType)


class Ec2Endpoint:
    def __init__(self, bind: str = "127.0.0.1", region: str = "us-west-2"):
        self.bind = bind
        self.region = region
        self.faults: list[Fault] = []
        self.down = False
        self.calls: list[str] = []        # every Action seen, in order
        self.spot_taken: set[str] = set()  # instances "interrupted" by interrupt_spot
        self._lock = threading.Lock()

    # ------------------------------------------------------------ control
    def fail(self, action: str, code: str, message: str = "", times: int | None = None,
             after_forward: bool = False, echo: str = "", when: dict[str, str] | None = None) -> None:
        with self._lock:
            self.faults.append(Fault(action, code, message or f"injected {code}", times, after_forward, echo,
                                     tuple((when or {}).items())))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.down = False

    def interrupt_spot(self, instance_id: str) -> None:
        """What EC2 does at the end of a spot interruption notice: the instance is terminated,
        and listed with StateReason Server.SpotInstanceTermination."""
        with self._lock:
            self.spot_taken.add(instance_id)
        self.client().terminate_instances(InstanceIds=[instance_id])

    def count(self, action: str) -> int:
        with self._lock:
            return sum(1 for a in self.calls if a == action)

    def _fault_for(self, action: str, params: dict[str, list[str]] | None = None) -> Fault | None:
        with self._lock:
            self.calls.append(action)
            for f in self.faults:
                if f.action in (action, "*") and all((params or {}).get(k) == [v] for k, v in f.when):
                    if f.times is not None:
                        f.times -= 1
                        if f.times <= 0:
                            self.faults.remove(f)
                    return f
        return None

    # ------------------------------------------------------------ lifetime
    def __enter__(self) -> Ec2Endpoint:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)     # moto's per-request lines
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.moto_port = self.moto.get_host_and_port()[1]
        self.proxy = http.server.ThreadingHTTPServer((self.bind, 0), _handler(self))
        self.proxy.daemon_threads = True
        self.port = self.proxy.server_address[1]
        self.url = f"http://{self.bind}:{self.port}"
        self._thread = threading.Thread(target=self.proxy.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.proxy.shutdown()
        self.proxy.server_close()
        self.moto.stop()

    def client(self):
        """boto3 straight to moto, for the test's own look-ups (no faults)."""
        return boto3.client("ec2", region_name=self.region, endpoint_url=f"http://127.0.0.1:{self.moto_port}",
                            **FAKE_KEYS)

    def instances(self, **filters) -> list[dict]:
        flt = [{"Name": k.replace("_", "-") if not k.startswith("tag:") else k, "Values": [v]}
               for k, v in filters.items()]
        out = []
        for page in self.client().get_paginator("describe_instances").paginate(Filters=flt):
            for r in page["Reservations"]:
                out.extend(r["Instances"])
        return out


def error_xml(code: str, message: str) -> bytes:
    from xml.sax.saxutils import escape
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}</Code>'
            f'<Message>{escape(message)}</Message></Error></Errors><RequestID>injected</RequestID></Response>'
            ).encode()


SPOT_REASON = (b"<stateReason><code>Server.SpotInstanceTermination</code><message>Server.SpotInstanceTermination: "
               b"Spot instance termination</message></stateReason>")


def spot_reasons(payload: bytes, taken: set[str]) -> bytes:
    """moto's DescribeInstances answer with EC2's spot StateReason on the `taken` instances.

    moto writes an instance's <stateReason> before its <instanceId>: each instance's is the
    last one between the previous instance's id and its own."""
    out, start = [], 0
    for m in re.finditer(rb"<instanceId>(i-[0-9a-f]+)</instanceId>", payload):
        chunk = payload[start:m.start()]
        if m.group(1).decode() in taken:
            reasons = list(re.finditer(rb"<stateReason>.*?</stateReason>", chunk, re.S))
            if reasons:
                r = reasons[-1]
                chunk = chunk[:r.start()] + SPOT_REASON + chunk[r.end():]
        out.append(chunk + m.group(0))
        start = m.end()
    return b"".join(out) + payload[start:]


def _handler(ep: Ec2Endpoint):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
            if ep.down:
                self.close_connection = True
                self.connection.close()
                return
            params = urllib.parse.parse_qs(body.decode(errors="replace"))
            action = (params.get("Action") or ["?"])[0]
            fault = ep._fault_for(action, params)
            if fault is None or fault.after_forward:
                try:
                    status, headers, payload = self._forward(body)
                except OSError:       # moto is stopping (the test is over)
                    return self._answer(503, error_xml("ServiceUnavailable", "moto is not running"), "text/xml")
                if fault is None:
                    if action == "DescribeInstances" and ep.spot_taken:
                        payload = spot_reasons(payload, set(ep.spot_taken))
                    return self._answer(status, payload, headers.get("Content-Type", "text/xml"))
            message = fault.message
            if fault.echo:
                message += " " + (params.get(fault.echo) or [""])[0]
            self._answer(STATUS.get(fault.code, 400), error_xml(fault.code, message), "text/xml")

        def _forward(self, body: bytes):
            conn = http.client.HTTPConnection("127.0.0.1", ep.moto_port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
            conn.request("POST", self.path, body=body, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            conn.close()
            return resp.status, dict(resp.getheaders()), payload

        def _answer(self, status: int, payload: bytes, ctype: str):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler
