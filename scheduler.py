"""The periodic plan: a table of entries, and `register()`, which recreates it in Redis through rq-scheduler.

Each entry is a template job in rq-scheduler's schedule under a fixed id. When it is due, the scheduler process
enqueues a fresh run of the entry's job (id `<entry id>-<slot time>`) through the project's one enqueue path, and
puts the template back for its next time. So:

- a run that is still queued or running when the next time comes is not enqueued again (no backlog after an outage),
  nor is one whose run went on in a next run of its own (`queues.continue_job`) while that one is queued, scheduled
  or running;
- two schedulers never enqueue the same slot twice (rq-scheduler's lock, and the slot's deterministic run id);
- a scheduler killed mid-loop loses no entry: the template is still due, and its slot's run id makes a retry safe;
- `register()` never deletes a running job: runs and templates are different jobs;
- cron entries are evaluated in UTC whatever the machine's timezone;
- an entry with an `early` check (the access-log drain, once its buffer is a quarter full) also runs between its
  times, on the same terms: never beside a run in progress.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from croniter import croniter
from redis.exceptions import LockNotOwnedError
from rq.exceptions import NoSuchJobError
from rq_scheduler import Scheduler

from rqjobs import clock, connections, monitor, queues
from rqjobs.exceptions import PlanLocked, RedisUnavailable, SettingsError
from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Seconds between two looks at the schedule: a 30 s entry then fires every 30 ± 5 s.
POLL_INTERVAL = 5
REGISTER_LOCK = 'rqjobs:lock:schedule-register'
REGISTER_LOCK_WAIT = 30  # seconds a registration waits for another one to finish (one takes milliseconds)
PLAN_MARK = 'plan_entry'
MIN_INTERVAL = 5


@dataclass(frozen=True)
class Entry:
    """One periodic entry: a fixed id, a registered job, and either an interval in seconds or a UTC cron string.

    `early` names a function `(connection) -> bool`, asked at every look at the schedule, that makes the entry due
    before its time (a buffer filling up); it is read from this table, never from Redis.
    """

    id: str
    job: str
    every: int | None = None
    cron: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    early: str | None = None

    @property
    def when(self) -> str:
        return f'every {self.every} s' if self.every else f'cron {self.cron} (UTC)'

    def definition(self) -> dict:
        """What makes two versions of an entry the same, as stored in the template's meta."""
        return {'job': self.job, 'every': self.every, 'cron': self.cron, 'kwargs': self.kwargs}


PLAN: tuple[Entry, ...] = (
    Entry('process-pending-warehouses', 'rqjobs.warehouse.schedule_warehouse_processing', every=300),
    Entry('process-warehouse-updates', 'rqjobs.warehouse.schedule_warehouse_updates', every=3600),
    Entry('cleanup-failed-warehouses', 'rqjobs.warehouse.cleanup_failed_warehouses', every=3600),
    Entry('generate-daily-statistics', 'rqjobs.statistics.generate_statistics', cron='0 1 * * *'),
    Entry('cleanup-old-access-records', 'rqjobs.access_log.cleanup_old_access_records', cron='0 2 * * *'),
    Entry('cleanup-old-access-logs', 'rqjobs.access_log.cleanup_old_access_logs', cron='10 2 * * *'),
    Entry('generate-minimaps', 'rqjobs.minimap.generate_minimap', every=600),
    Entry(
        'process-access-logs', 'rqjobs.access_log.process_access_log', every=30, early='rqjobs.access_log.backlogged'
    ),
)


