"""Queues, the job registry and the one way jobs are enqueued.

Every job is a plain function in one of the job modules below, listed in that module's `JOBS` tuple and enqueued
by its dotted path on the queue of its module. Payloads are JSON: the job and queue classes here force the JSON
serializer whoever creates the job (the CLI, another job, a dependency, rq-scheduler), and the job class refuses to
run any function that is not a registered job, so a job hash forged in Redis cannot name `os.system`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Callback, Queue, RateLimit
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Dependency, Job, Retry, get_current_job
from rq.utils import utcformat

from rqjobs import clock, connections
from rqjobs.exceptions import (
    ForbiddenJob,
    InvalidJobArguments,
    PermanentJobError,
    RedisUnavailable,
    UnknownJob,
    UnknownQueue,
    UnreadableJob,
)
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DEFAULT = 'default'
WAREHOUSE = 'warehouse'
STATISTICS = 'statistics'
ACCESS_LOG = 'access_log'
MINIMAP = 'minimap'
MIGRATION = 'migration'
# Pages written by a model: jobs that wait on the model server rather than work, with a queue of their own so
# that operators run many page workers apart from the few that clone.
PAGES = 'pages'
# A worker given no queue names listens on all of them in this order: short, frequent jobs before long ones, and
# the pages of warehouses already cloned before new clones.
QUEUES = (DEFAULT, ACCESS_LOG, STATISTICS, MINIMAP, PAGES, WAREHOUSE, MIGRATION)

# Each host's own queue, `host-<JOBS_HOST_NAME>`: every worker listens on its host's queue first, so that a chore
# that concerns one host's disk (its clones) reaches that host and no other.
HOST_QUEUE_PREFIX = 'host-'
_HOST_NAME = re.compile(r'[a-z0-9_-]{1,63}')

# The project's job modules and the queue each one's jobs go to.
JOB_MODULES = {
    'rqjobs.system': DEFAULT,
    # Host chores: given a host's queue each time they are enqueued (`hosts.enqueue_on_hosts`).
    'rqjobs.hosts': DEFAULT,
    'rqjobs.access_log': ACCESS_LOG,
    'rqjobs.warehouse': WAREHOUSE,
    'rqjobs.minimap': MINIMAP,
    'rqjobs.statistics': STATISTICS,
    'rqjobs.migration': MIGRATION,
    'rqjobs.pages.jobs': PAGES,
}

# Transient failures (network, a locked database) get three more tries a minute apart; `PermanentJobError`s none.
RETRY_MAX = 3
RETRY_INTERVALS = (60, 60, 60)
# The job meta key holding a `PermanentJobError`'s message, which says all a reader needs.
PERMANENT_ERROR = 'permanent_error'

# The field of a job hash that says why a worker set the job aside as unreadable.
UNREADABLE_FIELD = 'rqjobs_unreadable'


# Built once: `json.dumps` with options builds an encoder on every call, three times per enqueue.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(',', ':'))


class JSONSerializer:
    """Strict JSON: no pickle, no NaN or infinity, unicode kept as sent."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _ENCODER.encode(obj).encode('utf-8')

    @staticmethod
    def loads(data: bytes | str) -> Any:
        if isinstance(data, bytes):
            data = data.decode('utf-8')
        return json.loads(data)


