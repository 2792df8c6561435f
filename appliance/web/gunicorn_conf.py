"""gunicorn's settings for the web page: HTTPS only, on APPLIANCE_WEB_BIND (default 0.0.0.0) port 8080.

supervisord starts gunicorn with `--config python:appliance.web.gunicorn_conf`. The
certificate and key are the copies bootstrap puts in /run/appliance/web at every start
(the operator's pair, or the self-signed one it made; see appliance/bootstrap.py).
No plain-HTTP listener exists: a plain request to 8080 fails its TLS handshake.
"""
from appliance.bootstrap import WEB_RUN, gunicorn_bind, web_bind

bind = [gunicorn_bind(web_bind()[0])]      # a bad value binds 127.0.0.1 only (bootstrap logs it)
certfile = f"{WEB_RUN}/tls.crt"
keyfile = f"{WEB_RUN}/tls.key"
# Python's default server context: TLS 1.2 or newer, its default ciphers