def plan(settings: Settings | None = None, table: Sequence[Entry] = PLAN) -> list[Entry]:
    """Return the plan with the `JOBS_SCHEDULE` overrides applied (changed times, disabled entries)."""
    settings = settings or get_settings()
    entries = {entry.id: entry for entry in table}
    for entry_id, value in settings.schedule_overrides:
        if entry_id not in entries:
            raise SettingsError(
                f'JOBS_SCHEDULE names {entry_id!r}, which is not in the plan; known entries: {", ".join(entries)}.'
            )
        if value == 'off':
            del entries[entry_id]
        elif value.isdigit():
            if int(value) < MIN_INTERVAL:
                raise SettingsError(
                    f'JOBS_SCHEDULE: {entry_id}={value} is below {MIN_INTERVAL} s; for example {entry_id}=60.'
                )
            entries[entry_id] = replace(entries[entry_id], every=int(value), cron=None)
        elif croniter.is_valid(value) and len(value.split()) == 5:
            entries[entry_id] = replace(entries[entry_id], every=None, cron=value)
        else:
            raise SettingsError(
                f'JOBS_SCHEDULE: {entry_id}={value!r} is not off, seconds or a 5-field cron string; '
                f'for example {entry_id}=60 or {entry_id}=30 1 * * *.'
            )
    return list(entries.values())


def next_cron_time(cron: str, after: datetime) -> datetime:
    """Return the first time after `after` (naive UTC) that matches `cron`, read in UTC (naive UTC)."""
    return croniter(cron, after).get_next(datetime)


def first_time(entry: Entry, now: datetime) -> datetime:
    """Return an entry's first run time after registration (naive UTC)."""
    return now + timedelta(seconds=entry.every) if entry.every else next_cron_time(entry.cron, now)


