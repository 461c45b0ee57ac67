"""Settings, read once from the environment into a frozen object.

Every variable is documented in docs/settings.md with its default. A bad value fails at once with a message that
names the variable and shows a good value, before any job or command does work with it.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from rqjobs.exceptions import SettingsError

# Every environment variable the settings read, each documented in docs/settings.md.
VARIABLES = (
    'REDIS_URL',
    'REDIS_TIMEOUT',
    'REDIS_WAIT_REPLICAS',
    'REDIS_WAIT_TIMEOUT',
    'DATABASE_URL',
    'JOBS_DATA_DIR',
    'REPO_ROOT',
    'JOBS_HOST_NAME',
    'UPDATE_INTERVAL',
    'DATABASE_CONNECT_TIMEOUT',
    'ENABLE_WAREHOUSE_COMMIT',
    'TASK_MAX_SIZE_PER_USER',
    'JOB_TIMEOUT',
    'SOFT_TIME_LIMIT',
    'RESULT_TTL',
    'FAILURE_TTL',
    'JOBS_EXTRA_MODULES',
    'ALLOW_LOCAL_REPOSITORIES',
    'GIT_ALLOW_SSH',
    'GIT_ALLOW_PRIVATE_HOSTS',
    'GIT_CLONE_TIMEOUT',
    'GIT_MAX_REPO_SIZE',
    'GIT_MAX_REPO_FILES',
    'BACKUP_DIR',
    'JOBS_SECRET_KEY',
    'JOBS_ADMIN_PASSWORD',
    'JOBS_SCHEDULE',
    'ACCESS_LOG_BUFFER_MAX',
    'ACCESS_LOG_BATCH_SIZE',
    'ACCESS_LOG_MAX_PER_RUN',
    'ACCESS_LOG_CONTINUE',
    'JOB_ARGS_MAX_SIZE',
    'LLM_BASE_URL',
    'LLM_MODEL',
    'LLM_API_KEY',
    'LLM_TIMEOUT',
    'LLM_CONTEXT_TOKENS',
    'LLM_MAX_OUTPUT_TOKENS',
    'LLM_CONCURRENCY',
    'LLM_LANGUAGE',
    'LLM_CATALOG',
    'LLM_TOKEN_BUDGET',
    'LLM_RETRY_AFTER_MAX',
    'LLM_RETRY_BACKOFF',
)
LLM_CATALOGS = ('deterministic', 'model')
_TRUE = {'1', 'true', 'yes', 'on'}
_FALSE = {'0', 'false', 'no', 'off'}
_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
_QUEUE_NAME = re.compile(r'[a-z][a-z0-9_-]{0,63}')
_REDIS_SCHEMES = ('redis://', 'rediss://', 'unix://', 'redis+sentinel://', 'rediss+sentinel://')
SENTINEL_SCHEMES = ('redis+sentinel://', 'rediss+sentinel://')
SENTINEL_PORT = 26379
SENTINEL_EXAMPLE = 'redis+sentinel://jobs:secret@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster/0'
# The query parameters of a Sentinel URL: rq-dashboard's (redis_sentinel_url's), and the project's own for TLS and
# a password of the Sentinels themselves, which rq-dashboard takes from its settings instead.
_SENTINEL_TIMEOUTS = (
    'socket_timeout',
    'socket_connect_timeout',
    'sentinel_socket_timeout',
    'sentinel_socket_connect_timeout',
)
_SENTINEL_OPTIONS = (
    *_SENTINEL_TIMEOUTS,
    'db',
    'service',
    'client_type',
    'min_other_sentinels',
    'sentinel_username',
    'sentinel_password',
    'ssl',
    'ssl_cert_reqs',
    'ssl_ca_certs',
)
_SSL_CERT_REQS = ('none', 'optional', 'required')
# The database URL schemes rqjobs.database opens (peewee's playhouse.db_url names), and a good value of each.
SUPPORTED_SCHEMES = ('sqlite', 'postgres', 'postgresql', 'mysql')
EXAMPLE_URLS = (
    'sqlite:///var/rqjobs.db, postgresql://user:password@127.0.0.1:5432/rqjobs '
    'or mysql://user:password@127.0.0.1:3306/rqjobs'
)


@dataclass(frozen=True)
class Settings:
    """The project's configuration; build it with `Settings.from_env()`."""

    redis_url: str | None = None
    data_dir: Path = Path('var')
    database_url: str = ''
    database_connect_timeout: int = 5
    repo_root: Path = Path('var/repos')
    host_name: str = 'localhost'
    backup_dir: Path = Path('var/backups')
    update_interval_days: int = 7
    enable_warehouse_commit: bool = True
    task_max_size_per_user: int = 5
    job_timeout: int = 1800
    soft_time_limit: int = 1500
    result_ttl: int = 3600
    failure_ttl: int = 7 * 24 * 3600
    redis_timeout: float = 5.0
    redis_wait_replicas: int = 0
    redis_wait_timeout: int = 1000
    extra_job_modules: tuple[tuple[str, str], ...] = field(default=())
    allow_local_repositories: bool = False
    git_allow_ssh: bool = False
    git_allow_private_hosts: bool = False
    git_clone_timeout: int = 600
    git_max_repo_size_mb: int = 1024
    git_max_repo_files: int = 100_000
    secret_key: str | None = field(default=None, repr=False)
    admin_password: str | None = field(default=None, repr=False)
    schedule_overrides: tuple[tuple[str, str], ...] = field(default=())
    access_log_buffer_max: int = 100_000
    access_log_batch_size: int = 1000
    access_log_max_per_run: int = 50_000
    access_log_continue: bool = True
    job_args_max_size: int = 65_536
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = field(default=None, repr=False)
    llm_timeout: float = 120.0
    llm_context_tokens: int = 16_384
    llm_max_output_tokens: int = 2048
    llm_concurrency: int = 4
    llm_language: str = 'English'
    llm_catalog: str = 'deterministic'
    llm_token_budget: int = 0
    llm_retry_after_max: int = 300
    llm_retry_backoff: int = 10

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `environ` (default: the process environment) and validate it."""
        env = os.environ if environ is None else environ
        data_dir = Path(_get(env, 'JOBS_DATA_DIR') or 'var').expanduser().resolve()
        redis_url = _redis_url(env)
        database_url = _get(env, 'DATABASE_URL') or f'sqlite:///{data_dir / "rqjobs.db"}'
        _check_database_url(database_url)
        repo_root = Path(_get(env, 'REPO_ROOT') or data_dir / 'repos').expanduser().resolve()
        backup_dir = Path(_get(env, 'BACKUP_DIR') or data_dir / 'backups').expanduser().resolve()
        job_timeout = _int(env, 'JOB_TIMEOUT', 1800, minimum=10, example='1800')
        soft_time_limit = _int(env, 'SOFT_TIME_LIMIT', min(1500, job_timeout - 5), minimum=1, example='1500')
        if soft_time_limit >= job_timeout:
            raise SettingsError(
                f'SOFT_TIME_LIMIT ({soft_time_limit}) must be below JOB_TIMEOUT ({job_timeout}), so that a job gets '
                f'its chance to clean up before it is killed; for example SOFT_TIME_LIMIT=1500 with JOB_TIMEOUT=1800.'
            )
        redis_timeout = _float(env, 'REDIS_TIMEOUT', 5.0, minimum=0.1, example='5')
        redis_wait_replicas = _int(env, 'REDIS_WAIT_REPLICAS', 0, minimum=0, example='1')
        redis_wait_timeout = _int(env, 'REDIS_WAIT_TIMEOUT', 1000, minimum=1, example='1000')
        if redis_wait_replicas and redis_wait_timeout >= redis_timeout * 1000:
            raise SettingsError(
                f'REDIS_WAIT_TIMEOUT ({redis_wait_timeout} ms) must be below REDIS_TIMEOUT ({redis_timeout:g} s), '
                f'or the client gives up on the reply first; for example REDIS_WAIT_TIMEOUT=1000 with REDIS_TIMEOUT=5.'
            )
        return cls(
            redis_url=redis_url,
            data_dir=data_dir,
            database_url=database_url,
            database_connect_timeout=_int(env, 'DATABASE_CONNECT_TIMEOUT', 5, minimum=1, example='5'),
            repo_root=repo_root,
            host_name=host_name(_get(env, 'JOBS_HOST_NAME') or socket.gethostname()),
            backup_dir=backup_dir,
            update_interval_days=_int(env, 'UPDATE_INTERVAL', 7, minimum=1, example='7'),
            enable_warehouse_commit=_bool(env, 'ENABLE_WAREHOUSE_COMMIT', True),
            task_max_size_per_user=_int(env, 'TASK_MAX_SIZE_PER_USER', 5, minimum=1, example='5'),
            job_timeout=job_timeout,
            soft_time_limit=soft_time_limit,
            result_ttl=_int(env, 'RESULT_TTL', 3600, minimum=0, example='3600'),
            failure_ttl=_int(env, 'FAILURE_TTL', 7 * 24 * 3600, minimum=60, example='604800'),
            redis_timeout=redis_timeout,
            redis_wait_replicas=redis_wait_replicas,
            redis_wait_timeout=redis_wait_timeout,
            extra_job_modules=_extra_modules(env),
            allow_local_repositories=_bool(env, 'ALLOW_LOCAL_REPOSITORIES', False),
            git_allow_ssh=_bool(env, 'GIT_ALLOW_SSH', False),
            git_allow_private_hosts=_bool(env, 'GIT_ALLOW_PRIVATE_HOSTS', False),
            git_clone_timeout=_int(env, 'GIT_CLONE_TIMEOUT', 600, minimum=1, example='600'),
            git_max_repo_size_mb=_int(env, 'GIT_MAX_REPO_SIZE', 1024, minimum=1, example='1024'),
            git_max_repo_files=_int(env, 'GIT_MAX_REPO_FILES', 100_000, minimum=1, example='100000'),
            secret_key=_secret_key(env),
            admin_password=_get(env, 'JOBS_ADMIN_PASSWORD') or None,
            schedule_overrides=_schedule_overrides(env),
            access_log_buffer_max=_int(env, 'ACCESS_LOG_BUFFER_MAX', 100_000, minimum=1, example='100000'),
            access_log_batch_size=_int(env, 'ACCESS_LOG_BATCH_SIZE', 1000, minimum=1, example='1000'),
            access_log_max_per_run=_int(env, 'ACCESS_LOG_MAX_PER_RUN', 50_000, minimum=1, example='50000'),
            access_log_continue=_bool(env, 'ACCESS_LOG_CONTINUE', True),
            job_args_max_size=_int(env, 'JOB_ARGS_MAX_SIZE', 65_536, minimum=1024, example='65536'),
            **_llm(env),
        )

    @property
    def llm_enabled(self) -> bool:
        """Whether a language model writes the pages (`LLM_BASE_URL` is set)."""
        return self.llm_base_url is not None

    @property
    def extra_queues(self) -> tuple[str, ...]:
        """Queue names introduced by `JOBS_EXTRA_MODULES`, in the order they were named."""
        return tuple(dict.fromkeys(queue for _, queue in self.extra_job_modules))


@functools.cache
def get_settings() -> Settings:
    """Return the process's settings, read from the environment on first use."""
    return Settings.from_env()


