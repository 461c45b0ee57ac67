"""The Redis connection: the server named by `REDIS_URL` (directly or through Sentinels), or the embedded one."""

from __future__ import annotations

import contextlib
import logging
import time

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from rqjobs.embedded import EmbeddedRedis
from rqjobs.exceptions import NotReplicated, RedisUnavailable
from rqjobs.settings import Settings, get_settings, is_sentinel_url, parse_sentinel_url, redact_url

logger = logging.getLogger(__name__)

# A dropped connection is retried this many times (0.2 s, 0.4 s apart) before a command fails. A timeout is not
# retried: redis-py retries both the connect (with its handshake) and the command, so each retried timeout would
# add REDIS_TIMEOUT again (about nine times it in all) before a caller heard of a server that does not answer.
RETRIES = 2
RETRIED_ERRORS = (redis.ConnectionError,)
# Seconds a worker or scheduler on Sentinel waits for a master to answer again after losing it (a failover takes the
# Sentinels' down-after-milliseconds plus an election, seconds to tens of seconds) before it gives up and exits 1.
FAILOVER_WAIT = 60.0
# Written before each WAIT (REDIS_WAIT_REPLICAS): see `replicated`.
WAIT_KEY = 'rqjobs:replicated'


def redis_url(settings: Settings | None = None) -> str:
    """Return the URL of the Redis server to use, starting the embedded one if needed."""
    settings = settings or get_settings()
    if settings.redis_url:
        return settings.redis_url
    return EmbeddedRedis(settings.data_dir / 'redis').ensure_running()


def location(settings: Settings | None = None) -> str:
    """Say which Redis the project uses, without credentials."""
    settings = settings or get_settings()
    if settings.redis_url:
        return redact_url(settings.redis_url)
    return f'embedded ({EmbeddedRedis(settings.data_dir / "redis").url})'


# One client (and connection pool) per server and timeout in a process: jobs and commands that ask again share its
# connections instead of opening and leaking new ones. redis-py's pool starts afresh in a forked work horse.
_clients: dict[tuple[str, float], redis.Redis] = {}


def get_redis(settings: Settings | None = None, *, check: bool = True, shared: bool = True) -> redis.Redis:
    """Return a client for the project's Redis; with `check`, fail fast if it does not answer.

    `shared=False` gives a client of its own, for a worker, which raises its read timeout above its blocking dequeue.
    """
    settings = settings or get_settings()
    url = redis_url(settings)
    connection = _clients.get((url, settings.redis_timeout)) if shared else None
    if connection is None:
        # Producers must never hang on a dead server: every socket operation has a bound, and a server that does
        # not answer fails the command within REDIS_TIMEOUT (plus the retries of a dropped connection, which are
        # quick). Workers raise the read timeout above their blocking dequeue themselves.
        connection = from_url(
            url,
            socket_connect_timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            # A producer's connection may sit idle behind a proxy that drops it: checked before use after 30 s.
            # A worker's is busy every few seconds, and the check would cost each work horse's new connection a
            # PING before its first command; a dropped connection is reconnected and retried either way (`retry`).
            health_check_interval=30 if shared else 0,
            # Nor does a work horse's connection announce the client library (CLIENT SETINFO, twice), whose version
            # redis-py reads from the package metadata on every new connection.
            **({} if shared else {'driver_info': None}),
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES, supported_errors=RETRIED_ERRORS),
        )
        if shared:
            _clients[url, settings.redis_timeout] = connection
    if check:
        ping(connection, url)
    return connection


