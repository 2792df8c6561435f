"""A hostile job, a second user (alice) with secrets, and the checks that every attempt of the
hostile job to get out of its sandbox was refused. Used by test_hostile.py on each cloud.

The hostile job is submitted by `submit` with HTCondor's own condor_submit inside the appliance,
like any job. It runs a list of attempts and writes one line per attempt:

    ATTEMPT|<id>|refused or ALLOWED|<what it tried>|<evidence>

plus CONTROL lines (things that must work, so that a refusal means something: the job can reach
the appliance, its IO proxy works, another job's sandbox exists next to it) and INFO lines (the
account it runs as, its slot, its worker). Evidence never holds what was read, only how much:
a failing test prints no secret. The test also checks, from outside, that nothing the job tried
took effect (no job submitted, no ad advertised, the worker not drained, the cloud still enabled)
and that no secret it could have read appears anywhere in its output.
"""
from __future__ import annotations

import os
import re
import shlex
import uuid
from dataclasses import dataclass, field

from .conftest import Appliance

# The job. Arguments: the cloud's name, the central manager (host:port), the schedd's name, the
# web page (host:port). It learns its worker from the machine ad HTCondor gives every job.
HOSTILE_SH = r"""#!/bin/bash
CLOUD=$1 CM=$2 SCHEDD=$3 WEB=$4
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/libexec/condor
ME=$(id -u)
SANDBOX=${_CONDOR_SCRATCH_DIR:-$PWD}
ALICE_MARK="alice-""secret-"          # split, so that this script itself never matches
ad() { grep "^$1 = " "$_CONDOR_MACHINE_AD" | head -1 | cut -d' ' -f3- | tr -d '"'; }
CMIP=$(getent hosts "${CM%:*}" | awk '{ print $1; exit }')
CMADDR="<${CMIP:-${CM%:*}}:${CM##*:}>"    # the central manager's shared port: its collector
WID=$(ad WorkerId)
STARTD=$(ad MyAddress)
if [ -d "/var/lib/appliance/workers/$CLOUD/$WID" ]; then W="/var/lib/appliance/workers/$CLOUD/$WID"
else W=/var/lib/condor-worker; fi

line() { printf '%s|%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" "$(printf '%s' "$5" | tr '\n\r|' '   ' | cut -c1-300)"; }
# attempt ID WHAT COMMAND...: the command succeeding means the attempt got through
attempt() {
  local id=$1 what=$2 out rc; shift 2
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then line ATTEMPT "$id" ALLOWED "$what" "$out"
  else line ATTEMPT "$id" refused "$what" "rc=$rc $out"; fi
}
# control ID WHAT COMMAND...: must succeed, or the refusals around it prove nothing
control() {
  local id=$1 what=$2 out rc; shift 2
  out=$("$@" 2>&1); rc=$?
  if [ $rc -eq 0 ]; then line CONTROL "$id" ok "$what" "$out"; else line CONTROL "$id" FAILED "$what" "rc=$rc $out"; fi
}

read_file() {        # succeeds if the file can be read; says only how much it read
  local err
  if err=$(cat -- "$1" 2>&1 >/dev/null); then echo "read $(wc -c <"$1") bytes of $1"; return 0; fi
  echo "$err"; return 1
}
read_files() {       # read_files PATH...: succeeds if any of them can be read
  local f out="" ok=1 r
  for f in "$@"; do
    r=$(read_file "$f") && ok=0
    out="$out $r;"
  done
  echo "$out"; return $ok
}
read_dir() {         # succeeds if any file in the directory can be read
  local f n=0
  ls -A -- "$1" >/dev/null 2>&1 || { ls -A -- "$1" 2>&1 | head -1; return 1; }
  for f in "$1"/* "$1"/.[!.]*; do [ -f "$f" ] && cat -- "$f" >/dev/null 2>&1 && n=$((n+1)); done
  [ $n -gt 0 ] && { echo "read $n file(s) in $1"; return 0; }
  echo "listed $1 but could read none of its files"; return 1
}
# http METHOD URL [HEADER]: prints "HTTP <status>"; fails if nothing answered
http() {
  local m=$1 url=$2 hdr=${3:-} hostport path req status
  if command -v python3 >/dev/null; then
    timeout 15 python3 - "$m" "$url" "$hdr" <<'PY'
import ssl, sys, urllib.error, urllib.request
m, url, hdr = sys.argv[1:4]
req = urllib.request.Request(url, method=m, data=b"" if m in ("POST", "PUT") else None)
if hdr:
    k, v = hdr.split(":", 1)
    req.add_header(k.strip(), v.strip())
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
try:
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        print("HTTP", r.status)
except urllib.error.HTTPError as e:
    print("HTTP", e.code)
except Exception as e:
    print(type(e).__name__, str(e)[:100])
    sys.exit(2)
PY
    return $?
  fi
  hostport=${url#*://}; hostport=${hostport%%/*}; path=/${url#*://*/}
  req=$(printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Length: 0\r\n%s\r\n' "$m" "$path" "$hostport" "${hdr:+$hdr$'\r\n'}")
  if [ "${url%%://*}" = https ]; then
    command -v openssl >/dev/null || { echo "no TLS client here"; return 2; }
    status=$(printf '%s' "$req" | timeout 10 openssl s_client -quiet -connect "$hostport" 2>/dev/null | head -1)
  else
    status=$(timeout 10 bash -c 'exec 3<>"/dev/tcp/${0%:*}/${0##*:}" || exit 2; printf "%s" "$1" >&3; head -1 <&3' \
             "$hostport" "$req" 2>&1)
  fi
  case $status in HTTP/*) echo "HTTP $(echo "$status" | cut -d' ' -f2)"; return 0;; esac
  echo "no answer ${status:0:80}"; return 2
}
web() {              # web METHOD PATH [HEADER]: succeeds only on a 2xx answer
  local s; s=$(http "$1" "$WEBURL$2" "${3:-}"); echo "$s"
  case $s in "HTTP 2"*) return 0;; esac; return 1
}
imds() {             # imds METHOD PATH [HEADER]: succeeds only on a 2xx answer (a host's own
  local s            # metadata service may answer a container, with 403 if it is locked down)
  s=$(http "$1" "http://169.254.169.254$2" "${3:-}"); echo "$s"
  case $s in "HTTP 2"*) return 0;; esac; return 1
}
docker_socket() {
  local s=/var/run/docker.sock
  [ -S $s ] || { echo "$s: no such socket"; return 1; }
  if command -v python3 >/dev/null; then
    timeout 10 python3 - <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/var/run/docker.sock")
except OSError as e:
    print(e)
    sys.exit(1)
s.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
print(s.recv(64).split(b"\r\n")[0].decode())
PY
    return $?
  fi
  [ -r $s ] && [ -w $s ] && { echo "$s is readable and writable"; return 0; }
  echo "$s: Permission denied"; return 1
}
docker_tcp() {       # the Docker engine's TCP ports on the default gateway (the host)
  local h gw p
  h=$(awk '$2 == "00000000" { print $3; exit }' /proc/net/route)
  [ -n "$h" ] || { echo "no default route"; return 1; }
  gw=$(printf '%d.%d.%d.%d' "0x${h:6:2}" "0x${h:4:2}" "0x${h:2:2}" "0x${h:0:2}")
  for p in 2375 2376; do
    timeout 3 bash -c "exec 3<>/dev/tcp/$gw/$p" 2>/dev/null && { echo "$gw:$p accepts connections"; return 0; }
  done
  echo "nothing on $gw:2375 or :2376"; return 1
}
others() {           # pids of processes that are not this job's account's
  local p
  for p in /proc/[0-9]*; do
    [ "$(stat -c %u "$p" 2>/dev/null)" = "$ME" ] || echo "${p#/proc/}"
  done
}
signal_others() {    # kill -0: a probe that harms nothing, refused exactly when a real signal would be
  local p n=0 ok=0 who=""
  for p in $(others); do
    n=$((n+1)); kill -0 "$p" 2>/dev/null && { ok=$((ok+1)); who="$who $p($(cat /proc/$p/comm 2>/dev/null))"; }
  done
  [ $ok -gt 0 ] && { echo "could signal $ok of $n:$who"; return 0; }
  echo "could signal none of the $n processes of other accounts (daemons, other jobs)"; return 1
}
environs_of_others() {
  local p n=0 ok=0
  for p in $(others); do
    [ -e /proc/$p/environ ] || continue
    n=$((n+1)); cat /proc/$p/environ >/dev/null 2>&1 && ok=$((ok+1))
  done
  [ $ok -gt 0 ] && { echo "read the environment of $ok of $n processes"; return 0; }
  echo "read none of the environments of $n processes of other accounts"; return 1
}
own_environment() {
  local hits
  hits=$(env | grep -E '^(APPLIANCE_|AWS_|_CONDOR_SEC_)|eyJ[A-Za-z0-9_-]{10,}|[0-9a-f]{64}' | cut -d= -f1 | tr '\n' ' ')
  [ -n "$hits" ] && { echo "secrets in its environment: $hits"; return 0; }
  echo "nothing secret among: $(env | cut -d= -f1 | sort | tr '\n' ' ')"; return 1
}
search() {           # search REGEX: readable files outside its sandbox that match
  local hits
  hits=$(timeout 120 grep -rlIE -D skip --exclude-dir=proc --exclude-dir=sys "$1" \
         /etc /var /run /root /home /tmp /opt /srv /dev/shm /usr/local 2>/dev/null \
         | grep -v "^$SANDBOX" | head -5 | tr '\n' ' ')
  [ -n "$hits" ] && { echo "found in: $hits"; return 0; }
  echo "no readable file matches"; return 1
}
alice_environ() {
  local p f
  for f in /proc/[0-9]*/environ; do
    grep -q "$ALICE_MARK" "$f" 2>/dev/null && { p=${f#/proc/}; echo "in the environment of pid ${p%/environ}"; return 0; }
  done
  echo "in no readable process environment"; return 1
}
leftovers() {        # what an earlier job (alice's, in this same slot) left outside its sandbox
  local f n=0 ok=0
  for f in /tmp/alice-leftover-* /var/tmp/alice-leftover-* /dev/shm/alice-leftover-*; do
    [ -e "$f" ] || continue
    n=$((n+1)); cat -- "$f" >/dev/null 2>&1 && ok=$((ok+1))
  done
  [ $ok -gt 0 ] && { echo "read $ok of $n files alice's earlier job left"; return 0; }
  echo "$n such files left, none readable"; return 1
}
other_sandboxes() {
  local d n=0 ok=0
  for d in /var/lib/appliance/workers/*/*/execute/dir_* /var/lib/condor-worker/execute/dir_*; do
    [ -d "$d" ] || continue; [ "$d" = "$SANDBOX" ] && continue
    n=$((n+1)); ls -A "$d" >/dev/null 2>&1 && ok=$((ok+1))
  done
  echo "$n other sandbox(es) here, $ok opened"
  [ $ok -gt 0 ]
}
count_other_sandboxes() {
  local d n=0
  for d in /var/lib/appliance/workers/*/*/execute/dir_* /var/lib/condor-worker/execute/dir_*; do
    [ -d "$d" ] && [ "$d" != "$SANDBOX" ] && n=$((n+1))
  done
  echo "$n other job sandbox(es) next to this one"; [ $n -gt 0 ]
}
spool_files() {      # the schedd's job queue, and every job's spooled input and output (alice's secret.txt)
  local f n=0 ok=0
  for f in /var/lib/condor/spool/job_queue.log $(find /var/lib/condor/spool -mindepth 2 -type f 2>/dev/null); do
    [ -e "$f" ] || continue
    n=$((n+1)); cat -- "$f" >/dev/null 2>&1 && ok=$((ok+1))
  done
  [ $ok -gt 0 ] && { echo "read $ok of $n files"; return 0; }
  echo "read none of the $n files found; $(read_file /var/lib/condor/spool/job_queue.log)"; return 1
}
either() {           # either CMD1 -- CMD2: succeeds if either does
  local a=() out rc=1
  while [ "$1" != -- ]; do a+=("$1"); shift; done; shift
  out=$("${a[@]}" 2>&1) && rc=0; echo "$out;"
  out=$("$@" 2>&1) && rc=0; echo "$out"
  return $rc
}
advertise() {        # advertise COMMAND NAME WORKERID CPUS
  cat > "ad-$2" <<EOF
MyType = "$( [ "$1" = UPDATE_MASTER_AD ] && echo DaemonMaster || echo Machine )"
Name = "$2"
Machine = "$2"
MyAddress = "$STARTD"
StartdIpAddr = "$STARTD"
ApplianceWorker = true
WorkerId = "$3"
CloudName = "$CLOUD"
State = "Unclaimed"
Activity = "Idle"
Requirements = true
Cpus = $4
Memory = 65536
EOF
  timeout 30 condor_advertise -pool "$CM" -tcp "$1" "ad-$2"
}

line INFO account "$(id -un) (uid $ME, groups $(id -Gn | tr ' ' ','))" ""
line INFO slot "${_CONDOR_SLOT:-?}" ""
line INFO worker "$WID" "$W"
line INFO sandbox "$(stat -c '%a %U' "$SANDBOX")" "$SANDBOX"

# ---- controls: what must work for the refusals below to mean anything
control own-files "read its own sandbox (the machine ad)" read_file "$_CONDOR_MACHINE_AD"
WEBURL=""
for scheme in https http; do
  s=$(http GET "$scheme://$WEB/healthz") && case $s in "HTTP "*) WEBURL="$scheme://$WEB"; break;; esac
done
control web "reach the appliance's web page ($WEB/healthz)" test -n "$WEBURL"
control cm "reach the central manager ($CM)" timeout 10 bash -c "exec 3<>/dev/tcp/${CM%:*}/${CM##*:}"
control chirp "fetch one of its own submit files through its IO proxy (condor_chirp fetch)" \
  timeout 30 condor_chirp fetch job.sub chirp-own.out
control neighbours "another job (alice's) runs on this machine" count_other_sandboxes

# ---- its worker's files
attempt worker-token "read its worker's token ($W/tokens.d/pool)" read_file "$W/tokens.d/pool"
attempt worker-key "read its worker's signing key ($W/keys/worker-$WID)" read_file "$W/keys/worker-$WID"
attempt worker-config "read its worker's condor config ($W/condor_config)" read_file "$W/condor_config"
attempt worker-dirs "list its worker's keys and tokens directories" either ls "$W/keys" -- ls "$W/tokens.d"
attempt worker-logs "read its worker's daemon logs ($W/log)" read_dir "$W/log"
attempt worker-bundle "read the bundle its worker was sent (docker: bundle.json, swarm: the secret)" \
  read_files /etc/appliance/worker/bundle.json /run/secrets/appliance-worker /var/lib/condor-worker/bundle.json
attempt own-environment "find a token, key or password in its own environment" own_environment
attempt proc-environ "read the environment of the daemons and other jobs (/proc/PID/environ)" environs_of_others
attempt signal "signal the worker's daemons or other jobs (kill -0 each process of another account)" signal_others
attempt find-token "find any readable file holding a token or a key (grep / for 'eyJ...' and 96 hex digits)" \
  search 'eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}|(^|[^0-9a-f])[0-9a-f]{96}([^0-9a-f]|$)'

# ---- the appliance's secrets (local workers run inside the appliance)
attempt pool-key "read the pool signing key (/var/lib/appliance/keys/POOL)" read_file /var/lib/appliance/keys/POOL
attempt worker-keys "read the central manager's copy of its worker's key" \
  read_file "/var/lib/appliance/worker-keys/worker-$WID"
attempt admin-password "read the admin password (/var/lib/appliance/admin-password)" \
  read_file /var/lib/appliance/admin-password
attempt state-db "read the state DB (/var/lib/appliance/state/appliance.db)" \
  read_files /var/lib/appliance/state/appliance.db /var/lib/appliance/state/web-session-key
attempt web-tls-key "read the web page's TLS key" read_files /run/appliance/web/tls.key /var/lib/appliance/tls/tls.key
attempt condor-tokens "read the central manager's tokens (/etc/condor/tokens.d, /root/.condor)" \
  either read_dir /etc/condor/tokens.d -- read_dir /root/.condor/tokens.d
attempt job-queue "read the schedd's job queue and the files spooled with other jobs" spool_files
attempt supervisor "control the appliance's processes (supervisorctl)" \
  timeout 10 supervisorctl -c /etc/appliance/supervisord.conf status
attempt docker-socket "use the Docker socket (/var/run/docker.sock)" docker_socket
attempt docker-tcp "reach the Docker engine over TCP on the host (2375, 2376)" docker_tcp
attempt imds-token "get an IMDSv2 token (PUT 169.254.169.254/latest/api/token)" \
  imds PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 60"
attempt imds-user-data "read the instance's user-data, which holds the token (GET 169.254.169.254/latest/user-data)" \
  imds GET /latest/user-data

# ---- commands, with whatever credential it has (FS as its own account on a local worker; nothing elsewhere)
printf 'executable = /bin/true\noutput = /dev/null\nqueue\n' > inner.sub
attempt submit "submit a job from inside the job (condor_submit -remote $SCHEDD)" \
  timeout 30 condor_submit -pool "$CM" -remote "$SCHEDD" inner.sub
attempt submit-local "submit a job to a schedd on its own machine (condor_submit)" timeout 30 condor_submit inner.sub
attempt read-queue "read every user's jobs (condor_q -allusers)" \
  either timeout 30 condor_q -allusers -af Owner Cmd -- timeout 30 condor_q -pool "$CM" -name "$SCHEDD" -allusers -af Owner Cmd
attempt read-pool "read the pool's ads (condor_status -any)" timeout 30 condor_status -pool "$CM" -any -af Name
attempt remove-alice "remove alice's jobs (condor_rm)" \
  either timeout 30 condor_rm -constraint 'Owner == "alice"' \
  -- timeout 30 condor_rm -pool "$CM" -name "$SCHEDD" -constraint 'Owner == "alice"'
attempt drain-worker "drain its own worker (condor_off -peaceful to its startd)" \
  timeout 30 condor_off -peaceful -startd -addr "$STARTD"
attempt drain-appliance "shut down the appliance's master or collector (condor_off -peaceful)" \
  either timeout 30 condor_off -pool "$CM" -peaceful -master -name "$SCHEDD" -- timeout 30 condor_off -peaceful -addr "$CMADDR"
attempt reconfig-worker "reconfigure its own worker (condor_config_val -rset, condor_reconfig)" \
  either timeout 30 condor_config_val -startd -addr "$STARTD" -rset "HOSTILE_SET = 1" \
  -- timeout 30 condor_reconfig -startd -addr "$STARTD"
attempt reconfig-collector "reconfigure the collector (condor_config_val -rset, condor_reconfig)" \
  either timeout 30 condor_config_val -address "$CMADDR" -rset "HOSTILE_SET = 1" -- timeout 30 condor_reconfig -addr "$CMADDR"
attempt advertise-new "advertise a worker of its own (condor_advertise UPDATE_STARTD_AD)" \
  advertise UPDATE_STARTD_AD "slot1@hostile-$WID" "hostile-$WID" 64
attempt advertise-as "advertise as its own worker, with 64 cpus (UPDATE_STARTD_AD)" \
  advertise UPDATE_STARTD_AD "slot1@$WID" "$WID" 64
attempt advertise-master "advertise a master (UPDATE_MASTER_AD)" advertise UPDATE_MASTER_AD "hostile-$WID" "hostile-$WID" 1
printf 'MyType = "Query"\nTargetType = "Machine"\nRequirements = WorkerId =?= "%s"\n' "$WID" > invalidate.ad
attempt invalidate "withdraw its worker's ads from the collector (INVALIDATE_STARTD_ADS)" \
  timeout 30 condor_advertise -pool "$CM" -tcp INVALIDATE_STARTD_ADS invalidate.ad
attempt token-request "ask the collector for a token (condor_token_request)" \
  timeout 20 condor_token_request -pool "$CM" -identity "worker-$WID@appliance" -authz ADVERTISE_STARTD
attempt token-fetch "fetch a token from the collector (condor_token_fetch)" \
  timeout 20 condor_token_fetch -pool "$CM" -type COLLECTOR
attempt web-read "read the API without credentials (GET /api/workers)" web GET /api/workers
attempt web-write "disable its cloud through the API with a guessed password (POST /api/clouds/$CLOUD/disable)" \
  web POST "/api/clouds/$CLOUD/disable" "Authorization: Basic $(printf admin:admin | base64)"

# ---- alice's files and processes
attempt alice-home "read alice's submit directory on the appliance (/home/alice)" read_dir /home/alice/job
attempt alice-sandbox "open another job's sandbox (alice's, running next to it)" other_sandboxes
attempt alice-environ "find alice's secret in a process environment" alice_environ
attempt alice-leftovers "read the files alice's earlier job left in /tmp, /var/tmp, /dev/shm" leftovers
attempt alice-search "find alice's secret in any readable file (grep / for it)" search "$ALICE_MARK"
attempt alice-chirp "fetch alice's secret through its IO proxy (condor_chirp fetch /home/alice/job/secret.txt)" \
  timeout 30 condor_chirp fetch /home/alice/job/secret.txt chirp-alice.out
attempt chirp-password "fetch the admin password through its IO proxy (condor_chirp fetch)" \
  timeout 30 condor_chirp fetch /var/lib/appliance/admin-password chirp-password.out
attempt chirp-owner "make itself alice's job (condor_chirp set_job_attr Owner)" \
  timeout 30 condor_chirp set_job_attr Owner '"alice"'
rm -f chirp-*.out
echo "DONE"
"""

