"""First-start set-up of the central role, run by the entrypoint before supervisord.

Creates what must exist before any daemon starts, idempotently:
- the state directories on the /var/lib/appliance volume;
- the pool signing key (HTCondor's POOL key) and this install's pool id;
- the admin password, unless APPLIANCE_ADMIN_PASSWORD is given (the log says where
  it is kept and how to read it, at every start, never the password itself);
- HTCondor settings derived from appliance.yaml (trust domain, addresses);
- the web page's TLS certificate and key: the operator's, or a self-signed pair
  made at first start and kept in the state volume (see setup_tls).

Nothing secret is ever baked into the image: it is all made here, at first start.
A broken appliance.yaml never stops it: the scheduler reports the error and waits.
"""
from __future__ import annotations

import base64
import datetime
import grp
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import socket
import ssl
import sys

from . import federation, users
from .config import DEFAULT_CONDOR_PORT, HOST_RE, ConfigError, load, split_host_port

STATE = os.environ.get("APPLIANCE_STATE_DIR", "/var/lib/appliance")
CONDOR_GENERATED = "/etc/condor/config.d/60-appliance-generated.conf"
SPOOL = "/var/lib/condor/spool"
CONDOR_LOG = "/var/log/condor"


def _ids(user: str, group: str | None = None) -> tuple[int, int]:
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group or user).gr_gid
    except KeyError:
        return -1, -1
    return uid, gid


def _dir(path: str, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)


def share_state_db(state_dir: str, owner: tuple[int, int]) -> None:
    """The state DB's files belong to root and the appliance group, mode 0660, whoever made them.

    A `docker exec ... cloud_status` at the very start can run before this bootstrap: its
    Store then made the directory and the files as root:root, and the web app (group
    appliance) could never open them, even after the directory was given its group."""
    for name in ("appliance.db", "appliance.db-wal", "appliance.db-shm"):
        path = os.path.join(state_dir, name)
        try:
            os.chown(path, *owner)
            os.chmod(path, 0o660)
        except FileNotFoundError:
            pass


