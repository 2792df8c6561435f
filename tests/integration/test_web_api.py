"""The JSON API, /metrics and the web app's security, against a running appliance:
HTTPS only (the generated certificate, kept across restarts; an operator's certificate;
the bind option), and a broken configuration reported unhealthy."""
from __future__ import annotations

import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client.parser import text_string_to_metric_families

from . import ops_support
from .ops_support import job

pytestmark = pytest.mark.timeout(300)

GETS = ["/api/clouds", "/api/clouds/local", "/api/workers", "/api/queue", "/api/events", "/api/history", "/metrics"]
WRITES = [("POST", "/api/clouds/local/enable", None), ("POST", "/api/clouds/local/disable", None),
          ("PATCH", "/api/clouds/local", {"max_workers": 1})]


@pytest.fixture(scope="module")
def app(client, image, tmp_path_factory):
    a = ops_support.start(client, image, tmp_path_factory.mktemp("api"), "api")
    yield a
    ops_support.stop(a)


def test_everything_needs_credentials(app):
    for path in GETS:
        status, _, body = app.http("GET", path, auth=None)
        assert status == 401 and body == {"error": "authentication required: log in, or use HTTP Basic as admin"}, path
    for method, path, body in WRITES:
        assert app.http(method, path, body, auth=None)[0] == 401, path
    # wrong credentials (two failures: well under the rate limit for this client)
    assert app.http("GET", "/api/clouds", auth=("admin", "wrong"))[2] == {"error": "wrong credentials"}
    assert app.http("GET", "/api/clouds", auth=("root", app.password))[0] == 401
    assert app.http("GET", "/api/clouds", headers={"Authorization": "Basic !!!"}, auth=None)[0] == 401
    assert app.cloud("local")["enabled"] is True and app.cloud("local")["max_workers"] == 2
    # open: health and the API's description
    assert app.http("GET", "/healthz", auth=None)[0] == 200
    assert app.http("GET", "/api/openapi.json", auth=None)[2]["openapi"].startswith("3.")


def test_reads(app):
    status, _, body = app.http("GET", "/api/clouds")
    assert status == 200 and set(body) == {"scheduler", "data", "config_error"} and body["scheduler"]["running"] is True
    assert body["config_error"] is None
    assert body["data"] == app.status()["data"]              # the same code path as cloud_status --json
    assert app.http("GET", "/api/clouds/burst")[2]["data"]["name"] == "burst"
    assert app.http("GET", "/api/workers")[2]["data"] == []
    assert app.http("GET", "/api/workers?all=true")[0] == 200
    assert set(app.http("GET", "/api/queue")[2]["data"]) == {"updated_at", "idle_jobs", "unschedulable_jobs", "groups"}
    events = app.http("GET", "/api/events")[2]["data"]
    app.http("POST", "/api/clouds/burst/disable")
    newer = app.http("GET", f"/api/events?since={events[-1]['id'] if events else 0}")[2]["data"]
    assert [e["reason"] for e in newer] == ["disabled by web API"]
    assert len(app.http("GET", "/api/events?limit=1")[2]["data"]) == 1


def test_enable_disable_and_max_workers_show_in_cloud_status(app):
    status, _, body = app.http("POST", "/api/clouds/burst/enable")
    assert status == 200 and body["data"]["enabled"] is True
    assert app.cloud("burst")["enabled"] is True
    assert app.http("POST", "/api/clouds/burst/disable")[2]["data"]["enabled"] is False
    assert app.cloud("burst")["enabled"] is False
    rc, out = app.rc("cloud_status")
    assert "burst  local  no" in out
    status, _, body = app.http("PATCH", "/api/clouds/burst", {"max_workers": 4})
    assert status == 200 and body["data"]["max_workers"] == 4 and app.cloud("burst")["max_workers"] == 4
    status, _, body = app.http("PATCH", "/api/clouds/burst", {"enabled": True, "max_workers": 1})
    assert status == 200 and (body["data"]["enabled"], body["data"]["max_workers"]) == (True, 1)
    app.http("POST", "/api/clouds/burst/disable")


