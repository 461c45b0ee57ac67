"""Host chores (on each host's own queue, `host-<JOBS_HOST_NAME>`): work on one host's disk.

Workers on several hosts share one Redis and one database, but each host has its own REPO_ROOT: a clone (or a partial
clone) lives on the host that made it. A chore that concerns clones is enqueued once per live host, on that host's
queue, where only that host's workers take it (`enqueue_on_hosts`, `run_on_hosts`). Workers record their host in
their rq hash; a host is live while one of its workers is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq import Worker, worker_registration
from rq.exceptions import NoSuchJobError
from rq.utils import as_text

from models import Warehouse
from rqjobs import clock, connections, database, queues
from rqjobs.repository import storage
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

JOBS = ('remove_orphan_clones', 'remove_clones', 'measure_clones')

# Fields of a worker's rq hash: its host, and why its storage is not shared with other hosts ('' when it is).
HOST_FIELD = 'rqjobs_host'
LOCAL_STORAGE_FIELD = 'rqjobs_local_storage'
# A host's clone disk usage, as its last measurement found it; gone when no worker of the host measured for a while.
USAGE_KEY = 'rqjobs:host:{host}:usage'
USAGE_TTL = 3600
# At most one measurement per host in this many seconds, whichever of its workers asks first.
MEASURE_INTERVAL = 600
MEASURE_LOCK_KEY = 'rqjobs:host:{host}:measure-lock'
# How long `run_on_hosts` waits for the hosts' answers by default, and how long one chore may run.
ANSWER_TIMEOUT = 30
CHORE_TIMEOUT = 600
# Warehouse ids per `remove_clones` job: some 40 bytes each, well within JOB_ARGS_MAX_SIZE's 64 KiB default.
CHORE_IDS_MAX = 500
ANSWER_POLL_INTERVAL = 0.2


# ---- Chores ----


def remove_orphan_clones(dry_run: bool = False) -> dict:
    """Remove this host's clones of warehouses that no longer exist; with `dry_run`, only list them."""
    # Safe twice: a clone removed once is not found again.
    settings = get_settings()
    orphans = orphan_clones(settings, dry_run=dry_run)
    if not dry_run:
        record_usage(connections.get_redis(settings), settings)
    return {'host': settings.host_name, 'orphan_clones': orphans}


def remove_clones(warehouse_ids: list[str]) -> dict:
    """Remove this host's clones (and unfinished clones) of the given deleted warehouses."""
    # Safe twice: removing a clone that is gone is a no-op. A warehouse that is live again keeps its clone.
    settings = get_settings()
    wanted = [warehouse_id for warehouse_id in warehouse_ids if isinstance(warehouse_id, str)]
    with database.connection(settings):
        alive = {
            row[0]
            for row in Warehouse.select(Warehouse.id)
            .where(Warehouse.id.in_(wanted), Warehouse.is_deleted == False)
            .tuples()
        }
    removed = []
    for warehouse_id in wanted:
        if warehouse_id in alive:
            continue
        try:
            dest = storage.clone_path(warehouse_id, settings)
        except ValueError:
            logger.warning('%s: not a warehouse id; skipped', warehouse_id[:80])
            continue
        if storage.remove_clone(dest, settings):
            removed.append(warehouse_id)
    record_usage(connections.get_redis(settings), settings)
    return {'host': settings.host_name, 'removed': removed}


def measure_clones() -> dict:
    """Measure the bytes and the number of clones under this host's REPO_ROOT and keep them in Redis."""
    # Safe twice: a measurement replaces the previous one.
    settings = get_settings()
    return record_usage(connections.get_redis(settings), settings)


# ---- This host's clones ----


