"""The Redis connection: the server named by `REDIS_URL`, or the embedded one when it is unset."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from rqjobs.embedded import EmbeddedRedis
from rqjobs.exceptions import RedisUnavailable
from rqjobs.settings import Settings, get_settings, redact_url

# A dropped connection is retried this many times (0.2 s, 0.4 s apart) before a command fails. A timeout is not
# retried: redis-py retries both the connect (with its handshake) and the command, so each retried timeout would
# add REDIS_TIMEOUT again (about nine times it in all) before a caller heard of a server that does not answer.
RETRIES = 2
RETRIED_ERRORS = (redis.ConnectionError,)


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
        connection = redis.Redis.from_url(
            url,
            socket_connect_timeout=settings.redis_timeout,
            socket_timeout=settings.redis_timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), RETRIES, supported_errors=RETRIED_ERRORS),
        )
        if shared:
            _clients[url, settings.redis_timeout] = connection
    if check:
        ping(connection, url)
    return connection


def ping(connection: redis.Redis, url: str) -> None:
    """Raise `RedisUnavailable` with a helpful message unless the server answers."""
    try:
        connection.ping()
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


def lost(exc: BaseException, settings: Settings | None = None) -> RedisUnavailable | None:
    """Return the project's error for a Redis that stopped answering or dropped a connection mid-command, or None."""
    if not isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return None
    return RedisUnavailable(
        f'Redis at {location(settings)} stopped answering ({exc}); check that the server is up and '
        f'not overloaded, then run the command again.'
    )