# alice's job. "leftover": leave the secret outside the sandbox, in files private to its account,
# and end (the hostile job later runs in the same slot, as the same account). Otherwise: hold the
# secret in its sandbox (the spooled input and a copy), its process environment and its output,
# and wait. The secret is never in her job ad (arguments, environment): job ads are for every
# user of the pool to read (condor_q -allusers -l, condor_history), by HTCondor's design.
ALICE_SH = r"""#!/bin/bash
echo "INFO|slot|${_CONDOR_SLOT:-?}|$(id -un)"
export ALICE_SECRET=$(cat secret.txt)
if [ "$1" = leftover ]; then
  umask 077
  for d in /tmp /var/tmp /dev/shm; do echo "$ALICE_SECRET" > "$d/alice-leftover-$$"; done
  ls -l /tmp/alice-leftover-$$ | cut -d' ' -f1,3
  exit 0
fi
cp secret.txt sandbox-copy.txt
echo "$ALICE_SECRET"
exec sleep "${2:-600}"       # with the secret in its environment
"""

LINE = re.compile(r"^(ATTEMPT|CONTROL|INFO)\|([^|]*)\|([^|]*)\|([^|]*)\|(.*)$")


@dataclass
class Outcome:
    cloud: str
    attempts: list[tuple[str, str, str, str]] = field(default_factory=list)   # (id, result, what, evidence)
    controls: list[tuple[str, str, str, str]] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    output: str = ""

    @property
    def refused(self) -> list[tuple[str, str, str, str]]:
        return [a for a in self.attempts if a[1] == "refused"]

    def summary(self) -> str:
        rows = [f"hostile job on {self.cloud}: {len(self.refused)} of {len(self.attempts)} attempts refused "
                f"(account {self.info.get('account', '?')}, slot {self.info.get('slot', '?')})"]
        evidence = bool(os.environ.get("APPLIANCE_HOSTILE_EVIDENCE"))     # what each attempt got back
        rows += [f"  {res:8} {aid:20} {what}" + (f"\n{'':31}-> {ev[:150]}" if evidence else "")
                 for aid, res, what, ev in self.attempts]
        return "\n".join(rows)


