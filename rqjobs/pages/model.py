"""The language model's server: one chat completion at a time, within a per-server cap, with redacted errors.

Any OpenAI-compatible chat-completions server will do (OpenAI, Ollama, vLLM, DeepSeek). The official `openai` client
is imported only when a request is made: importing it costs about 0.3 s, which `rqjobs --help` and workers that never
write a page must not pay.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import math
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from rqjobs import clock
from rqjobs.exceptions import ModelError, ModelNotConfigured, ModelRejected, ModelUnavailable
from rqjobs.settings import Settings, get_settings, redact_url

if TYPE_CHECKING:
    import ssl

    import openai
    import redis

logger = logging.getLogger(__name__)

# Statuses that say the request itself is wrong (bad parameters, bad key, no such model): sending it again cannot help.
REJECTED_STATUSES = frozenset({400, 401, 403, 404, 422})
# Seconds to wait on a 429 that names no Retry-After.
DEFAULT_RETRY_AFTER = 5.0
# A lease outlives the longest request it covers, so that a worker killed mid-request frees its slot by itself.
LEASE_MARGIN = 30
SLOT_POLL = (0.05, 0.2)
SLOTS_KEY = 'rqjobs:llm:slots:{endpoint}'
USAGE_KEY = 'rqjobs:llm:usage:{endpoint}:{model}'
# How far a prompt-size correction moves per observation, how many recent ones it also weighs, and its bounds.
USAGE_ALPHA = 0.3
USAGE_RECENT = 5
CORRECTION_BOUNDS = (0.5, 4.0)
USAGE_TTL = 30 * 24 * 3600
# The HTTP libraries under the openai client (httpx2 in openai 3).
HTTP_LOGGERS = ('httpx', 'httpx2', 'httpcore', 'httpcore2')
CHECK_PROMPT = 'Reply with the single word OK.'
CHECK_MAX_TOKENS = 16
MESSAGE_MAX = 300
PROVIDER_MESSAGE_MAX = 160
EXAMPLE_SETTINGS = (
    'for example LLM_BASE_URL=https://api.openai.com/v1 with LLM_MODEL=gpt-4o-mini, '
    'or LLM_BASE_URL=http://127.0.0.1:11434/v1 with LLM_MODEL=qwen2.5:7b (Ollama)'
)

# Drops expired leases, then takes one if fewer than ARGV[1] are held. The clock is Redis's, the one clock every
# host shares. The key expires with its last lease, so a server no longer used leaves nothing behind.
_ACQUIRE = """
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
    redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
    return 1
end
return 0
"""
# Moves the moving average towards a new ratio and keeps the last few ratios, atomically across workers.
_RECORD = """
local ema = tonumber(redis.call('HGET', KEYS[1], 'ema'))
local ratio = tonumber(ARGV[1])
if ema then ema = ema + tonumber(ARGV[2]) * (ratio - ema) else ema = ratio end
redis.call('HSET', KEYS[1], 'ema', tostring(ema))
redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
_SECRET_PATTERNS = (
    (re.compile(r'(?i)\bBearer\s+[^\s,;\'"]+'), 'Bearer ***'),
    (re.compile(r'\bsk-[A-Za-z0-9_*.\-]{3,}'), 'sk-***'),
)
_clients: dict[tuple, openai.OpenAI] = {}
_tls: ssl.SSLContext | None = None
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class Answer:
    """One completion: its text, why it stopped, the tokens the server counted (None when it gave no `usage`)."""

    content: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    latency: float  # seconds of the request that answered
    waited: float  # seconds slept on 429s before it


# ---- Settings, names, redaction ----


def require_model(settings: Settings) -> None:
    """Raise `ModelNotConfigured` unless a model server and a model are configured."""
    if not settings.llm_base_url or not settings.llm_model:
        raise ModelNotConfigured(
            f'No language model is configured: set LLM_BASE_URL and LLM_MODEL, {EXAMPLE_SETTINGS}.'
        )


def endpoint_key(settings: Settings) -> str:
    """Return a short stable name of the model server (not of the model), for Redis keys and rq rate limits."""
    parts = urlsplit(settings.llm_base_url or '')
    # Credentials, case and a trailing slash do not make another server.
    netloc = (parts.hostname or '') + (f':{parts.port}' if parts.port else '')
    canonical = f'{parts.scheme.lower()}://{netloc.lower()}{parts.path.rstrip("/")}'
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def server_name(settings: Settings) -> str:
    """Return the model server's base URL without credentials, for messages."""
    return redact_url(settings.llm_base_url or '(no LLM_BASE_URL)')