class JsonJob(Job):
    """An rq job that is always JSON and may only run registered job functions."""

    def __init__(self, id: str | None = None, connection: redis.Redis | None = None, serializer=None):
        super().__init__(id=id, connection=connection, serializer=JSONSerializer)

    @property
    def func(self) -> Callable[..., Any]:
        if self.instance is not None:
            self.retries_left = 0
            raise ForbiddenJob(f'Job {self.id}: refused, a job may not name an instance method')
        return self._resolve(self.func_name, f'Job {self.id}')

    @property
    def success_callback(self):
        return self._checked_callback('_success_callback', '_success_callback_name', Job.success_callback)

    @property
    def failure_callback(self):
        return self._checked_callback('_failure_callback', '_failure_callback_name', Job.failure_callback)

    @property
    def stopped_callback(self):
        return self._checked_callback('_stopped_callback', '_stopped_callback_name', Job.stopped_callback)

    def _checked_callback(self, attribute: str, name_attribute: str, original: property):
        name = getattr(self, name_attribute)
        if name:
            setattr(self, attribute, self._resolve(name, f'Job {self.id} callback', callback=True))
        return original.fget(self)

    def _resolve(self, path: str | None, subject: str, *, callback: bool = False) -> Callable[..., Any]:
        try:
            return _allowed(path, subject, callback=callback)
        except ForbiddenJob:
            self.retries_left = 0  # a forged job stays forged: never retry it
            raise

    def _execute(self) -> Any:
        if self.meta.pop(PERMANENT_ERROR, None) is not None:
            self.save_meta()  # a requeued job's earlier message would stand for whatever happens now
        try:
            return super()._execute()
        except PermanentJobError as exc:
            self.retries_left = 0  # a retry cannot fix it: fail now instead of three minutes from now
            # Its message is the whole story (bad input, a missing resource): kept apart so readers skip the traceback.
            self.meta[PERMANENT_ERROR] = str(exc) or type(exc).__name__
            self.save_meta()  # rq saves a failed job without its meta, so as not to clobber it
            raise

    def _deserialize_data(self) -> None:
        try:
            super()._deserialize_data()
        except DeserializationError:
            self.retries_left = 0  # a payload that is not our JSON never will be
            raise

    def restore(self, raw_data) -> None:
        # rq decodes a job's fields as it loads them and leaves the payload for later: a field that is not UTF-8 or
        # not a date, or a payload that is not JSON, would raise wherever the job is next touched (a worker's
        # dequeue, a listing), so every field and the payload are read here, once, into one project error.
        # rq's NoSuchJobError here means a hash without a payload: unreadable too, not gone.
        try:
            super().restore(raw_data)
            self._deserialize_data()
        except Exception as exc:
            reason = f'{type(exc).__name__}: {exc}'
            reason = reason if len(reason) <= 160 else reason[:157] + '...'
            logger.warning('%s: job hash cannot be read (%s)', self.id, reason)
            raise UnreadableJob(
                f'Job {self.id} cannot be read from Redis (forged or corrupted: {reason}); '
                f'`rqjobs job delete {self.id}` removes it.'
            ) from None

    @classmethod
    def fetch_many(cls, job_ids: Iterable[str], connection: redis.Redis, serializer=None) -> list[JsonJob | None]:
        """Return the jobs, None for those that are gone or cannot be read (one Redis round trip)."""
        # rq's fetch_many stops at the first job it cannot read; listings and rq's registry code must go on past it.
        job_ids = [job_id.decode() if isinstance(job_id, bytes) else job_id for job_id in job_ids]
        with connection.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(cls.key_for(job_id))
            hashes = pipe.execute()
        jobs: list[JsonJob | None] = []
        for job_id, raw in zip(job_ids, hashes, strict=True):
            job = None
            if raw:
                job = cls(job_id, connection=connection)
                try:
                    job.restore(raw)
                except NoSuchJobError:
                    job = None
            jobs.append(job)
        return jobs


class JsonQueue(Queue):
    """An rq queue whose jobs are always `JsonJob`s."""

    job_class = JsonJob

    def __init__(self, name: str = DEFAULT, connection: redis.Redis | None = None, **kwargs):
        kwargs['job_class'] = JsonJob
        kwargs['serializer'] = JSONSerializer
        super().__init__(name, connection=connection, **kwargs)

    def fetch_job(self, job_id: str) -> JsonJob | None:
        # rq's, except that an unreadable job is only left out: rq would take it off the queue as if it had vanished,
        # where a worker that dequeues it fails it with its reason.
        try:
            job = self.job_class.fetch(job_id, connection=self.connection, serializer=self.serializer)
        except UnreadableJob:
            return None
        except NoSuchJobError:
            self.remove(job_id)
            return None
        return job if job.origin == self.name else None

    @classmethod
    def _fetch_dequeued_job(cls, connection: redis.Redis, queue_key: str, job_id: str, *args, **kwargs):
        # rq passes over a job it cannot fetch in silence (UnreadableJob is a NoSuchJobError) and leaves it in the
        # intermediate queue, from where it would come back to the next worker. Only then is it read once more, to
        # tell an unreadable job from a vanished one: the former is failed with its reason and the worker goes on,
        # and a readable job costs no extra round trip.
        fetched = super()._fetch_dequeued_job(connection, queue_key, job_id, *args, **kwargs)
        if fetched is None:
            reason = unreadable_reason(connection, job_id)
            if reason is not None:
                set_aside(connection, queue_key, job_id, reason)
        return fetched