def parse(cloud: str, output: str) -> Outcome:
    out = Outcome(cloud, output=output)
    for raw in output.splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        kind, ident, result, what, evidence = m.groups()
        if kind == "ATTEMPT":
            out.attempts.append((ident, result, what, evidence))
        elif kind == "CONTROL":
            out.controls.append((ident, result, what, evidence))
        else:
            out.info[ident] = result
    return out


@dataclass
class Alice:
    secret: str
    long_job: int = 0
    leftover_job: int = 0


def job_status(app: Appliance, cluster: int) -> int | None:
    out = app.sh(f"condor_q {cluster} -af JobStatus; condor_history {cluster} -limit 1 -af JobStatus", check=False)
    values = [int(v) for v in out.split() if v.isdigit()]
    return values[0] if values else None


def submit_as(app: Appliance, user: str, directory: str, sub: str, files: dict[str, str], spool: bool = False) -> int:
    app.sh(f"id {user} >/dev/null 2>&1 || useradd --create-home {user}")
    app.sh(f"mkdir -p {directory}", user=user)
    for name, content in {**files, "job.sub": sub}.items():
        app.sh(f"cat > {directory}/{name} <<'EOF_{name.upper().replace('.', '_')}'\n{content}\n"
               f"EOF_{name.upper().replace('.', '_')}\nchmod 700 {directory}/{name}", user=user)
    out = app.sh(f"cd {directory} && condor_submit {'-spool ' if spool else ''}job.sub", user=user)
    return int(re.search(r"submitted to cluster (\d+)", out).group(1))


