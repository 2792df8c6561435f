"""The web page's TLS set-up in appliance.bootstrap: the self-signed pair made at first start
and kept, the operator's pair, the copies gunicorn reads, the bind address; and that a
client trusting the generated certificate (curl --cacert) really verifies it."""
from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance import bootstrap

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def tls(tmp_path, monkeypatch):
    """setup_tls against temporary directories, with no operator files and no env."""
    for var in ("APPLIANCE_TLS_CERT", "APPLIANCE_TLS_KEY", "APPLIANCE_WEB_BIND"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(bootstrap, "OPERATOR_CERT", str(tmp_path / "etc-tls" / "tls.crt"))
    monkeypatch.setattr(bootstrap, "OPERATOR_KEY", str(tmp_path / "etc-tls" / "tls.key"))
    state, run = tmp_path / "state", tmp_path / "run" / "web"
    state.mkdir()

    def setup(condor_host=None, now=NOW):
        return bootstrap.setup_tls(condor_host, state=str(state), run=str(run), now=now)
    setup.state, setup.run = state, run
    return setup


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(open(path, "rb").read())


def operator_pair(directory, cn="ops.example.org", key=None):
    """A certificate as an operator would mount it (made here, as its own CA would)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "tls.key").chmod(0o600)
    return directory / "tls.crt", directory / "tls.key"


def served_fingerprint(cert: str, key: str, cafile: str, server_hostname: str) -> str:
    """Serve the pair on loopback and connect as a verifying client (cafile, hostname checked):
    the SHA-256 of the certificate the client saw."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError):
            pass
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            der = s.getpeercert(binary_form=True)
            s.sendall(b"x")
    finally:
        t.join(5)
        listener.close()
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def test_first_start_makes_a_self_signed_pair_and_copies_it_for_gunicorn(tls, capsys):
    got = tls(condor_host="cm.example.org")
    cert, key = tls.state / "tls" / "tls.crt", tls.state / "tls" / "tls.key"
    assert got["cert"] == str(cert) and "generated at first start" in got["source"] and got["problems"] == []
    assert mode(key) == 0o600 and mode(cert) == 0o644 and mode(tls.state / "tls") == 0o700
    # the copies gunicorn reads: key 0600 (owned by the user gunicorn runs as, in the image)
    assert mode(tls.run / "tls.key") == 0o600 and mode(tls.run / "tls.crt") == 0o644 and mode(tls.run) == 0o750
    assert (tls.run / "tls.crt").read_bytes() == cert.read_bytes()
    assert (tls.run / "tls.key").read_bytes() == key.read_bytes()
    assert not (tls.run / "problems").exists()

    c = load(cert)
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", socket.gethostname(), "cm.example.org"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False   # a leaf: browsers refuse a CA
    assert 800 <= (c.not_valid_after_utc - NOW).days <= bootstrap.CERT_DAYS
    fp = ":".join(f"{b:02X}" for b in c.fingerprint(hashes.SHA256()))
    assert got["fingerprint"] == fp
    out = capsys.readouterr().out
    assert f"web page certificate SHA-256 fingerprint {fp}" in out
    assert "BEGIN" not in out                      # the key never reaches the log


def test_a_client_that_trusts_the_certificate_verifies_it_by_name_and_address(tls):
    """What `curl --cacert tls.crt https://localhost:8080` does: chain and name are checked."""
    fp = tls()["fingerprint"]
    cert, key = str(tls.run / "tls.crt"), str(tls.run / "tls.key")
    assert served_fingerprint(cert, key, cafile=cert, server_hostname="localhost") == fp
    assert served_fingerprint(cert, key, cafile=cert, server_hostname="127.0.0.1") == fp
    with pytest.raises(ssl.SSLCertVerificationError):
        served_fingerprint(cert, key, cafile=cert, server_hostname="not-in-the-cert.example")


def test_the_pair_is_kept_across_restarts_and_renewed_near_its_end(tls, capsys):
    first = tls()["fingerprint"]
    again = tls()
    assert again["fingerprint"] == first and "kept from an earlier start" in again["source"]
    assert capsys.readouterr().out.count(first) == 2           # logged at every start
    # a month before its end, a start makes a new one
    later = tls(now=NOW + datetime.timedelta(days=bootstrap.CERT_DAYS - 10))
    assert later["fingerprint"] != first and "expires" in later["source"]


def test_a_damaged_pair_is_replaced(tls):
    first = tls()["fingerprint"]
    (tls.state / "tls" / "tls.key").write_text("garbage")
    again = tls()
    assert again["fingerprint"] != first and "unusable" in again["source"] and again["problems"] == []


def test_a_kept_certificate_that_misses_a_name_is_kept_with_a_note(tls, capsys):
    first = tls()["fingerprint"]
    assert tls(condor_host="new-cm.example.org")["fingerprint"] == first
    assert "does not name new-cm.example.org" in capsys.readouterr().out


def test_the_operators_pair_at_the_documented_path_is_used(tls, tmp_path, capsys):
    cert, key = operator_pair(tmp_path / "etc-tls")
    got = tls()
    assert got["cert"] == str(cert) and "operator" in got["source"] and got["problems"] == []
    assert got["names"] == ["ops.example.org"]
    assert (tls.run / "tls.crt").read_bytes() == cert.read_bytes() and mode(tls.run / "tls.key") == 0o600
    assert not (tls.state / "tls").exists()          # nothing self-signed is made
    assert got["fingerprint"] in capsys.readouterr().out


def test_the_operators_pair_named_by_env(tls, tmp_path, monkeypatch):
    cert, key = operator_pair(tmp_path / "elsewhere", cn="env.example.org")
    monkeypatch.setenv("APPLIANCE_TLS_CERT", str(cert))
    monkeypatch.setenv("APPLIANCE_TLS_KEY", str(key))
    got = tls()
    assert got["cert"] == str(cert) and got["names"] == ["env.example.org"]
    assert (tls.run / "tls.key").read_bytes() == key.read_bytes()


@pytest.mark.parametrize("damage, message", [
    ("mismatch", "cannot be used: key values mismatch"),
    ("no-key", "key {key} not found"),
    ("garbage-cert", "cannot be used"),
    ("env-missing", "certificate /nowhere/tls.crt (from APPLIANCE_TLS_CERT)"),
])
def test_an_unusable_operator_pair_falls_back_to_the_self_signed_one_and_says_why(tls, tmp_path, monkeypatch,
                                                                                 damage, message, capsys):
    cert, key = operator_pair(tmp_path / "etc-tls")
    if damage == "mismatch":
        operator_pair(tmp_path / "other")
        key.write_bytes((tmp_path / "other" / "tls.key").read_bytes())
    elif damage == "no-key":
        key.unlink()
    elif damage == "garbage-cert":
        cert.write_text("not a certificate\n")
    else:
        monkeypatch.setenv("APPLIANCE_TLS_CERT", "/nowhere/tls.crt")
    got = tls()
    assert "self-signed" in got["source"] and len(got["problems"]) == 1
    assert message.format(key=key) in got["problems"][0], got["problems"]
    assert "serving the self-signed certificate instead" in got["problems"][0]
    # written for the web app (/healthz answers 503 with it) and logged
    assert (tls.run / "problems").read_text().strip() == got["problems"][0]
    assert got["problems"][0] in capsys.readouterr().err
    # fixed: the next start uses it and the problem is gone
    monkeypatch.delenv("APPLIANCE_TLS_CERT", raising=False)
    operator_pair(tmp_path / "etc-tls")
    assert "operator" in tls()["source"] and not (tls.run / "problems").exists()


@pytest.mark.parametrize("value, address, gunicorn, problem", [
    (None, "0.0.0.0", "0.0.0.0:8080", False),
    ("127.0.0.1", "127.0.0.1", "127.0.0.1:8080", False),
    (" 10.1.2.3 ", "10.1.2.3", "10.1.2.3:8080", False),
    ("::", "::", "[::]:8080", False),
    ("[::1]", "::1", "[::1]:8080", False),
    ("localhost", "127.0.0.1", "127.0.0.1:8080", True),
    ("0.0.0.0:8443", "127.0.0.1", "127.0.0.1:8080", True),
])
def test_the_bind_address(monkeypatch, value, address, gunicorn, problem):
    if value is None:
        monkeypatch.delenv("APPLIANCE_WEB_BIND", raising=False)
    else:
        monkeypatch.setenv("APPLIANCE_WEB_BIND", value)
    got, why = bootstrap.web_bind()
    assert got == address and bootstrap.gunicorn_bind(got) == gunicorn
    assert bool(why) is problem
    if problem:
        assert "listening on 127.0.0.1 only" in why


def test_a_bad_bind_address_is_a_problem_for_the_web_app(tls, monkeypatch):
    monkeypatch.setenv("APPLIANCE_WEB_BIND", "everywhere")
    got = tls()
    assert got["bind"] == "127.0.0.1" and "APPLIANCE_WEB_BIND" in (tls.run / "problems").read_text()


def test_the_healthcheck_asks_the_bound_address(monkeypatch):
    from appliance.web import healthcheck
    monkeypatch.delenv("APPLIANCE_WEB_BIND", raising=False)
    assert healthcheck.url() == "https://127.0.0.1:8080/healthz"
    monkeypatch.setenv("APPLIANCE_WEB_BIND", "::")
    assert healthcheck.url() == "https://[::1]:8080/healthz"
    monkeypatch.setenv("APPLIANCE_WEB_BIND", "10.1.2.3")
    assert healthcheck.url() == "https://10.1.2.3:8080/healthz"


def test_the_gunicorn_settings(monkeypatch):
    import importlib
    monkeypatch.setenv("APPLIANCE_WEB_BIND", "127.0.0.1")
    import appliance.web.gunicorn_conf as conf
    conf = importlib.reload(conf)
    assert conf.bind == ["127.0.0.1:8080"]
    assert (conf.certfile, conf.keyfile) == ("/run/appliance/web/tls.crt", "/run/appliance/web/tls.key")


@pytest.mark.parametrize("text, host", [
    ("pool: {condor_host: cm.example.org}\nclouds: [{name: x, type: nope}]\n", "cm.example.org"),
    ("pool: {condor_host: 192.0.2.7}\nscheduler: {interval: -1}\n", "192.0.2.7"),
    ("pool: {condor_host: auto}\nclouds: 7\n", None),
    ("pool: {condor_host: 'bad host; rm -rf'}\n", None),
    ("pool: [1, 2]\n", None),
    ("{{{ not yaml", None),
    ("- a list\n", None),
])
def test_condor_host_is_read_from_a_broken_config_when_it_can_be(tmp_path, monkeypatch, text, host):
    f = tmp_path / "appliance.yaml"
    f.write_text(text)
    monkeypatch.setenv("APPLIANCE_CONFIG", str(f))
    assert bootstrap._condor_host(None) == host


def test_bootstrap_with_a_broken_config_still_makes_the_certificate(tmp_path, monkeypatch, capsys):
    f = tmp_path / "appliance.yaml"
    f.write_text("pool: {condor_host: cm.example.org}\nclouds:\n  - {name: local, type: local, max_workers: many}\n")
    monkeypatch.setenv("APPLIANCE_CONFIG", str(f))
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "x")
    for var in ("APPLIANCE_TLS_CERT", "APPLIANCE_TLS_KEY", "APPLIANCE_WEB_BIND"):
        monkeypatch.delenv(var, raising=False)
    for attr, sub in (("STATE", "state"), ("SPOOL", "spool"), ("CONDOR_LOG", "log"), ("WEB_RUN", "run/web")):
        monkeypatch.setattr(bootstrap, attr, str(tmp_path / sub))
    monkeypatch.setattr(bootstrap, "CONDOR_GENERATED", str(tmp_path / "60-generated.conf"))
    monkeypatch.setattr(bootstrap, "OPERATOR_CERT", str(tmp_path / "none.crt"))
    monkeypatch.setattr(bootstrap, "OPERATOR_KEY", str(tmp_path / "none.key"))
    assert bootstrap.main() == 0
    c = load(tmp_path / "state" / "tls" / "tls.crt")
    names = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "cm.example.org" in names
    assert (tmp_path / "run" / "web" / "tls.key").exists()
    out = capsys.readouterr()
    assert "configuration error" in out.err and "clouds[0].max_workers" in out.err
    assert "fingerprint" in out.out
    conf = (tmp_path / "60-generated.conf").read_text()
    assert conf.count("\n") == 5 and "# configuration error:" in conf