def set_aside(
    connection: redis.Redis, queue_key: str, job_id: str, reason: str, settings: Settings | None = None
) -> None:
    """Fail a job that cannot be read: off its queue and registries, into the failed jobs, `reason` in its hash."""
    settings = settings or get_settings()
    queue = JsonQueue(queue_key.removeprefix(JsonQueue.redis_queue_namespace_prefix), connection=connection)
    ended = clock.utcnow().replace(tzinfo=UTC)
    # The started jobs are kept as job_id:execution_id, rare enough for an unreadable job to look them up.
    started = [
        entry
        for entry in connection.zrange(queue.started_job_registry.key, 0, -1)
        if entry.decode('utf-8', 'replace').partition(':')[0] == job_id
    ]
    with connection.pipeline() as pipe:
        pipe.lrem(queue.intermediate_queue_key, 0, job_id)
        pipe.lrem(queue.key, 0, job_id)
        for registry in (queue.scheduled_job_registry, queue.deferred_job_registry):
            pipe.zrem(registry.key, job_id)
        if started:
            pipe.zrem(queue.started_job_registry.key, *started)
        pipe.zadd(queue.failed_job_registry.key, {job_id: ended.timestamp() + settings.failure_ttl})
        pipe.hset(
            JsonJob.key_for(job_id),
            mapping={'status': 'failed', 'ended_at': utcformat(ended), UNREADABLE_FIELD: reason},
        )
        pipe.expire(JsonJob.key_for(job_id), settings.failure_ttl)
        pipe.execute()
    logger.error('%s: set aside as failed on queue %s: %s', job_id, queue.name, reason)


def set_aside_unreadable(connection: redis.Redis, queue_key: str, job_ids: Sequence[str]) -> list[str]:
    """Set aside those of `job_ids` that cannot be read; return their ids."""
    unreadable = []
    for job_id, job in zip(job_ids, JsonJob.fetch_many(job_ids, connection=connection), strict=True):
        reason = unreadable_reason(connection, job_id) if job is None else None
        if reason:
            set_aside(connection, queue_key, job_id, reason)
            unreadable.append(job_id)
    return unreadable


def unreadable_reason(connection: redis.Redis, job_id: str) -> str | None:
    """Return why a job cannot be read, or None when it can be read or is gone."""
    try:
        JsonJob.fetch(job_id, connection=connection)
    except UnreadableJob as exc:
        return str(exc)
    except NoSuchJobError:
        return None
    return None


@dataclass(frozen=True)
class JobSpec:
    """One registered job: its short name, dotted path, queue and function."""

    name: str
    path: str
    queue: str
    func: Callable[..., Any]

    @property
    def signature(self) -> str:
        return f'{self.name}{inspect.signature(self.func)}'

    @property
    def summary(self) -> str:
        return (inspect.getdoc(self.func) or '').split('\n', 1)[0]


def job_modules(settings: Settings | None = None) -> dict[str, str]:
    """Return every job module (the project's and `JOBS_EXTRA_MODULES`) with its queue."""
    settings = settings or get_settings()
    return {**JOB_MODULES, **dict(settings.extra_job_modules)}


def queue_names(settings: Settings | None = None) -> tuple[str, ...]:
    """Return every queue name: the project's six, then those of `JOBS_EXTRA_MODULES`."""
    settings = settings or get_settings()
    return tuple(dict.fromkeys(QUEUES + settings.extra_queues))


def registered_jobs(settings: Settings | None = None) -> dict[str, JobSpec]:
    """Return every registered job by dotted path, importing the job modules on first use."""
    settings = settings or get_settings()
    return _load_registry(tuple(job_modules(settings).items()))


def registered_callbacks(settings: Settings | None = None) -> dict[str, Callable[..., Any]]:
    """Return the functions job modules allow as job callbacks (their `CALLBACKS` tuple), by dotted path."""
    settings = settings or get_settings()
    return _load_callbacks(tuple(job_modules(settings).items()))


@functools.cache
def _load_registry(modules: tuple[tuple[str, str], ...]) -> dict[str, JobSpec]:
    jobs = {}
    for module_name, queue in modules:
        for name, func in _functions(module_name, 'JOBS', required=True):
            path = f'{module_name}.{name}'
            jobs[path] = JobSpec(name=name, path=path, queue=queue, func=func)
    return jobs


@functools.cache
def _load_callbacks(modules: tuple[tuple[str, str], ...]) -> dict[str, Callable[..., Any]]:
    return {
        f'{module_name}.{name}': func
        for module_name, _ in modules
        for name, func in _functions(module_name, 'CALLBACKS', required=False)
    }