def _secret_file(path: str, content: str, mode: int = 0o600, owner: tuple[int, int] = (0, 0)) -> bool:
    """Write a secret once; never overwrite. Returns True if it was created now."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        os.chmod(path, mode)
        os.chown(path, *owner)
        return False
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chown(path, *owner)
    return True


def _advertised_address(cfg) -> list[str]:
    """With a swarm cloud, HTCondor must advertise the overlay network's address.

    A container on an overlay network has a second interface (docker_gwbridge);
    workers on other nodes can only dial back the overlay address, so it is
    chosen here, before the daemons start, instead of left to interface order.
    """
    swarm = [c for c in cfg.clouds if c.type == "swarm"]
    if not swarm:
        return []
    try:
        from .clouds import dockerutil
        from .clouds.swarm import overlay_placement
        network, ip = overlay_placement(dockerutil.client(swarm[0].opt("url")), swarm[0].opt("network"))
    except Exception as err:   # the cloud reports it too, with backoff; the pool still starts
        print(f"appliance: cloud {swarm[0].name}: {err}", file=sys.stderr, flush=True)
        return []
    print(f"appliance: advertising {ip}, the address on swarm network {network}", flush=True)
    return [f"# the address swarm workers reach us at (network {network})", f"NETWORK_INTERFACE = {ip}"]


def _ipv4(host: str) -> str | None:
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (OSError, IndexError):
        return None


def remote_access(cfg, pool_id: str, resolve=_ipv4) -> list[str]:
    """HTCondor settings for clients outside the container, when pool.condor_host is set.

    Every daemon a client talks to (collector, schedd, negotiator, and the shadows that
    workers call back) advertises pool.condor_host instead of the container's own address,
    which nobody outside can reach. The daemons here still reach each other on loopback,
    through a private network that is this appliance's alone. HTCondor advertises the port
    it listens on, so with a port other than 9618 the shared port listens on that one too.
    """
    address = cfg.pool.public_address
    if not address:
        return []
    host, port = address
    name = users.schedd_name(cfg.pool)
    lines = [f"# pool.condor_host is {cfg.pool.condor_host}: what clients outside this container reach us at",
             "# a schedd name clients use as it is (it holds an '@'): condor_submit -remote, condor_q -name",
             f"SCHEDD_NAME = {name}"]
    ip = resolve(host)
    if ip is None:
        print(f"appliance: pool.condor_host: {host} does not resolve to an IPv4 address inside the container; "
              f"HTCondor advertises the container's own address, which clients outside cannot reach",
              file=sys.stderr, flush=True)
        return lines + [f"# {host} did not resolve to an IPv4 address here: the container's own address is advertised"]
    lines += [
        f"# every daemon advertises {ip}" + (f" ({host}, resolved at start)" if ip != host else ""),
        f"TCP_FORWARDING_HOST = {ip}",
        "# the daemons in this container reach each other on loopback: a private network of this appliance's own",
        f"PRIVATE_NETWORK_NAME = appliance-{pool_id}",
        "PRIVATE_NETWORK_INTERFACE = 127.0.0.1",
    ]
    if port != DEFAULT_CONDOR_PORT:
        lines += [
            f"# clients are told port {port}, the port the shared port listens on; a second one listens on",
            f"# {DEFAULT_CONDOR_PORT}, for `-p {port}:{DEFAULT_CONDOR_PORT}` and for what uses {DEFAULT_CONDOR_PORT} inside",
            f"SHARED_PORT_PORT = {port}",
            "# (in front of the collector, the shared port listens on the collector's port)",
            f"COLLECTOR_HOST = $(CONDOR_HOST):{port}",
            "DAEMON_LIST = $(DAEMON_LIST), SHARED_PORT_9618",
            "DC_DAEMON_LIST = + SHARED_PORT_9618",
            "SHARED_PORT_9618 = $(SHARED_PORT)",
            f"SHARED_PORT_9618_ARGS = -p {DEFAULT_CONDOR_PORT} -local-name SHARED_PORT_9618",
            "SHARED_PORT_9618.SHARED_PORT_DAEMON_AD_FILE = $(LOCK)/shared_port_9618_ad",
            "SHARED_PORT_9618.SHARED_PORT_LOG = $(LOG)/SharedPort9618Log",
        ]
    print(f"appliance: HTCondor advertises {ip}:{port} (pool.condor_host) and the schedd is named {name}; "
          f"publish the port with -p {port}:{DEFAULT_CONDOR_PORT}", flush=True)
    return lines


# ------------------------------------------------------------------ the web page's TLS
#
# gunicorn serves the page and the API on 8080 over TLS only (appliance/web/gunicorn_conf.py).
# Its certificate and key are, in this order:
#   1. the operator's: APPLIANCE_TLS_CERT and APPLIANCE_TLS_KEY, or else the files mounted at
#      /etc/appliance/tls/tls.crt and tls.key (PEM; the certificate file may hold the chain);
#   2. a self-signed pair made at first start into the state volume (/var/lib/appliance/tls),
#      kept across restarts (its fingerprint stays the same) and renewed only near its expiry.
# Either pair is copied at every start to /run/appliance/web, where the key belongs to the
# user gunicorn runs as (appliance, mode 0600): the operator's key may be root's only.
# If the operator's pair cannot be used, the page is served with the self-signed pair and
# the problem is written next to it, so /healthz answers 503 and the page shows it.
#
# The pair is made with python3-cryptography (Debian trixie's; Debian's HTCondor package and
# python3-urllib3 depend on it, so the Dockerfile gets it without naming it) rather than the
# openssl CLI (also in the image, pulled in by ca-certificates; handy to inspect the pair): the
# certificate's fields (a leaf, not a CA; subjectAltName with DNS names and IP addresses
# apart; serverAuth) are set exactly, the key is created with mode 0600 before a byte is
# written, and nothing is parsed from a command's output.

WEB_PORT = 8080
OPERATOR_CERT = "/etc/appliance/tls/tls.crt"
OPERATOR_KEY = "/etc/appliance/tls/tls.key"
WEB_RUN = "/run/appliance/web"       # what gunicorn serves: tls.crt, tls.key, and `problems`
CERT_DAYS = 825        # the longest validity Apple's TLS clients accept, even for a certificate one trusts by hand
RENEW_DAYS = 30        # a generated certificate this close to its end is replaced at start


def web_bind() -> tuple[str, str | None]:
    """The address gunicorn listens on, from APPLIANCE_WEB_BIND (default 0.0.0.0, every
    address; 127.0.0.1 for an SSH tunnel), and the problem if the value is no IP address.
    A bad value binds 127.0.0.1 only: a typo must never expose the page more than asked."""
    raw = os.environ.get("APPLIANCE_WEB_BIND", "").strip() or "0.0.0.0"
    try:
        return str(ipaddress.ip_address(raw.strip("[]"))), None
    except ValueError:
        return "127.0.0.1", (f"APPLIANCE_WEB_BIND must be an IP address such as 0.0.0.0 or 127.0.0.1, "
                             f"got {raw[:60]!r}: listening on 127.0.0.1 only")


def gunicorn_bind(address: str) -> str:
    return f"[{address}]:{WEB_PORT}" if ":" in address else f"{address}:{WEB_PORT}"


def fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate (DER), as browsers and `openssl x509 -fingerprint -sha256` show it."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _condor_host(cfg) -> str | None:
    """pool.condor_host, for the certificate's names: from the loaded configuration, or, when
    the file is invalid elsewhere, read from the raw YAML if it is a plain host name or address."""
    if cfg is not None:
        host = cfg.pool.condor_host
    else:
        try:
            import yaml
            with open(os.environ.get("APPLIANCE_CONFIG") or "/etc/appliance/appliance.yaml", encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            host = raw.get("pool", {}).get("condor_host") if isinstance(raw, dict) else None
        except Exception:
            return None
    if isinstance(host, str) and host != "auto" and HOST_RE.match(host := split_host_port(host)[0]):
        return host
    return None


def _names(condor_host: str | None) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    for extra in (socket.gethostname(), condor_host):
        if extra and extra not in names and HOST_RE.match(extra):
            names.append(extra)
    return names


def _pair_problem(cert: str, key: str) -> str | None:
    """None if the pair loads as a TLS server's (the key matches, it is not encrypted), else why not."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # an encrypted key would make OpenSSL ask a terminal for its passphrase: answer empty, so it fails
        ctx.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:          # e.g. KEY_VALUES_MISMATCH: the key is not the certificate's
        return (err.reason or str(err)).replace("_", " ").lower()
    except (OSError, ValueError) as err:
        return getattr(err, "strerror", None) or str(err)
    return None