@pytest.mark.parametrize("body, raw, message", [
    (None, b"not json", "the body must be a JSON object"),
    ([1], None, "the body must be a JSON object"),
    ({}, None, "the body must be a JSON object"),
    ({"max_workers": "3"}, None, "max_workers must be a whole number from 0 to 100000, got '3'"),
    ({"max_workers": -1}, None, "max_workers must be a whole number from 0 to 100000, got -1"),
    ({"max_workers": 1.5}, None, "max_workers must be a whole number"),
    ({"max_workers": True}, None, "max_workers must be a whole number"),
    ({"max_workers": 10 ** 9}, None, "max_workers must be a whole number from 0 to 100000"),
    ({"enabled": "no"}, None, "enabled must be true or false"),
    ({"max_workers": 1, "colour": "red"}, None, "unknown field(s): colour"),
])
def test_bad_bodies_are_400(app, body, raw, message):
    status, _, answer = app.http("PATCH", "/api/clouds/burst", body, raw=raw,
                                 headers={"Content-Type": "application/json"})
    assert status == 400 and message in answer["error"], answer
    assert app.cloud("burst")["max_workers"] == 1


def test_bad_parameters_are_400_and_unknown_things_404(app):
    for q in ("since=-1", "since=abc", "limit=0", "limit=5000", "since=99999999999999999999"):
        status, _, body = app.http("GET", f"/api/events?{q}")
        assert status == 400 and "must be a whole number" in body["error"], q
    assert app.http("GET", "/api/workers?all=maybe")[0] == 400
    for method, path, body in [("GET", "/api/clouds/nope", None), ("POST", "/api/clouds/nope/enable", None),
                               ("POST", "/api/clouds/nope/disable", None), ("PATCH", "/api/clouds/nope", {"max_workers": 1})]:
        status, _, answer = app.http(method, path, body)
        assert status == 404 and answer == {"error": "no cloud named nope (known: local, burst)"}, path
    status, _, answer = app.http("GET", "/api/nothing")
    assert status == 404 and "error" in answer
    assert app.http("DELETE", "/api/clouds")[0] == 405