def _functions(module_name: str, attribute: str, *, required: bool) -> list[tuple[str, Callable[..., Any]]]:
    """Return the functions a module lists in its `JOBS` or `CALLBACKS` tuple, checking each."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnknownJob(
            f'Job module {module_name} cannot be imported ({exc}); check JOBS_EXTRA_MODULES '
            f'and that the module is on the Python path.'
        ) from None
    names = getattr(module, attribute, None if required else ())
    if not isinstance(names, tuple | list):
        raise UnknownJob(
            f'Job module {module_name} has no {attribute} tuple naming its jobs; add one, for example '
            f"{attribute} = ('send_report',)."
        )
    found = []
    for name in names:
        func = getattr(module, name, None)
        if not inspect.isfunction(func) or func.__module__ != module_name:
            raise UnknownJob(
                f'{module_name}.{attribute} names {name!r}, which is not a function defined in that module.'
            )
        found.append((name, func))
    return found


def find_job(name: str, settings: Settings | None = None) -> JobSpec:
    """Return the registered job called `name`: a function name, `module.function` or a full dotted path."""
    jobs = registered_jobs(settings)
    if name in jobs:
        return jobs[name]
    matches = [spec for spec in jobs.values() if spec.name == name or spec.path.endswith('.' + name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UnknownJob(f'Job name {name!r} is ambiguous; use one of: {", ".join(m.path for m in matches)}.')
    raise UnknownJob(f'Unknown job {name!r}. Known jobs: {", ".join(sorted(s.name for s in jobs.values()))}.')


def _allowed(path: str | None, subject: str, *, callback: bool = False) -> Callable[..., Any]:
    try:
        spec = registered_jobs().get(path or '')
        func = spec.func if spec is not None else registered_callbacks().get(path or '') if callback else None
    except UnknownJob as exc:
        raise ForbiddenJob(f'{subject}: refused, the job registry cannot be loaded: {exc}') from None
    if func is None:
        raise ForbiddenJob(
            f'{subject}: refused to run {path!r}, which is not a registered job '
            f'(see `rqjobs enqueue --help` for the list).'
        )
    return func


# A job's signature is read once, not on every enqueue.
_signature = functools.cache(inspect.signature)


def check_arguments(
    spec: JobSpec, args: Sequence[Any], kwargs: Mapping[str, Any], settings: Settings | None = None
) -> None:
    """Raise `InvalidJobArguments` unless the arguments fit the job's signature, survive JSON and are small."""
    settings = settings or get_settings()
    try:
        _signature(spec.func).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidJobArguments(f'{exc}; expected {spec.signature}') from None
    if not args and not kwargs:
        return
    try:
        size = len(JSONSerializer.dumps([list(args), dict(kwargs)]))
    except (TypeError, ValueError) as exc:
        raise InvalidJobArguments(f'Arguments of {spec.name} must be JSON values (ids and scalars): {exc}') from None
    if size > settings.job_args_max_size:
        raise InvalidJobArguments(
            f'Arguments of {spec.name} take {size} bytes as JSON, over JOB_ARGS_MAX_SIZE '
            f'({settings.job_args_max_size}); pass an id and let the job load the rest.'
        )


def host_queue(host: str) -> str:
    """Return the name of a host's own queue."""
    return HOST_QUEUE_PREFIX + host


def host_of_queue(name: str) -> str | None:
    """Return the host whose own queue `name` is, or None when it is no host's queue."""
    host = name.removeprefix(HOST_QUEUE_PREFIX)
    return host if name.startswith(HOST_QUEUE_PREFIX) and _HOST_NAME.fullmatch(host) else None


def get_queue(name: str, connection: redis.Redis, settings: Settings | None = None) -> JsonQueue:
    """Return the queue called `name`, refusing names that are neither configured nor a host's queue."""
    settings = settings or get_settings()
    built = connection.__dict__.setdefault('_rqjobs_queues', {})
    key = (name, settings.job_timeout, settings.extra_job_modules)
    if key in built:
        return built[key]
    if name not in queue_names(settings) and host_of_queue(name) is None:
        raise UnknownQueue(
            f'Unknown queue {name!r}. Known queues: {", ".join(queue_names(settings))}, '
            f'and host-<name> for each host (JOBS_HOST_NAME).'
        )
    # One queue object per connection, name and timeout, kept on the connection so that they go with it: rq checks
    # the serializer and sets a queue up each time one is built, and a queue keeps no state of its own.
    queue = built[key] = JsonQueue(name, connection=connection, default_timeout=settings.job_timeout)
    return queue