def from_url(url: str, **options) -> redis.Redis:
    """Return a client for `url` with `options` (redis-py's); a Sentinel URL gives one that follows the master."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    address = parse_sentinel_url(url)
    tls = {}
    if address.ssl:
        tls = {'ssl': True}
        if address.ssl_cert_reqs:
            tls['ssl_cert_reqs'] = address.ssl_cert_reqs
        if address.ssl_ca_certs:
            tls['ssl_ca_certs'] = address.ssl_ca_certs
    # As in a redis:// URL, the URL's own timeouts win over the caller's.
    timeouts = dict(address.timeouts)
    client_options = {
        **options,
        **{name: value for name, value in timeouts.items() if not name.startswith('sentinel_')},
        **tls,
        'db': address.db,
        'username': address.username,
        'password': address.password,
    }
    # The Sentinels get the client's bounds and TLS, and credentials of their own (a Sentinel's requirepass is
    # usually not the master's): none of the master's password goes to them.
    sentinel_options = {
        name: value for name, value in client_options.items() if name.startswith('socket_') or name == 'retry'
    }
    sentinel_options.update({name[9:]: seconds for name, seconds in timeouts.items() if name.startswith('sentinel_')})
    sentinel_options.update(tls)
    if address.sentinel_password:
        sentinel_options.update(username=address.sentinel_username, password=address.sentinel_password)
    sentinel = Sentinel(
        list(address.hosts),
        min_other_sentinels=address.min_other_sentinels,
        sentinel_kwargs=sentinel_options,
        **client_options,
    )
    return sentinel.master_for(address.master)


def rq_settings(settings: Settings | None = None) -> dict:
    """Return rq's config for the project's Redis: `{'SENTINEL': {...}}` or `{'REDIS_URL': url}`."""
    settings = settings or get_settings()
    url = redis_url(settings)
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


def ping(connection: redis.Redis, url: str) -> None:
    """Raise `RedisUnavailable` with a helpful message unless the server answers."""
    try:
        connection.ping()
    except MasterNotFoundError as exc:
        raise RedisUnavailable(no_master_message(connection, url, exc)) from None
    except redis.AuthenticationError as exc:
        raise RedisUnavailable(
            f'Redis at {redact_url(url)} refused the credentials ({exc}); check the user and password in REDIS_URL, '
            f'for example REDIS_URL=redis://jobs:secret@127.0.0.1:6379/0.'
        ) from None
    except redis.RedisError as exc:
        raise RedisUnavailable(
            f'Cannot reach Redis at {redact_url(url)} ({exc}). Start that server, fix REDIS_URL '
            f'(for example REDIS_URL=redis://127.0.0.1:6379/0), or unset it to use the embedded server.'
        ) from None


def no_master_message(connection: redis.Redis, url: str, exc: BaseException) -> str:
    """Say in one line whether no Sentinel answered or none knows the master that `url` names."""
    address = parse_sentinel_url(url)
    answering = 0
    for sentinel in getattr(connection.connection_pool, 'sentinel_manager', Sentinel([])).sentinels:
        with contextlib.suppress(redis.RedisError):
            answering += bool(sentinel.ping())
    if not answering:
        return (
            f'No Sentinel answers at {address.sentinels} (REDIS_URL={redact_url(url)}). Start them, or fix the hosts '
            f'and sentinel_password in REDIS_URL.'
        )
    return (
        f'The Sentinels at {address.sentinels} know no usable master named {address.master!r} ({exc}); check the '
        f'name in REDIS_URL against their `sentinel monitor` line, or wait for a failover to finish.'
    )


def replicated(connection: redis.Redis, settings: Settings, what: str) -> None:
    """Return once REDIS_WAIT_REPLICAS replicas hold every write made before the call; raise `NotReplicated` if not.

    Off (returns at once) when REDIS_WAIT_REPLICAS is 0. `what` names the write for the error: 'the job abc (ping)'.
    """
    if not settings.redis_wait_replicas:
        return
    wanted = settings.redis_wait_replicas
    try:
        with connection.pipeline(transaction=False) as pipe:
            # WAIT counts the replicas holding the last write of the connection it runs on, and a pool may lend
            # another one than the caller's write went through: a write of its own first comes after the caller's
            # in the replication stream, so replicas that hold it hold the caller's too.
            pipe.set(WAIT_KEY, 1, ex=3600)
            pipe.wait(wanted, settings.redis_wait_timeout)
            acknowledged = pipe.execute()[1]
    except redis.RedisError as exc:
        acknowledged, reason = 0, f'the wait failed: {exc}'
    else:
        reason = f'{acknowledged} confirmed it within REDIS_WAIT_TIMEOUT ({settings.redis_wait_timeout} ms)'
    if acknowledged < wanted:
        raise NotReplicated(
            f'Not confirmed by the {wanted} replicas that REDIS_WAIT_REPLICAS asks for ({reason}): {what} is on the '
            f'master and may or may not survive a failover. Check the replicas (INFO replication) and retry.'
        )


def follows_failover(settings: Settings | None = None) -> bool:
    """Whether the project's Redis is reached through Sentinels, so that a lost master is soon replaced."""
    return is_sentinel_url((settings or get_settings()).redis_url)


def await_master(connection: redis.Redis, wait: float = FAILOVER_WAIT, stopped=lambda: False) -> bool:
    """Wait up to `wait` seconds (or until `stopped()`) for the (possibly new) master to answer; whether it did."""
    deadline = time.monotonic() + wait
    while not stopped():
        try:
            # A master that was demoted answers too, but refuses writes: only a writable one will do.
            if connection.info('replication').get('role') == 'master':
                return True
        except redis.RedisError as exc:
            logger.debug('waiting for the master: %s', exc)
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return False


def lost(exc: BaseException, settings: Settings | None = None) -> RedisUnavailable | None:
    """Return the project's error for a Redis that stopped answering or dropped a connection mid-command, or None."""
    if not isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return None
    return RedisUnavailable(
        f'Redis at {location(settings)} stopped answering ({exc}); check that the server is up and '
        f'not overloaded, then run the command again.'
    )
