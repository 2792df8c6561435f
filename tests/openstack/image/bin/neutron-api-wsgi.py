# neutron-api's WSGI application (as /usr/bin/neutron-api makes it), with
# SQLAlchemy's mappers configured before the first request.
#
# Neutron's get_ports() reads models_v2.Port.port_forwardings, a backref
# that SQLAlchemy adds to Port only when it configures its mappers, which it
# does on the first query of the process. In a fresh uWSGI worker whose
# first request is GET /v2.0/ports that attribute does not exist yet and the
# request fails with HTTP 500 ("type object 'Port' has no attribute
# 'port_forwardings'"); seen here as a failed server create, one time in
# three, when nova-api's first call to that worker lists ports.
import sqlalchemy.orm
from neutron.cmd.server import main_api_uwsgi

application = main_api_uwsgi()
sqlalchemy.orm.configure_mappers()
