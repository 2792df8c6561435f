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
#   - EC2's spot interruption notice  -> jobs vacated, reported; power off 2 min later
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
# everything it says goes to the console (cloud-init keeps it) and to a log file, root's only;
# it never prints a secret
(umask 077; touch /var/log/appliance-worker.log); chmod 600 /var/log/appliance-worker.log
exec 3>&1 4>&2 > >(tee -a /var/log/appliance-worker.log) 2>&1
TEE=$!

WORKER_ID={{ worker_id }}
CLOUD={{ cloud }}
POOL={{ pool }}
CONDOR_HOST={{ condor_host }}
WORKER_IMAGE={{ worker_image }}
WORKER_HOME={{ worker_home }}
MAX_LIFETIME={{ max_lifetime }}
# the GPUs of the worker's shape: with worker_image, the container is given the machine's
# (which needs the NVIDIA container toolkit in the image the machine boots)
GPUS={{ gpus }}

# the instance metadata service (IMDSv2); the tests point this line at a stand-in
IMDS=169.254.169.254:80

say() { echo "$(date -u +%FT%TZ) appliance worker $WORKER_ID: $*"; }

power_off() {
  say "$1; powering off"
  # let tee write its last lines before we end: in a container this script's end kills it
  exec 1>&3 2>&4
  wait "$TEE" 2>/dev/null || true
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

# The metadata service's answer (headers and body) to one request; fails if none comes.
metadata() {
  timeout 5 bash -c 'exec 3<>"/dev/tcp/${4%:*}/${4##*:}" || exit 1
    printf "%s %s HTTP/1.0\r\n%s\r\n" "$1" "$2" "$3" >&3; cat <&3' _ "$1" "$2" "${3:+$3$'\r\n'}" "$IMDS"
}
# Does the metadata service hand this script out (with an IMDSv2 token, if it gives one)?
user_data_served() {
  local token status
  token=$(metadata PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 60" 2>/dev/null \
          | tr -d '\r' | sed '1,/^$/d') || true
  status=$(metadata GET /latest/user-data ${token:+"X-aws-ec2-metadata-token: $token"} 2>/dev/null | head -1) || true
  case $status in HTTP/*" 200"*) return 0;; esac
  return 1
}

# Jobs must not read this script (it holds the worker's token and key) back from the
# instance metadata service: only root may talk to it. Needs CAP_NET_ADMIN. Where that
# fails and the metadata service hands the script out, the worker does not start: its
# jobs could read the script back.
if command -v nft >/dev/null && nft -f - <<'EOF'
table inet appliance_worker {
  chain output {
    type filter hook output priority 0; policy accept;
    ip daddr 169.254.169.254 meta skuid != 0 drop
  }
}
EOF
then
  say "the metadata service is blocked for everyone but root"
elif user_data_served; then
  say "cannot block the metadata service for jobs (nftables failed), and it hands out this script"
  exit 1
else
  say "could not restrict the metadata service (nftables failed), but it does not hand out this script"
fi

if [ -z "$WORKER_IMAGE" ]; then
  # the condor daemons' own directories; only execute is open (each job's sandbox in it is its own)
  for d in log spool lock run; do install -d -m 0700 -o condor -g condor "$WORKER_HOME/$d"; done
  install -d -m 0755 -o condor -g condor "$WORKER_HOME/execute"
  chmod 700 "$WORKER_HOME/keys" "$WORKER_HOME/tokens.d"
  # jobs run as their slot's own account, never as their owner or `nobody`: one per cpu, named
  # as appliance/workerconf.py's slot_user does, in the file the condor config includes
  accounts="$WORKER_HOME/slot-accounts.conf"
  : > "$accounts"
  for n in $(seq 1 "$(sed -n 's/^NUM_CPUS = //p' "$WORKER_HOME/condor_config")"); do
    u="slot$n-$WORKER_ID"; [ ${#u} -le 32 ] || u="slot$n-${WORKER_ID: -20}"
    echo "SLOT1_${n}_USER = $u" >> "$accounts"
    # ids far above the system groups' (appliance/worker_role.py's SLOT_ID_RANGE)
    id -u "$u" >/dev/null 2>&1 || useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin -K SYS_UID_MIN=200000 -K SYS_UID_MAX=299999 \
      -K SYS_GID_MIN=200000 -K SYS_GID_MAX=299999 "$u"
  done
  # root's, readable by the condor daemons; jobs read neither
  chgrp condor "$WORKER_HOME/condor_config" "$accounts"; chmod 640 "$WORKER_HOME/condor_config" "$accounts"
  RUN=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CONDOR_CONFIG="$WORKER_HOME/condor_config" /usr/sbin/condor_master -f)
else
  gpu_args=(); [ "$GPUS" -gt 0 ] && gpu_args=(--gpus all)
  RUN=(docker run --rm --name appliance-worker --network host "${gpu_args[@]}"
       -v "$WORKER_HOME/bundle.json:/etc/appliance/worker/bundle.json:ro" "$WORKER_IMAGE" worker)
fi

# Spot (docs/clouds/ec2.md): on EC2's interruption notice the worker takes no new job, evicts its
# jobs now (SIGTERM, SIGKILL 60 s later; they go back to idle in the appliance's queue), advertises
# WorkerInterrupted and stops 2 min later; on a rebalance recommendation it only takes no new job.
# Policy by config + SIGHUP (reconfig).
imds_get() {   # the body of a 200 answer to an IMDSv2 GET; fails otherwise
  local t r
  t=$(metadata PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 60" | tr -d '\r' | sed '1,/^$/d')
  [ -n "$t" ] && r=$(metadata GET "/latest/meta-data/$1" "X-aws-ec2-metadata-token: $t" | tr -d '\r') || return 1
  case ${r%%$'\n'*} in HTTP/*" 200"*) sed '1,/^$/d' <<<"$r";; *) return 1;; esac
}
in_worker() {  # bash code where the condor daemons run
  if [ -z "$WORKER_IMAGE" ]; then bash -c "$1" _ "${@:2}"; else docker exec -i appliance-worker bash -c "$1" _ "${@:2}"; fi
}
signal_condor() {   # $1: signal, $2: daemon
  in_worker 'for p in /proc/[0-9]*; do [ "$(cat $p/comm)" = $2 ] && kill -$1 ${p#/proc/}; done 2>/dev/null; true' "$@"
}
worker_notice() {   # $1: spot | rebalance; then the attributes
  printf '%s\n' "# EC2 notice: $1" "START = False" "${@:2}" | in_worker 'cat >> "$1/condor_config"' "$WORKER_HOME"
  signal_condor HUP condor_startd
}
notice_watcher() {
  local a r=""
  while sleep 5; do
    if a=$(imds_get spot/instance-action 2>/dev/null); then
      say "spot interruption notice (${a:0:200}): taking no new job, vacating the running ones"
      worker_notice spot 'WorkerInterrupted = "spot"' 'STARTD_ATTRS = $(STARTD_ATTRS) WorkerInterrupted' \
        "PREEMPT = True" "MAXJOBRETIREMENTTIME = 0" "MachineMaxVacateTime = 60"
      sleep 120; say "spot interruption: stopping the worker"
      signal_condor TERM condor_master; return
    fi
    if [ -z "$r" ] && imds_get events/recommendations/rebalance >/dev/null 2>&1; then
      say "rebalance recommendation: taking no new job"
      worker_notice rebalance "WorkerRebalance = True" 'STARTD_ATTRS = $(STARTD_ATTRS) WorkerRebalance'; r=1
    fi
  done
}
WATCH="$(declare -p WORKER_ID WORKER_HOME WORKER_IMAGE IMDS; declare -f say metadata imds_get in_worker \
  signal_condor worker_notice notice_watcher); notice_watcher"

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
  systemd-run --unit appliance-notices --quiet bash -c "$WATCH"   # it must outlive this script
  say "worker started (systemd unit appliance-worker)"
  trap - EXIT
  exit 0
fi

say "worker starting in the foreground"
set +e
bash -c "$WATCH" &
watcher=$!
timeout --signal=TERM --kill-after=600 "$MAX_LIFETIME" "${RUN[@]}"
rc=$?
kill "$watcher" 2>/dev/null
set -e
trap - EXIT
if [ "$rc" -eq 124 ]; then power_off "maximum lifetime ($MAX_LIFETIME s) reached"; fi
power_off "the worker ended (exit $rc)"