def redact(text: str, settings: Settings | None = None) -> str:
    """Return `text` as one line without the API key or anything that looks like a token, cut to about 300 chars."""
    settings = settings or get_settings()
    if settings.llm_api_key:
        text = text.replace(settings.llm_api_key, '***')
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = re.sub(r'(?<=://)([^:/@\s]*):[^@/\s]*@', r'\1:***@', text)
    text = ' '.join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1].rstrip() + '…'


def _error(cls: type[ModelError], message: str, settings: Settings, status: int | None = None) -> ModelError:
    exc = cls(redact(message, settings))
    exc.status = status  # set after construction, so that the exception pickles with its one argument
    return exc


# ---- The client ----


def client(settings: Settings | None = None) -> openai.OpenAI:
    """Return a new official client for the model server; it never retries: the job's retry policy does."""
    import openai

    settings = settings or get_settings()
    require_model(settings)
    for name in HTTP_LOGGERS:
        # They log every request at INFO with its full URL, which may hold credentials; chat() logs its own line.
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    return openai.OpenAI(
        base_url=settings.llm_base_url,
        # The client insists on a key; a local server (Ollama, vLLM) ignores whatever it is sent.
        api_key=settings.llm_api_key or 'unused',
        timeout=settings.llm_timeout,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(timeout=settings.llm_timeout, verify=_tls_context()),
    )


def _tls_context() -> ssl.SSLContext:
    # The client's default TLS context reads the CA bundle when it is made: 40 ms of every page job, each a fresh
    # fork. A context holds no connection, so the one the worker made before forking (warm_up) serves every fork.
    global _tls
    if _tls is None:
        import httpx2  # the openai client's HTTP library; the same context it would make itself

        _tls = httpx2.create_ssl_context()
    return _tls


def warm_up(settings: Settings) -> None:
    """Import the client and the modules its first request loads, so that work horses forked after start without."""
    # Each page job runs in a fresh fork of its worker: whatever the worker has not imported, every job imports
    # again. The `openai` package, its chat resources and its HTTP stack took 0.35 s of each page job (about 0.75 s
    # against 0.4 s with a server answering in 0.3 s). The client is not kept (its sockets belong to one process),
    # its TLS context is.
    api = client(settings)
    try:
        api.chat.completions  # noqa: B018 - the resources load on first access
    finally:
        api.close()


def _shared_client(settings: Settings) -> openai.OpenAI:
    # One client (and connection pool) per process and server: an rq work horse is a fork, whose sockets must not be
    # the parent's, hence the pid in the key.
    key = (os.getpid(), settings.llm_base_url, settings.llm_api_key, settings.llm_timeout)
    with _clients_lock:
        api = _clients.get(key)
        if api is None:
            api = _clients[key] = client(settings)
        return api


# ---- Endpoint slots ----


@contextmanager
def endpoint_slot(connection: redis.Redis, settings: Settings, *, deadline: float | None = None) -> Iterator[None]:
    """Hold one of the server's `LLM_CONCURRENCY` slots, shared by every process on every host, for one request."""
    # rq's RateLimit caps the page jobs, but requests are also made outside them (a catalog proposal,
    # `rqjobs llm check`), and the cap is on requests per server across every host and every job kind; so each
    # request holds a lease in Redis. A lease expires by itself, should its holder die without releasing it.
    key = SLOTS_KEY.format(endpoint=endpoint_key(settings))
    holder = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}'
    lease = settings.llm_timeout + LEASE_MARGIN
    acquire = connection.register_script(_ACQUIRE)
    started = time.monotonic()
    while not acquire(keys=[key], args=[settings.llm_concurrency, lease, holder]):
        pause = random.uniform(*SLOT_POLL)
        if deadline is not None and time.monotonic() + pause >= deadline:
            raise _error(
                ModelUnavailable,
                f'All {settings.llm_concurrency} request slots of the model server at {server_name(settings)} stayed '
                f'busy for {time.monotonic() - started:.1f} s, until the deadline (LLM_CONCURRENCY).',
                settings,
            )
        time.sleep(pause)
    waited = time.monotonic() - started
    if waited >= 1:
        logger.debug('model slot %s taken after %.1f s', key, waited)
    try:
        yield
    finally:
        connection.zrem(key, holder)


# ---- Requests ----