def next_time(entry: dict, slot: datetime, now: datetime) -> datetime:
    """Return the next run time after the slot just handled: on the cadence, but never in the past."""
    if entry.get('cron'):
        return next_cron_time(entry['cron'], max(slot, now))
    step = timedelta(seconds=entry['every'])
    upcoming = slot + step
    if upcoming <= now:
        # Workers or the scheduler were down: skip the missed slots instead of firing them all at once.
        upcoming += step * ((now - upcoming) // step + 1)
    return upcoming


class PlanScheduler(Scheduler):
    """rq-scheduler, running the project's plan entries as fresh JSON runs; other scheduled jobs as usual."""

    def get_jobs_to_queue(self, with_times: bool = False) -> list:
        # Due by the project's clock (a seam tests can freeze), not by the wall clock rq-scheduler reads.
        return list(self.get_jobs(until=int(_epoch(clock.utcnow())), with_times=with_times))

    def enqueue_jobs(self) -> list:
        """Enqueue every due entry once, and those due early (the scheduling step the loop repeats)."""
        due = self.get_jobs_to_queue(with_times=True)
        for job, slot in due:
            self.enqueue_job(job, slot=slot)
        early = self._enqueue_early({job.id for job, _ in due})
        return [job for job, _ in due] + early

    def _enqueue_early(self, handled: set[str]) -> list:
        """Run the entries whose `early` check says they are due before their time, unless a run is in progress."""
        started = []
        for entry in plan():
            if entry.early is None or entry.id in handled or not _function(entry.early)(self.connection):
                continue
            try:
                template = self.job_class.fetch(entry.id, connection=self.connection)
            except NoSuchJobError:  # not registered (yet): the plan's registration adds it
                continue
            definition = template.meta.get(PLAN_MARK)
            if definition and self._run(template, definition, clock.utcnow(), early=True):
                started.append(template)
        return started

    def enqueue_job(self, job, slot: datetime | None = None) -> None:
        entry = job.meta.get(PLAN_MARK)
        if not entry:
            return super().enqueue_job(job)
        now = clock.utcnow()
        slot = _naive_utc(slot) if slot is not None else now
        self._run(job, entry, slot)
        upcoming = next_time(entry, slot, now)
        self.connection.zadd(self.scheduled_jobs_key, {job.id: _epoch(upcoming)})

    def _run(self, template, entry: dict, slot: datetime, early: bool = False) -> bool:
        """Enqueue the entry's run of `slot` unless one is in progress; return whether it was enqueued."""
        run_id = f'{template.id}-{int(_epoch(slot))}'
        last = template.meta.get('last_run_id')
        busy = queues.live_job_ids(self.connection, [run_id])
        if last:
            # A run that went on in a next run of its own (`queues.continue_job`) is still in progress through it.
            last, live = queues.latest_run(self.connection, last)
            template.meta['last_run_id'] = last
            if live:
                busy.add(last)
        if busy and early:
            return False  # nothing was due: the run in progress is all there is to it
        if busy:
            # The previous run is still queued or running (or this slot's run exists already): no second copy.
            logger.info(
                'schedule %s: run %s still queued or running; slot %s skipped',
                template.id,
                min(busy),
                slot.isoformat(timespec='seconds'),
            )
            template.meta['last_skipped_at'] = clock.utcnow().isoformat(timespec='seconds')
        else:
            queues.enqueue(
                entry['job'],
                kwargs=entry.get('kwargs') or {},
                job_id=run_id,
                retry=None,
                connection=self.connection,
                description=f'{template.id} ({entry["job"].rsplit(".", 1)[-1]})',
                meta={PLAN_MARK: template.id, 'slot': slot.isoformat(timespec='seconds') + 'Z'},
            )
            template.meta['last_run_id'] = run_id
            logger.info('schedule %s: enqueued %s%s', template.id, run_id, ' before its time' if early else '')
        template.save_meta()
        return not busy


def build_scheduler(connection: redis.Redis, interval: float = POLL_INTERVAL) -> PlanScheduler:
    """Return the scheduler: jobs it creates are JSON jobs of the project's job class."""
    return PlanScheduler(
        connection=connection, interval=interval, job_class=queues.JsonJob, queue_class=queues.JsonQueue
    )


def register(connection: redis.Redis, entries: Sequence[Entry] | None = None) -> dict:
    """Recreate the plan in Redis: add new entries, replace changed ones, remove those no longer in the plan.

    Safe to run any number of times from any number of processes: one template per entry id, unchanged entries
    keep their next time, and runs in progress are never touched.
    """
    entries = plan() if entries is None else list(entries)
    for entry in entries:
        queues.find_job(entry.job)  # an entry naming no registered job fails here, not at 01:00
    scheduler = build_scheduler(connection)
    added, replaced, kept, removed = [], [], [], []
    lock = connection.lock(REGISTER_LOCK, timeout=30, blocking_timeout=REGISTER_LOCK_WAIT)
    # acquire() rather than `with`: redis-py raises the same LockError for a lock not taken and for one lost while
    # held, and only the first means that another process is registering.
    if not lock.acquire():
        raise PlanLocked(
            f"Another scheduler (or `rqjobs schedule register`) held the plan's registration lock for "
            f'{REGISTER_LOCK_WAIT:g} s; nothing was registered. Check that only one `rqjobs scheduler` '
            f'runs, then try again.'
        )
    try:
        current = {job.id: job for job in scheduler.get_jobs() if job.meta.get(PLAN_MARK)}
        wanted = {entry.id for entry in entries}
        for job_id, job in current.items():
            if job_id not in wanted:
                scheduler.cancel(job)
                job.delete()
                removed.append(job_id)
        now = clock.utcnow()
        for entry in entries:
            job = current.get(entry.id)
            if job is not None and job.meta[PLAN_MARK] == entry.definition():
                kept.append(entry.id)
                continue
            if job is not None:
                scheduler.cancel(job)
                job.delete()
            template = scheduler._create_job(
                entry.job,
                kwargs=entry.kwargs,
                id=entry.id,
                queue_name=queues.DEFAULT,
                description=f'{entry.id}: {entry.when}',
                commit=False,
                meta={PLAN_MARK: entry.definition()},
            )
            template.save()
            connection.zadd(scheduler.scheduled_jobs_key, {entry.id: _epoch(first_time(entry, now))})
            (replaced if job is not None else added).append(entry.id)
    finally:
        try:
            lock.release()
        except LockNotOwnedError:
            # The plan is written: at worst a registration that ran alongside wrote its entries over these, as a
            # later one would; stopping the scheduler for it would only start a restart loop on a slow Redis.
            logger.warning(
                'schedule: registering the plan outlasted its lock (%s s); another registration may have run alongside',
                lock.timeout,
            )
    logger.info(
        'schedule: %d added, %d replaced, %d kept, %d removed', len(added), len(replaced), len(kept), len(removed)
    )
    return {'added': added, 'replaced': replaced, 'kept': kept, 'removed': removed}


def clear(connection: redis.Redis) -> list[str]:
    """Remove every plan entry from the schedule (runs already enqueued are left alone)."""
    return register(connection, entries=[])['removed']


def describe(connection: redis.Redis) -> dict:
    """Return the plan entries with their next and last runs, and every one-off job waiting to be enqueued."""
    scheduler = build_scheduler(connection)
    entries, others = [], []
    for job, at in scheduler.get_jobs(with_times=True):
        at = _naive_utc(at)
        entry = job.meta.get(PLAN_MARK)
        if not entry:
            others.append({'id': job.id, 'job': job.func_name, 'queue': job.origin, 'at': at, 'source': 'rq-scheduler'})
            continue
        last = _last_run(connection, job.meta.get('last_run_id'))
        entries.append(
            {
                'id': job.id,
                'job': entry['job'],
                'when': f'every {entry["every"]} s' if entry['every'] else f'cron {entry["cron"]} (UTC)',
                'next_run_utc': at,
                'next_run_local': at.replace(tzinfo=UTC).astimezone().replace(tzinfo=None),
                'last_run': last,
                'last_skipped_at': job.meta.get('last_skipped_at'),
            }
        )
    for queue in queues.all_queues(connection):
        registry = queue.scheduled_job_registry
        for job_id in registry.get_job_ids():
            try:
                job = queues.JsonJob.fetch(job_id, connection=connection)
            except NoSuchJobError:
                logger.debug('schedule: %s left the scheduled registry while listing', job_id)
                continue
            others.append(
                {
                    'id': job_id,
                    'job': job.func_name,
                    'queue': queue.name,
                    'at': _naive_utc(registry.get_scheduled_time(job_id)),
                    'source': 'rq (retry or delay)',
                    'retries_left': job.retries_left,
                }
            )
    return {'entries': sorted(entries, key=lambda e: e['id']), 'one_off': sorted(others, key=lambda o: str(o['at']))}


def _last_run(connection: redis.Redis, run_id: str | None) -> dict | None:
    if not run_id:
        return None
    try:
        job = queues.JsonJob.fetch(run_id, connection=connection)
    except NoSuchJobError:  # its result expired (RESULT_TTL): only the id is left
        return {'id': run_id, 'status': 'expired'}
    status = job.get_status().value
    return {
        'id': run_id,
        'status': status,
        'enqueued_at': job.enqueued_at,
        'ended_at': job.ended_at,
        'error': monitor.error_line(job) if status == 'failed' else None,
    }


def run(connection: redis.Redis, interval: float = POLL_INTERVAL, burst: bool = False) -> None:
    """Register the plan, then run the scheduler loop until stopped (or, with `burst`, one pass).

    Through Sentinel, a scheduler that loses the master waits for the promoted replica and runs on there.
    """
    while True:
        try:
            # Registering talks to Redis too: losing it there is the same outage as losing it in the loop.
            register(connection)
            logger.info('scheduler: polling every %s s', interval)
            build_scheduler(connection, interval).run(burst=burst)
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if burst or not connections.follows_failover():
                _stopped(exc)
            logger.warning('scheduler: lost the Redis master (%s); waiting for the Sentinels to name one', exc)
            if not connections.await_master(connection):
                raise RedisUnavailable(
                    f'The scheduler lost the Redis master and no new one answered within '
                    f'{connections.FAILOVER_WAIT:g} s; check the Sentinels, then start it again.'
                ) from None
            logger.warning('scheduler: running on with the new master')
        except redis.RedisError as exc:
            _stopped(exc)


def _stopped(exc: redis.RedisError) -> None:
    # Exit 1 with one line, not a traceback: a process manager starts the scheduler again once Redis is back.
    raise RedisUnavailable(
        f'The scheduler lost Redis and stopped ({exc}); start it again once Redis is back '
        f'(run it under a process manager that restarts it).'
    ) from None


def tick(connection: redis.Redis) -> list[str]:
    """Run one scheduling step (what the loop does every few seconds); return the ids of the due entries."""
    return [job.id for job in build_scheduler(connection).enqueue_jobs()]


def _function(path: str):
    module, _, name = path.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=UTC).timestamp()


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