def job_sub(script: str, args: str, requirements: str, extra: str = "") -> str:
    return (f"executable = {script}\narguments = {args}\noutput = out\nerror = err\nlog = log\n"
            f"request_cpus = 1\nrequest_memory = 128\nrequest_disk = 10MB\n"
            f"{f'requirements = {requirements}' if requirements else ''}\n{extra}\nqueue")


def start_alice(app: Appliance, requirements: str) -> Alice:
    """alice's long job: a secret spooled with it, in its environment and in its output; it keeps running."""
    alice = Alice("alice-secret-" + uuid.uuid4().hex)
    sub = job_sub("alice.sh", "long 600", requirements, "transfer_input_files = secret.txt\nshould_transfer_files = YES")
    alice.long_job = submit_as(app, "alice", "/home/alice/job", sub,
                               {"alice.sh": ALICE_SH, "secret.txt": alice.secret}, spool=True)
    return alice


def alice_leftover(app: Appliance, alice: Alice, requirements: str, timeout: float = 180) -> str:
    """alice's short job in the next slot: leaves the secret in /tmp, /var/tmp and /dev/shm, and ends."""
    sub = job_sub("alice.sh", "leftover", requirements, "transfer_input_files = secret.txt\nshould_transfer_files = YES")
    alice.leftover_job = submit_as(app, "alice", "/home/alice/left", sub, {"alice.sh": ALICE_SH, "secret.txt": alice.secret})
    app.wait("alice's short job to complete", lambda: job_status(app, alice.leftover_job) == 4, timeout=timeout)
    return app.sh("cat /home/alice/left/out")


