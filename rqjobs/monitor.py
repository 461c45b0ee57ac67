"""Read-only views of queues and workers, for `rqjobs status` and scripts."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Worker
from rq.job import JobStatus
from rq.rate_limit import RateLimitRegistry

from rqjobs import hosts, queues
from rqjobs.settings import Settings

REGISTRIES = ('started', 'finished', 'failed', 'scheduled', 'deferred')
# A job in one of these states will not run again unless someone requeues it.
ENDED = tuple(status.value for status in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED))
WAIT_POLL_INTERVAL = 0.2


def queue_counts(connection: redis.Redis, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Return, per queue (the configured ones, then live hosts'), how many jobs are queued and in each rq registry."""
    all_queues = queues.all_queues(connection, settings) + [
        queues.get_queue(queues.host_queue(host), connection, settings) for host in hosts.live_hosts(connection)
    ]
    with connection.pipeline(transaction=False) as pipe:
        for queue in all_queues:
            pipe.llen(queue.key)
            for registry in REGISTRIES:
                pipe.zcard(getattr(queue, f'{registry}_job_registry').key)
        replies = pipe.execute()
    width = 1 + len(REGISTRIES)
    rows = []
    for index, queue in enumerate(all_queues):
        counts = replies[index * width : (index + 1) * width]
        rows.append({'queue': queue.name, 'queued': counts[0], **dict(zip(REGISTRIES, counts[1:], strict=True))})
    return rows


