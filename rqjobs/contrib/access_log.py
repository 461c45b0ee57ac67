"""The access-log producer, on the web application's side: requests become entries in a Redis buffer.

The web application (or `AccessLogMiddleware` in front of it) appends one compact JSON entry per request to a
capped Redis list with `enqueue_access_log`, which never raises and never waits long: past the cap, with Redis down
or with a malformed entry it drops the entry and counts the drop. It runs on every request, so it costs
microseconds and imports no ORM; the `access_log` queue's jobs (`rqjobs.access_log`) store the entries.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import logging
import math
import operator
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import urandom
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from rqjobs import clock, connections
from rqjobs.exceptions import NotReplicated
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# ---- Redis keys, all of them ----

BUFFER_KEY = 'rqjobs:access_log:buffer'
PROCESSING_KEY = 'rqjobs:access_log:processing'
DEAD_KEY = 'rqjobs:access_log:dead'
# A hash of drop counts by reason: `full` (over ACCESS_LOG_BUFFER_MAX) and `invalid` (refused by the producer).
DROPPED_KEY = 'rqjobs:access_log:dropped'
LOCK_KEY = 'rqjobs:access_log:lock'
# Already bytes: the client would encode them again on every enqueue.
_ENQUEUE_KEYS = (BUFFER_KEY.encode(), DROPPED_KEY.encode())

# ---- Caps ----

# Characters per string field; the identifiers match their columns, the free text is cut by producers.
FIELD_LIMITS = {
    'event_id': 64,
    'resource_type': 32,
    'resource_id': 191,
    'user_id': 36,
    'ip_address': 45,
    'method': 16,
    'user_agent': 512,
    'path': 2048,
}
USER_AGENT_MAX = FIELD_LIMITS['user_agent']
PATH_MAX = FIELD_LIMITS['path']
RESPONSE_TIME_MAX = 3_600_000  # ms: an hour
EARLIEST = datetime(1970, 1, 1)
# Clocks of web hosts and workers disagree a little; a day ahead is a broken clock, kept out of the table.
FUTURE_TOLERANCE = timedelta(days=1)

# ---- Timing ----

# A producer waits this long for Redis at most, then drops; after a failure it stops trying for a second, so a dead
# server costs requests nothing.
PRODUCER_TIMEOUT = 0.5
PRODUCER_PAUSE = 1.0
# Entries per script call: Lua's unpack() is limited to a few thousand values.
SCRIPT_CHUNK = 1000

_EVENT_ID = re.compile(r'[A-Za-z0-9_.:-]{1,64}')

# ---- Lua scripts ----

# KEYS: buffer, dropped. ARGV: cap, invalid count, entries... Pushes what fits under the cap, counts the rest.
_ENQUEUE = """
local n = #ARGV - 2
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
if room > n then room = n end
if room < 0 then room = 0 end
if room > 0 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 3, room + 2)) end
if room < n then redis.call('HINCRBY', KEYS[2], 'full', n - room) end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[2], 'invalid', ARGV[2]) end
return room
"""
# The same for one valid entry (ARGV: cap, entry): most calls, and a few microseconds less work for Redis.
_ENQUEUE_ONE = """
if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  return 1
end
redis.call('HINCRBY', KEYS[2], 'full', 1)
return 0
"""


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def run_script(connection: redis.Redis, script: str, keys: tuple, args: tuple) -> Any:
    """Run a Lua script by its SHA, loading it first into a server that does not know it yet."""
    # What redis-py's register_script() objects do, without them: each holds its client, so a cache of them per
    # client would keep every client (and its sockets) alive for good.
    try:
        return connection.evalsha(_sha(script), len(keys), *keys, *args)
    except NoScriptError:
        connection.script_load(script)
        return connection.evalsha(_sha(script), len(keys), *keys, *args)


# ---- Validation, shared with the drain ----


def _text(value: Any, name: str, *, required: bool = False, nullable: bool = False, cut: bool = False) -> Any:
    if value is None or (required and value == ''):
        if required:
            raise ValueError(f'{name} is missing')
        return None if nullable else ''
    if type(value) is not str:
        if not isinstance(value, str):
            raise ValueError(f'{name} must be a string, not {type(value).__name__}')
        # A subclass (markupsafe's Markup, say) is its text, as validate()'s combined check takes it.
        value = str.__str__(value)
    limit = FIELD_LIMITS[name]
    if len(value) > limit:
        if not cut:
            raise ValueError(f'{name} is longer than {limit} characters')
        value = value[:limit]
    if not value.isascii():
        try:
            value.encode('utf-8')
        except UnicodeEncodeError:
            raise ValueError(f'{name} is not valid unicode (a lone surrogate)') from None
    if '\x00' in value:
        raise ValueError(f'{name} contains a NUL character')
    return value


def _number(value: Any, name: str, low: int, high: int) -> int:
    if value is None:
        return 0
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f'{name} is not a finite number')
        value = round(value)
    elif kind is not int:
        raise ValueError(f'{name} must be a number, not {kind.__name__}')
    if not low <= value <= high:
        raise ValueError(f'{name} {value} is outside {low}..{high}')
    return value


def _moment(value: Any, now: datetime, latest: datetime | None = None) -> datetime:
    kind = type(value)
    if kind is str:
        if len(value) > 40:
            raise ValueError('access_time is not an ISO 8601 date')
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f'access_time {value!r} is not an ISO 8601 date') from None
    elif kind is int or kind is float:
        if not math.isfinite(value):
            raise ValueError('access_time is not a finite number')
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f'access_time {value!r} is out of range') from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise ValueError(f'access_time must be an ISO 8601 string or seconds since 1970, not {kind.__name__}')
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    if not EARLIEST <= moment <= (latest or now + FUTURE_TOLERANCE):
        raise ValueError(f'access_time {moment.isoformat()} is out of range')
    return moment


_ENTRY_KEYS = (
    'event_id',
    'resource_type',
    'resource_id',
    'user_id',
    'ip_address',
    'user_agent',
    'path',
    'method',
    'status_code',
    'response_time',
    'access_time',
)
_all_fields = operator.itemgetter(*_ENTRY_KEYS)


def _fields(data: Mapping[str, Any]) -> tuple:
    get = data.get
    return (
        get('event_id'),
        get('resource_type'),
        get('resource_id'),
        get('user_id'),
        get('ip_address', ''),
        get('user_agent', ''),
        get('path', ''),
        get('method', ''),
        get('status_code'),
        get('response_time'),
        get('access_time'),
    )


def validate(data: Mapping[str, Any], now: datetime, *, producer: bool, latest: datetime | None = None) -> tuple:
    """Return the row values of one entry (without `created_at`), or raise ValueError saying what is wrong.

    A producer gets an event id made for it, its free text cut to the caps and an address that is not an IP
    blanked; the drain refuses all three, since a producer never sends them. `latest` is the latest access time
    accepted (default: a day after `now`).
    """
    if producer:
        fields = _fields(data)
    else:
        try:
            # Entries from producers have every key: one lookup for all of them.
            fields = _all_fields(data)
        except KeyError:
            fields = _fields(data)
    (
        event_id,
        resource_type,
        resource_id,
        user_id,
        address,
        user_agent,
        path,
        method,
        status_code,
        response_time,
        access_time,
    ) = fields
    if event_id is None:
        if not producer:
            raise ValueError('event_id is missing')
        event_id = _new_event_id()
    elif type(event_id) is not str or not (
        len(event_id) == 32 and event_id.isascii() and event_id.isalnum() or _EVENT_ID.fullmatch(event_id)
    ):
        raise ValueError('event_id must be 1 to 64 letters, digits, _ . : or -')
    try:
        # Every text field at once: one pass over their characters instead of one call per field.
        joined = ''.join(
            (resource_type, resource_id, address, user_agent, path, method, '' if user_id is None else user_id)
        )
    except TypeError:
        joined = None
    if (
        joined is None
        or '\x00' in joined
        or not (joined.isascii() or _is_utf8(joined))
        or not resource_type
        or not resource_id
        or len(resource_type) > 32
        or len(resource_id) > 191
        or len(address) > 45
        or len(user_agent) > USER_AGENT_MAX
        or len(path) > PATH_MAX
        or len(method) > 16
        or (user_id is not None and len(user_id) > 36)
    ):
        # The slow path, field by field: it cuts what a producer may cut, or says exactly what is wrong.
        resource_type = _text(resource_type, 'resource_type', required=True)
        resource_id = _text(resource_id, 'resource_id', required=True)
        user_id = _text(user_id, 'user_id', nullable=True)
        address = _text(address, 'ip_address', cut=producer)
        user_agent = _text(user_agent, 'user_agent', cut=producer)
        path = _text(path, 'path', cut=producer)
        method = _text(method, 'method')
    if address:
        ip = _parse_ip(address) if len(address) <= 45 else None
        if ip is None and not producer:
            raise ValueError('ip_address is not an IP address')
        address = ip or ''
    # The usual values pass these two tests; anything else gets the full check and its message.
    if type(status_code) is not int or not 100 <= status_code <= 599:
        status_code = _status(status_code)
    if type(response_time) is not int or not 0 <= response_time <= RESPONSE_TIME_MAX:
        response_time = _number(response_time, 'response_time', 0, RESPONSE_TIME_MAX)
    return (
        event_id,
        resource_type,
        resource_id,
        user_id,
        address,
        user_agent,
        path,
        method,
        status_code,
        response_time,
        now if access_time is None else _moment(access_time, now, latest),
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


def _new_event_id() -> str:
    # What uuid.uuid4().hex returns, without building a UUID object on the producers' hot path.
    value = bytearray(urandom(16))
    value[6] = value[6] & 0x0F | 0x40
    value[8] = value[8] & 0x3F | 0x80
    return value.hex()


def _status(value: Any) -> int:
    if value is None:
        return 0
    if type(value) is not int or not (100 <= value <= 599 or value == 0):
        raise ValueError(f'status_code {value!r} is not an HTTP status (100..599, or 0 for unknown)')
    return value


_quote = json.encoder.encode_basestring
_PAYLOAD = (
    '{"event_id":%s,"resource_type":%s,"resource_id":%s,"user_id":%s,"ip_address":%s,"user_agent":%s,'
    '"path":%s,"method":%s,"status_code":%d,"response_time":%d,"access_time":"%s"}'
)


def _payload(entry: Any, now: datetime) -> bytes:
    """Return the compact JSON (UTF-8) of one valid entry, or raise ValueError or TypeError."""
    if type(entry) is not dict and not isinstance(entry, Mapping):
        raise TypeError(f'an entry must be a mapping, not {type(entry).__name__}')
    (
        event_id,
        resource_type,
        resource_id,
        user_id,
        ip_address,
        user_agent,
        path,
        method,
        status_code,
        response_time,
        access_time,
    ) = validate(entry, now, producer=True)
    # json.dumps of the same dict, spelled out: every value is already checked, so only strings need quoting.
    text = _PAYLOAD % (
        _quote(event_id),
        _quote(resource_type),
        _quote(resource_id),
        'null' if user_id is None else _quote(user_id),
        _quote(ip_address),
        _quote(user_agent),
        _quote(path),
        _quote(method),
        status_code,
        response_time,
        access_time.isoformat(timespec='microseconds'),
    )
    return text.encode()


# ---- Producing ----

_drops: Counter[str] = Counter()
_drops_lock = threading.Lock()


def local_drop_count(reason: str | None = None) -> int:
    """Return how many entries this process dropped (all, or for one reason).

    Reasons: invalid, full, unavailable, error, and unreplicated (stored, but not confirmed by REDIS_WAIT_REPLICAS
    replicas in time: it may or may not survive a failover).
    """
    with _drops_lock:
        return _drops[reason] if reason else sum(_drops.values())


def _drop(reason: str, count: int) -> None:
    if count > 0:
        with _drops_lock:
            _drops[reason] += count


@dataclass
class _Producer:
    """The process's Redis client for producers: short timeouts, no retries, a pause after a failure."""

    settings: Settings
    connection: redis.Redis
    paused_until: float = 0.0

    def serves(self, settings: Settings) -> bool:
        """Return whether this client talks to the Redis that `settings` name."""
        return self.settings is settings or (_client_key(self.settings) == _client_key(settings))