def run_hostile(app: Appliance, cloud: str, cm: str, schedd: str, web: str, requirements: str,
                timeout: float = 300) -> tuple[int, Outcome]:
    sub = job_sub("hostile.sh", " ".join(shlex.quote(a) for a in (cloud, cm, schedd, web)), requirements,
                  "+WantIOProxy = true\nshould_transfer_files = YES")
    cluster = submit_as(app, "submit", "/home/submit/hostile", sub, {"hostile.sh": HOSTILE_SH})
    app.wait("the hostile job to complete", lambda: job_status(app, cluster) == 4, timeout=timeout, every=2)
    output = app.sh("cat /home/submit/hostile/out /home/submit/hostile/err")
    return cluster, parse(cloud, output)


def appliance_secrets(app: Appliance) -> list[str]:
    """Every secret the central manager holds, and those of its local workers."""
    text = app.sh("cat /var/lib/appliance/keys/* /var/lib/appliance/worker-keys/* /var/lib/appliance/admin-password "
                  "/var/lib/appliance/state/web-session-key /etc/condor/tokens.d/* /run/appliance/web/tls.key "
                  "/var/lib/appliance/workers/*/*/tokens.d/* /var/lib/appliance/workers/*/*/keys/* 2>/dev/null",
                  check=False)
    return secrets_in(text)