def _first_der(pem: bytes) -> bytes:
    """The first certificate of a PEM file (the server's own, before its chain), as DER."""
    m = re.search(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
    if not m:
        raise ValueError("no PEM certificate in it")
    return base64.b64decode(b"".join(m.group(1).split()))


def _cert_info(pem: bytes):
    """The first certificate, parsed; None if this (strict) parser refuses what OpenSSL took."""
    from cryptography import x509
    try:
        return x509.load_der_x509_certificate(_first_der(pem))
    except ValueError:
        return None


def _cert_names(cert) -> list[str]:
    from cryptography import x509
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]


def _write(path: str, data: bytes, mode: int, owner: tuple[int, int] = (0, 0)) -> None:
    """Replace a file atomically; it has its mode and owner before the first byte is written."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        os.fchown(fd, *owner)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate_self_signed(cert_path: str, key_path: str, names: list[str], now: datetime.datetime | None = None) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "appliance (self-signed)"),
                         x509.NameAttribute(NameOID.COMMON_NAME, names[-1][:64])])
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))        # a client's clock a little behind
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            # a leaf, not a CA: browsers refuse a CA certificate as a server's
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _self_signed(state: str, names: list[str], now: datetime.datetime) -> tuple[str, str, str]:
    """The generated pair's paths, made now if missing, unusable or near its end; and what was done."""
    directory = os.path.join(state, "tls")
    _dir(directory, 0o700)
    cert, key = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    why = None
    if not (os.path.exists(cert) and os.path.exists(key)):
        why = "generated at first start"
    elif problem := _pair_problem(cert, key):
        why = f"generated anew: the kept one was unusable ({problem})"
    else:
        with open(cert, "rb") as f:
            info = _cert_info(f.read())
        if info is None:
            why = "generated anew: the kept one could not be parsed"
        elif info.not_valid_after_utc - now < datetime.timedelta(days=RENEW_DAYS):
            why = f"generated anew: the kept one expires {info.not_valid_after_utc:%Y-%m-%d}"
    if why:
        generate_self_signed(cert, key, names, now)
        return cert, key, why
    os.chmod(key, 0o600)
    return cert, key, "kept from an earlier start"