def _client_key(settings: Settings) -> tuple:
    return (
        settings.redis_url,
        settings.data_dir,
        settings.redis_timeout,
        settings.redis_wait_replicas,
        settings.redis_wait_timeout,
    )


_producer: _Producer | None = None
_producer_lock = threading.Lock()


def _producer_client(settings: Settings) -> _Producer:
    global _producer
    producer = _producer
    if producer is not None and producer.serves(settings):
        return producer
    with _producer_lock:
        if _producer is None or not _producer.serves(settings):
            timeout = min(settings.redis_timeout, PRODUCER_TIMEOUT)
            client = connections.from_url(
                connections.redis_url(settings),
                socket_connect_timeout=timeout,
                # With REDIS_WAIT_REPLICAS, a reply may wait for the replicas for up to REDIS_WAIT_TIMEOUT.
                socket_timeout=timeout + (settings.redis_wait_timeout / 1000 if settings.redis_wait_replicas else 0),
                retry=Retry(NoBackoff(), 0),
            )
            _producer = _Producer(settings, client)
        return _producer


def enqueue_access_log(
    entry: Mapping[str, Any], *, connection: redis.Redis | None = None, settings: Settings | None = None
) -> bool:
    """Append one request to the access-log buffer; return False, and count the drop, when it cannot.

    `entry` holds resource_type and resource_id, and optionally user_id, ip_address, user_agent, path, method,
    status_code, response_time (ms), access_time (datetime, ISO 8601 or epoch seconds; default now) and event_id.
    Never raises.
    """
    try:
        settings = settings or get_settings()
        now = clock.utcnow()
        try:
            payloads, invalid = [_payload(entry, now)], 0
        except (ValueError, TypeError) as exc:
            logger.debug('access log: entry refused: %s', exc)
            payloads, invalid = [], 1
    except Exception:
        logger.debug('access log: entry dropped', exc_info=True)
        _drop('error', 1)
        return False
    return _push(payloads, invalid, connection, settings) == 1


