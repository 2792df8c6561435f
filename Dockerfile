# The appliance: one image that is a whole elastic HTCondor pool.
#   docker build -t appliance .
#   docker run -d --name appliance -p 9618:9618 -p 8080:8080 appliance
FROM debian:trixie-slim

# Everything from Debian trixie: HTCondor 23.9.6 with its Python bindings for
# the system python3, supervisord, gunicorn + Flask for the web page, and the
# libraries of the cloud drivers (boto3 for ec2, openstacksdk for openstack).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      htcondor tini supervisor gunicorn procps \
      python3 python3-flask python3-yaml python3-docker python3-boto3 python3-prometheus-client \
      python3-cryptography python3-openstacksdk \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 # Debian's host-based defaults are replaced by ours (rootfs/etc/condor/config.d)
 && rm -f /etc/condor/config.d/00-htcondor-9.0.config \
 && mkdir -p /etc/appliance/worker \
 && useradd --create-home --shell /bin/bash submit \
 && useradd --system --no-create-home --shell /usr/sbin/nologin appliance

COPY rootfs/ /
COPY config/appliance.yaml /etc/appliance/appliance.yaml
COPY config/ec2-user-data.sh /etc/appliance/ec2-user-data.sh
COPY appliance/ /usr/local/lib/python3.13/dist-packages/appliance/
RUN python3 -m compileall -q /usr/local/lib/python3.13/dist-packages/appliance \
 && python3 -m appliance.config /etc/appliance/appliance.yaml

# 9618: HTCondor (shared port), 8080: admin web page and API, HTTPS only
EXPOSE 9618 8080
# state and secrets (generated at first start), and the job queue
VOLUME ["/var/lib/appliance", "/var/lib/condor/spool"]
STOPSIGNAL SIGTERM
# https://127.0.0.1:8080/healthz without verifying the certificate (its own container); 503 while
# appliance.yaml is invalid, so a broken configuration shows as unhealthy
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python3", "-m", "appliance.web.healthcheck"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/appliance-entrypoint"]
CMD ["appliance"]
