"""Docker's HEALTHCHECK: `python3 -m appliance.web.healthcheck`.

Asks https://127.0.0.1:8080/healthz (or the address APPLIANCE_WEB_BIND names) from inside
the container; exit 0 on 200, else 1 with the reason, which `docker inspect` shows.
The certificate is not verified: the check talks to its own container, and the operator's
certificate need not name 127.0.0.1. /healthz answers 503 while the configuration is
invalid, so a broken appliance is reported unhealthy.
"""
from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

from appliance.bootstrap import WEB_PORT, web_bind

ANY = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def url() -> str:
    address = web_bind()[0]
    host = ANY.get(address, address)
    return f"https://[{host}]:{WEB_PORT}/healthz" if ":" in host else f"https://{host}:{WEB_PORT}/healthz"


def main() -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url(), timeout=4, context=ctx) as r:
            print(r.read(2000).decode(errors="replace"))
        return 0
    except urllib.error.HTTPError as err:
        print(f"{err.code}: {err.read(2000).decode(errors='replace')}")
    except (OSError, ValueError) as err:
        print(f"{url()}: {err}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