def all_queues(connection: redis.Redis, settings: Settings | None = None) -> list[JsonQueue]:
    """Return every configured queue."""
    return [get_queue(name, connection, settings) for name in queue_names(settings)]


_DEFAULT_RETRY = object()


def enqueue(
    job: str,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    connection: redis.Redis,
    queue: str | None = None,
    job_id: str | None = None,
    at: datetime | None = None,
    delay: timedelta | None = None,
    retry: Retry | None | object = _DEFAULT_RETRY,
    timeout: int | None = None,
    description: str | None = None,
    meta: Mapping[str, Any] | None = None,
    depends_on: Dependency | Job | str | Sequence[Job | str] | None = None,
    on_failure: str | None = None,
    rate_limit: RateLimit | None = None,
    settings: Settings | None = None,
) -> JsonJob:
    """Enqueue a registered job by name with the project's defaults; return the rq job.

    `at` (a UTC datetime) or `delay` schedule it for later; `retry=None` turns retries off; `depends_on` (jobs or
    job ids) holds it back until those jobs have finished; `on_failure` names a registered callback (a module's
    `CALLBACKS`) that rq calls when the job fails, also when its worker died; `rate_limit` holds the job back while
    as many jobs with the same key as it allows are queued or running (rq's `RateLimit`, across all workers).
    """
    settings = settings or get_settings()
    spec = find_job(job, settings)
    args, kwargs = list(args), dict(kwargs or {})
    check_arguments(spec, args, kwargs, settings)
    if retry is _DEFAULT_RETRY:
        retry = Retry(max=RETRY_MAX, interval=list(RETRY_INTERVALS))
    if job_id is not None:
        _check_job_id(job_id)
    if depends_on is not None:
        dependencies = depends_on.dependencies if isinstance(depends_on, Dependency) else depends_on
        for dependency in (
            dependencies if isinstance(dependencies, Sequence) and not isinstance(dependencies, str) else [dependencies]
        ):
            _check_job_id(dependency.id if isinstance(dependency, Job) else dependency)
    options = {
        'args': args,
        'kwargs': kwargs,
        'timeout': timeout or settings.job_timeout,
        'result_ttl': settings.result_ttl,
        'failure_ttl': settings.failure_ttl,
        'job_id': job_id,
        'retry': retry,
        'description': description or spec.name,
        'meta': dict(meta or {}),
        'depends_on': depends_on,
    }
    if rate_limit is not None:
        options['rate_limit'] = rate_limit
    if on_failure is not None:
        if on_failure not in registered_callbacks(settings):
            raise InvalidJobArguments(f"{on_failure!r} is not a registered callback (a job module's CALLBACKS).")
        options['on_failure'] = Callback(on_failure)
    target = get_queue(queue or spec.queue, connection, settings)
    if at is not None and delay is not None:
        raise InvalidJobArguments('Give either a time (at) or a delay, not both.')
    with redis_full(f'job {spec.name}'):
        if delay is not None:
            queued = target.enqueue_in(delay, spec.path, **_scheduled(options))
        elif at is not None:
            queued = target.enqueue_at(at, spec.path, **_scheduled(options))
        elif depends_on is None and rate_limit is None:
            # rq registers the queue and stores the job in two transactions unless it is given a pipeline: one round
            # trip instead of two, and the job and its queue's registration land together.
            with connection.pipeline() as pipe:
                queued = target.enqueue_call(spec.path, pipeline=pipe, **options)
                pipe.execute()
        else:
            queued = target.enqueue_call(spec.path, **options)
    # With REDIS_WAIT_REPLICAS, acknowledged only once replicas hold it, so that a failover cannot lose it.
    connections.replicated(connection, settings, f'the job {queued.id} ({spec.name})')
    return queued


@contextlib.contextmanager
def redis_full(subject: str):
    """Turn Redis refusing a write at its `maxmemory` into `RedisUnavailable` saying that `subject` was not stored."""
    try:
        yield
    except redis.exceptions.OutOfMemoryError:
        raise RedisUnavailable(redis_full_message(f'the {subject} was not stored')) from None