def chat(
    messages: list[dict],
    *,
    settings: Settings | None = None,
    max_tokens: int | None = None,
    deadline: float | None = None,
    connection: redis.Redis | None = None,
) -> Answer:
    """Ask the model server for one completion of `messages`; wait out 429s, raise `ModelError` for anything else.

    `max_tokens` defaults to `LLM_MAX_OUTPUT_TOKENS`; `deadline` (a `time.monotonic()` value) bounds the waits and
    the request's timeout. A 429's wait (`Retry-After`) is no failed try, until the waits add up past
    `LLM_RETRY_AFTER_MAX` or the deadline.
    """
    import openai

    settings = settings or get_settings()
    require_model(settings)
    if connection is None:
        from rqjobs.connections import get_redis

        connection = get_redis(settings)
    api = _shared_client(settings)
    limit = max_tokens or settings.llm_max_output_tokens
    use_completion_tokens = False
    waited = 0.0
    while True:
        params = {'max_completion_tokens' if use_completion_tokens else 'max_tokens': limit}
        timeout = settings.llm_timeout
        try:
            with endpoint_slot(connection, settings, deadline=deadline):
                timeout = _timeout(settings, deadline)  # after the wait for a slot, which took some of the time
                started = time.monotonic()
                response = api.chat.completions.create(
                    model=settings.llm_model, messages=messages, timeout=timeout, **params
                )
                latency = time.monotonic() - started
        except openai.RateLimitError as exc:
            wait = _rate_limit_wait(exc, settings, waited, deadline)
            logger.warning(
                'model server %s rate limited the request (HTTP 429); waiting %.1f s (%.1f s waited so far)',
                server_name(settings),
                wait,
                waited,
            )
            time.sleep(wait)
            waited += wait
            continue
        except openai.APIStatusError as exc:
            # Newer OpenAI models refuse `max_tokens` and ask for `max_completion_tokens`: one more try with it.
            if exc.status_code == 400 and not use_completion_tokens and 'max_completion_tokens' in _provider(exc):
                use_completion_tokens = True
                continue
            raise _status_error(exc, settings) from None
        except openai.APITimeoutError:
            raise _error(
                ModelUnavailable,
                f'The model server at {server_name(settings)} did not answer within {timeout:g} s '
                f'(LLM_TIMEOUT={settings.llm_timeout:g}).',
                settings,
            ) from None
        except openai.APIConnectionError as exc:
            raise _error(
                ModelUnavailable,
                f'Cannot reach the model server at {server_name(settings)} ({_cause(exc)}); start it, or fix '
                f'LLM_BASE_URL, for example LLM_BASE_URL=http://127.0.0.1:11434/v1.',
                settings,
            ) from None
        except openai.OpenAIError as exc:  # an answer the client could not read as a chat completion
            raise _error(
                ModelUnavailable,
                f'The model server at {server_name(settings)} gave an answer that is not a chat completion: {exc}',
                settings,
            ) from None
        answer = _answer(response, settings, latency, waited)
        logger.debug(
            'model %s at %s answered in %.2f s: %s tokens in, %s out, finish %s',
            answer.model,
            server_name(settings),
            answer.latency,
            answer.prompt_tokens,
            answer.completion_tokens,
            answer.finish_reason,
        )
        return answer


def _timeout(settings: Settings, deadline: float | None) -> float:
    if deadline is None:
        return settings.llm_timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise _error(
            ModelUnavailable,
            f'No time was left before the deadline to ask the model server at {server_name(settings)}.',
            settings,
        )
    return min(settings.llm_timeout, left)


def _answer(response, settings: Settings, latency: float, waited: float) -> Answer:
    choices = getattr(response, 'choices', None)
    if not choices:
        raise _error(
            ModelUnavailable, f'The model server at {server_name(settings)} answered without any choice.', settings
        )
    choice = choices[0]
    message = getattr(choice, 'message', None)
    usage = getattr(response, 'usage', None)
    return Answer(
        content=(getattr(message, 'content', None) or ''),
        finish_reason=getattr(choice, 'finish_reason', None),
        prompt_tokens=getattr(usage, 'prompt_tokens', None),
        completion_tokens=getattr(usage, 'completion_tokens', None),
        model=getattr(response, 'model', None) or settings.llm_model,
        latency=latency,
        waited=waited,
    )


def _provider(exc) -> str:
    """Return the server's own message of an error answer (OpenAI, vLLM and Ollama each shape it differently)."""
    body = exc.body
    if isinstance(body, dict):
        message = body.get('message') or body.get('detail') or body.get('error')
        if message:
            return str(message)
    elif isinstance(body, str) and body.strip():
        return body
    return re.sub(r'^Error code: \d+ - ', '', str(exc.message))


def _status_error(exc, settings: Settings) -> ModelError:
    status = exc.status_code
    provider = redact(_provider(exc), settings)
    if len(provider) > PROVIDER_MESSAGE_MAX:
        provider = provider[: PROVIDER_MESSAGE_MAX - 1].rstrip() + '…'
    where = f'(server {server_name(settings)}, model {settings.llm_model})'
    if status in REJECTED_STATUSES:
        return _error(
            ModelRejected, f'The model server refused the request (HTTP {status}): {provider} {where}', settings, status
        )
    return _error(ModelUnavailable, f'The model server failed (HTTP {status}): {provider} {where}', settings, status)