def enqueue_access_logs(
    entries: Iterable[Mapping[str, Any]], *, connection: redis.Redis | None = None, settings: Settings | None = None
) -> int:
    """Append many requests to the access-log buffer, one round trip per 1,000; return how many were accepted."""
    payloads: list[bytes] = []
    invalid = 0
    try:
        settings = settings or get_settings()
        now = clock.utcnow()
        for entry in entries:
            try:
                payloads.append(_payload(entry, now))
            except (ValueError, TypeError) as exc:
                invalid += 1
                logger.debug('access log: entry refused: %s', exc)
    except Exception:
        logger.debug('access log: %d entries dropped', len(payloads) + invalid, exc_info=True)
        _drop('error', len(payloads) + invalid or 1)
        return 0
    return _push(payloads, invalid, connection, settings)


def _push(payloads: list[bytes], invalid: int, connection: redis.Redis | None, settings: Settings) -> int:
    """Run the enqueue script on the payloads and count every entry that does not make it; never raise."""
    if not payloads and not invalid:
        return 0
    accepted = sent = 0
    producer = None
    try:
        if connection is None:
            producer = _producer_client(settings)
            if producer.paused_until and producer.paused_until > time.monotonic():
                _drop('unavailable', len(payloads))
                _drop('invalid', invalid)
                return 0
            connection = producer.connection
        cap = settings.access_log_buffer_max
        if len(payloads) == 1 and not invalid:
            accepted = run_script(connection, _ENQUEUE_ONE, _ENQUEUE_KEYS, (cap, payloads[0]))
            sent = 1
        elif len(payloads) <= SCRIPT_CHUNK:
            accepted = run_script(connection, _ENQUEUE, _ENQUEUE_KEYS, (cap, invalid, *payloads))
            sent = len(payloads)
        else:
            for start in range(0, len(payloads), SCRIPT_CHUNK):
                chunk = payloads[start : start + SCRIPT_CHUNK]
                accepted += run_script(connection, _ENQUEUE, _ENQUEUE_KEYS, (cap, invalid if start == 0 else 0, *chunk))
                sent += len(chunk)
        if producer is not None:
            producer.paused_until = 0.0
        if accepted:
            connections.replicated(connection, settings, f'access-log entries ({accepted})')
    except NotReplicated as exc:
        # Stored on the master but not yet on enough replicas: not acknowledged, since a failover could lose it.
        logger.debug('access log: %d entries not acknowledged: %s', accepted, exc)
        _drop('unreplicated', accepted)
        sent -= accepted
        accepted = 0
    except redis.RedisError as exc:
        if producer is not None:
            producer.paused_until = time.monotonic() + PRODUCER_PAUSE
        logger.debug('access log: Redis unavailable, %d entries dropped: %s', len(payloads) - sent, exc)
        _drop('unavailable', len(payloads) - sent)
    except Exception:
        logger.debug('access log: %d entries dropped', len(payloads) - sent, exc_info=True)
        _drop('error', len(payloads) - sent)
    _drop('invalid', invalid)
    _drop('full', sent - accepted)
    return accepted