def redis_full_message(what: str) -> str:
    """Say that Redis is at its `maxmemory`, what that left undone, and how to make room."""
    return (
        f'Redis is full (maxmemory reached, no eviction): {what}. Free memory (`rqjobs cleanup --finished`, '
        f'`rqjobs cleanup --failed-older-than 1d`) or raise maxmemory, then try again.'
    )


def _scheduled(options: dict[str, Any]) -> dict[str, Any]:
    # enqueue_at and enqueue_in call the timeout `job_timeout`, leaving `timeout` free for the job's own kwargs.
    return {('job_timeout' if key == 'timeout' else key): value for key, value in options.items()}


def is_job_id(job_id: str) -> bool:
    """Return whether `job_id` is one the project gives jobs: 1 to 128 ASCII letters, digits, _ or -."""
    return (
        isinstance(job_id, str)
        and 0 < len(job_id) <= 128
        and job_id.isascii()
        and all(c.isalnum() or c in '_-' for c in job_id)
    )


def _check_job_id(job_id: str) -> None:
    if not is_job_id(job_id):
        raise InvalidJobArguments(
            f'Job id {job_id!r} must be 1 to 128 letters, digits, _ or -; for example process-warehouse-42.'
        )


def report_progress(step: str, percent: int, **details: Any) -> None:
    """Record the running job's step and percent in its meta (shown by `jobs` and rq-dashboard); no-op outside a job."""
    job = get_current_job()
    if job is None:
        return
    job.meta['progress'] = {
        'step': step,
        'percent': max(0, min(100, int(percent))),
        'at': clock.utcnow().isoformat(timespec='seconds') + 'Z',
        **details,
    }
    job.save_meta()


def retries_left() -> int:
    """Return how many more tries the running job gets after this one (0 outside a job)."""
    job = get_current_job()
    return (job.retries_left or 0) if job is not None else 0


# Statuses of a job that is still to run or running.
LIVE_STATUSES = frozenset((b'queued', b'started', b'scheduled', b'deferred', b'rate_limited'))


def live_job_ids(connection: redis.Redis, job_ids: Sequence[str]) -> set[str]:
    """Return which of `job_ids` are queued, scheduled, deferred, rate-limited or running (one Redis round trip)."""
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(JsonJob.key_for(job_id), 'status')
        statuses = pipe.execute()
    return {job_id for job_id, status in zip(job_ids, statuses, strict=True) if status in LIVE_STATUSES}


# A field of a run's rq hash: the id of the run that went on with its work (`continue_job`).
CONTINUED_FIELD = 'rqjobs_continued_by'


def continue_job(connection: redis.Redis, *, settings: Settings | None = None) -> str | None:
    """Enqueue the next run of the running job, to go on with its work; return its id (None outside a job).

    The next run gets the job's name, arguments, queue and meta, no retry, and the id `<first run>-c<n>`; this run
    names it in its hash, so that the periodic plan takes it for the entry's run in progress (`latest_run`) and
    enqueues no second one beside it.
    """
    job = get_current_job()
    if job is None:
        return None
    chain = str(job.meta.get('chain') or job.id)
    link = int(job.meta.get('link') or 0) + 1
    suffix = f'-c{link}'
    next_id = chain[: 128 - len(suffix)] + suffix
    meta = {key: value for key, value in job.meta.items() if key != 'progress'}
    # Deterministic, and enqueued once: a run that goes through this twice (a replay) cannot start two chains.
    if not connection.exists(JsonJob.key_for(next_id)):
        enqueue(
            job.func_name,
            job.args,
            job.kwargs,
            connection=connection,
            queue=job.origin,
            job_id=next_id,
            retry=None,
            timeout=job.timeout,
            description=job.description,
            meta={**meta, 'chain': chain, 'link': link},
            settings=settings,
        )
    connection.hset(job.key, CONTINUED_FIELD, next_id)
    return next_id


# Links followed at most: with the plan looking every few seconds, a chain grows by a few links between two looks.
CHAIN_MAX = 10_000


def latest_run(connection: redis.Redis, job_id: str) -> tuple[str, bool]:
    """Return the last run of the chain of `continue_job` runs that `job_id` starts, and whether it is yet to end."""
    for _ in range(CHAIN_MAX):
        # Status and successor in one read: a run names its successor before it finishes, so a run seen finished
        # shows any successor it has.
        status, successor = connection.hmget(JsonJob.key_for(job_id), 'status', CONTINUED_FIELD)
        if status in LIVE_STATUSES or successor is None:
            return job_id, status in LIVE_STATUSES
        job_id = successor.decode()
    return job_id, False