def orphan_clones(settings: Settings | None = None, *, dry_run: bool = False) -> list[str]:
    """Remove the clones under `REPO_ROOT` of warehouses that no longer exist; with `dry_run`, only list them."""
    settings = settings or get_settings()
    root = settings.repo_root
    if not root.is_dir():
        return []
    names = _clone_names(settings)
    # <id>.partial is a clone of <id> in progress, or one a killed worker left: the warehouse's next try removes it.
    owners = {name: name.removesuffix(storage.PARTIAL_SUFFIX) for name in names}
    with database.connection(settings):
        alive = {
            row[0]
            for row in Warehouse.select(Warehouse.id)
            .where(Warehouse.id.in_(sorted(set(owners.values()))), Warehouse.is_deleted == False)
            .tuples()
        }
    orphans = sorted(name for name in names if owners[name] not in alive)
    if not dry_run:
        for name in orphans:
            storage.remove_clone(root / name, settings)
        storage.empty_trash(settings)  # what a killed removal left behind
    return orphans


def _clone_names(settings: Settings) -> list[str]:
    # A dot never starts a warehouse id: .trash holds what is being removed.
    return [
        entry.name
        for entry in settings.repo_root.iterdir()
        if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith('.')
    ]


def record_usage(connection: redis.Redis, settings: Settings | None = None) -> dict:
    """Measure this host's clones (bytes on disk, count) and keep the figures in Redis for `USAGE_TTL` seconds."""
    settings = settings or get_settings()
    names = _clone_names(settings) if settings.repo_root.is_dir() else []
    allocated = sum(storage.disk_usage(settings.repo_root / name)[0] for name in names)
    usage = {
        'host': settings.host_name,
        'clone_bytes': allocated,
        'clones': sum(not name.endswith(storage.PARTIAL_SUFFIX) for name in names),
        'measured_at': clock.utcnow().isoformat(timespec='seconds') + 'Z',
    }
    connection.set(USAGE_KEY.format(host=settings.host_name), queues.JSONSerializer.dumps(usage), ex=USAGE_TTL)
    return usage


def measure_due(connection: redis.Redis, host: str) -> bool:
    """Return whether this host's clones are due for a measurement, claiming it for the caller if so."""
    return bool(connection.set(MEASURE_LOCK_KEY.format(host=host), 1, nx=True, ex=MEASURE_INTERVAL))


# ---- Live hosts ----


def local_storage(settings: Settings) -> str:
    """Say what of this process's storage another host cannot share ('' when it can share all of it)."""
    reasons = []
    if settings.database_url.startswith('sqlite'):
        reasons.append('SQLite (DATABASE_URL), a file on this host')
    if not settings.redis_url or settings.redis_url.startswith('unix:'):
        reasons.append('a unix-socket Redis, reachable from this host only')
    return ' and '.join(reasons)


def worker_records(connection: redis.Redis) -> list[dict[str, Any]]:
    """Return every live worker's name, host, queues and unshared storage, as its rq hash says (one round trip)."""
    keys = sorted(as_text(key) for key in worker_registration.get_keys(connection=connection))
    with connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hmget(key, 'birth', 'queues', HOST_FIELD, LOCAL_STORAGE_FIELD)
        fields = pipe.execute()
    records = []
    for key, (birth, names, host, local) in zip(keys, fields, strict=True):
        if birth is None:  # a registered worker whose hash has expired is gone
            continue
        records.append(
            {
                'name': key.removeprefix(Worker.redis_worker_namespace_prefix),
                'host': as_text(host) if host else None,
                'queues': [name for name in as_text(names or b'').split(',') if name],
                'local_storage': as_text(local or b''),
            }
        )
    return records


def live_hosts(connection: redis.Redis) -> dict[str, list[dict[str, Any]]]:
    """Return each host with a live worker on its own queue, with those workers (by host name)."""
    hosts: dict[str, list[dict[str, Any]]] = {}
    for record in worker_records(connection):
        if record['host'] and queues.host_queue(record['host']) in record['queues']:
            hosts.setdefault(record['host'], []).append(record)
    return dict(sorted(hosts.items()))