# ---- Requests ----

IP_HEADERS = (
    'cf-connecting-ip',
    'x-forwarded-for',
    'x-real-ip',
    'x-client-ip',
    'true-client-ip',
    'x-cluster-client-ip',
)
STATIC_EXTENSIONS = frozenset(
    (
        '.css',
        '.js',
        '.mjs',
        '.map',
        '.png',
        '.jpg',
        '.jpeg',
        '.gif',
        '.svg',
        '.ico',
        '.webp',
        '.avif',
        '.bmp',
        '.woff',
        '.woff2',
        '.ttf',
        '.otf',
        '.eot',
        '.webmanifest',
    )
)
# Paths (and everything under them) that are machinery, not readers.
SKIPPED_PATHS = (
    '/static',
    '/assets',
    '/_next',
    '/favicon.ico',
    '/robots.txt',
    '/health',
    '/healthz',
    '/metrics',
    '/swagger',
    '/swagger-ui',
    '/openapi.json',
    '/docs',
    '/redoc',
)
# First path segments that are the platform's own pages rather than `/{owner}/{name}` repositories.
KNOWN_PAGES = frozenset(
    ('login', 'logout', 'register', 'about', 'settings', 'profile', 'privacy', 'terms', 'search', 'admin', 'api')
)


def client_address(value: str) -> str | None:
    """Return the IP address in `value` (an address, with or without port or brackets) in normal form, or None."""
    if not isinstance(value, str) or len(value) > 100:
        return None
    return _parse_ip(value)