def _operator_pair() -> tuple[str | None, str | None, str | None]:
    """The operator's (cert, key), or (None, None, problem or None) when there is none to use."""
    env_cert, env_key = os.environ.get("APPLIANCE_TLS_CERT", ""), os.environ.get("APPLIANCE_TLS_KEY", "")
    cert, key = env_cert or OPERATOR_CERT, env_key or OPERATOR_KEY
    have_cert, have_key = os.path.isfile(cert), os.path.isfile(key)
    if not (env_cert or env_key) and not have_cert and not have_key:
        return None, None, None                  # nothing mounted, nothing asked: the self-signed pair
    missing = [f"{what} {path}" + (f" (from {var})" if given else "")
               for what, path, present, var, given in (("certificate", cert, have_cert, "APPLIANCE_TLS_CERT", env_cert),
                                                       ("key", key, have_key, "APPLIANCE_TLS_KEY", env_key))
               if not present]
    if missing:
        return None, None, f"the TLS {' and '.join(missing)} not found"
    problem = _pair_problem(cert, key)
    if not problem:
        try:
            with open(cert, "rb") as f:
                _first_der(f.read())
        except (OSError, ValueError) as err:
            problem = str(err)
    if problem:
        return None, None, f"the TLS certificate {cert} and key {key} cannot be used: {problem}"
    return cert, key, None


def setup_tls(condor_host: str | None = None, state: str | None = None, run: str | None = None,
              now: datetime.datetime | None = None) -> dict:
    """Choose the web page's pair, copy it where gunicorn reads it, log its fingerprint.
    Returns what was chosen (for the tests)."""
    state, run = state or STATE, run or WEB_RUN
    now = now or datetime.datetime.now(datetime.UTC)
    problems = []
    address, bind_problem = web_bind()
    if bind_problem:
        problems.append(bind_problem)
    cert, key, operator_problem = _operator_pair()
    names = _names(condor_host)
    if cert:
        source = f"the operator's certificate {cert}"
    else:
        if operator_problem:
            problems.append(operator_problem + "; serving the self-signed certificate instead")
        cert, key, what = _self_signed(state, names, now)
        source = f"the self-signed certificate {cert} ({what})"
    with open(cert, "rb") as f:
        pem = f.read()
    with open(key, "rb") as f:
        key_pem = f.read()

    os.makedirs(os.path.dirname(run), mode=0o755, exist_ok=True)
    _dir(run, 0o750, _ids("root", "appliance"))
    _write(os.path.join(run, "tls.crt"), pem, 0o644)
    _write(os.path.join(run, "tls.key"), key_pem, 0o600, _ids("appliance"))
    problems_file = os.path.join(run, "problems")
    if problems:
        _write(problems_file, ("\n".join(problems) + "\n").encode(), 0o644)
    else:
        try:
            os.unlink(problems_file)
        except FileNotFoundError:
            pass

    info = _cert_info(pem)
    names_in = _cert_names(info) if info else []
    print_ = fingerprint(_first_der(pem))
    where = "every address" if address in ("0.0.0.0", "::") else f"{address} only"
    valid = f"valid until {info.not_valid_after_utc:%Y-%m-%d}, for {', '.join(names_in) or 'no names'}" if info else ""
    print(f"appliance: web page on https://<host>:{WEB_PORT} ({where}; plain HTTP is not served), with {source}"
          f"{', ' + valid if valid else ''}", flush=True)
    print(f"appliance: web page certificate SHA-256 fingerprint {print_}", flush=True)
    if info and "self-signed" in source and (missing := [n for n in names if n not in names_in]):
        print(f"appliance: note: the kept self-signed certificate does not name {', '.join(missing)}; delete "
              f"{state}/tls and restart to make one that does (its fingerprint changes)", flush=True)
    if info and not info.not_valid_before_utc <= now <= info.not_valid_after_utc:
        print(f"appliance: web page: warning: the certificate is not valid now (valid from "
              f"{info.not_valid_before_utc:%Y-%m-%d %H:%M} to {info.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
              file=sys.stderr, flush=True)
    for p in problems:
        print(f"appliance: web page: {p}", file=sys.stderr, flush=True)
    return {"cert": cert, "key": key, "source": source, "problems": problems, "fingerprint": print_,
            "names": names_in, "bind": address}