def reset() -> None:
    """Forget the cached settings, so the next `get_settings()` reads the environment again."""
    get_settings.cache_clear()


def redact_url(url: str) -> str:
    """Return `url` with any password replaced by `***`, safe for logs and error messages."""
    # The user part ends at the last @ before the path: a Sentinel URL lists several hosts after it, split by commas.
    url = re.sub(r'(?<=://)([^:/@?#]*):[^/?#]*@', r'\1:***@', url)
    return re.sub(r'([?&](?:sentinel_)?password=)[^&#]*', r'\1***', url)


@dataclass(frozen=True)
class SentinelURL:
    """A `redis+sentinel://` URL taken apart: the Sentinels to ask, the master's name, and how to talk to both."""

    hosts: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    ssl: bool = False
    ssl_cert_reqs: str | None = None
    ssl_ca_certs: str | None = None
    min_other_sentinels: int = 0
    # Seconds from the query (socket_timeout, ...), which win over REDIS_TIMEOUT as they do in a redis:// URL.
    timeouts: tuple[tuple[str, float], ...] = ()

    @property
    def sentinels(self) -> str:
        """The Sentinels as `host:port, host:port`, for messages."""
        return ', '.join(f'[{host}]:{port}' if ':' in host else f'{host}:{port}' for host, port in self.hosts)


