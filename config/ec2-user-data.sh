#!/bin/bash
# The appliance's boot script for EC2 workers (the instance's user-data).
#
# It makes a fresh Debian instance one worker of the pool: it installs Debian's
# htcondor (or, with the cloud's worker_image set, Docker and the appliance
# image in its worker role), writes the worker's files (its condor config, its
# own token and signing key), starts the worker, and powers the instance off
# when the worker ends. With InstanceInitiatedShutdownBehavior = terminate, a
# power-off terminates the instance, so a worker whose scheduler is gone stops
# billing by itself:
#   - drained by the appliance        -> condor_master exits -> power off
#   - nobody claimed it for too long  -> the startd's NOCLAIM backstop -> power off
#   - running longer than max_lifetime-> stopped, then power off
#   - this script failed              -> power off
#
# A copy can be given per cloud with `user_data: /path/to/file`. The appliance
# fills its placeholders, a name in double braces (values already shell-quoted):
#   worker_id cloud pool condor_host worker_image worker_home max_lifetime
#   noclaim_shutdown, and write_worker_files (code that writes the worker's
#   files under "$WORKER_HOME"). EC2 limits user-data to 16 KB.
#
# Without systemd (a container standing in for an instance in the tests),
# the worker runs in the foreground and "power off" is this script ending.
set -euo pipefail
# everything it says goes to the console (cloud-init keeps it) and to a log file; it never prints a secret
exec > >(tee -a /var/log/appliance-worker.log) 2>&1

WORKER_ID={{ worker_id }}
CLOUD={{ cloud }}
POOL={{ pool }}
CONDOR_HOST={{ condor_host }}
WORKER_IMAGE={{ worker_image }}
WORKER_HOME={{ worker_home }}
MAX_LIFETIME={{ max_lifetime }}

say() { echo "$(date -u +%FT%TZ) appliance worker $WORKER_ID: $*"; }

power_off() {
  say "$1; powering off"
  if [ -d /run/systemd/system ]; then
    systemctl poweroff --no-block || poweroff
  fi
  exit 0
}
trap 'rc=$?; [ "$rc" -eq 0 ] || power_off "the boot script failed (exit $rc)"' EXIT

say "booting (cloud $CLOUD, pool $POOL, central manager $CONDOR_HOST)"
if [ -d /run/systemd/system ]; then
  # a hard stop that needs nothing else to work: lifetime plus 15 minutes
  shutdown -P "+$(( (MAX_LIFETIME + 900) / 60 ))" "appliance worker: maximum lifetime reached" || true
fi

apt_get() {
  for attempt in 1 2 3 4 5; do
    if DEBIAN_FRONTEND=noninteractive apt-get -o Dpkg::Use-Pty=0 "$@"; then return 0; fi
    say "apt-get $1 failed (attempt $attempt), retrying"; sleep $((attempt * 5))
  done
  return 1
}

# Packages must not start services of their own: the worker runs with our config only.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
apt_get update -q
if [ -z "$WORKER_IMAGE" ]; then
  apt_get install -y -q --no-install-recommends htcondor ca-certificates nftables
else
  apt_get install -y -q --no-install-recommends docker.io ca-certificates nftables
fi
rm -f /usr/sbin/policy-rc.d
if [ -d /run/systemd/system ]; then systemctl disable --now condor 2>/dev/null || true; fi

# The worker's files: its condor config, its pool token and its own signing key.
install -d -m 0755 "$WORKER_HOME"
{{ write_worker_files }}
umask 022

# Jobs must not read this script (it holds the worker's token) back from the
# instance metadata service: only root may talk to it. Needs CAP_NET_ADMIN.
if command -v nft >/dev/null; then
  nft -f - <<'EOF' || say "could not restrict the metadata service (no nftables here)"
table inet appliance_worker {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 169.254.169.254 meta skuid != 0 drop
  }
}
EOF
fi

if [ -z "$WORKER_IMAGE" ]; then
  for d in log spool execute lock run; do install -d -m 0755 -o condor -g condor "$WORKER_HOME/$d"; done
  chmod 700 "$WORKER_HOME/keys" "$WORKER_HOME/tokens.d"
  RUN=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CONDOR_CONFIG="$WORKER_HOME/condor_config" /usr/sbin/condor_master -f)
else
  RUN=(docker run --rm --name appliance-worker --network host
       -v "$WORKER_HOME/bundle.json:/etc/appliance/worker/bundle.json:ro" "$WORKER_IMAGE" worker)
fi

if [ -d /run/systemd/system ]; then
  # systemd runs the worker; when it ends for any reason, the instance powers off
  cat > /etc/systemd/system/appliance-worker.service <<EOF
[Unit]
Description=HTCondor worker $WORKER_ID of the appliance pool $POOL
Wants=network-online.target
After=network-online.target
[Service]
ExecStart=/usr/bin/timeout --signal=TERM --kill-after=600 $MAX_LIFETIME ${RUN[*]}
ExecStopPost=/usr/bin/systemctl poweroff --no-block
Restart=no
EOF
  systemctl daemon-reload
  systemctl start --no-block appliance-worker.service
  say "worker started (systemd unit appliance-worker)"
  trap - EXIT
  exit 0
fi

say "worker starting in the foreground"
set +e
timeout --signal=TERM --kill-after=600 "$MAX_LIFETIME" "${RUN[@]}"
rc=$?
set -e
trap - EXIT
if [ "$rc" -eq 124 ]; then power_off "maximum lifetime ($MAX_LIFETIME s) reached"; fi
power_off "the worker ended (exit $rc)"