def secrets_in(text: str) -> list[str]:
    """The secret-looking lines of a dump of secret files (PEM armour lines are not secret)."""
    return [s.strip() for s in text.splitlines() if len(s.strip()) >= 16 and not s.startswith("-----")]


def check(outcome: Outcome, app: Appliance, alice: Alice, hostile_cluster: int, cloud: str,
          secrets: list[str], expect_neighbour: bool = True) -> None:
    """Everything the hostile job tried was refused, and nothing it tried took effect."""
    print(outcome.summary())
    assert "DONE" in outcome.output, f"the hostile job did not finish its attempts:\n{outcome.output[-3000:]}"
    assert len(outcome.attempts) >= 40, outcome.summary()

    # the controls: the job could reach what it attacked, so each refusal means something
    required = {"own-files", "web", "cm", "chirp"} | ({"neighbours"} if expect_neighbour else set())
    failed = [c for c in outcome.controls if c[0] in required and c[1] != "ok"]
    assert not failed, "controls that must work did not:\n" + "\n".join(
        f"  {cid}: {what}: {ev}" for cid, _, what, ev in failed)

    allowed = [a for a in outcome.attempts if a[1] != "refused"]
    assert not allowed, f"the hostile job on {cloud} (as {outcome.info.get('account')}) got through:\n" + "\n".join(
        f"  {aid}: tried to {what}: {result} ({ev})" for aid, result, what, ev in allowed)

    # the job ran as a slot account of its own, never as its owner, root or nobody
    account = outcome.info.get("account", "")
    uid = re.search(r"\(uid (\d+), groups ([^)]*)\)", account)
    assert account.startswith("slot") and uid, outcome.info
    # ... with ids of their own range, and no group but its own (not the Docker socket's)
    assert 200000 <= int(uid.group(1)) <= 299999 and uid.group(2) == account.split()[0], outcome.info

    # ... and, seen from outside, nothing it tried took effect
    everything = app.sh("condor_q -allusers -af Owner Cmd; condor_history -af Owner Cmd", check=False)
    assert "/bin/true" not in everything and not re.search(r"^(slot|nobody)", everything, re.M), \
        f"a job submitted from inside the hostile job reached the queue:\n{everything}"
    ads = app.sh("condor_status -any -af MyType Name WorkerId Cpus", check=False)
    assert "hostile" not in ads, f"an ad the hostile job advertised is in the collector:\n{ads}"
    wid = outcome.info.get("worker", "")
    assert not [line for line in ads.splitlines() if f"slot1@{wid}" in line and line.split()[-1] == "64"], ads
    assert "Not defined" in app.sh("condor_config_val -collector HOSTILE_SET", check=False)
    assert all(c["enabled"] for c in app.status()["data"]), "the hostile job disabled a cloud"
    assert app.sh(f"condor_history {hostile_cluster} -limit 1 -af Owner").strip() == "submit"
    assert job_status(app, alice.long_job) == 2, "alice's job is no longer running"
    worker = next((w for w in app.status("-m")["data"] if w["id"] == wid), None)
    assert worker and worker["state"] in ("idle", "busy"), f"its worker was drained or lost: {worker}"

    # no secret it could have read is anywhere in what it wrote
    leaked = [s[:6] + "..." for s in [*secrets, alice.secret] if s in outcome.output]
    assert not leaked, f"secrets appear in the hostile job's output: {leaked}"
