#!/usr/bin/python3
"""End-to-end check of the OpenStack test control plane, as the driver sees
it: over HTTP, from another container on its Docker network, with the
clouds.yaml that tests/openstack/up printed (in the current directory, or
named by OS_CLIENT_CONFIG_FILE). Uses the clouds "appliance" and
"appliance-tight", and "appliance-admin" when present (up --admin).

    python3 smoke.py        # exits 0 when every check passed
"""
import base64
import sys
import time
import traceback

import openstack
from openstack import exceptions

USER_DATA = '#cloud-config\nruncmd: [echo appliance worker]\n'
results = []


def check(name):
    def wrap(fn):
        t0 = time.monotonic()
        try:
            detail = fn()
            results.append((name, True))
            print('PASS {} ({:.1f}s){}'.format(name, time.monotonic() - t0,
                                         f': {detail}' if detail else ''),
                  flush=True)
        except Exception:
            results.append((name, False))
            print(f'FAIL {name} ({time.monotonic() - t0:.1f}s)',
                  flush=True)
            traceback.print_exc()
        return fn
    return wrap


conn = openstack.connect(cloud='appliance')
try:
    admin = openstack.connect(cloud='appliance-admin')
except Exception:
    admin = None
created = []


def boot(c, name, flavor, wait=True, **kw):
    server = c.compute.create_server(
        name=name, flavor_id=c.compute.find_flavor(flavor,
                                                   ignore_missing=False).id,
        image_id=c.image.find_image('debian-13', ignore_missing=False).id,
        networks=[{'uuid': c.network.find_network(
            'lab-net', ignore_missing=False).id}], **kw)
    created.append((c, server))
    if wait:
        server = c.compute.wait_for_server(server, status='ACTIVE',
                                           failures=['ERROR'], interval=1,
                                           wait=180)
    return server


state = {}


@check('catalog names the control plane')
def _():
    auth_host = conn.config.get_auth_args()['auth_url'].split('/')[2]
    host = auth_host.split(':')[0]
    for service in ('compute', 'network', 'image'):
        url = conn.session.get_endpoint(service_type=service,
                                        interface='public')
        assert url.startswith(f'http://{host}:'), (service, url)
    return f'auth_url host {auth_host}'


@check('server ACTIVE on lab-net with metadata, user_data, security group')
def _():
    t0 = time.monotonic()
    server = boot(conn, 'smoke-worker', 'w1.small',
                  metadata={'appliance:pool': 'x'},
                  user_data=base64.b64encode(USER_DATA.encode()).decode(),
                  security_groups=[{'name': 'appliance-workers'}])
    took = time.monotonic() - t0
    addrs = server.addresses.get('lab-net') or []
    assert addrs and addrs[0]['addr'].startswith('10.20.0.'), server.addresses
    ports = list(conn.network.ports(device_id=server.id))
    assert len(ports) == 1 and ports[0].status == 'ACTIVE', ports
    assert server.metadata == {'appliance:pool': 'x'}, server.metadata
    state['server'] = server
    return 'ACTIVE in {:.1f}s at {}, port ACTIVE'.format(took, addrs[0]['addr'])


@check('user_data: hidden from the project user, readable by admin')
def _():
    server = state['server']
    mine = conn.compute.get_server(server.id)   # latest microversion (>= 2.3)
    assert mine.user_data is None, 'a non-admin user could read user_data'
    if admin is None:
        return 'non-admin cannot read it (no appliance-admin cloud to compare)'
    theirs = admin.compute.get_server(server.id)
    assert base64.b64decode(theirs.user_data).decode() == USER_DATA, \
        theirs.user_data
    return 'non-admin: not shown; admin: OS-EXT-SRV-ATTR:user_data matches'


@check('servers listed and found by metadata')
def _():
    found = [s for s in conn.compute.servers(details=True)
             if s.metadata.get('appliance:pool') == 'x']
    assert [s.id for s in found] == [state['server'].id], found
    return '1 server with appliance:pool=x'


@check('server deleted')
def _():
    server = state['server']
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=1, wait=120)
    assert not list(conn.network.ports(device_id=server.id))


@check('too.big: ERROR, No valid host was found')
def _():
    server = boot(conn, 'smoke-too-big', 'too.big', wait=False)
    server = conn.compute.wait_for_server(server, status='ERROR', interval=1,
                                          wait=120)
    message = (server.fault or {}).get('message', '')
    assert 'No valid host was found' in message, server.fault
    conn.compute.delete_server(server)
    return message


@check('appliance-tight: a second server exceeds the instance quota (403)')
def _():
    tight = openstack.connect(cloud='appliance-tight')
    t0 = time.monotonic()
    boot(tight, 'smoke-tight-1', 'w1.small')
    took = time.monotonic() - t0
    try:
        boot(tight, 'smoke-tight-2', 'w1.small', wait=False)
    except exceptions.HttpException as e:
        assert e.status_code == 403, e
        assert 'Quota exceeded' in str(e), e
        return 'first server ACTIVE in {:.1f}s; second: HTTP 403, {}'.format(
            took, str(e).split(', ', 1)[-1].splitlines()[0][:80])
    raise AssertionError('the second server was accepted')


for c, server in created:           # whatever is left
    try:
        c.compute.delete_server(server, ignore_missing=True)
    except Exception:
        pass
for c, server in created:
    try:
        c.compute.wait_for_delete(server, interval=1, wait=120)
    except Exception:
        pass

failed = sum(1 for _, ok in results if not ok)
print(f'smoke: {len(results) - failed} passed, {failed} failed')
sys.exit(1 if failed else 0)
