"""Webhook notifications from the real image: an unschedulable job is told to a receiver
inside the container, which fails the first delivery; the retry gets through, the secret
header reaches the receiver and no log of the appliance has it."""
from __future__ import annotations

import json

import pytest

from .conftest import JOB_SCRIPT, job_sub

pytestmark = pytest.mark.timeout(300)

SECRET = "hdr-5ecret-4f1c9a"
URL_SECRET = "path-t0ken-77e2b1"
PORT = 18099
CONFIG = f"""
scheduler: {{interval: 1}}
clouds:
  - {{name: local, type: local, max_workers: 1, worker: {{cpus: 1, memory: 1024}}}}
notifications:
  webhooks:
    - url: http://127.0.0.1:{PORT}/hook/{URL_SECRET}
      events: [unschedulable]
      headers: {{X-Token: {SECRET}}}
      timeout: 5
"""

# answers 500 to the first POST and 200 to the others; writes each (headers, body) as a JSON line
RECEIVER = f"""
import http.server, json
answers = [500]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = answers.pop(0) if answers else 200
        with open("/tmp/received.jsonl", "a") as f:
            f.write(json.dumps({{"path": self.path, "headers": dict(self.headers), "body": body,
                                "answered": status}}) + "\\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.1", {PORT}), H)
open("/tmp/receiver.ready", "w").close()
server.serve_forever()
"""


def received(app) -> list[dict]:
    out = app.sh("cat /tmp/received.jsonl 2>/dev/null || true")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_an_unschedulable_job_is_told_to_the_webhook_after_one_failed_attempt(start_appliance):
    app = start_appliance(CONFIG)
    app.sh(f"cat > /tmp/receiver.py <<'EOF'\n{RECEIVER}\nEOF")
    app.c.exec_run(["python3", "/tmp/receiver.py"], detach=True)
    app.wait("the receiver to listen", lambda: app.rc("test -e /tmp/receiver.ready")[0] == 0, timeout=30,
             every=0.2)

    app.submit(job_sub(2, extra="request_memory = 64000"), {"job.sh": JOB_SCRIPT})
    app.wait("the notification to be delivered on its retry", lambda: "delivered (attempt 2)" in app.logs(),
             timeout=60, every=0.5)

    first, second = received(app)
    assert (first["answered"], second["answered"]) == (500, 200)
    assert first["body"] == second["body"] and first["path"] == f"/hook/{URL_SECRET}"
    body = second["body"]
    assert body["schema"] == 1 and body["event"] == "unschedulable" and body["kind"] == "demand"
    assert body["appliance"] == "appliance" and body["cloud"] is None and body["worker"] is None
    assert body["reason"].startswith("unschedulable: 2 idle job(s): no configured cloud can run it")
    assert body["text"].startswith("[appliance] jobs unschedulable: unschedulable: 2 idle job(s)")
    assert isinstance(body["id"], int) and body["time"].endswith("Z")
    assert second["headers"]["X-Token"] == SECRET
    assert second["headers"]["Content-Type"] == "application/json"
    # the event is the store's: the same id, once, while the job stays unschedulable
    app.wait_cycles(3)
    (event,) = [e for e in app.events() if e["kind"] == "demand"]
    assert event["id"] == body["id"] and event["reason"] == body["reason"]
    assert len(received(app)) == 2

    # the secrets went to the receiver only: not in the container's log, its log files, the events
    logs = app.logs()
    assert "notify: webhook 127.0.0.1:18099: event" in logs and "attempt 1 of 5 failed (HTTP 500)" in logs
    files = app.sh(f"grep -rlF -e {SECRET} -e {URL_SECRET} /var/log /var/lib/appliance /run/appliance || true")
    assert SECRET not in logs and URL_SECRET not in logs
    assert files.strip() == "", files
    status = app.sh("cloud_status --json -e -n 1000; cloud_status")
    assert SECRET not in status and URL_SECRET not in status
