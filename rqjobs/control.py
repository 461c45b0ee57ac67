"""Operator actions on jobs, queues and workers: cancel, stop, delete, requeue, clean up, suspend."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from rq import Worker
from rq.command import send_stop_job_command
from rq.exceptions import NoSuchJobError
from rq.job import JOB_ID_PATTERN, Job
from rq.suspension import is_suspended, resume, suspend
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from rqjobs import clock, hosts, queues
from rqjobs.exceptions import InvalidJobId, JobActionRefused, UnreadableJob
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DURATION = re.compile(r'(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>s|sec|m|min|h|d)?', re.IGNORECASE)
UNITS = {None: 1, 's': 1, 'sec': 1, 'm': 60, 'min': 60, 'h': 3600, 'd': 86400}
# Jobs that have not started: waiting on their queue, their time, their dependencies or a rate limit's slot.
LIVE = ('queued', 'scheduled', 'deferred', 'rate_limited')
REGISTRIES = ('started', 'finished', 'failed', 'deferred', 'scheduled', 'canceled', 'ready')


def parse_duration(text: str) -> timedelta:
    """Read a duration such as `90`, `90s`, `5m`, `2h` or `7d`; raise ValueError with an example otherwise."""
    match = DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f'{text!r} is not a duration; for example 90s, 5m, 2h or 7d.')
    seconds = float(match['number']) * UNITS[(match['unit'] or '').lower() or None]
    if seconds <= 0 or seconds > 366 * 86400:
        raise ValueError(f'{text!r} must be more than 0 and at most 366 days; for example 5m.')
    return timedelta(seconds=seconds)


def parse_time(text: str) -> datetime:
    """Read an ISO 8601 time (UTC unless it names an offset); return it as a naive UTC datetime."""
    try:
        moment = datetime.fromisoformat(text.strip().replace('Z', '+00:00'))
    except ValueError:
        raise ValueError(
            f'{text!r} is not an ISO 8601 time; for example 2026-12-01T02:30 (UTC) or 2026-12-01T03:30+01:00.'
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def check_job_id(job_id: str) -> str:
    """Return `job_id`, or raise `InvalidJobId` if rq could not take it (rq itself raises a bare ValueError)."""
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        raise InvalidJobId(
            f'{job_id!r} is not a job id: an id holds only letters, digits, _ and -, for example warehouse-42.'
        )
    return job_id


def fetch(connection: redis.Redis, job_id: str) -> queues.JsonJob:
    """Return a job, or raise `JobActionRefused` saying it does not exist (`InvalidJobId` if it cannot be one)."""
    check_job_id(job_id)
    try:
        return queues.JsonJob.fetch(job_id, connection=connection)
    except UnreadableJob:
        raise
    except NoSuchJobError:
        raise JobActionRefused(
            f'No job {job_id!r} (it may have expired); `rqjobs inspect failed` lists failed jobs.'
        ) from None


def cancel_job(connection: redis.Redis, job_id: str) -> str:
    """Cancel a job that has not started; return its previous status."""
    job = fetch(connection, job_id)
    status = job.get_status().value
    if status not in LIVE:
        hint = ' Use `rqjobs job stop` for a running job.' if status == 'started' else ''
        raise JobActionRefused(
            f'Job {job_id} is {status}; only queued, scheduled, deferred or rate-limited jobs can be cancelled.{hint}'
        )
    job.cancel()
    return status


def stop_job(connection: redis.Redis, job_id: str) -> None:
    """Ask the worker running a job to stop it (the job ends as stopped)."""
    job = fetch(connection, job_id)
    status = job.get_status().value
    if status != 'started':
        raise JobActionRefused(f'Job {job_id} is {status}, not running; `rqjobs job cancel` removes a queued job.')
    send_stop_job_command(connection, job_id, serializer=queues.JSONSerializer)


def delete_job(connection: redis.Redis, job_id: str) -> str:
    """Delete a job that is not running, from its queue and every registry; return its status."""
    try:
        job = fetch(connection, job_id)
    except UnreadableJob:
        return _delete_unreadable(connection, job_id)
    status = job.get_status().value
    if status == 'started':
        raise JobActionRefused(f'Job {job_id} is running; stop it first with `rqjobs job stop {job_id}`.')
    job.delete()
    return status


def _delete_unreadable(connection: redis.Redis, job_id: str, settings: Settings | None = None) -> str:
    # rq deletes a job through its loaded fields (origin, dependencies), which an unreadable job does not have: its
    # id is taken out of every queue and registry by name instead.
    status = (connection.hget(Job.key_for(job_id), 'status') or b'unreadable').decode('utf-8', 'replace')
    with connection.pipeline() as pipe:
        for queue in queues.all_queues(connection, settings):
            pipe.lrem(queue.key, 0, job_id)
            pipe.lrem(queue.intermediate_queue_key, 0, job_id)
            for registry in REGISTRIES:
                pipe.zrem(getattr(queue, f'{registry}_job_registry').key, job_id)
        blank = Job(job_id, connection=connection)
        pipe.delete(blank.key, blank.dependents_key, blank.dependencies_key)
        pipe.execute()
    logger.info('%s: unreadable job deleted', job_id)
    return status


def requeue_failed(
    connection: redis.Redis,
    job_ids: list[str] | None = None,
    queue_name: str | None = None,
    settings: Settings | None = None,
) -> list[str]:
    """Put failed jobs back on their queues: the ones named, or every failed job (of one queue)."""
    requeued, unreadable = [], []
    for queue in queues.all_queues(connection, settings):
        if queue_name and queue.name != queue_name:
            continue
        registry = queue.failed_job_registry
        failed = set(registry.get_job_ids())
        for job_id in job_ids if job_ids is not None else sorted(failed):
            if job_id in failed:
                try:
                    registry.requeue(job_id)
                except UnreadableJob:  # logged by the job class; one bad job must not hold back the others
                    unreadable.append(job_id)
                    continue
                requeued.append(job_id)
    if unreadable:
        raise JobActionRefused(
            f'{len(requeued)} requeued; {len(unreadable)} cannot be read and stay failed '
            f'(`rqjobs job delete ID` removes one): {", ".join(unreadable)}.'
        )
    if job_ids is not None:
        missing = sorted(set(job_ids) - set(requeued))
        if missing:
            raise JobActionRefused(
                f'Not failed (or not on that queue), nothing requeued for: {", ".join(missing)}; '
                f'{len(requeued)} requeued.'
            )
    return requeued


def cleanup(
    connection: redis.Redis,
    *,
    failed_older_than: timedelta | None = None,
    finished: bool = False,
    dead_workers: bool = False,
    orphan_clones: bool = False,
    dry_run: bool = False,
    host_timeout: float = hosts.ANSWER_TIMEOUT,
    settings: Settings | None = None,
) -> dict[str, list[str]]:
    """Remove what the options name, and nothing else; with `dry_run`, only list it."""
    settings = settings or get_settings()
    report: dict[str, list[str]] = {}
    if failed_older_than is not None:
        cutoff = clock.utcnow().replace(tzinfo=UTC) - failed_older_than
        old = []
        for queue in queues.all_queues(connection, settings):
            for job in queues.JsonJob.fetch_many(queue.failed_job_registry.get_job_ids(), connection=connection):
                if job is not None and (job.ended_at is None or job.ended_at < cutoff):
                    old.append(job)
        report['failed_jobs'] = [job.id for job in old]
        if not dry_run:
            for job in old:
                job.delete()
    if finished:
        done = []
        for queue in queues.all_queues(connection, settings):
            done += queues.JsonJob.fetch_many(queue.finished_job_registry.get_job_ids(), connection=connection)
        report['finished_jobs'] = [job.id for job in done if job is not None]
        if not dry_run:
            for job in done:
                if job is not None:
                    job.delete()
    if dead_workers:
        report['dead_workers'] = _dead_workers(connection, settings, dry_run)
    if orphan_clones:
        report.update(_orphan_clones(connection, settings, dry_run, host_timeout))
    return report


def _orphan_clones(connection: redis.Redis, settings: Settings, dry_run: bool, timeout: float) -> dict[str, list[str]]:
    # Each host has its own clones: with live hosts, each removes its own; with none, this process removes its own.
    if not hosts.live_hosts(connection):
        return {'orphan_clones': hosts.orphan_clones(settings, dry_run=dry_run)}
    outcomes = hosts.run_on_hosts(connection, 'remove_orphan_clones', [dry_run], timeout=timeout, settings=settings)
    report: dict[str, list[str]] = {'orphan_clones': [], 'hosts': [], 'hosts_not_answering': []}
    for host, outcome in outcomes.items():
        if outcome['status'] == 'finished':
            found = outcome['result']['orphan_clones']
            report['orphan_clones'] += [f'{host}: {name}' for name in found]
            report['hosts'].append(f'{host}: {len(found)} orphan clones')
        elif outcome['status'] == 'failed':
            report['hosts'].append(f'{host}: failed: {outcome["error"]}')
        else:
            report['hosts_not_answering'].append(f'{host}: no answer within {timeout:g} s')
    return report


def _dead_workers(connection: redis.Redis, settings: Settings, dry_run: bool) -> list[str]:
    # A worker whose key expired (no heartbeat within its TTL) is dead but may still be listed in the registries.
    sets = [REDIS_WORKER_KEYS] + [WORKERS_BY_QUEUE_KEY % queue for queue in queues.queue_names(settings)]
    dead: set[bytes] = set()
    for key in sets:
        dead |= {name for name in connection.smembers(key) if not connection.exists(name)}
    if dead and not dry_run:
        with connection.pipeline() as pipe:
            for key in sets:
                pipe.srem(key, *dead)
            pipe.execute()
    return sorted(name.decode().removeprefix(Worker.redis_worker_namespace_prefix) for name in dead)


def suspend_workers(connection: redis.Redis, seconds: int | None = None) -> None:
    """Stop every worker from taking new jobs (for `seconds`, or until resumed); running jobs finish."""
    suspend(connection, seconds)


def resume_workers(connection: redis.Redis) -> bool:
    """Let workers take jobs again; return whether they were suspended."""
    was = bool(is_suspended(connection))
    resume(connection)
    return was


def summary(report: dict[str, Any]) -> str:
    """Say in one line what a cleanup report holds."""
    return ', '.join(f'{len(items)} {name.replace("_", " ")}' for name, items in report.items()) or 'nothing'