def shared_storage_warning(connection: redis.Redis, records: list[dict[str, Any]] | None = None) -> str | None:
    """Return a warning when workers of several hosts share this Redis while some keep their storage to themselves."""
    records = worker_records(connection) if records is None else records
    hosts = sorted({record['host'] for record in records if record['host']})
    local = {
        record['host']: record['local_storage'] for record in records if record['host'] and record['local_storage']
    }
    if len(hosts) < 2 or not local:
        return None
    return (
        f'Workers of {len(hosts)} hosts ({", ".join(hosts)}) share this Redis, but those of '
        f'{", ".join(sorted(local))} use {local[min(local)]}: it is not shared with the other hosts, which see '
        f'other data. Give every host the same PostgreSQL (DATABASE_URL=postgresql://user:password@db:5432/rqjobs) '
        f'and a Redis over TCP (REDIS_URL=redis://redis:6379/0).'
    )


def usage(connection: redis.Redis, hosts: Sequence[str]) -> dict[str, dict | None]:
    """Return each host's last clone measurement, or None when there is none recent."""
    with connection.pipeline(transaction=False) as pipe:
        for host in hosts:
            pipe.get(USAGE_KEY.format(host=host))
        replies = pipe.execute()
    return {
        host: queues.JSONSerializer.loads(reply) if reply else None for host, reply in zip(hosts, replies, strict=True)
    }


# ---- Enqueueing on every host ----


def enqueue_on_hosts(
    connection: redis.Redis,
    job: str,
    args: Sequence[Any] = (),
    *,
    hosts: Sequence[str] | None = None,
    settings: Settings | None = None,
) -> dict[str, queues.JsonJob]:
    """Enqueue `job` once on the queue of each live host (or of `hosts`); return the jobs by host."""
    settings = settings or get_settings()
    targets = list(live_hosts(connection)) if hosts is None else list(hosts)
    return {
        host: queues.enqueue(
            job,
            list(args),
            connection=connection,
            queue=queues.host_queue(host),
            retry=None,  # the next chore of the same kind does it again
            timeout=CHORE_TIMEOUT,
            description=f'{job} on {host}',
            settings=settings,
        )
        for host in targets
    }


def run_on_hosts(
    connection: redis.Redis,
    job: str,
    args: Sequence[Any] = (),
    *,
    timeout: float = ANSWER_TIMEOUT,
    settings: Settings | None = None,
) -> dict[str, dict[str, Any]]:
    """Run `job` once on every live host and wait up to `timeout` seconds; return each host's outcome.

    An outcome is `{'status': 'finished', 'result': ...}`, `{'status': 'failed', 'error': ...}` or
    `{'status': 'no answer'}` for a host that did not end its job in time (a job it had not begun is withdrawn).
    """
    jobs = enqueue_on_hosts(connection, job, args, settings=settings)
    deadline = time.monotonic() + timeout
    outcomes: dict[str, dict[str, Any]] = {}
    while True:
        for host, chore in jobs.items():
            if host in outcomes:
                continue
            try:
                status = chore.get_status(refresh=True)
            except NoSuchJobError:
                outcomes[host] = {'status': 'failed', 'error': 'the job vanished'}
                continue
            if status == 'finished':
                outcomes[host] = {'status': 'finished', 'result': chore.return_value(refresh=True)}
            elif status in ('failed', 'stopped', 'canceled'):
                result = chore.latest_result()
                error = (result.exc_string or '').strip().splitlines() if result else []
                outcomes[host] = {'status': 'failed', 'error': error[-1] if error else status}
        if len(outcomes) == len(jobs) or time.monotonic() >= deadline:
            break
        time.sleep(ANSWER_POLL_INTERVAL)
    for host, chore in jobs.items():
        if host not in outcomes:
            outcomes[host] = {'status': 'no answer'}
            if chore.get_status(refresh=True) == 'queued':
                # Withdrawn rather than left for a host that may never come back to take it.
                chore.delete()
    return dict(sorted(outcomes.items()))