def admin_password(state: str, owner: tuple[int, int] = (0, 0)) -> str:
    """The web page's admin password: APPLIANCE_ADMIN_PASSWORD if set, else the one generated
    at first start into state/admin-password (made now if missing). Returns the line to log,
    at every start: where the password is and how to read it, never the password itself
    (logs are copied to places secrets must not go)."""
    if os.environ.get("APPLIANCE_ADMIN_PASSWORD"):
        return "appliance: web page: user admin, password APPLIANCE_ADMIN_PASSWORD (set for the container)"
    path = f"{state}/admin-password"
    made = _secret_file(path, secrets.token_urlsafe(18) + "\n", 0o640, owner)
    return (f"appliance: web page: user admin, password {'generated now' if made else 'generated at first start'}"
            f" and kept in {path}; read it with `docker exec <container> cat {path}`")


def main() -> int:
    app_group = _ids("root", "appliance")
    condor = _ids("condor")
    _dir(STATE, 0o755)
    _dir(f"{STATE}/state", 0o2770, app_group)
    share_state_db(f"{STATE}/state", app_group)
    _dir(f"{STATE}/keys", 0o700)
    _dir(f"{STATE}/worker-keys", 0o700)
    _dir(f"{STATE}/workers", 0o755)
    _dir(SPOOL, 0o755, condor)
    _dir(CONDOR_LOG, 0o755, condor)

    _secret_file(f"{STATE}/pool-id", secrets.token_hex(6) + "\n", 0o644)
    if _secret_file(f"{STATE}/keys/POOL", secrets.token_hex(48)):
        print("appliance: generated the pool signing key", flush=True)

    print(admin_password(STATE, app_group), flush=True)

    try:
        cfg = load()
        pool, problem = cfg.pool.name, None
    except ConfigError as err:
        cfg, pool, problem = None, "appliance", str(err)
        print(f"appliance: configuration error (the scheduler waits until the file is fixed): {err}",
              file=sys.stderr, flush=True)
    except Exception as err:        # whatever the file holds, the pool and the page still start
        cfg, pool, problem = None, "appliance", f"cannot be read: {type(err).__name__}: {err}"
        print(f"appliance: configuration error: {problem}", file=sys.stderr, flush=True)

    try:
        setup_tls(_condor_host(cfg))
    except Exception as err:        # the pool runs without its page rather than not at all
        print(f"appliance: web page: cannot set up its TLS certificate, the page will not start: "
              f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)

    lines = [
        "# Generated at start from appliance.yaml by appliance.bootstrap. Do not edit.",
        f"UID_DOMAIN = {pool}",
        f"TRUST_DOMAIN = {pool}",
        f"COLLECTOR_NAME = {pool}",
    ]
    if problem:
        lines.append("# configuration error: " + " ".join(problem.split()))     # one comment line, whatever it holds
    else:
        lines += _advertised_address(cfg)
        lines += remote_access(cfg, _read(f"{STATE}/pool-id"))
        lines += federation.condor_lines(cfg)      # federation.flock_to: tokens, FLOCK_TO
    with open(CONDOR_GENERATED, "w") as f:
        f.write("\n".join(lines) + "\n")
    users.restore()          # lab users' accounts, from the state volume (cloud_admin --add-user)
    return 0


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


if __name__ == "__main__":
    sys.exit(main())