def _cause(exc: BaseException) -> str:
    # The client's own message is a bare 'Connection error.'; the reason (refused, unknown host) is in its cause.
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return str(exc) or type(exc).__name__


def _rate_limit_wait(exc, settings: Settings, waited: float, deadline: float | None) -> float:
    """Return how long to wait before asking again, or raise when the wait would go past the limits."""
    if isinstance(exc.body, dict) and exc.body.get('code') == 'insufficient_quota':
        # OpenAI answers 429 also to an account out of credit, which no wait mends.
        raise _status_error(exc, settings) from None
    wait = retry_after(exc.response.headers)
    reason = None
    if waited + wait > settings.llm_retry_after_max:
        reason = f'past LLM_RETRY_AFTER_MAX={settings.llm_retry_after_max}'
    elif deadline is not None and time.monotonic() + wait >= deadline:
        reason = 'past the deadline'
    if reason:
        raise _error(
            ModelUnavailable,
            f'The model server at {server_name(settings)} is rate limiting (HTTP 429): after {waited:.1f} s of '
            f'waiting it asks for {wait:.1f} s more, {reason}.',
            settings,
            429,
        ) from None
    return wait


def retry_after(headers) -> float:
    """Return the seconds a 429 answer asks to wait: `retry-after-ms`, else `Retry-After` (seconds or a date)."""
    raw_ms = headers.get('retry-after-ms')
    if raw_ms:
        try:
            value = float(raw_ms) / 1000
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
    raw = (headers.get('retry-after') or '').strip()
    if raw:
        try:
            value = float(raw)
            if math.isfinite(value):
                return max(0.0, value)
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is not None:
                when = when.astimezone(UTC).replace(tzinfo=None)  # the clock's naive UTC
            return max(0.0, (when - clock.utcnow()).total_seconds())
    return DEFAULT_RETRY_AFTER


# ---- Prompt sizes ----


def _usage_keys(settings: Settings) -> list[str]:
    model = hashlib.sha256((settings.llm_model or '').encode()).hexdigest()[:12]
    key = USAGE_KEY.format(endpoint=endpoint_key(settings), model=model)
    return [key, f'{key}:recent']


def record_usage(connection: redis.Redis, settings: Settings, estimated_tokens: int, prompt_tokens: int) -> None:
    """Learn how far a prompt's estimated size was from the tokens the server counted (its `usage`)."""
    if not estimated_tokens or not prompt_tokens or estimated_tokens <= 0 or prompt_tokens <= 0:
        return  # a server that reports no usage teaches nothing
    low, high = CORRECTION_BOUNDS
    ratio = min(high, max(low, prompt_tokens / estimated_tokens))
    connection.register_script(_RECORD)(
        keys=_usage_keys(settings), args=[f'{ratio:.4f}', USAGE_ALPHA, USAGE_RECENT, USAGE_TTL]
    )


def correction(connection: redis.Redis, settings: Settings) -> float:
    """Return the factor to multiply a prompt's estimated size by for this server and model (default 1.0)."""
    key, recent_key = _usage_keys(settings)
    with connection.pipeline(transaction=False) as pipe:
        pipe.hget(key, 'ema')
        pipe.lrange(recent_key, 0, USAGE_RECENT - 1)
        ema, recent = pipe.execute()
    observed = [float(value) for value in ([ema] if ema is not None else []) + list(recent)]
    if not observed:
        return 1.0
    # The larger of the average and the last few: a prompt estimated too small overflows the context window,
    # one estimated too large only leaves room unused.
    low, high = CORRECTION_BOUNDS
    return min(high, max(low, max(observed)))


# ---- Checking the configuration ----


def check(settings: Settings | None = None, connection: redis.Redis | None = None) -> dict:
    """Send the model server one tiny request and return what it answered and how fast."""
    settings = settings or get_settings()
    require_model(settings)
    # A person is waiting: a rate-limited server is reported within about one request's time, not after minutes.
    deadline = time.monotonic() + settings.llm_timeout + 10
    answer = chat(
        [{'role': 'user', 'content': CHECK_PROMPT}],
        settings=settings,
        max_tokens=CHECK_MAX_TOKENS,
        deadline=deadline,
        connection=connection,
    )
    return {
        'base_url': server_name(settings),
        'model': answer.model,
        'latency': round(answer.latency, 3),
        'prompt_tokens': answer.prompt_tokens,
        'completion_tokens': answer.completion_tokens,
        'finish_reason': answer.finish_reason,
        'content': answer.content.strip(),
    }
