"""rq's own command line on the project's Redis: `rq info -c rqjobs.rqconfig`, `rq worker -c rqjobs.rqconfig ...`.

rq's `--url` takes redis://, rediss:// and unix:// URLs only; for a Sentinel URL rq reads a `SENTINEL` dict from a
config module (`-c`). This module is that config, built from REDIS_URL when rq imports it: `SENTINEL` for a
`redis+sentinel://` URL, `REDIS_URL` otherwise (the embedded server is started if REDIS_URL is unset, as
`rqjobs redis url` does). rq reads its settings from a module's upper-case names, so the work happens on import.
"""

from __future__ import annotations

from rqjobs import connections
from rqjobs.settings import Settings, get_settings, is_sentinel_url, parse_sentinel_url


def rq_settings(settings: Settings | None = None) -> dict:
    """Return rq's config for the project's Redis: `{'SENTINEL': {...}}` or `{'REDIS_URL': url}`."""
    settings = settings or get_settings()
    url = connections.redis_url(settings)
    if not is_sentinel_url(url):
        return {'REDIS_URL': url}
    address = parse_sentinel_url(url)
    timeouts = dict(address.timeouts)
    connection_kwargs = {'socket_connect_timeout': timeouts.get('socket_connect_timeout', settings.redis_timeout)}
    if address.ssl_cert_reqs:
        connection_kwargs['ssl_cert_reqs'] = address.ssl_cert_reqs
    if address.ssl_ca_certs:
        connection_kwargs['ssl_ca_certs'] = address.ssl_ca_certs
    sentinel_kwargs = {'socket_timeout': timeouts.get('sentinel_socket_timeout', settings.redis_timeout)}
    if address.ssl:
        sentinel_kwargs.update(ssl=True, **{k: v for k, v in connection_kwargs.items() if k.startswith('ssl_')})
    if address.sentinel_password:
        sentinel_kwargs.update(username=address.sentinel_username, password=address.sentinel_password)
    return {
        'SENTINEL': {
            'INSTANCES': list(address.hosts),
            'MASTER_NAME': address.master,
            'DB': address.db,
            'USERNAME': address.username,
            'PASSWORD': address.password,
            'SSL': address.ssl,
            # rq's worker raises a socket timeout below its blocking dequeue to match it (Worker._set_connection).
            'SOCKET_TIMEOUT': timeouts.get('socket_timeout', settings.redis_timeout),
            'CONNECTION_KWARGS': connection_kwargs,
            'SENTINEL_KWARGS': sentinel_kwargs,
        }
    }


globals().update(rq_settings())