def is_sentinel_url(url: str | None) -> bool:
    """Whether `url` names a master through Sentinels (`redis+sentinel://`, `rediss+sentinel://`)."""
    return bool(url) and url.startswith(SENTINEL_SCHEMES)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Take a Sentinel URL apart; raise `SettingsError` with an example when it is not one.

    The form is rq-dashboard's, `redis+sentinel://[user:password@]host:26379,host:26379/<master>/<db>[?options]`;
    `rediss+sentinel://` or `?ssl=true` talks TLS to the Sentinels and the master.
    """

    def bad(reason: str) -> SettingsError:
        return SettingsError(f'REDIS_URL={redact_url(url)!r} {reason}; for example REDIS_URL={SENTINEL_EXAMPLE}.')

    scheme, _, rest = url.partition('://')
    if scheme not in ('redis+sentinel', 'rediss+sentinel'):
        raise bad('is not a Sentinel URL')
    rest, _, query = rest.partition('?')
    netloc, _, path = rest.partition('/')
    auth, _, hostlist = netloc.rpartition('@')
    username, _, password = auth.partition(':')
    hosts = tuple(_sentinel_host(item, bad) for item in hostlist.split(','))
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in _SENTINEL_OPTIONS:
            raise bad(f'has an unknown option {name!r} (known: {", ".join(_SENTINEL_OPTIONS)})')
        if name in options:
            raise bad(f'gives {name} twice')
        options[name] = value
    parts = [unquote(part) for part in path.split('/')] if path else []
    master = options.get('service') or (parts[0] if parts else '')
    if not master or len(parts) > 2:
        raise bad("names no master: give its name after the hosts (as in the Sentinels' `sentinel monitor`)")
    db_text = options.get('db') or (parts[1] if len(parts) > 1 else '0')
    if not db_text.isdigit():
        raise bad(f'has a database {db_text!r} that is not a whole number')
    if options.get('client_type', 'master') != 'master':
        raise bad('asks for a replica (client_type), but jobs are written to the master: leave client_type out')
    ssl = scheme == 'rediss+sentinel'
    if 'ssl' in options:
        if options['ssl'].lower() not in _TRUE | _FALSE:
            raise bad(f'has ssl={options["ssl"]!r}, not true or false')
        ssl = ssl or options['ssl'].lower() in _TRUE
    if options.get('ssl_cert_reqs', 'required') not in _SSL_CERT_REQS:
        raise bad(f'has ssl_cert_reqs={options["ssl_cert_reqs"]!r}, not one of {", ".join(_SSL_CERT_REQS)}')
    timeouts = _sentinel_timeouts(options, bad)
    other = options.get('min_other_sentinels', '0')
    if not other.isdigit():
        raise bad(f'has min_other_sentinels={other!r}, not a whole number')
    return SentinelURL(
        hosts=hosts,
        master=master,
        db=int(db_text),
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=options.get('sentinel_username') or None,
        sentinel_password=options.get('sentinel_password') or None,
        ssl=ssl,
        ssl_cert_reqs=options.get('ssl_cert_reqs'),
        ssl_ca_certs=options.get('ssl_ca_certs'),
        min_other_sentinels=int(other),
        timeouts=timeouts,
    )


def _sentinel_timeouts(options: Mapping[str, str], bad) -> tuple[tuple[str, float], ...]:
    timeouts = []
    for name in _SENTINEL_TIMEOUTS:
        if name in options:
            try:
                seconds = float(options[name])
            except ValueError:
                seconds = -1.0
            if not 0 < seconds < float('inf'):
                raise bad(f'has {name}={options[name]!r}, not a number of seconds above 0')
            timeouts.append((name, seconds))
    return tuple(timeouts)


def _sentinel_host(item: str, bad) -> tuple[str, int]:
    item = item.strip()
    if item.startswith('['):  # an IPv6 address: [::1]:26379
        host, _, port = item[1:].partition(']')
        port = port.removeprefix(':')
    else:
        host, _, port = item.partition(':')
    if not host:
        raise bad('lists an empty Sentinel host (hosts are separated by commas)')
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise bad('has an invalid Sentinel port (a number up to 65535)')
    return host, int(port)


def host_name(name: str) -> str:
    """Return `name` reduced to what a queue name holds: lower-case letters, digits, `_` and `-`, at most 63."""
    # `host-<name>` is a queue name and part of Redis keys: dots and anything odd become `-`.
    return re.sub(r'[^a-z0-9_-]+', '-', name.strip().lower()).strip('-')[:63].strip('-') or 'localhost'


def _get(env: Mapping[str, str], name: str) -> str:
    return env.get(name, '').strip()


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, example: str) -> int:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f'{name}={raw!r} is not a whole number; for example {name}={example}.') from None
    if value < minimum:
        raise SettingsError(f'{name}={value} is below its minimum of {minimum}; for example {name}={example}.')
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float, example: str) -> float:
    raw = _get(env, name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f'{name}={raw!r} is not a number; for example {name}={example}.') from None
    if not minimum <= value < float('inf'):
        raise SettingsError(f'{name}={raw} must be at least {minimum}; for example {name}={example}.')
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name).lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f'{name}={raw!r} is not a boolean; use true or false, for example {name}=false.')


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = _get(env, 'REDIS_URL')
    if not url:
        return None
    if not url.startswith(_REDIS_SCHEMES):
        raise SettingsError(
            f'REDIS_URL={redact_url(url)!r} is not a Redis URL; for example REDIS_URL=redis://127.0.0.1:6379/0 '
            f'(rediss:// for TLS, unix:///path/to/redis.sock for a socket, {SENTINEL_EXAMPLE} for Sentinel), '
            f'or leave it unset for the embedded server.'
        )
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return url
    _check_port('REDIS_URL', url, 'redis://127.0.0.1:6379/0')
    return url


def _llm(env: Mapping[str, str]) -> dict:
    base_url = _get(env, 'LLM_BASE_URL').rstrip('/') or None
    model = _get(env, 'LLM_MODEL') or None
    if base_url is not None:
        if not base_url.startswith(('http://', 'https://')) or not urlsplit(base_url).hostname:
            raise SettingsError(
                f'LLM_BASE_URL={redact_url(base_url)!r} is not an http(s) URL; for example '
                f'LLM_BASE_URL=https://api.openai.com/v1 or LLM_BASE_URL=http://127.0.0.1:11434/v1 (Ollama).'
            )
        _check_port('LLM_BASE_URL', base_url, 'http://127.0.0.1:11434/v1')
        if model is None:
            raise SettingsError(
                'LLM_BASE_URL is set but LLM_MODEL is not: name the model the server should use, for example '
                'LLM_MODEL=gpt-4o-mini or LLM_MODEL=qwen2.5:7b.'
            )
    catalog = _get(env, 'LLM_CATALOG').lower() or 'deterministic'
    if catalog not in LLM_CATALOGS:
        raise SettingsError(
            f'LLM_CATALOG={catalog!r} is not one of {", ".join(LLM_CATALOGS)}; for example LLM_CATALOG=model.'
        )
    context_tokens = _int(env, 'LLM_CONTEXT_TOKENS', 16_384, minimum=1024, example='16384')
    max_output = _int(env, 'LLM_MAX_OUTPUT_TOKENS', 2048, minimum=64, example='2048')
    if max_output * 2 > context_tokens:
        raise SettingsError(
            f'LLM_MAX_OUTPUT_TOKENS ({max_output}) must be at most half of LLM_CONTEXT_TOKENS ({context_tokens}), '
            f'so that a page has room for its sources; for example LLM_MAX_OUTPUT_TOKENS=2048 with '
            f'LLM_CONTEXT_TOKENS=16384.'
        )
    return {
        'llm_base_url': base_url,
        'llm_model': model,
        'llm_api_key': _get(env, 'LLM_API_KEY') or None,
        'llm_timeout': _float(env, 'LLM_TIMEOUT', 120.0, minimum=1, example='120'),
        'llm_context_tokens': context_tokens,
        'llm_max_output_tokens': max_output,
        'llm_concurrency': _int(env, 'LLM_CONCURRENCY', 4, minimum=1, example='4'),
        'llm_language': ' '.join(_get(env, 'LLM_LANGUAGE').split()) or 'English',
        'llm_catalog': catalog,
        'llm_token_budget': _int(env, 'LLM_TOKEN_BUDGET', 0, minimum=0, example='200000'),
        'llm_retry_after_max': _int(env, 'LLM_RETRY_AFTER_MAX', 300, minimum=1, example='300'),
        'llm_retry_backoff': _int(env, 'LLM_RETRY_BACKOFF', 10, minimum=1, example='10'),
    }


def _check_database_url(url: str) -> None:
    if not url.startswith(tuple(f'{scheme}://' for scheme in SUPPORTED_SCHEMES)):
        raise SettingsError(
            f'DATABASE_URL={redact_url(url)!r} is not a supported database URL; '
            f'for example DATABASE_URL={EXAMPLE_URLS}.'
        )
    _check_port('DATABASE_URL', url, EXAMPLE_URLS)
    if not urlsplit(url).path.strip('/'):
        raise SettingsError(
            f'DATABASE_URL={redact_url(url)!r} names no database; for example DATABASE_URL={EXAMPLE_URLS}.'
        )


def _check_port(name: str, url: str, example: str) -> None:
    # Checked here because redis-py and peewee fail on first use, with a traceback, and urllib's message quotes the
    # text it took for a port, which may be part of a password.
    try:
        _ = urlsplit(url).port  # urllib parses the port only when asked for it
    except ValueError:
        raise SettingsError(
            f'{name} has an invalid port (a number up to 65535); for example {name}={example}.'
        ) from None


def _schedule_overrides(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    # Checked against the plan by scheduler.plan(); here only the shape `id=value; id=value`.
    overrides = []
    for item in filter(None, (part.strip() for part in _get(env, 'JOBS_SCHEDULE').split(';'))):
        entry_id, sep, value = item.partition('=')
        if not sep or not entry_id.strip() or not value.strip():
            raise SettingsError(
                f'JOBS_SCHEDULE entry {item!r} is not ID=VALUE; for example '
                f'JOBS_SCHEDULE="process-access-logs=60; generate-minimaps=off; '
                f'generate-daily-statistics=30 1 * * *".'
            )
        overrides.append((entry_id.strip(), ' '.join(value.split())))
    return tuple(overrides)


def _secret_key(env: Mapping[str, str]) -> str | None:
    key = _get(env, 'JOBS_SECRET_KEY')
    if key and len(key) < 16:
        raise SettingsError(
            'JOBS_SECRET_KEY is too short (under 16 characters); use a long random value, for example '
            'JOBS_SECRET_KEY=$(python3 -c "import secrets; print(secrets.token_urlsafe(32))").'
        )
    return key or None


def _extra_modules(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    raw = _get(env, 'JOBS_EXTRA_MODULES')
    modules = []
    for item in filter(None, (part.strip() for part in raw.split(','))):
        module, _, queue = item.partition('=')
        module, queue = module.strip(), (queue.strip() or 'default')
        if not all(_NAME.fullmatch(part) for part in module.split('.')) or not _QUEUE_NAME.fullmatch(queue):
            raise SettingsError(
                f'JOBS_EXTRA_MODULES entry {item!r} is not MODULE[=QUEUE]; for example '
                f'JOBS_EXTRA_MODULES=myapp.reports=reports,myapp.mail (queue names: lower-case letters, digits, _ -).'
            )
        modules.append((module, queue))
    return tuple(modules)
