# Shell functions shared by ostest-services (each container's start) and
# ostest-bootstrap (the image build). Sourced, not run.

OSTEST_CONF=/etc/supervisor/ostest.conf

log() { echo "ostest: $(date -u +%H:%M:%S) $*"; }
die() { log "FAILED: $*"; exit 1; }
ctl() { supervisorctl -c "$OSTEST_CONF" "$@" >/dev/null; }
start() { ctl start "$@" || die "could not start $*"; }

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 0.5 s.
wait_for() {
    local limit=$1 what=$2; shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || die "$what not up after ${limit}s"
        sleep 0.5
    done
    log "$what up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 5 "$1"; }

start_supervisor() {
    mkdir -p /run/ostest /run/mysqld /var/log/supervisor
    chown mysql:mysql /run/mysqld
    OSTEST_AUTOSTART=false supervisord -c "$OSTEST_CONF"
    wait_for 30 supervisord supervisorctl -c "$OSTEST_CONF" pid
}

start_db() {
    start mariadb rabbitmq
    wait_for 60 mariadb mysqladmin --protocol=socket ping
}

# Keystone, then every service that needs only the database and keystone.
start_apis() {
    start keystone placement-api glance-api
    wait_for 90 rabbitmq port_open 5672
    start neutron-rpc-server neutron-api nova-conductor nova-scheduler nova-api
    wait_for 90 keystone http_ok http://127.0.0.1:5000/v3
    wait_for 90 placement-api http_ok http://127.0.0.1:8778/
}

# Forget the nova-compute service, its node and its resource provider, as
# if host compute1 had never run (the host mapping stays: same host name).
forget_hypervisor() {
    mysql nova <<'SQL' || die "could not reset the nova-compute records"
UPDATE compute_nodes SET deleted = id, deleted_at = UTC_TIMESTAMP() WHERE host = 'compute1' AND deleted = 0;
UPDATE services SET deleted = id, deleted_at = UTC_TIMESTAMP() WHERE host = 'compute1' AND `binary` = 'nova-compute' AND deleted = 0;
SQL
    mysql placement <<'SQL' || die "could not reset the resource provider"
-- a provider is its own root (root_provider_id): no other order works.
SET FOREIGN_KEY_CHECKS = 0;
CREATE TEMPORARY TABLE gone AS SELECT id FROM resource_providers WHERE name = 'compute1';
DELETE FROM allocations WHERE resource_provider_id IN (SELECT id FROM gone);
DELETE FROM inventories WHERE resource_provider_id IN (SELECT id FROM gone);
DELETE FROM resource_provider_traits WHERE resource_provider_id IN (SELECT id FROM gone);
DELETE FROM resource_provider_aggregates WHERE resource_provider_id IN (SELECT id FROM gone);
DELETE FROM resource_providers WHERE id IN (SELECT id FROM gone);
SQL
}

# nova-compute reports its node to placement when it starts: placement and
# keystone must answer by then (ensured by start_apis).
start_compute() {
    start nova-compute fake-ovs-agent
}