@functools.lru_cache(maxsize=4096)
def _parse_ip(value: str) -> str | None:
    text = value.strip().strip('"')
    if text.startswith('['):
        text = text[1 : text.find(']')] if ']' in text else ''
    elif text.count(':') == 1:
        text = text.partition(':')[0]
    try:
        address = str(ipaddress.ip_address(text))
    except ValueError:
        return None
    return address if len(address) <= FIELD_LIMITS['ip_address'] else None


def client_ip(headers: Mapping[str, str], remote_addr: str | None) -> str:
    """Return the client's IP: the first valid of the proxy headers in the original platform's order, else the peer.

    The headers can be forged by a client that reaches the application without a proxy; they are trusted as the
    original platform trusted them.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in IP_HEADERS:
        value = lowered.get(name)
        if value:
            ip = client_address(value.split(',', 1)[0])
            if ip:
                return ip
    forwarded = lowered.get('forwarded')
    if forwarded:
        for part in forwarded.split(',', 1)[0].split(';'):
            key, _, value = part.strip().partition('=')
            if key.lower() == 'for':
                ip = client_address(value)
                if ip:
                    return ip
    return client_address(remote_addr or '') or ''


def is_skipped(path: str) -> bool:
    """Return whether a request path is an asset or machinery that the access log leaves out."""
    lowered = path.lower()
    name = lowered.rsplit('/', 1)[-1]
    if '.' in name and name[name.rfind('.') :] in STATIC_EXTENSIONS:
        return True
    return any(lowered == prefix or lowered.startswith(prefix + '/') for prefix in SKIPPED_PATHS)


def resource_of(path: str) -> tuple[str, str]:
    """Return the (resource_type, resource_id) a request path is about."""
    parts = [part for part in path.split('/') if part]
    head = parts[0].lower() if parts else ''
    limit = FIELD_LIMITS['resource_id']
    if head == 'api' and len(parts) > 1:
        return 'API', '/'.join(parts[1:3])[:limit]
    if head == 'admin':
        return 'Admin', ('/'.join(parts[1:]) or 'index')[:limit]
    if head == 'search' and len(parts) > 1:
        return 'Search', '/'.join(parts[1:])[:limit]
    if len(parts) < 2 or head in KNOWN_PAGES:
        return 'Page', ('/' + '/'.join(parts))[:limit]
    return 'Repository', f'{parts[0]}/{parts[1]}'.lower()[:limit]


def entry_from_request(
    method: str,
    path: str,
    headers: Mapping[str, str],
    remote_addr: str | None,
    status_code: int,
    elapsed_ms: float,
    user_id: str | None = None,
) -> dict | None:
    """Return the access-log entry of one request, or None for assets and machinery that are not logged.

    `path` is the request path without the query string (anything after `?` is dropped: it may carry tokens).
    """
    path = path.split('?', 1)[0].split('#', 1)[0] or '/'
    if is_skipped(path):
        return None
    resource_type, resource_id = resource_of(path)
    user_agent = next((value for name, value in headers.items() if name.lower() == 'user-agent'), '')
    return {
        'resource_type': resource_type,
        'resource_id': resource_id.replace('\x00', '\ufffd'),
        'user_id': user_id,
        'ip_address': client_ip(headers, remote_addr),
        'user_agent': user_agent[:USER_AGENT_MAX].replace('\x00', '\ufffd'),
        'path': path[:PATH_MAX].replace('\x00', '\ufffd'),
        'method': (method or '').upper()[: FIELD_LIMITS['method']],
        'status_code': status_code,
        'response_time': min(max(elapsed_ms, 0), RESPONSE_TIME_MAX),
    }


def _environ_user(environ: Mapping[str, Any]) -> str | None:
    return environ.get('rqjobs.user_id')


class AccessLogMiddleware:
    """WSGI middleware that records every request it passes on with `enqueue_access_log`; it never breaks the app.

    `user_id(environ)` names the signed-in user; the default reads `environ['rqjobs.user_id']`, which the
    application sets while it handles the request.
    """

    def __init__(
        self,
        app: Callable,
        *,
        user_id: Callable[[Mapping[str, Any]], str | None] = _environ_user,
        connection: redis.Redis | None = None,
    ):
        self.app = app
        self.user_id = user_id
        self.connection = connection

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        started = time.perf_counter()
        status: list[int] = []

        def recording_start_response(status_line: str, headers: list, exc_info=None):
            status[:] = [_status_code(status_line)]
            return start_response(status_line, headers, exc_info)

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            self._record(environ, 500, started)
            raise
        return _ClosingBody(body, lambda: self._record(environ, status[0] if status else 500, started))

    def _record(self, environ: Mapping[str, Any], status_code: int, started: float) -> None:
        try:
            elapsed = (time.perf_counter() - started) * 1000
            headers = {key[5:].replace('_', '-'): value for key, value in environ.items() if key.startswith('HTTP_')}
            raw_path = environ.get('PATH_INFO') or '/'
            try:
                # PEP 3333 hands the path over as latin-1; browsers send UTF-8.
                path = raw_path.encode('latin-1').decode('utf-8')
            except UnicodeError:
                path = raw_path
            user = self.user_id(environ) if self.user_id else None
            entry = entry_from_request(
                environ.get('REQUEST_METHOD', ''),
                path,
                headers,
                environ.get('REMOTE_ADDR'),
                status_code,
                elapsed,
                None if user is None else str(user),
            )
            if entry is not None:
                enqueue_access_log(entry, connection=self.connection)
        except Exception:
            logger.debug('access log: recording a request failed', exc_info=True)
            _drop('error', 1)


def _status_code(status_line: str) -> int:
    try:
        return int(status_line[:3])
    except (TypeError, ValueError):
        return 0


class _ClosingBody:
    """A response body that records the request once the server closes it, after forwarding `close()`."""

    def __init__(self, body: Iterable[bytes], on_close: Callable[[], None]):
        self.body = body
        self.on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, 'close', None)
            if close is not None:
                close()
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()