def rate_limits(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return every rq rate limit in use: its key, concurrency, jobs holding a slot and jobs waiting for one."""
    # Jobs waiting for a slot are in no queue or registry of their queue: without this they are seen nowhere.
    keys = sorted(key.decode() for key in connection.smembers(RateLimitRegistry.rl_keys_key))
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            registry = RateLimitRegistry(key, connection)
            pipe.hget(registry.config_key, 'concurrency')
            pipe.zcard(registry.allowed_key)
            pipe.zcard(registry.rate_limited_key)
        replies = pipe.execute()
    return [
        {
            'rate_limit': key,
            'concurrency': int(replies[3 * i] or 0),
            'running': replies[3 * i + 1],
            'waiting': replies[3 * i + 2],
        }
        for i, key in enumerate(keys)
    ]


def worker_states(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return every live worker with its state, queues, current job and last heartbeat."""
    workers = Worker.all(
        connection=connection, job_class=queues.JsonJob, queue_class=queues.JsonQueue, serializer=queues.JSONSerializer
    )
    rows = []
    for worker in sorted(workers, key=lambda w: w.name):
        rows.append(
            {
                'name': worker.name,
                'state': worker.get_state(),
                'queues': worker.queue_names(),
                'current_job': worker.get_current_job_id(),
                'last_heartbeat': worker.last_heartbeat.isoformat(timespec='seconds')
                if worker.last_heartbeat
                else None,
                'successful_jobs': worker.successful_job_count,
                'failed_jobs': worker.failed_job_count,
                'pid': worker.pid,
                'hostname': worker.hostname,
            }
        )
    return rows


def host_states(connection: redis.Redis) -> dict[str, Any]:
    """Return every host with live workers (their names and queues, the host's clone disk usage) and any warning."""
    records = hosts.worker_records(connection)
    by_host: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        # A worker started without the project's worker class says no host: listed apart rather than left out.
        by_host.setdefault(record['host'] or '?', []).append(record)
    usage = hosts.usage(connection, sorted(by_host))
    rows = [
        {
            'host': host,
            'workers': [record['name'] for record in members],
            'queues': sorted({name for record in members for name in record['queues']}),
            'clone_bytes': (usage[host] or {}).get('clone_bytes'),
            'clones': (usage[host] or {}).get('clones'),
            'measured_at': (usage[host] or {}).get('measured_at'),
        }
        for host, members in sorted(by_host.items())
    ]
    warning = hosts.shared_storage_warning(connection, records)
    return {'hosts': rows, 'warnings': [warning] if warning else []}


def queue_has_worker(connection: redis.Redis, queue_name: str) -> bool:
    """Return whether some live worker listens on the queue."""
    return Worker.count(connection=connection, queue=queues.JsonQueue(queue_name, connection=connection)) > 0


def error_line(job: queues.JsonJob) -> str | None:
    """Return a failed job's error in one line: a permanent error's message, else the line naming the exception."""
    if job.meta.get(queues.PERMANENT_ERROR):
        return job.meta[queues.PERMANENT_ERROR]
    result = job.latest_result()
    text = (result.exc_string if result else None) or ''
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else None


def _jobs(connection: redis.Redis, job_ids: list[str]) -> list[queues.JsonJob]:
    return [job for job in queues.JsonJob.fetch_many(job_ids, connection=connection) if job is not None]


def active_jobs(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return the job each busy worker is running, with its progress."""
    rows = []
    for worker in worker_states(connection):
        if not worker['current_job']:
            continue
        jobs = _jobs(connection, [worker['current_job']])
        job = jobs[0] if jobs else None
        started = job.started_at if job else None
        rows.append(
            {
                'worker': worker['name'],
                'job_id': worker['current_job'],
                'job': job.func_name if job else None,
                'queue': job.origin if job else None,
                'args': job.args if job else None,
                'started_at': started.isoformat(timespec='seconds') if started else None,
                'running_for': round((datetime.now(UTC) - started).total_seconds(), 1) if started else None,
                'progress': job.meta.get('progress') if job else None,
            }
        )
    return rows


def job_statistics(
    connection: redis.Redis, settings: Settings | None = None, queue_name: str | None = None
) -> list[dict[str, Any]]:
    """Per job function, over the finished and failed jobs rq still keeps: count, failure rate, p50/p95 run time."""
    durations: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for queue in queues.all_queues(connection, settings):
        if queue_name and queue.name != queue_name:
            continue
        for registry, failed in ((queue.finished_job_registry, False), (queue.failed_job_registry, True)):
            for job in _jobs(connection, registry.get_job_ids()):
                name = job.func_name or '?'
                durations.setdefault(name, [])
                failures.setdefault(name, 0)
                if job.started_at and job.ended_at:
                    durations[name].append((job.ended_at - job.started_at).total_seconds())
                failures[name] += failed
    rows = []
    for name in sorted(durations):
        times = sorted(durations[name])
        count = max(len(times), failures[name])
        rows.append(
            {
                'job': name,
                'count': count,
                'failed': failures[name],
                'failure_rate': round(failures[name] / count, 3) if count else 0.0,
                'p50_seconds': _percentile(times, 50),
                'p95_seconds': _percentile(times, 95),
            }
        )
    return rows


def _percentile(values: list[float], percent: int) -> float | None:
    """Return the nearest-rank percentile of sorted values, or None for none."""
    if not values:
        return None
    rank = max(1, -(-percent * len(values) // 100))
    return round(values[rank - 1], 3)


def worker_statistics(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return every live worker's counters: jobs done and failed, busy time, heartbeat, birth."""
    workers = Worker.all(
        connection=connection, job_class=queues.JsonJob, queue_class=queues.JsonQueue, serializer=queues.JSONSerializer
    )
    return [
        {
            'name': worker.name,
            'state': worker.get_state(),
            'successful_jobs': worker.successful_job_count,
            'failed_jobs': worker.failed_job_count,
            'busy_seconds': round(worker.total_working_time, 1),
            'last_heartbeat': worker.last_heartbeat.isoformat(timespec='seconds') if worker.last_heartbeat else None,
            'born': worker.birth_date.isoformat(timespec='seconds') if worker.birth_date else None,
            'queues': worker.queue_names(),
        }
        for worker in sorted(workers, key=lambda w: w.name)
    ]


def failed_jobs(
    connection: redis.Redis, settings: Settings | None = None, queue_name: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Return failed jobs, newest first, with the last line of their error."""
    rows = []
    for queue in queues.all_queues(connection, settings):
        if queue_name and queue.name != queue_name:
            continue
        job_ids = queue.failed_job_registry.get_job_ids(desc=True)[:limit]
        for job_id, job in zip(job_ids, queues.JsonJob.fetch_many(job_ids, connection=connection), strict=True):
            if job is None:
                # Gone, or unreadable (forged or corrupted): listed with the reason, so that it can be deleted.
                reason = queues.unreadable_reason(connection, job_id)
                if reason:
                    rows.append(
                        {
                            'id': job_id,
                            'job': None,
                            'queue': queue.name,
                            'args': None,
                            'failed_at': None,
                            'error': reason,
                        }
                    )
                continue
            rows.append(
                {
                    'id': job.id,
                    'job': job.func_name,
                    'queue': queue.name,
                    'args': job.args,
                    'failed_at': job.ended_at.isoformat(timespec='seconds') if job.ended_at else None,
                    'error': error_line(job),
                }
            )
    rows.sort(key=lambda row: row['failed_at'] or '', reverse=True)
    return rows[:limit]


def job_details(connection: redis.Redis, job_id: str) -> dict[str, Any]:
    """Return everything about one job: status, queue, function, arguments, timings, retries, progress, outcome."""
    job = queues.JsonJob.fetch(job_id, connection=connection)
    status = job.get_status().value
    result = job.latest_result()

    def moment(value):
        return value.isoformat(timespec='seconds') if value else None

    return {
        'id': job.id,
        'status': status,
        'queue': job.origin,
        'job': job.func_name,
        'args': job.args,
        'kwargs': job.kwargs,
        'description': job.description,
        'enqueued_at': moment(job.enqueued_at),
        'started_at': moment(job.started_at),
        'ended_at': moment(job.ended_at),
        'worker': job.worker_name,
        'timeout': job.timeout,
        'retries_left': job.retries_left,
        'progress': job.meta.get('progress'),
        'result': result.return_value if result is not None and status == 'finished' else None,
        'error': (result.exc_string or '').strip() if result is not None and status == 'failed' else None,
        'permanent_error': job.meta.get(queues.PERMANENT_ERROR) if status == 'failed' else None,
    }


def wait_for_job(
    connection: redis.Redis,
    job_id: str,
    timeout: float | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | None:
    """Follow a job until it ends and return its details, or None when `timeout` seconds passed first.

    `on_update` gets the job's details at each look, every WAIT_POLL_INTERVAL seconds (rq has no event for progress).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        details = job_details(connection, job_id)
        if on_update is not None:
            on_update(details)
        if details['status'] in ENDED:
            return details
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(WAIT_POLL_INTERVAL)