def test_secure_headers_and_cookie(app):
    for path in ("/login", "/api/clouds", "/healthz"):
        _, h, _ = app.http("GET", path)
        csp = h["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert h["X-Frame-Options"] == "DENY" and h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
    _, h, page = app.http("GET", "/login", auth=None)
    cookie = h["Set-Cookie"]
    assert cookie.startswith("appliance_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "; Secure" in cookie
    assert "<script" not in page and "style=" not in page and "http" not in page.split("<body", 1)[1]


def test_login_attempts_are_rate_limited_per_client(app):
    """From inside the container (client 127.0.0.1), so the host's own requests are not locked out."""
    probe = f"""
import base64, json, ssl, urllib.request, urllib.error
ctx = ssl._create_unverified_context()
def call(pw):
    req = urllib.request.Request("https://127.0.0.1:8080/api/clouds", headers={{
        "Authorization": "Basic " + base64.b64encode(("admin:" + pw).encode()).decode()}})
    try:
        with urllib.request.urlopen(req, context=ctx) as r: return r.status, ""
    except urllib.error.HTTPError as e: return e.code, e.headers.get("Retry-After", "")
print(json.dumps([call("wrong-%d" % i) for i in range(5)] + [call("wrong-6"), call({app.password!r})]))
"""
    out = app.sh(f"python3 - <<'EOF'\n{probe}\nEOF")
    results = json.loads(out)
    assert [s for s, _ in results[:5]] == [401] * 5
    assert results[5][0] == 429 and 1 <= int(results[5][1]) <= 61
    assert results[6][0] == 429        # locked: even the right password waits
    assert app.http("GET", "/api/clouds")[0] == 200       # another client is not affected
    # the login form shares the limit
    form = app.sh("python3 -c \"import ssl, urllib.request as u; print(u.urlopen('https://127.0.0.1:8080/login', "
                  "context=ssl._create_unverified_context()).status)\"")
    assert form.strip() == "200"


def test_no_secret_in_outputs_or_logs(app):
    seen = [json.dumps(app.http("GET", p)[2]) for p in GETS + ["/api/openapi.json", "/healthz", "/login"]]
    seen += [app.sh(c) for c in ("cloud_status", "cloud_status -m -a", "cloud_status -e -n 500", "cloud_status -q",
                                 "cloud_status --json", "cloud_status -e -n 500 --json")]
    seen.append(app.logs())
    pool_key = app.sh("cat /var/lib/appliance/keys/POOL").strip()
    session_key = app.sh("base64 -w0 /var/lib/appliance/state/web-session-key").strip()
    tls_key = [line for line in app.sh("cat /var/lib/appliance/tls/tls.key").splitlines() if "-----" not in line]
    assert tls_key
    for text in seen:
        assert app.password not in text
        assert pool_key not in text and session_key not in text
        assert not any(line in text for line in tls_key)
        assert "eyJ" not in text           # no JWT (IDTOKEN) anywhere


def metrics(app) -> dict[str, dict[tuple, float]]:
    status, h, text = app.http("GET", "/metrics")
    assert status == 200 and h["Content-Type"].startswith("text/plain") and "version=" in h["Content-Type"]
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_metrics_parse_and_count_launches_and_retirements(app):
    before = metrics(app)
    for name in ("appliance_workers", "appliance_idle_jobs", "appliance_worker_launches_total",
                 "appliance_worker_failures_total", "appliance_worker_retirements_total",
                 "appliance_scheduler_cycle_seconds_bucket", "appliance_scheduler_cycle_seconds_count",
                 "appliance_cloud_backoff", "appliance_cloud_enabled", "appliance_scheduler_up",
                 "appliance_scheduler_last_cycle_seconds"):
        assert name in before, name
    assert {dict(k)["phase"] for k in before["appliance_scheduler_last_cycle_phase_seconds"]} == {
        "observe_demand", "observe_supply", "decide", "act", "record"}
    local = (("cloud", "local"),)
    assert before["appliance_worker_launches_total"][local] == 0
    assert before["appliance_scheduler_cycle_seconds_count"][()] > 0
    assert before["appliance_workers"][(("cloud", "local"), ("state", "busy"))] == 0

    app.submit(job(1, 8), directory="/home/submit/metrics")
    app.wait("a launch to be counted",
             lambda: metrics(app)["appliance_worker_launches_total"][local] == 1, timeout=60)
    app.wait("a busy worker", lambda: metrics(app)["appliance_workers"][(("cloud", "local"), ("state", "busy"))] == 1,
             timeout=60)
    app.wait("the retirement to be counted",
             lambda: metrics(app)["appliance_worker_retirements_total"][local] == 1, timeout=90)
    after = metrics(app)
    assert after["appliance_worker_failures_total"][local] == 0
    assert after["appliance_scheduler_cycle_seconds_count"][()] > before["appliance_scheduler_cycle_seconds_count"][()]
    assert after["appliance_workers"][(("cloud", "local"), ("state", "busy"))] == 0


def test_schemathesis_finds_no_server_error(app, tmp_path):
    """Schema-driven fuzz of every operation in /api/openapi.json (positive and negative data)."""
    exe = Path(sys.executable).with_name("schemathesis")
    # a real cloud name in the paths, so the fuzz reaches past the 404 (the other tests cover unknown names)
    (tmp_path / "schemathesis.toml").write_text('[parameters]\n"path.name" = "burst"\n')
    # content-type conformance is not checked: gunicorn itself answers an over-long request line with
    # an HTML 400 before the app sees it
    cmd = [str(exe), "--config-file", str(tmp_path / "schemathesis.toml"), "run", f"{app.url}/api/openapi.json",
           "--url", app.url, "--auth", f"admin:{app.password}",
           "--checks", "not_a_server_error,response_schema_conformance",
           "--max-examples", os.environ.get("APPLIANCE_FUZZ_EXAMPLES", "40"), "--seed", "1",
           "--workers", "1", "--request-timeout", "10", "--phases", "examples,coverage,fuzzing",
           # the self-signed certificate names no container address: not verified here (see test_https_*)
           "--tls-verify", "false"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert app.http("GET", "/healthz", auth=None)[0] == 200


# ------------------------------------------------------------------ HTTPS only

def plain_http(ip: str) -> bytes:
    """Everything a plain-HTTP request to 8080 gets back."""
    data = b""
    with socket.create_connection((ip, 8080), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n")
        try:
            while chunk := s.recv(4096):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def test_plain_http_to_8080_gets_no_answer(app):
    assert app.url.startswith("https://")
    answer = plain_http(app.ip)
    assert not answer.startswith(b"HTTP/"), answer[:200]          # at most a TLS alert, never a page
    conn = http.client.HTTPConnection(app.ip, 8080, timeout=10)
    with pytest.raises((http.client.HTTPException, OSError)):
        conn.request("GET", "/healthz")
        conn.getresponse()
    conn.close()
    assert app.status_of("/healthz") == 200                       # over TLS it does


def test_the_generated_certificate_verifies_and_its_fingerprint_is_logged(app, tmp_path):
    """What an operator does: copy the certificate out, trust it (curl --cacert), compare the fingerprint."""
    cert = tmp_path / "appliance.crt"
    cert.write_text(app.sh("cat /var/lib/appliance/tls/tls.crt"))
    hostname = app.c.attrs["Config"]["Hostname"]
    fp, peer = app.served(server_hostname=hostname, cafile=str(cert))        # chain and name checked
    assert f"appliance: web page certificate SHA-256 fingerprint {fp}" in app.logs()
    assert fp in app.sh("openssl x509 -in /var/lib/appliance/tls/tls.crt -noout -fingerprint -sha256")
    names = {value for _, value in peer["subjectAltName"]}
    assert {"localhost", "127.0.0.1", hostname} <= names, names
    with pytest.raises(ssl.SSLCertVerificationError):
        app.served(server_hostname="not-the-appliance.example", cafile=str(cert))
    # the generated key is root's only; gunicorn (user appliance) reads its own copy
    modes = app.sh("stat -c '%a %U' /var/lib/appliance/tls/tls.key /run/appliance/web/tls.key").split()
    assert modes == ["600", "root", "600", "appliance"]
    assert app.rc("cat /var/lib/appliance/tls/tls.key", user="appliance")[0] != 0


def test_the_generated_certificate_is_kept_across_a_restart_and_a_replacement(client, image, tmp_path, volumes):
    mounts = {volumes["state"]: "/var/lib/appliance"}
    a = ops_support.start(client, image, tmp_path, "keep", mounts=mounts, hostname="apptest-keep", ready=False)
    try:
        first, _ = a.served()
        a.c.restart(timeout=30)
        a.restarted()
        a.wait("the page after docker restart", lambda: a.status_of("/healthz") == 200, timeout=90)
        assert a.served()[0] == first
        assert "kept from an earlier start" in a.logs()
    finally:
        ops_support.stop(a)
    # a new container on the same state volume (compose up after a rebuild)
    b = ops_support.start(client, image, tmp_path, "keep2", mounts=mounts, hostname="apptest-keep", ready=False)
    try:
        assert b.served()[0] == first
        assert f"fingerprint {first}" in b.logs() and "kept from an earlier start" in b.logs()
    finally:
        ops_support.stop(b)


def make_cert(directory: Path, name: str) -> tuple[Path, str]:
    """An operator's certificate and key (key mode 0600, root's on this host: the container's
    appliance user could not read it where it is mounted). Returns (cert path, SHA-256 fingerprint)."""
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "tls.key").chmod(0o600)
    fp = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    return directory / "tls.crt", fp


def test_an_operator_certificate_at_the_documented_path_is_served(client, image, tmp_path):
    cert, fp = make_cert(tmp_path / "tls", "appliance.example.org")
    a = ops_support.start(client, image, tmp_path, "opcert", mounts={str(tmp_path / "tls"): "/etc/appliance/tls:ro"},
                          fast_health=True, ready=False)
    try:
        assert a.served(server_hostname="appliance.example.org", cafile=str(cert))[0] == fp
        logs = a.logs()
        assert "the operator's certificate /etc/appliance/tls/tls.crt" in logs and f"fingerprint {fp}" in logs
        assert a.rc("test -e /var/lib/appliance/tls")[0] != 0              # no self-signed pair was made
        a.wait("Docker to report it healthy", lambda: a.health() == "healthy", timeout=60)
    finally:
        ops_support.stop(a)


def test_the_bind_option_and_a_certificate_named_by_env(client, image, tmp_path):
    """APPLIANCE_WEB_BIND=127.0.0.1: nothing answers on the container's address (an SSH tunnel
    reaches the page); the HEALTHCHECK still does, and the operator's certificate is served."""
    cert, fp = make_cert(tmp_path / "certs", "tunnel.example.org")
    env = {"APPLIANCE_WEB_BIND": "127.0.0.1", "APPLIANCE_TLS_CERT": "/certs/tls.crt",
           "APPLIANCE_TLS_KEY": "/certs/tls.key"}
    a = ops_support.start(client, image, tmp_path, "bind", env=env, mounts={str(tmp_path / "certs"): "/certs:ro"},
                          fast_health=True, ready=False, web=False)
    try:
        a.wait("Docker to report it healthy", lambda: a.health() == "healthy", timeout=90)
        with pytest.raises(OSError):
            socket.create_connection((a.ip, 8080), timeout=5).close()
        inside = a.sh("python3 -c \"import hashlib, ssl; der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate("
                      "('127.0.0.1', 8080))); print(':'.join('%02X' % b for b in hashlib.sha256(der).digest()))\"")
        assert inside.strip() == fp
        assert "(127.0.0.1 only; plain HTTP is not served)" in a.logs()
    finally:
        ops_support.stop(a)


# ------------------------------------------------------------------ a broken configuration is not healthy

BAD_CONFIG = "clouds:\n  - {name: local, type: local, max_workers: 2, worker: {cpus: two}}\n"


def test_a_broken_configuration_is_unhealthy_until_it_is_fixed(client, image, tmp_path):
    a = ops_support.start(client, image, tmp_path, "badcfg", config=BAD_CONFIG, fast_health=True, ready=False,
                          web=False)
    try:
        def healthz_503():
            try:
                status, _, body = a.http("GET", "/healthz", auth=None)
            except OSError:
                return None
            return body if status == 503 and body.get("config_error") else None
        body = a.wait("/healthz to answer 503", healthz_503, timeout=60)
        assert body["status"] == "error" and "clouds[0].worker.cpus: expected a whole number" in body["error"]
        a.wait("Docker to report it unhealthy", lambda: a.health() == "unhealthy", timeout=60)
        status, _, clouds = a.http("GET", "/api/clouds")
        assert status == 503 and "clouds[0].worker.cpus" in clouds["config_error"]
        # fixed in place: the scheduler reads the file again, and the container turns healthy
        a.config_file.write_text(ops_support.CONFIG)
        a.wait("Docker to report it healthy", lambda: a.health() == "healthy", timeout=90)
        status, _, clouds = a.http("GET", "/api/clouds")
        assert status == 200 and clouds["config_error"] is None and len(clouds["data"]) == 2
    finally:
        ops_support.stop(a)
